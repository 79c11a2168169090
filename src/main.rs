//! The `sluice` daemon: `sluice run <pipeline.toml>`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use sluice::pipeline::Pipeline;
use sluice::{QueryError, Session, StreamingQueryListener};

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
    ///   format = "json"            # json | csv | parquet | text
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
    ///   sink = { format = "csv", path = "out/clicks", options = { header = true } }
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
    /// A Kafka cluster inside this process (librdkafka's mock cluster), for tests and trying
    /// things out: prints its bootstrap servers, then serves `create_topic NAME PARTITIONS`
    /// lines on stdin (answering `ok` or `err ...`) until stdin closes. Supports transactions;
    /// keeps at most 5 MiB per partition.
    #[command(hide = true)]
    MockKafka {
        /// Number of brokers.
        #[arg(default_value_t = 1)]
        brokers: i32,
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
}

struct Forward(mpsc::Sender<Event>);

impl StreamingQueryListener for Forward {
    fn on_query_terminated(&self, id: &str, _run_id: &str, error: Option<&QueryError>) {
        let _ = self
            .0
            .send(Event::Terminated(id.to_string(), error.cloned()));
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
        } => run(pipeline, &queries, available_now),
        Command::MockKafka { brokers } => mock_kafka(brokers),
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

fn run(path: PathBuf, only: &[String], available_now: bool) -> ExitCode {
    let (pipeline, base) = match Pipeline::load(&path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let session = match Session::builder().app_name("sluice").build() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (tx, rx) = mpsc::channel();
    session.add_listener(Arc::new(Forward(tx.clone())));
    let trigger = available_now.then_some(sluice::Trigger::AvailableNow);
    let prepared = match pipeline.prepare_with(&session, &base, only, trigger) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    spawn_signal_thread(tx);
    let mut queries = Vec::new();
    for (name, p) in prepared {
        match p.launch() {
            Ok(q) => queries.push(q),
            Err(e) => {
                eprintln!("error: query '{name}': {e}");
                for q in &queries {
                    q.stop();
                }
                return ExitCode::from(1);
            }
        }
    }
    let mut running = queries.len();
    while running > 0 {
        match rx.recv() {
            Ok(Event::Signal(sig)) => {
                tracing::info!("{sig}: finishing the batches in flight, then stopping");
                for q in &queries {
                    q.stop();
                }
                let failed = queries.iter().any(|q| q.exception().is_some());
                return if failed {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                };
            }
            Ok(Event::Terminated(id, error)) => {
                running -= 1;
                if let Some(e) = error {
                    let name = queries
                        .iter()
                        .find(|q| q.id() == id)
                        .and_then(|q| q.name().map(str::to_string))
                        .unwrap_or(id);
                    eprintln!("error: query '{name}' failed: {e}");
                    for q in &queries {
                        q.stop();
                    }
                    return ExitCode::from(1);
                }
            }
            Err(_) => break,
        }
    }
    ExitCode::SUCCESS
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

fn mock_kafka(brokers: i32) -> ExitCode {
    use std::io::{BufRead, Write};
    let mock = match sluice::connectors::rdkafka::mocking::MockCluster::new(brokers) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot start the mock cluster: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout();
    if writeln!(out, "{}", mock.bootstrap_servers())
        .and_then(|_| out.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let f: Vec<&str> = line.split_whitespace().collect();
        let res = match f.as_slice() {
            ["create_topic", t, n] => match n.parse() {
                Ok(n) => mock.create_topic(t, n, 1).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            _ => Err(format!("unknown command: {line}")),
        };
        let answer = match res {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("err {e}"),
        };
        if writeln!(out, "{answer}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

fn report(r: sluice::Result<String>) -> ExitCode {
    match r {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
