//! The `sluice` daemon: `sluice run <pipeline.toml>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

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
        /// Run the query (one: --query NAME if the file has several) as tasks, one per Kafka
        /// input partition, shared by every process started with the same group: a member of
        /// this Kafka consumer group (the query's `group` key, else `sluice-<query id>`, when
        /// given without a name). The checkpoint must be a location every process reaches.
        #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "")]
        group: Option<String>,
        /// Run these tasks of the query (comma-separated task numbers) without a group: a
        /// fixed split, or a failover driven from outside. Epochs and fencing as with --group.
        #[arg(
            long,
            value_name = "LIST",
            value_delimiter = ',',
            conflicts_with = "group"
        )]
        tasks: Option<Vec<u32>>,
    },
    /// Parses a pipeline file, registers its sources and plans every query without running
    /// anything; prints the plans. Exit status 2 with a message naming the problem.
    Validate {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Prints the pipeline as a graph of tables: its inputs, then its queries stage by stage
    /// (a query reads another query's Delta table by its name). Runs nothing.
    Graph {
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
            group,
            tasks,
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
            let members = match (group, tasks) {
                (Some(g), _) => Some(sluice::group::Members::Group(
                    Some(g).filter(|g| !g.is_empty()),
                )),
                (None, Some(t)) => Some(sluice::group::Members::Fixed(t)),
                (None, None) => None,
            };
            if let Some(members) = members {
                if available_now || fail_fast {
                    eprintln!("error: --group and --tasks run continuously: drop --available-now and --fail-fast");
                    return ExitCode::from(2);
                }
                return sluice::group::run(
                    pipeline,
                    &queries,
                    members,
                    http.map(|a| (a, auth_token)),
                    stop_timeout,
                );
            }
            sluice::daemon::run(
                pipeline,
                &queries,
                available_now,
                http.map(|a| (a, auth_token)),
                fail_fast,
                stop_timeout,
            )
        }
        Command::Validate { pipeline } => report(sluice::cli::validate(&pipeline)),
        Command::Graph { pipeline } => report(sluice::cli::graph(&pipeline)),
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
