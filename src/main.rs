//! The `sluice` daemon: `sluice run <pipeline.toml>`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use sluice::http::QueryState;
use sluice::pipeline::Pipeline;
use sluice::{QueryError, RetryPolicy, StreamingQueryListener};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Structured streaming for unbounded tables"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the queries of a pipeline file until SIGINT/SIGTERM (or until all are done, with
    /// once / available-now triggers).
    ///
    /// The pipeline file (TOML; relative paths are relative to it):
    ///
    ///   [source.events]
    ///   format = "json"            # a source format (listed below)
    ///   path = "in"                # a directory or a glob
    ///   schema = "event_time TIMESTAMP, action STRING, value DOUBLE"
    ///   watermark = { column = "event_time", delay = "10 minutes" }
    ///   options = { maxFilesPerTrigger = 1 }    # strings, numbers or booleans
    ///
    ///   [query.clicks]
    ///   sql = "SELECT event_time, value FROM events WHERE action = 'click'"
    ///   output_mode = "append"     # append | update | complete
    ///   trigger = "available-now"  # once | available-now | file-arrival | "500 milliseconds"
    ///   checkpoint = "chk/clicks"
    ///   sink = { format = "csv", path = "out/clicks", options = { header = true } }  # a sink format
    ///   progress_log = "progress.jsonl"   # optional: one JSON line per batch
    ///
    /// Exit status: 0 when stopped or done, 1 when a query failed, 2 for a usage or
    /// pipeline-file error (before anything runs).
    #[command(verbatim_doc_comment)]
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Run only this query (repeat for several); all by default.
        #[arg(long = "query", value_name = "NAME")]
        queries: Vec<String>,
        /// Process everything available now and exit (every query's trigger becomes
        /// available-now): a backfill, or one step of a pipeline in a script.
        #[arg(long)]
        available_now: bool,
        /// Serve the status API, query stop and Prometheus metrics on this address
        /// (e.g. 127.0.0.1:9100): GET /healthz, /api/queries, /api/queries/NAME/progress?limit=N,
        /// POST /api/queries/NAME/stop, GET /metrics.
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
        /// Require `Authorization: Bearer TOKEN` on every HTTP request (needed for a
        /// non-loopback --http address unless --insecure).
        #[arg(long, value_name = "TOKEN")]
        auth_token: Option<String>,
        /// Allow a non-loopback --http address without a token.
        #[arg(long)]
        insecure: bool,
        /// Any query failure stops the daemon (exit 1). Without it, a query failing on an
        /// external error (broker, database, disk) is restarted with backoff (1 s doubling to
        /// 5 min) and a query failing on a user error stops alone, while the others go on.
        #[arg(long)]
        fail_fast: bool,
        /// On SIGTERM/SIGINT, how long the batches in flight may take to finish before the
        /// daemon exits without them (they run again on restart).
        #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
        stop_timeout: f64,
    },
    /// Parses a pipeline file, registers its sources and plans every query without running
    /// anything; prints the plans. Exit status 2 with a message naming the problem.
    Validate {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Reads a query's checkpoint without changing it.
    Checkpoint {
        #[command(subcommand)]
        action: CheckpointCmd,
    },
}

#[derive(Subcommand)]
enum CheckpointCmd {
    /// Query id, last batch and whether it is committed, offsets per source, watermark, state
    /// size per operator.
    Inspect {
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// The rows of a stateful operator's RocksDB state (keys and values in hex).
    State {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The operator (0 for the one stateful operator a query has).
        #[arg(long, default_value_t = 0)]
        operator: usize,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

enum Event {
    Signal(&'static str),
    Terminated(String, Option<QueryError>),
    Restart(String),
}

struct Forward(mpsc::Sender<Event>);

impl StreamingQueryListener for Forward {
    fn on_query_terminated(&self, id: &str, _run_id: &str, error: Option<&QueryError>) {
        let _ = self
            .0
            .send(Event::Terminated(id.to_string(), error.cloned()));
    }
}

/// What the daemon logs unless `SLUICE_LOG` says otherwise: Sluice's own INFO lines (what a
/// user needs: queries starting and stopping, batches, retries), and only warnings and errors
/// of the libraries it runs (delta-rs logs every commit at INFO, and an ERROR when it opens a
/// table that has no commit yet, which Sluice handles).
const DEFAULT_LOG_FILTER: &str = "warn,sluice=info,sluice_engine=info,sluice_connectors=info,\
    sluice_state=info,deltalake_core=off,delta_kernel=off,buoyant_kernel=off";

fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// The formats `sluice run --help` lists: every format Sluice has, whether this build has it.
fn formats_help() -> String {
    let mut out = String::from("Source and sink formats (format = \"...\"):\n");
    for f in sluice::connectors::FORMATS {
        let built = f
            .feature
            .is_none_or(|feat| sluice::features().contains(&feat));
        out.push_str(&format!(
            "  {:<14}{:<14}{}{}\n",
            f.name,
            f.kinds,
            f.description,
            if built {
                String::new()
            } else {
                format!(
                    " (not in this build: Cargo feature `{}`)",
                    f.feature.unwrap_or("")
                )
            }
        ));
    }
    out.push_str(
        "  foreach_batch is a function, so it exists only in a program \
         (write_stream().foreach_batch(..)), not in a pipeline file.\n",
    );
    out
}

fn parse_cli() -> Result<Cli, clap::Error> {
    let cmd = Cli::command().mut_subcommand("run", |c| c.after_long_help(formats_help()));
    Cli::from_arg_matches(&cmd.try_get_matches()?)
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logs(cli.log_format);
    match cli.command {
        Command::Run {
            pipeline,
            queries,
            available_now,
            http,
            auth_token,
            insecure,
            fail_fast,
            stop_timeout,
        } => {
            // at most a day: a bound that is not one is no bound (and would overflow a clock)
            let Some(stop_timeout) = std::time::Duration::try_from_secs_f64(stop_timeout)
                .ok()
                .filter(|d| d.as_secs() <= 86_400)
            else {
                eprintln!(
                    "error: --stop-timeout {stop_timeout}: give a number of seconds from 0 to 86400"
                );
                return ExitCode::from(2);
            };
            if let Some(addr) = &http {
                if let Err(e) = sluice::http::check_bind(addr, auth_token.as_deref(), insecure) {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
            run(
                pipeline,
                &queries,
                available_now,
                http.map(|a| (a, auth_token)),
                fail_fast,
                stop_timeout,
            )
        }
        Command::Validate { pipeline } => report(sluice::cli::validate(&pipeline)),
        Command::Checkpoint { action } => match action {
            CheckpointCmd::Inspect { dir } => report(sluice::cli::inspect(&dir)),
            CheckpointCmd::State {
                dir,
                operator,
                limit,
            } => report(sluice::cli::state_rows(&dir, operator, limit)),
        },
    }
}

struct Running {
    name: String,
    query: sluice::StreamingQuery,
    failures: u32,
}

fn run(
    path: PathBuf,
    only: &[String],
    available_now: bool,
    http: Option<(std::net::SocketAddr, Option<String>)>,
    fail_fast: bool,
    stop_timeout: std::time::Duration,
) -> ExitCode {
    let (pipeline, base) = match Pipeline::load(&path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let session = match pipeline.session("sluice") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (tx, rx) = mpsc::channel();
    session.add_listener(Arc::new(Forward(tx.clone())));
    let metrics = Arc::new(sluice::http::Metrics::default());
    session.add_listener(metrics.clone());
    if available_now {
        session.add_listener(Arc::new(sluice::backfill::Backfill::default()));
    }
    let trigger = available_now.then_some(sluice::Trigger::AvailableNow);
    let prepared = match pipeline.prepare_with(&session, &base, only, trigger) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            // a checkpoint that cannot be used fails the query (1), as it would at run time;
            // 2 is for the pipeline file and the command line
            return ExitCode::from(if e.is_checkpoint() { 1 } else { 2 });
        }
    };
    spawn_signal_thread(tx.clone());
    let mut queries: Vec<Running> = Vec::new();
    for (name, p) in prepared {
        match p.launch() {
            Ok(q) => queries.push(Running {
                name,
                query: q,
                failures: 0,
            }),
            Err(e) => {
                eprintln!("error: query '{name}': {e}");
                for r in &queries {
                    r.query.stop();
                }
                return ExitCode::from(1);
            }
        }
    }
    let server = match http {
        Some((addr, token)) => {
            let server = sluice::http::Server::new(metrics, token);
            for r in &queries {
                server.add(r.query.clone());
            }
            match sluice::http::spawn(addr, Arc::clone(&server)) {
                Ok(bound) => eprintln!("sluice: status API and metrics on http://{bound}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    for r in &queries {
                        r.query.stop();
                    }
                    return ExitCode::from(2);
                }
            }
            Some(server)
        }
        None => None,
    };
    let mark = |id: &str, state: Option<QueryState>| {
        if let Some(s) = &server {
            s.set_daemon_state(id, state);
        }
    };
    // what is left after a query ends, for the log line that says so
    let left = |running: usize| match running {
        0 => "no query left running".to_string(),
        1 => "1 other query goes on".to_string(),
        n => format!("{n} other queries go on"),
    };
    let schedule_restart = |name: String, wait: std::time::Duration| {
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(wait);
            let _ = tx2.send(Event::Restart(name));
        });
    };
    let mut running = queries.len();
    let mut failed_for_good = false;
    while running > 0 {
        match rx.recv() {
            Ok(Event::Signal(sig)) => {
                tracing::info!(
                    "{sig}: finishing the batches in flight (for at most {}s), then stopping",
                    stop_timeout.as_secs_f64()
                );
                let abandoned = stop_all(&queries, stop_timeout);
                let failed =
                    failed_for_good || queries.iter().any(|r| r.query.exception().is_some());
                let code = i32::from(failed);
                if abandoned.is_empty() {
                    tracing::info!("every query stopped; exiting");
                    return ExitCode::from(code as u8);
                }
                tracing::warn!(
                    "{} did not finish the batch in flight within {}s (a sink or source that \
                     does not answer); exiting without it: that batch runs again on restart \
                     and its exactly-once sink keeps it once",
                    abandoned
                        .iter()
                        .map(|n| format!("query '{n}'"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    stop_timeout.as_secs_f64()
                );
                // the abandoned query threads are still inside their sink: end the process
                // under them, as a crash would (recovery re-runs the batch)
                std::process::exit(code)
            }
            Ok(Event::Terminated(id, error)) => {
                let Some(idx) = queries.iter().position(|r| r.query.id() == id) else {
                    continue;
                };
                running -= 1;
                let name = queries[idx].name.clone();
                let Some(e) = error else {
                    queries[idx].failures = 0;
                    tracing::info!("query '{name}' stopped; {}", left(running));
                    continue;
                };
                if e.schema_changed {
                    // Auto Loader wrote the next schema version: go on with it at once, as a
                    // Databricks job's retry does (once per change: the new schema has them)
                    tracing::warn!("query '{name}' stopped on a schema change: {e}; restarting it with the new schema");
                    mark(&id, Some(QueryState::Retrying));
                    running += 1;
                    schedule_restart(name, std::time::Duration::ZERO);
                    continue;
                }
                if fail_fast {
                    tracing::error!("query '{name}' failed: {e} (--fail-fast: stopping all)");
                    mark(&id, Some(QueryState::Failed));
                    for r in &queries {
                        r.query.stop();
                    }
                    return ExitCode::from(1);
                }
                if e.kind != sluice::ErrorKind::External {
                    tracing::error!(
                        "query '{name}' failed for good ({:?} error): {e}; {}",
                        e.kind,
                        left(running)
                    );
                    mark(&id, Some(QueryState::Failed));
                    failed_for_good = true;
                    continue;
                }
                queries[idx].failures += 1;
                let attempt = queries[idx].failures;
                let wait = RetryPolicy::QUERY_RESTART.backoff(attempt);
                tracing::warn!(
                    "query '{name}' failed on an external error: {e}; restarting in {wait:?} (attempt {attempt})"
                );
                mark(&id, Some(QueryState::Retrying));
                running += 1; // it will run again
                schedule_restart(name, wait);
            }
            Ok(Event::Restart(name)) => {
                let Some(idx) = queries.iter().position(|r| r.name == name) else {
                    continue;
                };
                let id = queries[idx].query.id().to_string();
                if server.as_ref().is_some_and(|s| s.take_stop_request(&id)) {
                    running -= 1;
                    tracing::info!(
                        "query '{name}' stopped through the HTTP API while waiting to restart; {}",
                        left(running)
                    );
                    continue;
                }
                let relaunched = pipeline
                    .prepare_with(&session, &base, std::slice::from_ref(&name), trigger)
                    .and_then(|mut p| match p.pop() {
                        Some((_, q)) => q.launch(),
                        None => Err(sluice::EngineError::bug("no query prepared")),
                    });
                match relaunched {
                    Ok(q) => {
                        tracing::info!("query '{name}' restarted");
                        if let Some(s) = &server {
                            s.add(q.clone());
                        }
                        queries[idx].query = q;
                    }
                    Err(e) if e.kind() == sluice::ErrorKind::External => {
                        queries[idx].failures += 1;
                        let attempt = queries[idx].failures;
                        let wait = RetryPolicy::QUERY_RESTART.backoff(attempt);
                        tracing::warn!(
                            "query '{name}' cannot restart yet: {e}; next attempt in {wait:?} (attempt {attempt})"
                        );
                        schedule_restart(name, wait);
                    }
                    Err(e) => {
                        running -= 1;
                        tracing::error!("query '{name}' cannot restart: {e}; {}", left(running));
                        mark(queries[idx].query.id(), Some(QueryState::Failed));
                        failed_for_good = true;
                    }
                }
            }
            Err(_) => break,
        }
    }
    if failed_for_good {
        tracing::error!("exiting: a query failed for good");
        ExitCode::from(1)
    } else {
        tracing::info!("every query is done; exiting");
        ExitCode::SUCCESS
    }
}

/// Asks every query to stop, then waits for them until `timeout` has passed in all; the names
/// of those still running then (blocked in a sink or source that does not answer).
fn stop_all(queries: &[Running], timeout: std::time::Duration) -> Vec<String> {
    for r in queries {
        r.query.request_stop();
    }
    let deadline = std::time::Instant::now() + timeout;
    queries
        .iter()
        .filter(|r| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            matches!(r.query.await_termination_timeout(left), Ok(false))
        })
        .map(|r| r.name.clone())
        .collect()
}

fn spawn_signal_thread(tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("cannot listen for signals: {e}");
                return;
            }
        };
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            let sig = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let _ = tx.send(Event::Signal(sig));
        });
    });
}

fn report(r: sluice::Result<String>) -> ExitCode {
    match r {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            // one code per class: a checkpoint that cannot be read is 1, as for `sluice run`
            ExitCode::from(if e.is_checkpoint() { 1 } else { 2 })
        }
    }
}
