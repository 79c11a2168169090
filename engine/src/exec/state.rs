//! The state of a running query, owned by its execution: every stateful operator's partition
//! stores, opened through the session's [`StateStoreProvider`] in the directories the state
//! crate lays out; the partition count and the worker pool's size; commits (operators nearest
//! the sink first) and the progress each operator reports.

use std::sync::Arc;

use sluice_state::store::CommitStats;
use sluice_state::{CheckpointDir, StateStoreProvider, StoreOptions};

use crate::error::{EngineError, Result};
use crate::exec::progress::{StateOperatorProgress, NUM_LATE_INPUT_ROWS};
use crate::operators::partitioned::{self, OperatorState};
use crate::plan::{BatchOutput, StreamPlan};

/// Spark's setting for the number of state partitions of every stateful operator, fixed when
/// the checkpoint is created and recorded in its offsets log.
pub const SHUFFLE_PARTITIONS_CONF: &str = "spark.sql.shuffle.partitions";

/// Sluice's cap on the worker threads that run an operator's partitions (default: the cores).
pub const STATE_THREADS_CONF: &str = "sluice.state.workerThreads";

/// The number of state partitions of a new checkpoint when the user sets none: one per core of
/// this machine (at most 16). Spark's 200 is sized for a cluster's tasks; here each partition
/// is a RocksDB store with its own synced changelog write per batch, so partitions beyond the
/// cores that run them only add that cost.
pub fn default_partitions() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16)
}

/// The worker threads of the state pool: the cores, capped by `cap`.
pub fn worker_threads(cap: Option<usize>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cap.map_or(cores, |c| c.clamp(1, cores))
}

/// The partition count a query runs with: the one recorded in its checkpoint, which an explicit
/// setting may not contradict; else the setting; else 1 for state written unpartitioned, else
/// the default. Pure; table-tested.
pub fn resolve_partitions(
    requested: Option<usize>,
    recorded: Option<&str>,
    unpartitioned_state: bool,
    default: usize,
) -> Result<usize> {
    let recorded = match recorded {
        None => None,
        Some(r) => Some(r.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            EngineError::user(format!(
                "the checkpoint records {SHUFFLE_PARTITIONS_CONF}={r}, which is not a number of partitions"
            ))
        })?),
    };
    match (requested, recorded) {
        (Some(r), Some(c)) if r != c => Err(EngineError::user(format!(
            "{SHUFFLE_PARTITIONS_CONF} is {r}, but this checkpoint's state was written with {c} \
             partitions: the number of state partitions is fixed when a checkpoint is created. \
             Remove the setting (or set it to {c}), or use a new checkpoint location"
        ))),
        (_, Some(c)) => Ok(c),
        (Some(r), None) => Ok(r),
        (None, None) if unpartitioned_state => Ok(1),
        (None, None) => Ok(default),
    }
}

/// Every stateful operator's partition stores.
pub(crate) struct QueryState {
    /// By operator (plan order, nearest the sources first).
    ops: Vec<OperatorState>,
    /// Partitions per operator.
    partitions: usize,
    /// The worker pool's size.
    threads: usize,
}

impl QueryState {
    /// Opens the stores of `plan`'s operators, `partitions` each, in `checkpoint`.
    pub(crate) fn open(
        plan: &StreamPlan,
        provider: &Arc<dyn StateStoreProvider>,
        checkpoint: &CheckpointDir,
        partitions: usize,
        options: StoreOptions,
        threads: usize,
    ) -> Result<Self> {
        let options = StoreOptions {
            memory_share: u32::try_from(partitions).unwrap_or(u32::MAX),
            ..options
        };
        let mut ops = Vec::new();
        for (i, _) in plan.state_operators() {
            let mut stores = Vec::with_capacity(partitions);
            for dir in checkpoint.state_partition_dirs(i, partitions)? {
                stores.push(provider.open(&dir, &options)?);
            }
            ops.push(OperatorState { stores });
        }
        Ok(Self {
            ops,
            partitions,
            threads,
        })
    }

    /// Opens the state of a query starting on `checkpoint`: the partition count resolved from
    /// the `spark.sql.shuffle.partitions` setting (`partitions_setting`) and what the
    /// checkpoint recorded, the worker pool capped by `threads_setting`.
    pub(crate) fn open_for_query(
        plan: &StreamPlan,
        provider: &Arc<dyn StateStoreProvider>,
        checkpoint: &CheckpointDir,
        options: StoreOptions,
        partitions_setting: Option<&str>,
        threads_setting: Option<&str>,
    ) -> Result<Self> {
        let number = |key: &str, v: Option<&str>| -> Result<Option<usize>> {
            v.map(|v| {
                v.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        EngineError::user(format!("{key} must be a positive number, got '{v}'"))
                    })
            })
            .transpose()
        };
        let unpartitioned = sluice_state::state_is_unpartitioned(checkpoint.root());
        let partitions = resolve_partitions(
            number(SHUFFLE_PARTITIONS_CONF, partitions_setting)?,
            checkpoint
                .recorded_conf(SHUFFLE_PARTITIONS_CONF)?
                .as_deref(),
            unpartitioned,
            default_partitions(),
        )?;
        let threads = worker_threads(number(STATE_THREADS_CONF, threads_setting)?);
        Self::open(plan, provider, checkpoint, partitions, options, threads)
    }

    /// The state of a stateless query: none.
    pub(crate) fn none() -> Self {
        Self {
            ops: Vec::new(),
            partitions: 0,
            threads: 1,
        }
    }

    /// Whether the query keeps state.
    pub(crate) fn is_stateful(&self) -> bool {
        !self.ops.is_empty()
    }

    /// The partition count.
    pub(crate) fn partitions(&self) -> usize {
        self.partitions
    }

    /// The worker pool's size.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// The operators' stores.
    pub(crate) fn ops_mut(&mut self) -> &mut [OperatorState] {
        &mut self.ops
    }

    /// The batch each partition of each operator has committed.
    pub(crate) fn committed(&self) -> Vec<Vec<Option<u64>>> {
        self.ops.iter().map(OperatorState::committed).collect()
    }

    /// Every partition runs (a normal batch, a replay).
    pub(crate) fn all_run(&self) -> Vec<Vec<bool>> {
        self.ops
            .iter()
            .map(|o| vec![true; o.stores.len()])
            .collect()
    }

    /// The snapshot batches every store has (`None` for a stateless query).
    pub(crate) fn snapshots(&self) -> Result<Option<Vec<u64>>> {
        let mut common: Option<Vec<u64>> = None;
        for store in self.ops.iter().flat_map(|o| &o.stores) {
            let s = store.snapshots()?;
            common = Some(match common {
                None => s,
                Some(c) => c.into_iter().filter(|b| s.contains(b)).collect(),
            });
        }
        Ok(common)
    }

    /// The first offsets/commits entry to keep after batch `batch` (see
    /// [`sluice_state::first_log_entry_to_keep`]): the oldest any store needs, each store from
    /// its own snapshots (their batches differ: a store names a snapshot after the batch it
    /// holds, and skips one while its previous one is still being written).
    pub(crate) fn first_log_entry_to_keep(&self, batch: u64, retain: u64) -> Result<u64> {
        let mut keep = None::<u64>;
        for store in self.ops.iter().flat_map(|o| &o.stores) {
            let snaps = store.snapshots()?;
            let k = sluice_state::first_log_entry_to_keep(batch, retain, Some(&snaps));
            keep = Some(keep.map_or(k, |m| m.min(k)));
        }
        Ok(keep.unwrap_or_else(|| sluice_state::first_log_entry_to_keep(batch, retain, None)))
    }

    /// Replaces every store's state by snapshot `snapshot` (`None`: empty).
    pub(crate) fn restore(&mut self, snapshot: Option<u64>) -> Result<()> {
        for store in self.ops.iter_mut().flat_map(|o| &mut o.stores) {
            store.restore(snapshot)?;
        }
        Ok(())
    }

    /// Commits batch `batch` where `run` says the partition staged it: the operators nearest
    /// the sink first (see [`crate::operators::stateful::StatefulOperator`]), each operator's
    /// partitions in parallel. Returns the stats in plan order.
    pub(crate) fn commit(
        &mut self,
        batch: u64,
        run: &[Vec<bool>],
    ) -> Result<Vec<Vec<CommitStats>>> {
        let mut stats = Vec::with_capacity(self.ops.len());
        for (op, r) in self.ops.iter_mut().zip(run).rev() {
            stats.push(partitioned::commit(op, batch, r, self.threads)?);
        }
        stats.reverse();
        Ok(stats)
    }
}

/// The `stateOperators` of a batch's progress, in Spark's order (the operator nearest the sink
/// first), each summed over its partitions; with more than one partition, each partition's
/// figures are under `customMetrics` as `partition<p>.<metric>`.
pub(crate) fn operator_progress(
    plan: &StreamPlan,
    output: &BatchOutput,
    stats: &[Vec<CommitStats>],
) -> Vec<StateOperatorProgress> {
    let mut out = Vec::new();
    for ((op, parts), commits) in plan.operators().zip(&output.operators).zip(stats) {
        let mut p = StateOperatorProgress {
            operator_name: op.name().to_string(),
            ..StateOperatorProgress::default()
        };
        let mut late_rows = 0;
        let many = commits.len() > 1;
        for (i, (batch, c)) in parts.iter().zip(commits).enumerate() {
            let b = batch.clone().unwrap_or_default();
            let (updated, removed) = match b.counts {
                Some(n) => (n.updated, n.removed),
                None => (
                    c.rows_updated + b.evicted_touched,
                    c.rows_removed + b.evicted_new,
                ),
            };
            for (k, v) in &b.custom_metrics {
                *p.custom_metrics.entry(k.to_string()).or_default() += v;
            }
            p.num_rows_total += c.rows_total;
            p.num_rows_updated += updated;
            p.num_rows_removed += removed;
            p.num_rows_dropped_by_watermark += b.dropped_by_watermark;
            p.memory_used_bytes += c.memory_used_bytes;
            p.commit_time_ms = p.commit_time_ms.max(c.commit_ms);
            late_rows += b.late_input_rows;
            if many {
                for (k, v) in [
                    ("numRowsTotal", c.rows_total),
                    ("numRowsUpdated", updated),
                    ("numRowsRemoved", removed),
                    ("numRowsDroppedByWatermark", b.dropped_by_watermark),
                ] {
                    p.custom_metrics.insert(format!("partition{i}.{k}"), v);
                }
            }
        }
        p.custom_metrics
            .insert(NUM_LATE_INPUT_ROWS.to_string(), late_rows);
        out.push(p);
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (setting, recorded in the checkpoint, state written unpartitioned, count or error text)
    type Case = (
        Option<usize>,
        Option<&'static str>,
        bool,
        std::result::Result<usize, &'static str>,
    );

    #[test]
    fn the_partition_count_of_a_query() {
        let table: &[Case] = &[
            (None, None, false, Ok(5)),
            (Some(2), None, false, Ok(2)),
            (None, Some("8"), false, Ok(8)),
            (Some(8), Some("8"), false, Ok(8)),
            (
                Some(2),
                Some("8"),
                false,
                Err("spark.sql.shuffle.partitions is 2, but"),
            ),
            (None, None, true, Ok(1)),
            (Some(4), None, true, Ok(4)),
            (None, Some("zero"), false, Err("not a number of partitions")),
            (None, Some("0"), false, Err("not a number of partitions")),
        ];
        for (requested, recorded, old, want) in table {
            let got = resolve_partitions(*requested, *recorded, *old, 5);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{requested:?} {recorded:?} {old}"),
                (Err(w), Err(g)) => assert!(g.to_string().contains(w), "{g}"),
                _ => panic!("{requested:?} {recorded:?} {old}: {got:?}"),
            }
        }
    }
}
