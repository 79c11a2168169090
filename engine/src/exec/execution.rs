//! The micro-batch executor: one thread per query, running DESIGN.md's data flow.
//!
//! Per batch N: ask each source for its latest offset → write `offsets/N` (the write-ahead log,
//! with the batch timestamp) → read the rows → run the plan → hand the rows to the sink (retried
//! on external errors, never skipped) → write `commits/N` → let sources clean up → report
//! progress. On start, [`sluice_state::resolve_start`] decides whether a batch must be re-run
//! with exactly its recorded offsets.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use sluice_state::{
    first_log_entry_to_keep, partition_actions, plan_partitioned_recovery, CheckpointDir,
    CommitEntry, OffsetsEntry, StartDecision, StateRecovery,
};

use super::state::{operator_progress, QueryState, SHUFFLE_PARTITIONS_CONF};
use crate::clock::BatchClock;
use crate::connector::{Offset, ReadLimit, Sink, Source};
use crate::error::{EngineError, ErrorKind, Result};
use crate::fault::crash_point;
use crate::operators::stateful::Watermarks;
use crate::plan::StreamPlan;
use crate::progress::{
    event_time_progress, rates, DurationMs, QueryProgress, SinkProgress, SourceProgress,
};
use crate::query::{QueryError, QueryShared, StreamingQueryListener};
use crate::retry::{retry, RetryPolicy};
use crate::watermark::{advance_watermark, WatermarkPolicy, POLICY_CONF};
use crate::writer::Trigger;

/// Calls a source, retrying External failures (a broker or disk away) with backoff until they
/// pass or the query is stopped: a source outage makes the query wait, visibly, not fail.
fn retry_source<T>(
    shared: &QueryShared,
    policy: &RetryPolicy,
    f: impl FnMut() -> Result<T>,
) -> Result<T> {
    let r = retry(
        &policy.unbounded(),
        &shared.notifier,
        &|| shared.stop_requested(),
        |a| {
            tracing::warn!(
                attempt = a.attempt,
                "source failed after {:.1?}, retrying in {:?}: {}",
                a.took,
                a.wait,
                a.error
            );
            shared.set_retrying(true);
            shared.set_status(
                &format!(
                    "Waiting for a source (attempt {}, next in {:?}) after: {}",
                    a.attempt, a.wait, a.error
                ),
                false,
                true,
            );
        },
        f,
    );
    shared.set_retrying(false);
    r
}

/// When no source can watch for new data, how often to look.
const POLL_FALLBACK: Duration = Duration::from_secs(1);

pub(crate) struct Execution {
    shared: Arc<QueryShared>,
    plan: StreamPlan,
    /// The stateful operators' stores: the execution owns them, the plan borrows them per batch.
    state: QueryState,
    sources: Vec<Box<dyn Source>>,
    sink: Box<dyn Sink>,
    checkpoint: CheckpointDir,
    trigger: Trigger,
    clock: BatchClock,
    listeners: Vec<Arc<dyn StreamingQueryListener>>,
    progress_log: Option<File>,
    retry: RetryPolicy,
    /// End offsets of the last committed batch (`None`: the source has produced nothing yet).
    committed: Vec<Option<Offset>>,
    /// Watermark for the next batch (from the last commit), ms.
    watermark_ms: i64,
    /// Watermark the last batch ran with: the late-row threshold of the next batch, ms.
    last_batch_watermark_ms: i64,
    /// Each watermark operator's own watermark, ms (empty before the first batch).
    operator_watermarks_ms: Vec<i64>,
    /// How the query's watermark is chosen among several watermarked inputs.
    watermark_policy: WatermarkPolicy,
    /// Offsets and commit entries of at least this many batches are kept.
    min_batches_to_retain: u64,
    /// Where late input rows go, if the user asked.
    late_sink: Option<Box<dyn Sink>>,
    next_batch: u64,
    last_trigger: Option<Instant>,
    /// Whether the listeners were told the query is idle since its last batch.
    idle: bool,
}

impl Execution {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<QueryShared>,
        plan: StreamPlan,
        state: QueryState,
        sources: Vec<Box<dyn Source>>,
        sink: Box<dyn Sink>,
        checkpoint: CheckpointDir,
        trigger: Trigger,
        clock: BatchClock,
        listeners: Vec<Arc<dyn StreamingQueryListener>>,
        progress_log: Option<File>,
        retry: RetryPolicy,
        late_sink: Option<Box<dyn Sink>>,
        watermark_policy: WatermarkPolicy,
        min_batches_to_retain: u64,
    ) -> Self {
        let n = sources.len();
        Self {
            shared,
            plan,
            state,
            sources,
            sink,
            checkpoint,
            trigger,
            clock,
            listeners,
            progress_log,
            retry,
            committed: vec![None; n],
            watermark_ms: 0,
            last_batch_watermark_ms: 0,
            operator_watermarks_ms: Vec::new(),
            watermark_policy,
            min_batches_to_retain,
            late_sink,
            next_batch: 0,
            last_trigger: None,
            idle: false,
        }
    }

    /// Runs until stopped, done or failed, and records the outcome in the shared state.
    pub(crate) fn run_to_end(mut self) {
        let shared = Arc::clone(&self.shared);
        for l in &self.listeners {
            l.on_query_started(&shared.id, &shared.run_id, shared.name.as_deref());
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()));
        let error = match outcome {
            Ok(Ok(())) => None,
            // stopped while waiting to retry a source or sink: a stop, not a failure; the batch
            // in flight was not committed and runs again on restart
            Ok(Err(e)) if shared.stop_requested() && e.kind() == ErrorKind::External => {
                tracing::info!(
                    query = ?shared.name,
                    "stopped while waiting to retry ({e}); the batch in flight runs again on restart"
                );
                None
            }
            Ok(Err(e)) => {
                tracing::error!(query = ?shared.name, id = %shared.id, "query failed: {e}");
                Some(QueryError {
                    message: e.to_string(),
                    kind: e.kind(),
                })
            }
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Some(QueryError {
                    message: format!("internal error (a bug in Sluice): panic: {msg}"),
                    kind: ErrorKind::Bug,
                })
            }
        };
        if let Err(e) = self.sink.close() {
            tracing::warn!("closing the sink failed: {e}");
        }
        if let Some(late) = &mut self.late_sink {
            if let Err(e) = late.close() {
                tracing::warn!("closing the late-data sink failed: {e}");
            }
        }
        // Close the state stores, sources and sinks before anyone learns that the query ended:
        // a daemon exits right after, and RocksDB must not be torn down by process exit.
        let listeners = std::mem::take(&mut self.listeners);
        drop(self);
        for l in &listeners {
            l.on_query_terminated(&shared.id, &shared.run_id, error.as_ref());
        }
        shared.terminate(error);
    }

    fn run(&mut self) -> Result<()> {
        self.recover()?;
        match self.trigger {
            Trigger::AvailableNow => {
                for s in &mut self.sources {
                    s.prepare_for_available_now()?;
                }
            }
            Trigger::Once => {}
            Trigger::ProcessingTime(_) => {}
        }
        let mut watched = true;
        if let Trigger::ProcessingTime(_) = self.trigger {
            for s in &mut self.sources {
                watched &= s.watch(self.shared.notifier.clone())?;
            }
        }
        let limit = match self.trigger {
            Trigger::Once => ReadLimit::All,
            _ => ReadLimit::Configured,
        };
        loop {
            if self.shared.stop_requested() {
                return Ok(());
            }
            if let (Trigger::ProcessingTime(iv), Some(last)) = (self.trigger, self.last_trigger) {
                let due = last + iv;
                let now = Instant::now();
                if due > now {
                    self.shared
                        .set_status("Waiting for next trigger", false, false);
                    // a file-arrival signal during the interval is not a reason to run early:
                    // loop until the trigger is due (or the query is stopped)
                    self.shared.notifier.wait(Some(due - now));
                    continue;
                }
            }
            self.shared.notifier.clear();
            let trigger_start = Instant::now();
            let ts_ms = chrono::Utc::now().timestamp_millis();
            self.shared
                .set_status("Getting offsets from sources", false, true);
            let mut ends = Vec::with_capacity(self.sources.len());
            let mut any = false;
            for (i, s) in self.sources.iter_mut().enumerate() {
                let start = self.committed[i].as_ref();
                let latest =
                    retry_source(&self.shared, &self.retry, || s.latest_offset(start, limit))?;
                match latest {
                    Some(end) if Some(&end) != self.committed[i].as_ref() => {
                        any = true;
                        ends.push(end);
                    }
                    _ => ends.push(self.committed[i].clone().unwrap_or(serde_json::Value::Null)),
                }
            }
            let latest_offset_ms = trigger_start.elapsed().as_millis() as u64;
            // Spark's no-data batch: the watermark moved, so windows can close without new data
            let no_data_batch = !any
                && self.plan.evicts_by_watermark()
                && self.watermark_ms > self.last_batch_watermark_ms;
            if !any && !no_data_batch {
                match self.trigger {
                    Trigger::Once | Trigger::AvailableNow => return Ok(()),
                    Trigger::ProcessingTime(iv) => {
                        if !self.idle {
                            // Spark's onQueryIdle: a trigger found no new data (told once per
                            // idle period: after the last batch, or at start)
                            self.idle = true;
                            let ts = chrono::DateTime::from_timestamp_millis(ts_ms)
                                .unwrap_or_default()
                                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                            for l in &self.listeners {
                                l.on_query_idle(&self.shared.id, &self.shared.run_id, &ts);
                            }
                        }
                        self.shared
                            .set_status("Waiting for data to arrive", false, false);
                        let timeout = if watched {
                            None
                        } else {
                            Some(iv.max(POLL_FALLBACK))
                        };
                        self.shared.notifier.wait(timeout);
                        continue;
                    }
                }
            }
            let previous_trigger = self.last_trigger.replace(trigger_start);
            self.idle = false;
            let batch = self.next_batch;
            let entry = OffsetsEntry {
                batch_id: batch,
                batch_timestamp_ms: ts_ms,
                watermark_ms: self.watermark_ms,
                late_watermark_ms: self.last_batch_watermark_ms,
                sources: ends,
                conf: self.recorded_conf(),
            };
            self.shared.set_status("Processing new data", true, true);
            let t = Instant::now();
            if !self.checkpoint.offsets().add(batch, &entry)? {
                return Err(EngineError::user(format!(
                    "offsets entry {batch} already exists in {}: another query is writing to this checkpoint",
                    self.checkpoint.root().display()
                )));
            }
            let wal_ms = t.elapsed().as_millis() as u64;
            crash_point("after-offsets", batch);
            self.run_batch(
                &entry,
                trigger_start,
                previous_trigger,
                latest_offset_ms,
                wal_ms,
            )?;
            if self.trigger == Trigger::Once {
                return Ok(());
            }
        }
    }

    /// Applies the start decision: where to resume, and the re-run of an uncommitted batch.
    fn recover(&mut self) -> Result<()> {
        let decision = self.checkpoint.start_decision()?;
        tracing::info!(
            id = %self.shared.id,
            ?decision,
            "starting query {}: {} ({})",
            self.shared.name.as_deref().unwrap_or(""),
            self.shared.guarantee.0,
            self.shared.guarantee.1
        );
        if let Some(snapshots) = self.state.snapshots()? {
            let state_batches = self.state.committed();
            let oldest = self.checkpoint.offsets().ids()?.first().copied();
            match plan_partitioned_recovery(decision, &state_batches, &snapshots, oldest) {
                Ok(StateRecovery::Ready) => {}
                Ok(StateRecovery::Rebuild { snapshot, replay }) => {
                    tracing::warn!(
                        ?state_batches,
                        ?decision,
                        "the state does not hold the batch the logs need: restoring snapshot {snapshot:?} and replaying batches {replay:?}"
                    );
                    self.state.restore(snapshot)?;
                    if let Some((from, to)) = replay {
                        self.replay_state(from, to)?;
                    }
                }
                Err(reason) => {
                    return Err(EngineError::user(format!(
                        "cannot recover the state in {}/state: {reason}; restore the state directory or use a new checkpoint location",
                        self.checkpoint.root().display()
                    )))
                }
            }
        }
        match decision {
            StartDecision::Fresh => {
                self.next_batch = 0;
            }
            StartDecision::Resume { last_committed } => {
                let e = self.checkpoint.offsets_of(last_committed)?;
                self.committed = self.offsets_of_entry(&e)?;
                self.adopt_recorded_conf(&e)?;
                self.last_batch_watermark_ms = e.watermark_ms;
                let commit = self.checkpoint.commits().get(last_committed)?;
                self.watermark_ms = commit
                    .as_ref()
                    .map_or(e.watermark_ms, |c| c.next_watermark_ms);
                self.operator_watermarks_ms =
                    commit.map(|c| c.operator_watermarks_ms).unwrap_or_default();
                self.next_batch = last_committed + 1;
                // the process may have died before the sources cleaned up after that commit
                for (s, end) in self.sources.iter_mut().zip(&self.committed) {
                    if let Some(end) = end {
                        if let Err(err) = s.commit(end) {
                            tracing::warn!(
                                "source clean-up after batch {last_committed} failed: {err}"
                            );
                        }
                    }
                }
            }
            StartDecision::Rerun { batch } => {
                if batch > 0 {
                    let prev = self.checkpoint.offsets_of(batch - 1)?;
                    self.committed = self.offsets_of_entry(&prev)?;
                    self.operator_watermarks_ms = self
                        .checkpoint
                        .commits()
                        .get(batch - 1)?
                        .map(|c| c.operator_watermarks_ms)
                        .unwrap_or_default();
                }
                let entry = self.checkpoint.offsets_of(batch)?;
                self.offsets_of_entry(&entry)?;
                self.adopt_recorded_conf(&entry)?;
                self.next_batch = batch;
                tracing::info!(
                    batch,
                    "re-running the uncommitted batch with its recorded offsets"
                );
                self.run_batch(&entry, Instant::now(), None, 0, 0)?;
            }
        }
        Ok(())
    }

    /// Rebuilds the state of batches `from..=to` from their offsets entries: the same rows
    /// through the plan, the state committed, nothing written to the sinks (they have these
    /// batches already).
    fn replay_state(&mut self, from: u64, to: u64) -> Result<()> {
        for batch in from..=to {
            self.shared.set_status(
                &format!("Rebuilding the state: batch {batch} of {from}..={to}"),
                true,
                true,
            );
            let starts = match batch.checked_sub(1) {
                None => vec![None; self.sources.len()],
                Some(prev) => {
                    let e = self.checkpoint.offsets_of(prev)?;
                    self.offsets_of_entry(&e)?
                }
            };
            let entry = self.checkpoint.offsets_of(batch)?;
            self.offsets_of_entry(&entry)?;
            self.clock.set(entry.batch_timestamp_ms);
            let (inputs, _) = self.read_inputs(&starts, &entry)?;
            let run = self.state.all_run();
            let threads = self.state.threads();
            self.plan.execute(
                &inputs,
                Watermarks::from_ms(entry.late_watermark_ms, entry.watermark_ms),
                self.state.ops_mut(),
                &run,
                threads,
            )?;
            self.state.commit(batch, &run)?;
        }
        Ok(())
    }

    /// Reads each source's rows between `starts` and the ends in `entry` (retrying external
    /// failures); returns them with the row count per source.
    fn read_inputs(
        &mut self,
        starts: &[Option<Offset>],
        entry: &OffsetsEntry,
    ) -> Result<(Vec<Vec<RecordBatch>>, Vec<u64>)> {
        let mut inputs: Vec<Vec<RecordBatch>> = Vec::with_capacity(self.sources.len());
        let mut source_rows = Vec::with_capacity(self.sources.len());
        for (i, s) in self.sources.iter_mut().enumerate() {
            let end = &entry.sources[i];
            let start = starts.get(i).and_then(|s| s.as_ref());
            let rows = if end.is_null() || Some(end) == start {
                Vec::new()
            } else {
                retry_source(&self.shared, &self.retry, || s.get_batch(start, end))?
            };
            source_rows.push(rows.iter().map(|b| b.num_rows() as u64).sum::<u64>());
            inputs.push(rows);
        }
        Ok((inputs, source_rows))
    }

    fn offsets_of_entry(&self, e: &OffsetsEntry) -> Result<Vec<Option<Offset>>> {
        if e.sources.len() != self.sources.len() {
            return Err(EngineError::user(format!(
                "the checkpoint {} was written by a query with {} source(s); this query has {}: \
                 use a new checkpoint location for a changed query",
                self.checkpoint.root().display(),
                e.sources.len(),
                self.sources.len()
            )));
        }
        Ok(e.sources
            .iter()
            .map(|v| if v.is_null() { None } else { Some(v.clone()) })
            .collect())
    }

    /// Runs batch `entry.batch_id` with the offsets in `entry`, from `self.committed`.
    fn run_batch(
        &mut self,
        entry: &OffsetsEntry,
        trigger_start: Instant,
        previous_trigger: Option<Instant>,
        latest_offset_ms: u64,
        wal_ms: u64,
    ) -> Result<()> {
        let batch = entry.batch_id;
        self.clock.set(entry.batch_timestamp_ms);
        let t = Instant::now();
        let starts = self.committed.clone();
        let (inputs, source_rows) = self.read_inputs(&starts, entry)?;
        let get_batch_ms = t.elapsed().as_millis() as u64;

        let t = Instant::now();
        // partitions that already hold this batch (the process died among the state commits or
        // before the commit log) are skipped; if any does, the sink has the batch too
        let actions = partition_actions(&self.state.committed(), batch).map_err(|reason| {
            EngineError::user(format!(
                "cannot run batch {batch} on the state in {}/state: {reason}; restore the state \
                 directory or use a new checkpoint location",
                self.checkpoint.root().display()
            ))
        })?;
        let threads = self.state.threads();
        let output = self.plan.execute(
            &inputs,
            Watermarks::from_ms(entry.late_watermark_ms, entry.watermark_ms),
            self.state.ops_mut(),
            &actions.run,
            threads,
        )?;
        drop(inputs);
        let output_rows: u64 = output.rows.iter().map(|b| b.num_rows() as u64).sum();
        if actions.write_sink {
            if self.late_sink.is_some() {
                self.write_to_late_sink(batch, &output.late_rows)?;
            }
            self.write_to_sink(batch, &output.rows)?;
        }
        crash_point("after-sink", batch);
        let commit_stats = self.state.commit(batch, &actions.run)?;
        let state_progress = operator_progress(&self.plan, &output, &commit_stats);
        crash_point("after-state", batch);
        let add_batch_ms = t.elapsed().as_millis() as u64;
        let delays: Vec<i64> = self.plan.watermarks.iter().map(|w| w.delay_ms).collect();
        let batch_max: Vec<Option<i64>> = output
            .event_stats
            .iter()
            .map(|s| s.map(|s| s.max.div_euclid(1000)))
            .collect();
        let mut operator_watermarks = self.operator_watermarks_ms.clone();
        let next_watermark_ms = advance_watermark(
            self.watermark_policy,
            &delays,
            &mut operator_watermarks,
            &batch_max,
            entry.watermark_ms,
        );

        let t = Instant::now();
        self.checkpoint.commits().add(
            batch,
            &CommitEntry {
                batch_id: batch,
                next_watermark_ms,
                operator_watermarks_ms: operator_watermarks.clone(),
            },
        )?;
        self.last_batch_watermark_ms = entry.watermark_ms;
        self.watermark_ms = next_watermark_ms;
        self.operator_watermarks_ms = operator_watermarks;
        let commit_ms = t.elapsed().as_millis() as u64;
        crash_point("after-commit", batch);
        let starts = std::mem::replace(
            &mut self.committed,
            entry
                .sources
                .iter()
                .map(|v| if v.is_null() { None } else { Some(v.clone()) })
                .collect(),
        );
        for (s, end) in self.sources.iter_mut().zip(&entry.sources) {
            if !end.is_null() {
                if let Err(err) = s.commit(end) {
                    tracing::warn!("source clean-up after batch {batch} failed: {err}");
                }
            }
        }
        self.next_batch = batch + 1;
        self.purge_logs(batch)?;

        let total_ms = trigger_start.elapsed().as_millis() as u64;
        let input_rows: u64 = source_rows.iter().sum();
        // the time since the previous trigger with data started: input rows arrived over it
        let input_ms = previous_trigger.map(|p| (trigger_start - p).as_millis() as u64);
        let progress = QueryProgress {
            id: self.shared.id.clone(),
            run_id: self.shared.run_id.clone(),
            name: self.shared.name.clone(),
            timestamp: chrono::DateTime::from_timestamp_millis(entry.batch_timestamp_ms)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            batch_id: batch,
            num_input_rows: input_rows,
            input_rows_per_second: rates(input_rows, total_ms, input_ms).0,
            processed_rows_per_second: rates(input_rows, total_ms, input_ms).1,
            duration_ms: DurationMs {
                latest_offset: latest_offset_ms,
                get_batch: get_batch_ms,
                add_batch: add_batch_ms,
                wal_commit: wal_ms,
                commit_offsets: commit_ms,
                trigger_execution: total_ms,
            },
            event_time: event_time_progress(
                !self.plan.watermarks.is_empty(),
                entry.watermark_ms,
                &output.event_stats,
            ),
            state_operators: state_progress,
            sources: self
                .sources
                .iter()
                .enumerate()
                .map(|(i, s)| SourceProgress {
                    description: s.description(),
                    start_offset: starts[i].clone(),
                    end_offset: entry.sources[i].clone(),
                    num_input_rows: source_rows[i],
                    input_rows_per_second: rates(source_rows[i], total_ms, input_ms).0,
                    processed_rows_per_second: rates(source_rows[i], total_ms, input_ms).1,
                    metrics: {
                        let mut m = s.metrics();
                        if let Some(b) = s.backlog() {
                            m.insert("backlog".to_string(), b.to_string());
                        }
                        m
                    },
                })
                .collect(),
            sink: SinkProgress {
                description: self.sink.description(),
                num_output_rows: output_rows,
            },
        };
        tracing::info!(
            query = self.shared.name.as_deref().unwrap_or(""),
            batch,
            input_rows,
            output_rows,
            ms = total_ms,
            "batch committed"
        );
        if let Some(f) = &mut self.progress_log {
            if let Err(e) = writeln!(f, "{}", progress.json()) {
                tracing::warn!("cannot write the progress log: {e}");
            }
        }
        for l in &self.listeners {
            l.on_query_progress(&progress);
        }
        self.shared.push_progress(progress);
        Ok(())
    }

    /// Deletes offsets and commit entries older than the retained batches (and than the snapshot
    /// the oldest of them can be rebuilt from).
    fn purge_logs(&self, batch: u64) -> Result<()> {
        let snapshots = self.state.snapshots()?;
        let keep = first_log_entry_to_keep(batch, self.min_batches_to_retain, snapshots.as_deref());
        if keep > 0 {
            self.checkpoint.offsets().purge_before(keep)?;
            self.checkpoint.commits().purge_before(keep)?;
        }
        Ok(())
    }

    /// Settings recorded in each offsets entry that must not change across restarts.
    fn recorded_conf(&self) -> std::collections::BTreeMap<String, String> {
        let mut conf = std::collections::BTreeMap::new();
        if self.state.is_stateful() {
            conf.insert(
                SHUFFLE_PARTITIONS_CONF.to_string(),
                self.state.partitions().to_string(),
            );
        }
        if self.plan.watermarks.len() > 1 {
            conf.insert(
                POLICY_CONF.to_string(),
                self.watermark_policy.name().to_string(),
            );
        }
        conf
    }

    /// A restarted query keeps the settings its checkpoint was written with (as Spark does):
    /// changing the watermark policy midway would change which rows are late.
    fn adopt_recorded_conf(&mut self, e: &OffsetsEntry) -> Result<()> {
        if let Some(p) = e.conf.get(POLICY_CONF) {
            let recorded = WatermarkPolicy::parse(p)?;
            if recorded != self.watermark_policy {
                tracing::warn!(
                    "the checkpoint was written with {POLICY_CONF}={}; keeping it (this query asked for {})",
                    recorded.name(),
                    self.watermark_policy.name()
                );
                self.watermark_policy = recorded;
            }
        }
        Ok(())
    }

    /// Hands the late rows to the late-data sink, retried like the main sink.
    fn write_to_late_sink(&mut self, batch: u64, rows: &[RecordBatch]) -> Result<()> {
        let Some(late) = self.late_sink.as_mut() else {
            return Ok(());
        };
        let shared = &self.shared;
        let r = retry(
            &self.retry,
            &shared.notifier,
            &|| shared.stop_requested(),
            |a| {
                tracing::warn!(
                    batch,
                    attempt = a.attempt,
                    "late-data sink failed after {:.1?}, retrying in {:?}: {}",
                    a.took,
                    a.wait,
                    a.error
                );
                shared.set_retrying(true);
            },
            || late.add_batch(batch, rows),
        );
        shared.set_retrying(false);
        r
    }

    /// Hands the batch to the sink, retrying external failures with backoff; never skips it.
    fn write_to_sink(&mut self, batch: u64, output: &[RecordBatch]) -> Result<()> {
        let shared = &self.shared;
        let sink = &mut self.sink;
        let description = sink.description();
        let r = retry(
            &self.retry,
            &shared.notifier,
            &|| shared.stop_requested(),
            |a| {
                shared
                    .sink_retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    batch,
                    attempt = a.attempt,
                    "sink {description} failed after {:.1?}, retrying in {:?}: {}",
                    a.took,
                    a.wait,
                    a.error
                );
                shared.set_retrying(true);
                shared.set_status(
                    &format!(
                        "Retrying the sink (attempt {}, next in {:?}) after: {}",
                        a.attempt, a.wait, a.error
                    ),
                    true,
                    true,
                );
            },
            || sink.add_batch(batch, output),
        );
        shared.set_retrying(false);
        r
    }
}
