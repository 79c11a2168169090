//! The micro-batch executor: one thread per query, running DESIGN.md's data flow.
//!
//! Per batch N: ask each source for its latest offset → write `offsets/N` (the write-ahead log,
//! with the batch timestamp) → read the rows → run the plan → hand the rows to the sink (retried
//! on external errors, never skipped) → write `commits/N` → let sources clean up → report
//! progress. On start, [`sluice_state::resolve_start`] decides whether a batch must be re-run
//! with exactly its recorded offsets.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use sluice_state::{partition_actions, CheckpointDir, CommitEntry, OffsetsEntry};

use super::state::{operator_progress, QueryState, SHUFFLE_PARTITIONS_CONF};
use crate::connector::{Offset, ReadLimit, Sink, Source};
use crate::error::{EngineError, ErrorKind, Result};
use crate::exec::fault::crash_point;
use crate::exec::progress::{
    event_time_progress, rates, DurationMs, QueryProgress, SinkProgress, SourceProgress,
};
use crate::exec::retry::RetryPolicy;
use crate::exec::shared::{QueryError, QueryShared, StreamingQueryListener};
use crate::exec::trigger::Trigger;
use crate::operators::clock::BatchClock;
use crate::operators::watermark::{WatermarkPolicy, WatermarkTracker, POLICY_CONF};
use crate::plan::StreamPlan;

#[path = "recover.rs"]
mod recover;
#[path = "retrying.rs"]
mod retrying;

use retrying::retry_source;

/// When no source can watch for new data, how often to look.
const POLL_FALLBACK: Duration = Duration::from_secs(1);

/// What a batch writes besides the sink: late rows, and the expectations with the rows their
/// `drop` rules remove. Each side sink is written before the main sink, under its own query id,
/// idempotently per batch id (exactly once, like the main sink).
#[derive(Default)]
pub(crate) struct SideOutputs {
    /// Where late input rows go, if the user asked.
    pub late: Option<Box<dyn Sink>>,
    /// The expectations on the written rows.
    pub checks: Option<crate::exec::expectations::Checks>,
    /// Where rows dropped by expectations go, if the user asked.
    pub quarantine: Option<Box<dyn Sink>>,
}

/// Which side sink.
#[derive(Debug, Clone, Copy)]
pub(super) enum SideSink {
    Late,
    Quarantine,
}

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
    /// The query's watermarks between batches (the policy among several inputs included).
    watermarks: WatermarkTracker,
    /// Offsets and commit entries of at least this many batches are kept.
    min_batches_to_retain: u64,
    /// Where late input rows go, the expectations and where their dropped rows go.
    side: SideOutputs,
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
        side: SideOutputs,
        watermark_policy: WatermarkPolicy,
        min_batches_to_retain: u64,
    ) -> Self {
        let n = sources.len();
        let delays = plan.watermarks.iter().map(|w| w.delay_ms).collect();
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
            watermarks: WatermarkTracker::new(watermark_policy, delays),
            min_batches_to_retain,
            side,
            next_batch: 0,
            last_trigger: None,
            idle: false,
        }
    }

    /// Runs until stopped, done or failed, and records the outcome in the shared state.
    pub(crate) fn run_to_end(mut self) {
        let shared = Arc::clone(&self.shared);
        crate::exec::fault::set_query(shared.name.as_deref());
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
                    schema_changed: e.is_schema_change(),
                    fenced: e.is_fenced(),
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
                    schema_changed: false,
                    fenced: false,
                })
            }
        };
        if let Err(e) = self.sink.close() {
            tracing::warn!("closing the sink failed: {e}");
        }
        for (what, sink) in [
            ("late-data", &mut self.side.late),
            ("quarantine", &mut self.side.quarantine),
        ] {
            if let Some(s) = sink {
                if let Err(e) = s.close() {
                    tracing::warn!("closing the {what} sink failed: {e}");
                }
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
            let ticket = self.shared.available_asked.load(Ordering::SeqCst);
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
            let no_data_batch = !any && self.plan.evicts_by_watermark() && self.watermarks.moved();
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
                        if !self.sources.iter().any(|s| s.settling()) {
                            self.shared.caught_up(ticket);
                        }
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
                watermark_ms: self.watermarks.next_ms,
                late_watermark_ms: self.watermarks.last_batch_ms,
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
            // a checkpoint in object storage: the entry (and the source logs it points to) is
            // in the bucket before the batch reaches the sink
            crash_point("before-offsets-upload", batch);
            self.checkpoint.sync()?;
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
        let mut output = self.plan.execute(
            &inputs,
            WatermarkTracker::for_batch(
                entry.batch_id,
                entry.late_watermark_ms,
                entry.watermark_ms,
            ),
            self.state.ops_mut(),
            &actions.run,
            threads,
        )?;
        drop(inputs);
        // expectations: counted, failing rows dropped, or the batch stopped before the sink
        let (rows, dropped, data_quality) = match &self.side.checks {
            None => (std::mem::take(&mut output.rows), Vec::new(), None),
            Some(c) => {
                let checked = c.apply(batch, std::mem::take(&mut output.rows))?;
                (checked.rows, checked.dropped, Some(checked.quality))
            }
        };
        let output_rows: u64 = rows.iter().map(|b| b.num_rows() as u64).sum();
        if actions.write_sink {
            if self.side.late.is_some() {
                self.write_to_side_sink(SideSink::Late, batch, &output.late_rows)?;
            }
            if self.side.quarantine.is_some() {
                self.write_to_side_sink(SideSink::Quarantine, batch, &dropped)?;
            }
            self.write_to_sink(batch, &rows)?;
        }
        drop(rows);
        crash_point("after-sink", batch);
        let commit_stats = self.state.commit(batch, &actions.run)?;
        let state_progress = operator_progress(&self.plan, &output, &commit_stats);
        crash_point("after-state", batch);
        let add_batch_ms = t.elapsed().as_millis() as u64;
        let (next_watermark_ms, node_watermarks) = self
            .watermarks
            .after_batch(entry.watermark_ms, &output.event_stats);

        let t = Instant::now();
        self.checkpoint.commits().add(
            batch,
            &CommitEntry {
                batch_id: batch,
                next_watermark_ms,
                operator_watermarks_ms: node_watermarks.clone(),
            },
        )?;
        crash_point("before-commit-upload", batch);
        self.checkpoint.sync()?;
        self.watermarks
            .committed(entry.watermark_ms, next_watermark_ms, node_watermarks);
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
            data_quality,
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
        let keep = self
            .state
            .first_log_entry_to_keep(batch, self.min_batches_to_retain)?;
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
                self.watermarks.policy.name().to_string(),
            );
        }
        conf
    }

    /// A restarted query keeps the settings its checkpoint was written with (as Spark does):
    /// changing the watermark policy midway would change which rows are late.
    fn adopt_recorded_conf(&mut self, e: &OffsetsEntry) -> Result<()> {
        if let Some(p) = e.conf.get(POLICY_CONF) {
            let recorded = WatermarkPolicy::parse(p)?;
            if recorded != self.watermarks.policy {
                tracing::warn!(
                    "the checkpoint was written with {POLICY_CONF}={}; keeping it (this query asked for {})",
                    recorded.name(),
                    self.watermarks.policy.name()
                );
                self.watermarks.policy = recorded;
            }
        }
        Ok(())
    }
}
