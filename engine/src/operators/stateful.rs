//! The contract of a stateful operator, and what one batch of it produces.
//!
//! A stateful operator (the window aggregation, the session-window aggregation, deduplication,
//! and the joins to come) is the compiled program of one stateful step of a query: it keeps no
//! state itself. Its state lives in a [`StateStore`] per partition, which the execution owns and
//! hands to it for each batch; the plan holds the operators in a chain, each fed by the
//! stateless nodes below it.

use std::fmt;

use arrow::array::RecordBatch;
use arrow::row::Rows;
use sluice_state::store::{StateChanges, StateStore};

use crate::error::Result;

/// The watermarks a batch runs with, µs since the epoch (the one unit of event time inside the
/// engine; `WatermarkTracker::for_batch` makes them from the logs' ms): `late` is the previous batch's (rows at or before it are late, as Spark ≥ 3.4
/// judges them), `evict` the current one (state at or before it is emitted and forgotten).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Watermarks {
    /// The late-row threshold.
    pub late_us: i64,
    /// The eviction and emission threshold.
    pub evict_us: i64,
    /// The batch being processed (a re-run of a batch has the same id): operators that keep
    /// rows in state name them by it (a join's buffered rows).
    pub batch_id: u64,
}

/// What one partition of an operator produced for one batch, before its state is committed.
#[derive(Debug, Default)]
pub struct OperatorOutput {
    /// Rows passed downstream (to the next operator, or to the sink).
    pub rows: Vec<RecordBatch>,
    /// Input rows dropped as late (for the late-data sink).
    pub late_rows: Vec<RecordBatch>,
    /// Spark's `numRowsDroppedByWatermark` (partially aggregated rows for an aggregation,
    /// input rows otherwise).
    pub dropped_by_watermark: u64,
    /// State changes to stage and commit.
    pub changes: StateChanges,
    /// Groups this batch touched and the watermark evicted at its end: Spark writes them to
    /// state and then removes them, counting them in `numRowsUpdated` (the store never sees
    /// those that were not in state before, nor counts the others as written).
    pub evicted_touched: u64,
    /// Of those, the groups that were not in state before (Spark counts their removal too).
    pub evicted_new: u64,
    /// Rows written and removed as the operator counts them, replacing the store's count of
    /// keys written and deleted (a join keeps an index beside its rows, and holds copies of a
    /// row as separate rows).
    pub counts: Option<RowCounts>,
    /// Operator-specific figures for progress `customMetrics` (summed over partitions).
    pub custom_metrics: Vec<(&'static str, u64)>,
}

/// Rows an operator wrote and removed in one batch, as it counts them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RowCounts {
    /// Spark's `numRowsUpdated`.
    pub updated: u64,
    /// Spark's `numRowsRemoved`.
    pub removed: u64,
}

/// A stateful operator of a streaming plan.
///
/// **Who calls what, in which order.** The plan is built once per query; its operators are
/// then shared (read-only) by every batch and every partition. Per batch, the execution:
/// 1. runs the stateless nodes below each of the operator's [`inputs`](Self::inputs) and
///    routes their rows to partitions by the hash of [`partition_key`](Self::partition_key)
///    (rows of one key meet in one partition, from whichever input they come);
/// 2. calls [`process`](Self::process) once per partition that has not yet committed the batch,
///    possibly on several threads at once, with that partition's store (read-only) and the
///    batch's [`Watermarks`]; the returned [`OperatorOutput::changes`] are staged in that
///    store;
/// 3. after the sink has the batch, commits every partition's store with the batch id,
///    operators nearest the sink first.
///
/// **What must hold across a crash.** `process` is a pure function of the store's committed
/// state, the input rows and the watermarks: re-running a batch on a store that has not
/// committed it gives the same output and changes. Routing depends only on the key's bytes
/// (a stable hash), so a re-run sends every row to the same partition. Because downstream
/// operators commit first, a crash between commits leaves every operator whose partitions are
/// not all committed with all its upstream operators uncommitted, so their output for the
/// re-run batch can be computed again (see `sluice_state::partition_actions`).
pub trait StatefulOperator: Send + Sync + fmt::Debug {
    /// Spark's operator name in progress reports (`stateStoreSave`, `dedupe`, ...).
    fn name(&self) -> &'static str;

    /// What the stored state means (a changed query must not read it): recorded in
    /// `state/<op>.schema` when the checkpoint is created.
    fn fingerprint(&self) -> Result<String>;

    /// The form of [`fingerprint`](Self::fingerprint) older checkpoints recorded.
    fn legacy_fingerprint(&self) -> Result<String> {
        self.fingerprint()
    }

    /// Whether the watermark applies to this operator (late rows, eviction).
    fn uses_watermark(&self) -> bool;

    /// Whether late rows are dropped and state is evicted by the watermark (so a batch with no
    /// new data can still emit rows).
    fn drops_late(&self) -> bool;

    /// How many inputs the operator reads (a join: 2, its left and right side).
    fn inputs(&self) -> usize {
        1
    }

    /// The encoded key whose hash routes each row of `batch` (of input `input`) to its
    /// partition (rows of one key must meet in one partition, whatever input they come from);
    /// `None`: the operator has no key to split by and runs in partition 0.
    fn partition_key(&self, input: usize, batch: &RecordBatch) -> Result<Option<Rows>>;

    /// Processes one partition's share of the batch. `inputs[i]` holds the rows of input `i`
    /// routed to this partition (possibly none: a batch with no new data still evicts);
    /// `store` is the partition's state as of the last commit.
    fn process(
        &self,
        store: &dyn StateStore,
        inputs: &[RecordBatch],
        watermarks: Watermarks,
    ) -> Result<OperatorOutput>;

    /// The schema of the late rows the operator hands the late-data sink, given its inputs'
    /// schemas: the input's own for one input.
    fn late_rows_schema(
        &self,
        inputs: &[arrow::datatypes::SchemaRef],
    ) -> arrow::datatypes::SchemaRef {
        inputs
            .first()
            .cloned()
            .unwrap_or_else(|| std::sync::Arc::new(arrow::datatypes::Schema::empty()))
    }

    /// The watermark the operator passes downstream, given its input watermark (µs). Spark ≥
    /// 3.4: unchanged for aggregations and deduplication (their emitted rows are at or after
    /// it); a join will hold it back by its time bound.
    fn output_watermark(&self, input_us: i64) -> i64 {
        input_us
    }
}
