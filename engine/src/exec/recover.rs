//! Where a (re)started query resumes: the start decision of the logs applied, the state
//! reconciled with them (a snapshot restored and batches replayed when it must be rebuilt),
//! and an uncommitted batch re-run with exactly its recorded offsets.

use std::time::Instant;

use sluice_state::{plan_partitioned_recovery, StartDecision, StateRecovery};

use super::Execution;
use crate::error::{EngineError, Result};
use crate::operators::watermark::WatermarkTracker;

impl Execution {
    /// Applies the start decision: where to resume, and the re-run of an uncommitted batch.
    pub(super) fn recover(&mut self) -> Result<()> {
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
                let commit = self.checkpoint.commits().get(last_committed)?;
                let next = commit
                    .as_ref()
                    .map_or(e.watermark_ms, |c| c.next_watermark_ms);
                let nodes = commit.map(|c| c.operator_watermarks_ms).unwrap_or_default();
                self.watermarks.committed(e.watermark_ms, next, nodes);
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
                    self.watermarks.nodes_ms = self
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
                WatermarkTracker::for_batch(
                    entry.batch_id,
                    entry.late_watermark_ms,
                    entry.watermark_ms,
                ),
                self.state.ops_mut(),
                &run,
                threads,
            )?;
            self.state.commit(batch, &run)?;
        }
        Ok(())
    }
}
