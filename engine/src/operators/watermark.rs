//! `with_watermark(column, delay)`: an event-time watermark in the logical plan, as Spark's
//! `EventTimeWatermark` node. It passes rows through unchanged; the executor tracks the maximum
//! event time of the rows passing it, and the watermark of batch b is
//! `max(event time over batches < b) − delay`, never decreasing.

use std::collections::HashSet;

use arrow::array::Array;
use std::fmt;
use std::sync::Arc;

use datafusion::common::{Column, DFSchemaRef};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};

/// The watermark node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Hash)]
pub struct WatermarkNode {
    /// The input plan.
    pub input: LogicalPlan,
    /// The event-time column.
    pub column: Column,
    /// The delay, in ms.
    pub delay_ms: i64,
}

impl WatermarkNode {
    /// Wraps `input` in a watermark node.
    pub fn plan(input: LogicalPlan, column: Column, delay_ms: i64) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(WatermarkNode {
                input,
                column,
                delay_ms,
            }),
        })
    }
}

impl UserDefinedLogicalNodeCore for WatermarkNode {
    fn name(&self) -> &str {
        "EventTimeWatermark"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![Expr::Column(self.column.clone())]
    }
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // the columns read above, and the event time (the node passes rows through unchanged,
        // so output column i is input column i): lets the optimiser prune the stream's columns
        let mut cols = output_columns.to_vec();
        if let Ok(i) = self.input.schema().index_of_column(&self.column) {
            cols.push(i);
        }
        cols.sort_unstable();
        cols.dedup();
        Some(vec![cols])
    }

    fn prevent_predicate_push_down_columns(&self) -> HashSet<String> {
        // a filter below the watermark would change the maximum event time it sees
        self.input
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EventTimeWatermark: {} delay {} ms",
            self.column, self.delay_ms
        )
    }
    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        let column = match exprs.into_iter().next() {
            Some(Expr::Column(c)) => c,
            _ => self.column.clone(),
        };
        Ok(Self {
            input: inputs.pop().unwrap_or_else(|| self.input.clone()),
            column,
            delay_ms: self.delay_ms,
        })
    }
}

/// How the query's watermark is chosen when several inputs have one (Spark's
/// `spark.sql.streaming.multipleWatermarkPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatermarkPolicy {
    /// The slowest input holds the watermark back (Spark's default): no input's rows are
    /// dropped as late because another input ran ahead.
    #[default]
    Min,
    /// The fastest input moves the watermark: lower latency, the slower inputs' rows may be late.
    Max,
}

/// The conf key (Spark's) under which the policy is recorded in the offsets log.
pub const POLICY_CONF: &str = "spark.sql.streaming.multipleWatermarkPolicy";

impl WatermarkPolicy {
    /// `min` or `max` (any case).
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "min" => Ok(Self::Min),
            "max" => Ok(Self::Max),
            other => Err(crate::EngineError::user(format!(
                "multipleWatermarkPolicy must be 'min' or 'max', got '{other}'"
            ))),
        }
    }

    /// The name recorded in the offsets log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Min => "min",
            Self::Max => "max",
        }
    }
}

/// Advances the watermarks after a batch, as Spark's `WatermarkTracker.updateWatermark`.
///
/// `operators[i]` is watermark operator i's own watermark (ms), empty before the first batch;
/// `delays[i]` its delay; `batch_max[i]` the largest event time (ms) it saw in this batch, if
/// any. An operator's watermark moves to `max − delay` when that is larger; one that has never
/// seen a row counts as 0 (so under `min` it holds the query's watermark at 0 until it sees
/// data). Returns the query's watermark for the next batch: the policy's choice over the
/// operators, never below `current`.
pub fn advance_watermark(
    policy: WatermarkPolicy,
    delays: &[i64],
    operators: &mut Vec<i64>,
    batch_max: &[Option<i64>],
    current: i64,
) -> i64 {
    if delays.is_empty() {
        return current;
    }
    if operators.len() != delays.len() {
        // first batch (or a checkpoint written before per-operator watermarks were kept)
        *operators = vec![i64::MIN; delays.len()];
    }
    for (i, delay) in delays.iter().enumerate() {
        match batch_max.get(i).copied().flatten() {
            Some(max) => {
                let new = max.saturating_sub(*delay);
                if operators[i] == i64::MIN || new > operators[i] {
                    operators[i] = new;
                }
            }
            None => {
                if operators[i] == i64::MIN {
                    operators[i] = 0;
                }
            }
        }
    }
    let chosen = match policy {
        WatermarkPolicy::Min => operators.iter().copied().min(),
        WatermarkPolicy::Max => operators.iter().copied().max(),
    }
    .unwrap_or(current);
    chosen.max(current)
}

/// Event times seen by one watermark operator in one batch (µs since the epoch): Spark's
/// `EventTimeStats`, behind the watermark and the progress report's `eventTime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeStats {
    /// Smallest event time.
    pub min: i64,
    /// Largest event time.
    pub max: i64,
    /// Sum of the event times (for the average).
    pub sum: i128,
    /// Rows with an event time.
    pub count: u64,
}

impl EventTimeStats {
    pub(crate) fn of(ts: &arrow::array::TimestampMicrosecondArray) -> Option<Self> {
        let count = (ts.len() - ts.null_count()) as u64;
        if count == 0 {
            return None;
        }
        let mut s = Self {
            min: i64::MAX,
            max: i64::MIN,
            sum: 0,
            count,
        };
        for t in ts.iter().flatten() {
            s.min = s.min.min(t);
            s.max = s.max.max(t);
            s.sum += i128::from(t);
        }
        Some(s)
    }

    /// Both sets of rows together.
    pub fn merge(self, o: Self) -> Self {
        Self {
            min: self.min.min(o.min),
            max: self.max.max(o.max),
            sum: self.sum + o.sum,
            count: self.count + o.count,
        }
    }

    /// The average event time, µs.
    pub fn avg(&self) -> i64 {
        (self.sum / i128::from(self.count.max(1))) as i64
    }
}

/// The query's watermarks between batches, kept in one place and one unit: milliseconds, as
/// Spark's offsets and commit logs record them. Operators receive them as
/// [`Watermarks`](crate::operators::stateful::Watermarks) (µs, the unit of event time inside
/// the engine), converted here; event times come in as [`EventTimeStats`] (µs), converted here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkTracker {
    /// How the query's watermark is chosen among several watermarked inputs.
    pub policy: WatermarkPolicy,
    /// Each watermark node's delay, ms.
    delays_ms: Vec<i64>,
    /// The watermark the next batch runs with, ms.
    pub next_ms: i64,
    /// The watermark the last batch ran with, ms: the next batch's late-row threshold.
    pub last_batch_ms: i64,
    /// Each watermark node's own watermark, ms (empty before the first batch).
    pub nodes_ms: Vec<i64>,
}

impl WatermarkTracker {
    /// A query's tracker before its first batch.
    pub fn new(policy: WatermarkPolicy, delays_ms: Vec<i64>) -> Self {
        Self {
            policy,
            delays_ms,
            next_ms: 0,
            last_batch_ms: 0,
            nodes_ms: Vec::new(),
        }
    }

    /// Whether the watermark moved since the last batch ran (Spark's no-data batch is due).
    pub fn moved(&self) -> bool {
        self.next_ms > self.last_batch_ms
    }

    /// The thresholds of batch `batch_id`, recorded with `late_ms` and `evict_ms` in its
    /// offsets entry.
    pub fn for_batch(
        batch_id: u64,
        late_ms: i64,
        evict_ms: i64,
    ) -> crate::operators::stateful::Watermarks {
        crate::operators::stateful::Watermarks {
            late_us: late_ms.saturating_mul(1000),
            evict_us: evict_ms.saturating_mul(1000),
            batch_id,
        }
    }

    /// The watermarks after a batch that ran with `ran_with_ms` and whose watermark nodes saw
    /// `stats`: `(next, each node's)`, as [`advance_watermark`] moves them. Pure.
    pub fn after_batch(
        &self,
        ran_with_ms: i64,
        stats: &[Option<EventTimeStats>],
    ) -> (i64, Vec<i64>) {
        let batch_max: Vec<Option<i64>> = stats
            .iter()
            .map(|s| s.map(|s| s.max.div_euclid(1000)))
            .collect();
        let mut nodes = self.nodes_ms.clone();
        let next = advance_watermark(
            self.policy,
            &self.delays_ms,
            &mut nodes,
            &batch_max,
            ran_with_ms,
        );
        (next, nodes)
    }

    /// Batch committed: it ran with `ran_with_ms`, the next runs with `next_ms`.
    pub fn committed(&mut self, ran_with_ms: i64, next_ms: i64, nodes_ms: Vec<i64>) {
        self.last_batch_ms = ran_with_ms;
        self.next_ms = next_ms;
        self.nodes_ms = nodes_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (policy, delays, operator watermarks before, batch maxima, current) → (next, after)
    type Case = (
        WatermarkPolicy,
        &'static [i64],
        Vec<i64>,
        &'static [Option<i64>],
        i64,
        i64,
        Vec<i64>,
    );

    #[test]
    fn table() {
        use WatermarkPolicy::*;
        let cases: Vec<Case> = vec![
            // one input: max − delay, never backwards
            (Min, &[10], vec![], &[Some(100)], 0, 90, vec![90]),
            (Min, &[10], vec![90], &[Some(50)], 90, 90, vec![90]),
            (Min, &[10], vec![90], &[None], 90, 90, vec![90]),
            // before any data: the watermark stays where it is
            (Min, &[10], vec![], &[None], 0, 0, vec![0]),
            (Min, &[10], vec![], &[Some(5)], 0, 0, vec![-5]),
            // two inputs, one silent: min holds at 0, max follows the active one
            (
                Min,
                &[10, 20],
                vec![],
                &[Some(100), None],
                0,
                0,
                vec![90, 0],
            ),
            (
                Max,
                &[10, 20],
                vec![],
                &[Some(100), None],
                0,
                90,
                vec![90, 0],
            ),
            // both seen: min is the slower one, max the faster one
            (
                Min,
                &[10, 20],
                vec![90, 0],
                &[None, Some(70)],
                0,
                50,
                vec![90, 50],
            ),
            (
                Max,
                &[10, 20],
                vec![90, 0],
                &[None, Some(70)],
                90,
                90,
                vec![90, 50],
            ),
            (
                Max,
                &[10, 20],
                vec![90, 50],
                &[None, Some(150)],
                90,
                130,
                vec![90, 130],
            ),
            // the query's watermark never decreases, even if the policy's choice does
            (
                Min,
                &[10, 20],
                vec![90, 50],
                &[None, None],
                80,
                80,
                vec![90, 50],
            ),
        ];
        for (policy, delays, mut ops, maxes, current, next, after) in cases {
            let got = advance_watermark(policy, delays, &mut ops, maxes, current);
            assert_eq!(got, next, "{policy:?} {delays:?} {maxes:?} {current}");
            assert_eq!(ops, after, "{policy:?} {delays:?} {maxes:?} {current}");
        }
    }

    #[test]
    fn policy_names() {
        assert_eq!(
            WatermarkPolicy::parse(" MAX ").expect("max"),
            WatermarkPolicy::Max
        );
        assert_eq!(WatermarkPolicy::parse("min").expect("min").name(), "min");
        assert!(WatermarkPolicy::parse("avg").is_err());
    }
}
