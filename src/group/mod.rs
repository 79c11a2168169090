//! `sluice run --group NAME` (or `--tasks LIST`): one query run as tasks shared by several
//! processes, on any machines.
//!
//! - [`tasks`]: what a group needs of the pipeline (Kafka inputs read with `subscribe`, a
//!   checkpoint every process reaches), and each task's pipeline (partition t of each topic).
//! - [`membership`]: the Kafka consumer group that decides which tasks this process runs.
//!
//! The run loop: on assignment, a task takes its next lease epoch in the checkpoint
//! (`sluice_state::remote::tasks`), restores its checkpoint through a local copy and starts as
//! a query whose sink claims the epoch; on revocation it is stopped (the batch in flight
//! finishes within `--stop-timeout`, or is abandoned and re-run by the next owner). A task
//! that fails on an external error is started again with backoff while it is this process's;
//! one that was taken over (fenced) is dropped; a user error stops the process (exit 1).
//! `--tasks 0,2,4` runs the given tasks without a group (a fixed split, or a failover driven
//! from outside); the epochs and the fencing are the same.

pub mod membership;
pub mod tasks;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use sluice_state::remote::{GroupCheckpoint, TaskLayout};

use crate::pipeline::Pipeline;
use crate::{EngineError, QueryError, Result, StreamingQueryListener};
use membership::Membership;

/// How this process learns its tasks.
#[derive(Debug, Clone)]
pub enum Members {
    /// A member of this consumer group (`None`: the pipeline's `group` key, else
    /// `sluice-<query id>`).
    Group(Option<String>),
    /// These tasks, without a group.
    Fixed(Vec<u32>),
}

pub(crate) enum Event {
    Group(Membership),
    /// A run of a task's query ended (by run id: every run of a task has the task's query id).
    Terminated(String, Option<QueryError>),
    Restart(u32),
    Signal(&'static str),
}

struct Forward(mpsc::Sender<Event>);

impl StreamingQueryListener for Forward {
    fn on_query_terminated(&self, _id: &str, run_id: &str, error: Option<&QueryError>) {
        let _ = self
            .0
            .send(Event::Terminated(run_id.to_string(), error.cloned()));
    }
}

struct Running {
    query: crate::StreamingQuery,
    epoch: u64,
}

/// What the loop keeps.
struct Group<'a> {
    pipeline: &'a Pipeline,
    base: PathBuf,
    plan: tasks::GroupPlan,
    checkpoint: GroupCheckpoint,
    member: String,
    tx: mpsc::Sender<Event>,
    metrics: Arc<crate::http::Metrics>,
    server: Option<Arc<crate::http::Server>>,
    owned: BTreeSet<u32>,
    running: BTreeMap<u32, Running>,
    failures: BTreeMap<u32, u32>,
}

impl Group<'_> {
    /// Takes task t's next epoch and starts its query.
    fn start(&mut self, t: u32) -> Result<()> {
        if self.running.contains_key(&t) {
            return Ok(());
        }
        let fence = self.checkpoint.take_epoch(t, &self.member)?;
        let epoch = fence.epoch;
        tracing::info!("task {t}: taken at epoch {epoch}; starting");
        let p = tasks::task_pipeline(self.pipeline, t);
        let session = p.session("sluice")?;
        session.add_listener(Arc::new(Forward(self.tx.clone())));
        session.add_listener(self.metrics.clone());
        let w = p
            .writer_of(&session, &self.base, &self.plan.query)?
            .query_name(&format!("{}/task-{t}", self.plan.query))
            .task(fence);
        let q = w
            .prepare()
            .and_then(|p| p.launch())
            .map_err(|e| e.context(&format!("task {t} (epoch {epoch})")))?;
        if let Some(s) = &self.server {
            s.add_task(t, epoch, q.clone());
        }
        self.running.insert(t, Running { query: q, epoch });
        Ok(())
    }

    /// Stops task t (the batch in flight finishes within `timeout`, else is abandoned).
    fn stop(&mut self, t: u32, timeout: Duration) {
        if let Some(s) = &self.server {
            s.remove_task(t);
        }
        if let Some(r) = self.running.remove(&t) {
            r.query.request_stop();
            match r.query.await_termination_timeout(timeout) {
                Ok(true) | Err(_) => tracing::info!("task {t}: stopped (epoch {})", r.epoch),
                Ok(false) => tracing::warn!(
                    "task {t}: its batch in flight did not finish within {}s; abandoned (its \
                     next owner runs it again; this process's epoch {} is refused from then on)",
                    timeout.as_secs_f64(),
                    r.epoch
                ),
            }
        }
    }

    /// Starts task t again in 2 s if it is still this process's then.
    fn retry_soon(&self, t: u32) {
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            let _ = tx.send(Event::Restart(t));
        });
    }

    fn schedule_restart(&mut self, t: u32) {
        let n = self.failures.entry(t).or_insert(0);
        *n += 1;
        let wait = Duration::from_secs(1u64 << (*n).min(6));
        tracing::warn!("task {t}: starting again in {}s", wait.as_secs());
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(wait);
            let _ = tx.send(Event::Restart(t));
        });
    }
}

/// The layout of a new group checkpoint, or the recorded one (which must fit the input).
fn layout(plan: &tasks::GroupPlan, chk: &GroupCheckpoint) -> Result<TaskLayout> {
    let probe = membership::config(&plan.kafka, "sluice-metadata");
    let counts = membership::partition_counts(&probe, &plan.topics)?;
    let n = counts[0];
    if counts.iter().any(|c| *c != n) {
        return Err(EngineError::user(format!(
            "the topics {:?} have {:?} partitions: a query runs as tasks only over \
             co-partitioned topics (the same partition count, partition p of each going to \
             task p)",
            plan.topics, counts
        )));
    }
    Ok(chk.layout_or_create(&TaskLayout {
        id: uuid::Uuid::new_v4().to_string(),
        tasks: n,
        topics: plan.topics.clone(),
    })?)
}

/// Runs the query of `path` (`only`: its name) as tasks; see the module's notes.
pub fn run(
    path: PathBuf,
    only: &[String],
    members: Members,
    http: Option<(std::net::SocketAddr, Option<String>)>,
    stop_timeout: Duration,
) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    let (pipeline, base) = match Pipeline::load(&path) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let plan = match tasks::group_plan(&pipeline, only) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let location = crate::pipeline::resolve_location(&base, &plan.checkpoint);
    let checkpoint = match GroupCheckpoint::open(&location, &pipeline.storage_options()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    // the query must plan (and group by its input key) before this process joins
    if let Err(e) = pipeline.check_task_query(&base, &plan.query) {
        return fail(&e);
    }
    let layout = match layout(&plan, &checkpoint) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let (tx, rx) = mpsc::channel();
    let metrics = Arc::new(crate::http::Metrics::default());
    let server = match http {
        Some((addr, token)) => {
            let server = crate::http::Server::new(Arc::clone(&metrics), token);
            match crate::http::spawn(addr, Arc::clone(&server)) {
                Ok(bound) => eprintln!("sluice: status API and metrics on http://{bound}"),
                Err(e) => return fail(&e),
            }
            Some(server)
        }
        None => None,
    };
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let mut g = Group {
        pipeline: &pipeline,
        base,
        member: format!("{host}/{}", std::process::id()),
        plan,
        checkpoint,
        tx: tx.clone(),
        metrics,
        server,
        owned: BTreeSet::new(),
        running: BTreeMap::new(),
        failures: BTreeMap::new(),
    };
    crate::daemon::spawn_signals(move |sig| {
        let _ = tx.send(Event::Signal(sig));
    });
    let mut member = None;
    let fixed = matches!(members, Members::Fixed(_));
    match members {
        Members::Fixed(list) => {
            if let Some(bad) = list.iter().find(|t| **t >= layout.tasks) {
                return fail(&format!(
                    "--tasks: task {bad} does not exist (the query has {} tasks, 0 to {})",
                    layout.tasks,
                    layout.tasks - 1
                ));
            }
            let _ = g.tx.send(Event::Group(Membership::Assigned(list)));
        }
        Members::Group(name) => {
            let name = name
                .or_else(|| pipeline.query[&g.plan.query].group.clone())
                .unwrap_or_else(|| format!("sluice-{}", layout.id));
            eprintln!(
                "sluice: query '{}' joins group {name} ({} tasks over {:?})",
                g.plan.query, layout.tasks, layout.topics
            );
            let cfg = membership::config(&g.plan.kafka, &name);
            match membership::Member::join(&cfg, &layout.topics[0], g.tx.clone()) {
                Ok(m) => member = Some(m),
                Err(e) => return fail(&e),
            }
        }
    }
    loop {
        let Ok(ev) = rx.recv() else {
            return ExitCode::from(1);
        };
        match ev {
            Event::Group(Membership::Assigned(ts)) => {
                tracing::info!("tasks assigned: {ts:?}");
                for t in ts {
                    g.owned.insert(t);
                    if let Err(e) = g.start(t) {
                        tracing::error!("task {t}: {e}");
                        if e.kind() == crate::ErrorKind::User {
                            return shutdown(&mut g, member.take(), stop_timeout, 1);
                        }
                        g.schedule_restart(t);
                    }
                }
            }
            Event::Group(Membership::Revoked(ts)) => {
                tracing::info!("tasks revoked: {ts:?}");
                for t in ts {
                    g.owned.remove(&t);
                    g.stop(t, stop_timeout);
                }
            }
            Event::Restart(t) => {
                if g.owned.contains(&t) && !g.running.contains_key(&t) {
                    if let Err(e) = g.start(t) {
                        tracing::error!("task {t}: {e}");
                        if e.kind() == crate::ErrorKind::User {
                            return shutdown(&mut g, member.take(), stop_timeout, 1);
                        }
                        g.schedule_restart(t);
                    }
                }
            }
            Event::Terminated(run_id, error) => {
                let Some(t) = g
                    .running
                    .iter()
                    .find(|(_, r)| r.query.run_id() == run_id)
                    .map(|(t, _)| *t)
                else {
                    continue;
                };
                let r = g.running.remove(&t);
                if let Some(s) = &g.server {
                    s.remove_task(t);
                }
                match error {
                    None => {
                        // stopped from outside (the status API): the group still gives it here
                        tracing::info!("task {t}: stopped");
                        if g.owned.contains(&t) {
                            g.retry_soon(t);
                        }
                    }
                    Some(e) if e.fenced && !fixed => {
                        // another process took a newer epoch: the group gave it the task (a
                        // revocation for this one follows) — or the coordinator assigned the
                        // task to both. The group decides: while it says the task is this
                        // process's, take it again shortly (a newer epoch); the epochs keep
                        // every batch written once whoever runs it.
                        tracing::warn!("task {t}: {}", e.message);
                        if g.owned.contains(&t) {
                            g.retry_soon(t);
                        }
                    }
                    Some(e) if e.fenced => {
                        tracing::warn!("task {t}: {}", e.message);
                        g.owned.remove(&t);
                        if g.owned.is_empty() {
                            eprintln!(
                                "error: every task of this process was taken over by another \
                                 process; exiting"
                            );
                            return shutdown(&mut g, member.take(), stop_timeout, 1);
                        }
                    }
                    Some(e) if e.kind == crate::ErrorKind::External => {
                        tracing::error!("task {t} failed: {}", e.message);
                        if g.owned.contains(&t) {
                            g.schedule_restart(t);
                        }
                    }
                    Some(e) => {
                        tracing::error!("task {t} failed: {}", e.message);
                        drop(r);
                        return shutdown(&mut g, member.take(), stop_timeout, 1);
                    }
                }
            }
            Event::Signal(sig) => {
                tracing::info!("{sig}: stopping the tasks, leaving the group");
                return shutdown(&mut g, member.take(), stop_timeout, 0);
            }
        }
    }
}

fn shutdown(
    g: &mut Group<'_>,
    member: Option<membership::Member>,
    timeout: Duration,
    code: u8,
) -> ExitCode {
    // leave first: the others start taking the tasks while these stop
    drop(member);
    let ts: Vec<u32> = g.running.keys().copied().collect();
    for t in ts {
        g.stop(t, timeout);
    }
    ExitCode::from(code)
}
