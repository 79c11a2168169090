//! The daemon's run loop (`sluice run`): launches a pipeline's queries in the graph's order,
//! restarts those that fail on an external error (with backoff) or stop on a schema change (at
//! once), and stops them all on SIGINT/SIGTERM.
//!
//! When a query starts: its upstream queries' output tables must exist (continuous run), or
//! its upstream queries must have finished (`--available-now`: stage after stage, so every
//! stage reads all its upstream stages wrote in the same run).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;

use crate::http::QueryState;
use crate::pipeline::Pipeline;
use crate::{QueryError, RetryPolicy, StreamingQueryListener};

enum Event {
    Signal(&'static str),
    Terminated(String, Option<QueryError>),
    Restart(String),
    /// A query committed a batch (a table a waiting query reads may exist now).
    Progress,
}

struct Forward(mpsc::Sender<Event>);

impl StreamingQueryListener for Forward {
    fn on_query_terminated(&self, id: &str, _run_id: &str, error: Option<&QueryError>) {
        let _ = self
            .0
            .send(Event::Terminated(id.to_string(), error.cloned()));
    }
    fn on_query_progress(&self, _progress: &sluice_engine::progress::QueryProgress) {
        let _ = self.0.send(Event::Progress);
    }
}

struct Running {
    name: String,
    query: crate::StreamingQuery,
    failures: u32,
}

pub fn run(
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
    let metrics = Arc::new(crate::http::Metrics::default());
    session.add_listener(metrics.clone());
    if available_now {
        session.add_listener(Arc::new(crate::backfill::Backfill::default()));
    }
    let trigger = available_now.then_some(crate::Trigger::AvailableNow);
    let prepared = match pipeline.prepare_with(&session, &base, only, trigger) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            // a checkpoint that cannot be used fails the query (1), as it would at run time;
            // 2 is for the pipeline file and the command line
            return ExitCode::from(if e.is_checkpoint() { 1 } else { 2 });
        }
    };
    let graph = match pipeline.graph(&session) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match http {
        Some((addr, token)) => {
            let server = crate::http::Server::new(metrics, token);
            server.set_graph(pipeline.graph_json(&graph));
            match crate::http::spawn(addr, Arc::clone(&server)) {
                Ok(bound) => eprintln!("sluice: status API and metrics on http://{bound}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
            Some(server)
        }
        None => None,
    };
    spawn_signal_thread(tx.clone());
    let in_run: BTreeSet<String> = prepared.iter().map(|(n, _)| n.clone()).collect();
    // every query was prepared (so every error shows before anything runs); one that waits for
    // its inputs is prepared again when it starts, so that it reads its upstream tables with
    // the schema they have then (an upstream Auto Loader may have added columns)
    let mut ready_now: Vec<(String, crate::PreparedQuery)> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for (name, p) in prepared {
        if graph.upstream(&name).iter().all(|u| !in_run.contains(*u)) {
            ready_now.push((name, p));
        } else {
            pending.push(name);
        }
    }
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut queries: Vec<Running> = Vec::new();
    let mut running = 0usize;
    let launch = |name: String,
                  p: Option<crate::PreparedQuery>,
                  queries: &mut Vec<Running>,
                  running: &mut usize|
     -> Result<(), String> {
        let p = match p {
            Some(p) => p,
            None => pipeline
                .prepare_with(&session, &base, std::slice::from_ref(&name), trigger)
                .and_then(|mut v| {
                    v.pop()
                        .map(|(_, p)| p)
                        .ok_or_else(|| crate::EngineError::bug("no query prepared"))
                })
                .map_err(|e| format!("query '{name}': {e}"))?,
        };
        let q = p.launch().map_err(|e| format!("query '{name}': {e}"))?;
        if let Some(s) = &server {
            s.add(q.clone());
        }
        queries.push(Running {
            name,
            query: q,
            failures: 0,
        });
        *running += 1;
        Ok(())
    };
    // starts the waiting queries whose inputs are there: the tables of the queries they read
    // exist (or, with --available-now, those queries have finished); a query not in this run
    // counts as there
    let launch_ready = |pending: &mut Vec<String>,
                        queries: &mut Vec<Running>,
                        done: &BTreeSet<String>,
                        running: &mut usize|
     -> Result<(), String> {
        let mut i = 0;
        while i < pending.len() {
            let ready = graph.upstream(&pending[i]).iter().all(|u| {
                !in_run.contains(*u)
                    || if available_now {
                        done.contains(*u)
                    } else {
                        pipeline.output_exists(u, &base)
                    }
            });
            if !ready {
                i += 1;
                continue;
            }
            let name = pending.remove(i);
            launch(name, None, queries, running)?;
        }
        Ok(())
    };
    for (name, p) in ready_now {
        if let Err(e) = launch(name, Some(p), &mut queries, &mut running) {
            eprintln!("error: {e}");
            for r in &queries {
                r.query.stop();
            }
            return ExitCode::from(1);
        }
    }
    if let Err(e) = launch_ready(&mut pending, &mut queries, &done, &mut running) {
        eprintln!("error: {e}");
        for r in &queries {
            r.query.stop();
        }
        return ExitCode::from(1);
    }
    for name in &pending {
        tracing::info!(
            "query '{name}' waits for {}",
            if available_now {
                format!("{} to finish", graph.upstream(name).join(", "))
            } else {
                format!("the tables of {} to exist", graph.upstream(name).join(", "))
            }
        );
    }
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
    let mut failed_for_good = false;
    // a query whose schema changed restarts once the running queries that read its table
    // (directly or not) have stopped: they start again with its new columns, and none reads
    // rows of the new shape with the old schema
    let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut restart_when_stopped: BTreeSet<String> = BTreeSet::new();
    while running > 0 || !pending.is_empty() {
        if running == 0 {
            // nothing runs that could make the waiting queries' inputs appear
            tracing::error!(
                "{} cannot start: the queries they read stopped or failed without writing \
                 their tables",
                pending
                    .iter()
                    .map(|n| format!("query '{n}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            failed_for_good = true;
            break;
        }
        match rx.recv() {
            Ok(Event::Progress) => {
                if !pending.is_empty() && !available_now {
                    if let Err(e) = launch_ready(&mut pending, &mut queries, &done, &mut running) {
                        tracing::error!("{e}");
                        failed_for_good = true;
                    }
                }
            }
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
                // the queries held until this one stopped may go on
                let mut released = Vec::new();
                for (x, readers) in held.iter_mut() {
                    if readers.remove(&name) && readers.is_empty() {
                        released.push(x.clone());
                    }
                }
                for x in released {
                    held.remove(&x);
                    tracing::info!("query '{x}' restarts with its new schema");
                    schedule_restart(x, std::time::Duration::ZERO);
                }
                if restart_when_stopped.remove(&name) {
                    if let Some(e) = &error {
                        tracing::warn!("query '{name}' ended with an error while stopping: {e}");
                    }
                    tracing::info!("query '{name}' restarts to read the new columns of its input");
                    running += 1;
                    schedule_restart(name, std::time::Duration::ZERO);
                    continue;
                }
                let Some(e) = error else {
                    queries[idx].failures = 0;
                    tracing::info!("query '{name}' stopped; {}", left(running));
                    done.insert(name);
                    if !pending.is_empty() {
                        if let Err(e) =
                            launch_ready(&mut pending, &mut queries, &done, &mut running)
                        {
                            tracing::error!("{e}");
                            failed_for_good = true;
                        }
                    }
                    continue;
                };
                if e.schema_changed {
                    // Auto Loader wrote the next schema version: go on with it at once, as a
                    // Databricks job's retry does (once per change: the new schema has them)
                    tracing::warn!("query '{name}' stopped on a schema change: {e}; restarting it with the new schema");
                    mark(&id, Some(QueryState::Retrying));
                    running += 1;
                    let readers: BTreeSet<String> = graph
                        .downstream(&name)
                        .into_iter()
                        .filter(|d| queries.iter().any(|r| r.name == *d && r.query.is_active()))
                        .map(str::to_string)
                        .collect();
                    if readers.is_empty() {
                        schedule_restart(name, std::time::Duration::ZERO);
                    } else {
                        for r in queries.iter().filter(|r| readers.contains(&r.name)) {
                            r.query.request_stop();
                        }
                        tracing::info!(
                            "query '{name}' restarts once {} (reading its table) have stopped; \
                             they start again with its new columns",
                            readers.iter().cloned().collect::<Vec<_>>().join(", ")
                        );
                        restart_when_stopped.extend(readers.iter().cloned());
                        held.insert(name, readers);
                    }
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
                if e.kind != crate::ErrorKind::External {
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
                        None => Err(crate::EngineError::bug("no query prepared")),
                    });
                match relaunched {
                    Ok(q) => {
                        tracing::info!("query '{name}' restarted");
                        if let Some(s) = &server {
                            s.add(q.clone());
                        }
                        queries[idx].query = q;
                    }
                    Err(e) if e.kind() == crate::ErrorKind::External => {
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
    spawn_signals(move |sig| {
        let _ = tx.send(Event::Signal(sig));
    });
}

/// Calls `on_signal` with the name of the first SIGTERM or SIGINT, on a thread of its own.
pub(crate) fn spawn_signals(on_signal: impl FnOnce(&'static str) + Send + 'static) {
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
            on_signal(sig);
        });
    });
}
