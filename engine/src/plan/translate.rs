//! From a DataFusion logical plan to Sluice's streaming plan.
//!
//! Streams appear in logical plans as scans of a [`StreamTable`]. When a query starts, its plan
//! is analysed (type coercion, views inlined), its time functions are bound to the batch clock,
//! it is optimised, and then translated once into a tree of streaming operators whose
//! expressions are DataFusion physical expressions. Every batch runs through that same tree:
//! nothing is planned per batch.

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session as DfSession;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::{source_as_provider, TableProvider, TableType};
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Expr, LogicalPlan, ReturnFieldArgs, ScalarUDF};
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use std::sync::atomic::Ordering;

use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::ExprSchemable;
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use sluice_state::store::{CommitStats, StateStore};

use crate::aggregate::{AggSpec, AggregateOp, WindowGroup};
use crate::clock::{BatchClock, BatchClockUdf};
use crate::connector::{OutputMode, SourceSpec};
use crate::dedup::{DedupNode, DedupOp};
use crate::error::{EngineError, Result};
use crate::watermark::WatermarkNode;
use crate::window::{event_micros, spec_of_args, WindowUdf};

/// How many streaming plans this process has built (one per started query, never per batch).
pub static PLANS_BUILT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A stream in a logical plan: the table behind `read_stream()...load()`.
#[derive(Debug)]
pub struct StreamTable {
    /// What the user asked for.
    pub spec: SourceSpec,
    /// The stream's schema.
    pub schema: SchemaRef,
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        None
    }
    async fn scan(
        &self,
        _state: &dyn DfSession,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        datafusion::common::plan_err!(
            "Queries with streaming sources must be executed with write_stream().start()"
        )
    }
}

/// Returns the stream behind a table scan, if it is one.
pub fn stream_of_scan(scan: &datafusion::logical_expr::TableScan) -> Option<Arc<StreamTable>> {
    let provider = source_as_provider(&scan.source).ok()?;
    let any: Arc<dyn Any + Send + Sync> = provider;
    any.downcast::<StreamTable>().ok()
}

/// Whether a logical plan reads any stream.
pub fn is_streaming(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(scan) = p {
            if stream_of_scan(scan).is_some() {
                found = true;
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
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
    fn of(ts: &arrow::array::TimestampMicrosecondArray) -> Option<Self> {
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

/// A `with_watermark` of the plan: its column and delay. A plan has one per watermarked input
/// (e.g. both sides of a UNION of two streams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkSpec {
    /// The event-time column.
    pub column: String,
    /// The delay, ms.
    pub delay_ms: i64,
}

/// What a stage of nodes reads: the sources' batches (the stateless stage) or the rows the
/// stateful operator emitted (the stage above it).
#[derive(Clone, Copy)]
enum StageInput<'a> {
    Sources(&'a [Vec<RecordBatch>]),
    Rows(&'a [RecordBatch]),
}

/// One operator of the streaming plan.
#[derive(Debug)]
enum Node {
    /// The rows of the stage's input (the aggregate's output for the stage above it).
    Input,
    Watermark {
        input: Box<Node>,
        column: usize,
        /// Index of this watermark in [`StreamPlan::watermarks`].
        index: usize,
    },
    Scan {
        /// Index of the source in [`StreamPlan::sources`].
        source: usize,
        projection: Option<Vec<usize>>,
        schema: SchemaRef,
    },
    Filter {
        input: Box<Node>,
        predicate: Arc<dyn PhysicalExpr>,
    },
    Project {
        input: Box<Node>,
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    },
    /// `UNION ALL` of streams (each branch already cast to the union's types).
    Union {
        inputs: Vec<Node>,
        schema: SchemaRef,
    },
}

impl Node {
    /// Whether the node reads a source (below it or itself).
    fn reads_source(&self) -> bool {
        match self {
            Node::Scan { .. } => true,
            Node::Input => false,
            Node::Watermark { input, .. }
            | Node::Filter { input, .. }
            | Node::Project { input, .. } => input.reads_source(),
            Node::Union { inputs, .. } => inputs.iter().any(Node::reads_source),
        }
    }

    /// Calls `f(source, projection)` for every scan.
    fn scans_mut(&mut self, f: &mut dyn FnMut(usize, &mut Option<Vec<usize>>)) {
        match self {
            Node::Scan {
                source, projection, ..
            } => f(*source, projection),
            Node::Input => {}
            Node::Watermark { input, .. }
            | Node::Filter { input, .. }
            | Node::Project { input, .. } => input.scans_mut(f),
            Node::Union { inputs, .. } => inputs.iter_mut().for_each(|i| i.scans_mut(f)),
        }
    }

    /// Runs the node over the stage's input; `stats[i]` collects the event times seen by
    /// watermark `i`.
    fn run(
        &self,
        input: StageInput<'_>,
        stats: &mut [Option<EventTimeStats>],
    ) -> Result<Vec<RecordBatch>> {
        match self {
            Node::Input => match input {
                StageInput::Rows(rows) => Ok(rows.to_vec()),
                StageInput::Sources(_) => Err(EngineError::bug("stage input node over sources")),
            },
            Node::Watermark {
                input: child,
                column,
                index,
            } => {
                let out = child.run(input, stats)?;
                for b in &out {
                    let ts = event_micros(b.column(*column))?;
                    if let Some(s) = EventTimeStats::of(&ts) {
                        let slot = stats
                            .get_mut(*index)
                            .ok_or_else(|| EngineError::bug("watermark index"))?;
                        *slot = Some(slot.map_or(s, |o| o.merge(s)));
                    }
                }
                Ok(out)
            }
            Node::Scan {
                source,
                projection,
                schema,
            } => {
                let StageInput::Sources(sources) = input else {
                    return Err(EngineError::bug("scan above the stateful operator"));
                };
                let batches = sources
                    .get(*source)
                    .ok_or_else(|| EngineError::bug("scan of a missing source"))?;
                batches
                    .iter()
                    .filter(|b| b.num_rows() > 0)
                    .map(|batch| {
                        let b = match projection {
                            Some(p) => batch.project(p)?,
                            None => batch.clone(),
                        };
                        // the source's schema may differ in metadata/nullability only
                        Ok(RecordBatch::try_new(
                            Arc::clone(schema),
                            b.columns().to_vec(),
                        )?)
                    })
                    .collect()
            }
            Node::Filter {
                input: child,
                predicate,
            } => {
                let mut out = Vec::new();
                for b in child.run(input, stats)? {
                    let mask = predicate.evaluate(&b)?.into_array(b.num_rows())?;
                    let mask = mask.as_boolean_opt().ok_or_else(|| {
                        EngineError::bug(format!("filter predicate returned {}", mask.data_type()))
                    })?;
                    let f = filter_record_batch(&b, mask)?;
                    if f.num_rows() > 0 {
                        out.push(f);
                    }
                }
                Ok(out)
            }
            Node::Project {
                input: child,
                exprs,
                schema,
            } => child
                .run(input, stats)?
                .into_iter()
                .map(|b| {
                    let n = b.num_rows();
                    let cols = exprs
                        .iter()
                        .map(|e| Ok(e.evaluate(&b)?.into_array(n)?))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(RecordBatch::try_new_with_options(
                        Arc::clone(schema),
                        cols,
                        &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
                    )?)
                })
                .collect(),
            Node::Union { inputs, schema } => {
                let mut out = Vec::new();
                for child in inputs {
                    for b in child.run(input, stats)? {
                        out.push(RecordBatch::try_new_with_options(
                            Arc::clone(schema),
                            b.columns().to_vec(),
                            &arrow::array::RecordBatchOptions::new()
                                .with_row_count(Some(b.num_rows())),
                        )?);
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The streaming plan of one query, built once when it starts.
#[derive(Debug)]
pub struct StreamPlan {
    /// The streams read, in source order (index = position in the offsets log).
    pub sources: Vec<Arc<StreamTable>>,
    /// Schema of the rows handed to the sink.
    pub output_schema: SchemaRef,
    /// Whether the plan keeps state across batches.
    pub stateful: bool,
    /// The plan's `with_watermark`s, in plan order (one per watermarked input).
    pub watermarks: Vec<WatermarkSpec>,
    /// Output columns that are functions of the grouping keys only (an aggregation's keys, the
    /// window among them): the default upsert keys of update-mode sinks. `None` without one.
    pub key_columns: Option<Vec<String>>,
    /// The stateless operators (up to the aggregate's input, or the whole plan).
    pre: Node,
    /// The aggregation and the stateless operators above it.
    agg: Option<AggStage>,
}

/// `SELECT DISTINCT` over a stream is Spark's `dropDuplicates()` on every column (state evicted
/// by the watermark when the event-time column is among them), not an aggregation: rewritten to
/// the dedup operator before the optimiser would turn it into a GROUP BY.
fn distinct_to_dedup(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::logical_expr::Distinct;
    Ok(plan
        .transform_up(|p| match p {
            LogicalPlan::Distinct(Distinct::All(input)) => {
                let cols = input.schema().columns();
                Ok(Transformed::yes(DedupNode::plan(
                    Arc::unwrap_or_clone(input),
                    cols,
                    false,
                )))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data)
}

/// For each output column of `plan`, whether it depends on an aggregation's grouping keys only;
/// `None` when the plan has no aggregation (or one under an operator this does not follow).
fn key_flags(plan: &LogicalPlan) -> Option<Vec<bool>> {
    match plan {
        LogicalPlan::Aggregate(a) => {
            let n = a.group_expr.len();
            Some((0..a.schema.fields().len()).map(|i| i < n).collect())
        }
        LogicalPlan::Filter(f) => key_flags(&f.input),
        LogicalPlan::SubqueryAlias(s) => key_flags(&s.input),
        LogicalPlan::Projection(p) => {
            let child = key_flags(&p.input)?;
            let schema = p.input.schema();
            Some(
                p.expr
                    .iter()
                    .map(|e| {
                        let cols = e.column_refs();
                        !cols.is_empty()
                            && cols.iter().all(|c| {
                                schema
                                    .index_of_column(c)
                                    .ok()
                                    .and_then(|i| child.get(i).copied())
                                    .unwrap_or(false)
                            })
                    })
                    .collect(),
            )
        }
        _ => None,
    }
}

/// The stateful operator of a plan.
#[derive(Debug)]
enum StatefulOp {
    Aggregate(AggregateOp),
    Dedup(DedupOp),
}

impl StatefulOp {
    fn committed_batch(&self) -> Option<u64> {
        match self {
            StatefulOp::Aggregate(a) => a.committed_batch(),
            StatefulOp::Dedup(d) => d.store().and_then(|s| s.committed_batch()),
        }
    }
    fn uses_watermark(&self) -> bool {
        match self {
            StatefulOp::Aggregate(a) => a.uses_watermark(),
            StatefulOp::Dedup(d) => d.uses_watermark(),
        }
    }
    /// Whether the watermark closes windows / drops late rows (not in complete mode).
    fn drops_late(&self) -> bool {
        match self {
            StatefulOp::Aggregate(a) => a.drops_late(),
            StatefulOp::Dedup(d) => d.uses_watermark(),
        }
    }
    fn set_store(&mut self, store: Box<dyn StateStore>) {
        match self {
            StatefulOp::Aggregate(a) => a.set_store(store),
            StatefulOp::Dedup(d) => d.set_store(store),
        }
    }
    fn store_ref(&self) -> Option<&dyn StateStore> {
        match self {
            StatefulOp::Aggregate(a) => a.store_ref(),
            StatefulOp::Dedup(d) => d.store(),
        }
    }
    fn store_mut(&mut self) -> Result<&mut Box<dyn StateStore>> {
        match self {
            StatefulOp::Aggregate(a) => a.store_mut(),
            StatefulOp::Dedup(d) => d.store_mut(),
        }
    }
    fn fingerprint(&self) -> Result<String> {
        match self {
            StatefulOp::Aggregate(a) => a.fingerprint(),
            StatefulOp::Dedup(d) => Ok(d.fingerprint()),
        }
    }
    fn legacy_fingerprint(&self) -> Result<String> {
        match self {
            StatefulOp::Aggregate(a) => a.legacy_fingerprint(),
            StatefulOp::Dedup(d) => Ok(d.legacy_fingerprint()),
        }
    }
    fn process(
        &mut self,
        input: &[RecordBatch],
        schema: &SchemaRef,
        late: i64,
        evict: i64,
    ) -> Result<crate::aggregate::AggOutput> {
        match self {
            StatefulOp::Aggregate(a) => a.process(input, schema, late, evict),
            StatefulOp::Dedup(d) => d.process(input, schema, late, evict),
        }
    }
    fn commit(&mut self, batch_id: u64) -> Result<CommitStats> {
        Ok(self.store_mut()?.commit(batch_id)?)
    }
    fn rows_total(&self) -> u64 {
        match self {
            StatefulOp::Aggregate(a) => a.rows_total(),
            StatefulOp::Dedup(d) => d.store().map_or(0, |s| s.rows_total()),
        }
    }
    fn name(&self) -> &'static str {
        match self {
            StatefulOp::Aggregate(_) => "stateStoreSave",
            StatefulOp::Dedup(d) if d.within_watermark() => "dedupeWithinWatermark",
            StatefulOp::Dedup(_) => "dedupe",
        }
    }
}

#[derive(Debug)]
struct AggStage {
    op: StatefulOp,
    input_schema: SchemaRef,
    post: Node,
}

/// What one batch produced.
#[derive(Debug, Default)]
pub struct BatchOutput {
    /// Rows for the sink.
    pub rows: Vec<RecordBatch>,
    /// Input rows dropped as late.
    pub late_rows: Vec<RecordBatch>,
    /// Partially aggregated rows dropped as late.
    pub dropped_by_watermark: u64,
    /// Groups written and removed within the batch (see [`crate::aggregate::AggOutput`]):
    /// added to the store's counts of updated and removed rows, as Spark counts them.
    pub evicted_touched: u64,
    /// Of those, the ones the store never held.
    pub evicted_new: u64,
    /// Whether the batch's state changes are staged in the store, to commit after the sink
    /// has the batch.
    pub staged: bool,
    /// Event times each watermark (index as in [`StreamPlan::watermarks`]) saw in the batch.
    pub event_stats: Vec<Option<EventTimeStats>>,
}

struct Ctx<'a> {
    state: &'a SessionState,
    sources: Vec<Arc<StreamTable>>,
    agg: Option<(StatefulOp, SchemaRef, Node)>,
    watermarks: Vec<WatermarkSpec>,
    /// Names under which a watermarked column is known (its own, its aliases, the UNION's
    /// output name for it), with the watermark's delay: Spark's watermark column metadata.
    watermarked: Vec<(String, i64)>,
    mode: OutputMode,
}

impl Ctx<'_> {
    fn watermark_of(&self, name: &str) -> Option<i64> {
        self.watermarked
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| *d)
    }

    fn mark_watermarked(&mut self, name: &str, delay: i64) {
        if self.watermark_of(name).is_none() {
            self.watermarked.push((name.to_string(), delay));
        }
    }
}

impl StreamPlan {
    /// Translates a logical plan. `clock` is the query's batch clock: `now()` and friends read it.
    /// `whole_late_rows`: a late-data sink wants the dropped rows with every column of the
    /// aggregation's input as written, so no column is pruned away below the aggregation
    /// (otherwise the sources read only what the query uses).
    pub fn build(
        plan: &LogicalPlan,
        state: &SessionState,
        clock: &BatchClock,
        mode: OutputMode,
        whole_late_rows: bool,
    ) -> Result<Self> {
        PLANS_BUILT.fetch_add(1, Ordering::SeqCst);
        let analyzed =
            state
                .analyzer()
                .execute_and_check(plan.clone(), state.config_options(), |_, _| {})?;
        let analyzed = distinct_to_dedup(analyzed)?;
        check_supported(&analyzed)?;
        let bound = bind_clock(analyzed, clock)?;
        let optimized = streaming_optimizer(!whole_late_rows).optimize(bound, state, |_, _| {})?;
        tracing::debug!("streaming plan:\n{}", optimized.display_indent());
        check_supported(&optimized)?;
        let mut ctx = Ctx {
            state,
            sources: Vec::new(),
            agg: None,
            watermarks: Vec::new(),
            watermarked: Vec::new(),
            mode,
        };
        let root = translate(&optimized, &mut ctx)?;
        if ctx.sources.is_empty() {
            return Err(EngineError::user(
                "the query reads no stream: start() needs a DataFrame from read_stream() (use collect() for batch tables)",
            ));
        }
        let output_schema = nullable_schema(optimized.schema().as_arrow());
        let key_columns = key_flags(&optimized).map(|flags| {
            output_schema
                .fields()
                .iter()
                .zip(flags)
                .filter(|(_, k)| *k)
                .map(|(f, _)| f.name().clone())
                .collect::<Vec<_>>()
        });
        if ctx.agg.is_some() && root.reads_source() {
            return Err(EngineError::user(
                "unsupported construct in streaming query: a stream read above the aggregation \
                 (e.g. UNION of an aggregated stream with another stream); union the streams \
                 first, then aggregate",
            ));
        }
        let (pre, agg) = match ctx.agg.take() {
            None => (root, None),
            Some((op, input_schema, pre)) => (
                pre,
                Some(AggStage {
                    op,
                    input_schema,
                    post: root,
                }),
            ),
        };
        if let Some(a) = &agg {
            if mode == OutputMode::Append
                && matches!(a.op, StatefulOp::Aggregate(_))
                && !a.op.uses_watermark()
            {
                return Err(EngineError::user(
                    "Append output mode not supported when there are streaming aggregations without a watermark: \
                     group by a window of the watermarked column (with_watermark(...), or the source's `watermark` key), \
                     or use update or complete mode",
                ));
            }
        }
        Ok(Self {
            sources: ctx.sources,
            output_schema,
            stateful: agg.is_some(),
            watermarks: ctx.watermarks,
            key_columns,
            pre,
            agg,
        })
    }

    /// The columns of source `source` the plan reads, ascending (`None`: all of them, or it
    /// reads none).
    pub fn source_columns(&mut self, source: usize) -> Option<Vec<usize>> {
        let mut cols = std::collections::BTreeSet::new();
        let mut all = false;
        self.pre.scans_mut(&mut |s, projection| {
            if s == source {
                match projection {
                    Some(p) => cols.extend(p.iter().copied()),
                    None => all = true,
                }
            }
        });
        (!all && !cols.is_empty()).then(|| cols.into_iter().collect())
    }

    /// Source `source` accepted to return only `columns` (see [`Source::project`]): its scans
    /// now pick their columns from those.
    ///
    /// [`Source::project`]: crate::connector::Source::project
    pub fn source_projected(&mut self, source: usize, columns: &[usize]) -> Result<()> {
        let mut missing = false;
        self.pre.scans_mut(&mut |s, projection| {
            if s != source {
                return;
            }
            if let Some(p) = projection {
                *p = p
                    .iter()
                    .map(|c| {
                        columns.binary_search(c).unwrap_or_else(|_| {
                            missing = true;
                            0
                        })
                    })
                    .collect();
            } else {
                missing = true;
            }
        });
        if missing {
            return Err(EngineError::bug(
                "a scan reads a column the source no longer returns",
            ));
        }
        Ok(())
    }

    /// The state store operators need, opened by the executor: `(operator index, name)`.
    pub fn state_operators(&self) -> Vec<(usize, &'static str)> {
        match &self.agg {
            Some(a) => vec![(0, a.op.name())],
            None => vec![],
        }
    }

    /// What operator `index`'s state means (see [`AggregateOp::fingerprint`]).
    pub fn state_fingerprint(&self, index: usize) -> Result<String> {
        match (&self.agg, index) {
            (Some(a), 0) => a.op.fingerprint(),
            _ => Err(EngineError::bug(format!("no stateful operator {index}"))),
        }
    }

    /// The form of [`state_fingerprint`](Self::state_fingerprint) older checkpoints recorded.
    pub fn legacy_state_fingerprint(&self, index: usize) -> Result<String> {
        match (&self.agg, index) {
            (Some(a), 0) => a.op.legacy_fingerprint(),
            _ => Err(EngineError::bug(format!("no stateful operator {index}"))),
        }
    }

    /// Gives operator `index` its state store.
    pub fn set_state_store(&mut self, index: usize, store: Box<dyn StateStore>) -> Result<()> {
        match (&mut self.agg, index) {
            (Some(a), 0) => {
                a.op.set_store(store);
                Ok(())
            }
            _ => Err(EngineError::bug(format!("no stateful operator {index}"))),
        }
    }

    /// The batch the state already holds (if the plan is stateful).
    pub fn state_batch(&self) -> Option<u64> {
        self.agg.as_ref().and_then(|a| a.op.committed_batch())
    }

    /// The batches of the state's snapshots (`None` for a stateless plan).
    pub fn state_snapshots(&self) -> Result<Option<Vec<u64>>> {
        match self.agg.as_ref().and_then(|a| a.op.store_ref()) {
            Some(store) => Ok(Some(store.snapshots()?)),
            None => Ok(None),
        }
    }

    /// Replaces the state by the snapshot of batch `snapshot` (`None`: empty).
    pub fn restore_state(&mut self, snapshot: Option<u64>) -> Result<()> {
        match &mut self.agg {
            Some(a) => Ok(a.op.store_mut()?.restore(snapshot)?),
            None => Err(EngineError::bug("restoring the state of a stateless plan")),
        }
    }

    /// Whether the aggregation evicts by watermark (a no-data batch can emit rows).
    pub fn evicts_by_watermark(&self) -> bool {
        self.agg.as_ref().is_some_and(|a| a.op.drops_late())
    }

    /// Runs one micro-batch's input (the batches of the single source) through the plan.
    /// `late_wm_ms`/`evict_wm_ms`: the previous and the current watermark. When `skip_state`
    /// (the state store already holds this batch), only the event times are collected.
    pub fn execute(
        &mut self,
        inputs: &[Vec<RecordBatch>],
        late_wm_ms: i64,
        evict_wm_ms: i64,
        skip_state: bool,
    ) -> Result<BatchOutput> {
        let mut stats = vec![None; self.watermarks.len()];
        let pre_out = self.pre.run(StageInput::Sources(inputs), &mut stats)?;
        let mut out = BatchOutput::default();
        match &mut self.agg {
            None => out.rows = pre_out,
            Some(_) if skip_state => {}
            Some(a) => {
                let r = a.op.process(
                    &pre_out,
                    &a.input_schema,
                    late_wm_ms * 1000,
                    evict_wm_ms * 1000,
                )?;
                // staged first: the store encodes and syncs the changes in the background
                // while the output is computed and written
                a.op.store_mut()?.stage(r.changes)?;
                out.staged = true;
                out.rows = a.post.run(StageInput::Rows(&r.rows), &mut stats)?;
                out.late_rows = r.late_rows;
                out.dropped_by_watermark = r.dropped_by_watermark;
                out.evicted_touched = r.evicted_touched;
                out.evicted_new = r.evicted_new;
            }
        }
        out.event_stats = stats;
        Ok(out)
    }

    /// Commits the state of batch `batch_id` (its changes staged by [`execute`](Self::execute)).
    pub fn commit_state(&mut self, batch_id: u64) -> Result<Option<CommitStats>> {
        match &mut self.agg {
            Some(a) => Ok(Some(a.op.commit(batch_id)?)),
            None => Ok(None),
        }
    }

    /// Schema of the late input rows (the aggregation's input), if the plan can drop any.
    pub fn late_rows_schema(&self) -> Option<SchemaRef> {
        self.agg
            .as_ref()
            .filter(|a| a.op.drops_late())
            .map(|a| Arc::clone(&a.input_schema))
    }

    /// Keys in state.
    pub fn state_rows(&self) -> u64 {
        self.agg.as_ref().map_or(0, |a| a.op.rows_total())
    }
}

fn nullable_schema(s: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        s.fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// An expression as text with its columns unqualified and its alias dropped (`sum(value)`):
/// what it computes, whatever the view or table it was read through is called.
fn unqualified(e: &Expr) -> String {
    e.clone()
        .unalias()
        .transform(|e| match e {
            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(
                datafusion::common::Column::new_unqualified(c.name),
            ))),
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data.to_string())
        .unwrap_or_else(|_| e.to_string())
}

/// DataFusion's optimiser without the rules that split one aggregation into two
/// (`count(DISTINCT x)` → GROUP BY x then count): a stream runs one stateful aggregation, whose
/// accumulators handle DISTINCT themselves. `prune_columns`: with the rule that narrows every
/// node (and the sources' scans) to the columns read above it.
fn streaming_optimizer(prune_columns: bool) -> datafusion::optimizer::Optimizer {
    let rules = datafusion::optimizer::Optimizer::new()
        .rules
        .into_iter()
        .filter(|r| r.name() != "single_distinct_aggregation_to_group_by")
        .filter(|r| prune_columns || r.name() != "optimize_projections")
        .collect();
    datafusion::optimizer::Optimizer::with_rules(rules)
}

/// Refuses constructs a stateless streaming query cannot run, naming them.
fn check_supported(plan: &LogicalPlan) -> Result<()> {
    let mut err = None;
    plan.apply_with_subqueries(|p| {
        let what = match p {
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::TableScan(_) => None,
            LogicalPlan::Aggregate(_) => None,
            LogicalPlan::Extension(e)
                if e.node.as_any().is::<WatermarkNode>() || e.node.as_any().is::<DedupNode>() =>
            {
                None
            }
            LogicalPlan::Distinct(_) => Some("DISTINCT ON is not supported on a stream yet"),
            LogicalPlan::Join(_) => Some("JOIN is not supported on a stream yet"),
            LogicalPlan::Sort(_) => {
                Some("ORDER BY is not supported on a stream (sorting needs the whole input)")
            }
            LogicalPlan::Limit(_) => Some("LIMIT is not supported on a stream"),
            LogicalPlan::Window(_) => {
                Some("window functions (OVER ...) are not supported on a stream")
            }
            LogicalPlan::Union(_) => None,
            LogicalPlan::Unnest(_) => Some("UNNEST is not supported on a stream yet"),
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => None,
            LogicalPlan::RecursiveQuery(_) => Some("recursive queries are not supported"),
            LogicalPlan::Subquery(_) => Some("subqueries in expressions are not supported"),
            _ => Some("this kind of statement cannot run as a streaming query"),
        };
        if let Some(w) = what {
            let node = p.display().to_string();
            err = Some(EngineError::user(format!(
                "unsupported construct in streaming query: {w} (at: {node})"
            )));
            return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
        }
        if let LogicalPlan::TableScan(scan) = p {
            if stream_of_scan(scan).is_none() && !is_view(scan) {
                err = Some(EngineError::user(format!(
                    "unsupported construct in streaming query: table '{}' is not a stream; \
                     joining streams with static tables is not supported yet",
                    scan.table_name
                )));
                return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn is_view(scan: &datafusion::logical_expr::TableScan) -> bool {
    scan.source.get_logical_plan().is_some()
}

/// Replaces `now()`, `current_timestamp()`, `current_date()`, `current_time()` by functions of
/// the batch clock.
fn bind_clock(plan: LogicalPlan, clock: &BatchClock) -> Result<LogicalPlan> {
    let rewritten = plan.transform_up_with_subqueries(|node| {
        node.map_expressions(|e| {
            e.transform_up(|e| match &e {
                Expr::ScalarFunction(ScalarFunction { func, args }) if args.is_empty() => {
                    match BatchClockUdf::kind_of(func.name()) {
                        Some(kind) => {
                            let field = func.return_field_from_args(ReturnFieldArgs {
                                arg_fields: &[],
                                scalar_arguments: &[],
                            })?;
                            let udf = ScalarUDF::new_from_impl(BatchClockUdf::new(
                                func.name(),
                                kind,
                                field,
                                clock.clone(),
                            ));
                            Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction {
                                func: Arc::new(udf),
                                args: vec![],
                            })))
                        }
                        None => Ok(Transformed::no(e)),
                    }
                }
                _ => Ok(Transformed::no(e)),
            })
        })
    })?;
    Ok(rewritten.data)
}

fn translate(plan: &LogicalPlan, ctx: &mut Ctx<'_>) -> Result<Node> {
    let state = ctx.state;
    match plan {
        LogicalPlan::TableScan(scan) => {
            let stream = stream_of_scan(scan).ok_or_else(|| {
                EngineError::user(format!("table '{}' is not a stream", scan.table_name))
            })?;
            if !scan.filters.is_empty() || scan.fetch.is_some() {
                return Err(EngineError::bug(
                    "filters or limit pushed into a stream scan",
                ));
            }
            let source = match ctx.sources.iter().position(|s| Arc::ptr_eq(s, &stream)) {
                Some(i) => i,
                None => {
                    ctx.sources.push(stream);
                    ctx.sources.len() - 1
                }
            };
            Ok(Node::Scan {
                source,
                projection: scan.projection.clone(),
                schema: Arc::new(scan.projected_schema.as_arrow().clone()),
            })
        }
        LogicalPlan::Filter(f) => {
            let input = translate(&f.input, ctx)?;
            let predicate = state.create_physical_expr(f.predicate.clone(), f.input.schema())?;
            Ok(Node::Filter {
                input: Box::new(input),
                predicate,
            })
        }
        LogicalPlan::Projection(p) => {
            let input = translate(&p.input, ctx)?;
            // an alias of a watermarked column is watermarked too (Spark keeps the column's
            // watermark metadata through projections)
            for (e, f) in p.expr.iter().zip(p.schema.fields()) {
                let inner = match e {
                    Expr::Alias(a) => a.expr.as_ref(),
                    other => other,
                };
                if let Expr::Column(c) = inner {
                    if let Some(d) = ctx.watermark_of(&c.name) {
                        ctx.mark_watermarked(f.name(), d);
                    }
                }
            }
            let exprs = p
                .expr
                .iter()
                .map(|e| Ok(state.create_physical_expr(e.clone(), p.input.schema())?))
                .collect::<Result<Vec<_>>>()?;
            Ok(Node::Project {
                input: Box::new(input),
                exprs,
                schema: nullable_schema(p.schema.as_arrow()),
            })
        }
        LogicalPlan::SubqueryAlias(a) => translate(&a.input, ctx),
        LogicalPlan::Union(u) => {
            let schema = nullable_schema(u.schema.as_arrow());
            let mut inputs = Vec::with_capacity(u.inputs.len());
            for child in &u.inputs {
                inputs.push(translate(child, ctx)?);
                // the union's column is watermarked where a branch's column is
                for (cf, uf) in child.schema().fields().iter().zip(schema.fields()) {
                    if let Some(d) = ctx.watermark_of(cf.name()) {
                        ctx.mark_watermarked(uf.name(), d);
                    }
                }
            }
            Ok(Node::Union { inputs, schema })
        }
        LogicalPlan::Extension(e) if e.node.as_any().is::<DedupNode>() => {
            let d = e
                .node
                .as_any()
                .downcast_ref::<DedupNode>()
                .ok_or_else(|| EngineError::bug("dedup node"))?;
            let pre = translate(&d.input, ctx)?;
            // checked after the input is translated: a stateful operator below sets ctx.agg
            if ctx.agg.is_some() {
                return Err(EngineError::user(
                    "unsupported construct in streaming query: more than one stateful operator in one query \
                     (a deduplication over an aggregation or deduplication)",
                ));
            }
            let in_df = d.input.schema();
            let in_schema: SchemaRef = Arc::new(in_df.as_arrow().clone());
            let mut keys = Vec::new();
            let mut key_types = Vec::new();
            for c in &d.columns {
                let e = Expr::Column(c.clone());
                key_types.push(e.get_type(in_df.as_ref())?);
                keys.push(state.create_physical_expr(e, in_df)?);
            }
            // the watermarked column of the input (preferring one among the keys): late rows
            // are judged on it; keys are forgotten by it when it is a key or within watermark
            let present: Vec<&(String, i64)> = ctx
                .watermarked
                .iter()
                .filter(|(col, _)| in_df.index_of_column_by_name(None, col).is_some())
                .collect();
            let in_keys = |col: &str| d.columns.iter().any(|c| c.name == col);
            let watermarked = present
                .iter()
                .find(|(col, _)| in_keys(col))
                .or_else(|| present.first());
            let (time, time_in_keys) = match watermarked {
                Some((col, delay)) => {
                    let e = Expr::Column(datafusion::common::Column::from_name(col.clone()));
                    (
                        Some((state.create_physical_expr(e, in_df)?, *delay)),
                        in_keys(col),
                    )
                }
                None => (None, false),
            };
            let key_names = d.columns.iter().map(|c| c.name.clone()).collect();
            let op = DedupOp::new(
                keys,
                key_names,
                key_types,
                time,
                time_in_keys,
                d.within_watermark,
            )?;
            ctx.agg = Some((StatefulOp::Dedup(op), in_schema, pre));
            Ok(Node::Input)
        }
        LogicalPlan::Extension(e) => {
            let w = e
                .node
                .as_any()
                .downcast_ref::<WatermarkNode>()
                .ok_or_else(|| {
                    EngineError::user(format!(
                        "unsupported construct in streaming query: {}",
                        e.node.name()
                    ))
                })?;
            let input = translate(&w.input, ctx)?;
            let column = w.input.schema().index_of_column(&w.column)?;
            ctx.watermarks.push(WatermarkSpec {
                column: w.column.name.clone(),
                delay_ms: w.delay_ms,
            });
            ctx.mark_watermarked(&w.column.name, w.delay_ms);
            Ok(Node::Watermark {
                input: Box::new(input),
                column,
                index: ctx.watermarks.len() - 1,
            })
        }
        LogicalPlan::Aggregate(a) => {
            let pre = translate(&a.input, ctx)?;
            // checked after the input is translated: a stateful operator below sets ctx.agg
            if ctx.agg.is_some() {
                return Err(EngineError::user(
                    "unsupported construct in streaming query: more than one stateful operator in one query \
                     (an aggregation over an aggregation or deduplication)",
                ));
            }
            let in_df = a.input.schema();
            let in_schema: SchemaRef = Arc::new(in_df.as_arrow().clone());
            let mut window = None;
            let mut keys = Vec::new();
            let mut key_types = Vec::new();
            let mut watermarked = false;
            let mut key_names = Vec::new();
            for (pos, g) in a.group_expr.iter().enumerate() {
                let inner = match g {
                    Expr::Alias(al) => al.expr.as_ref(),
                    other => other,
                };
                if let Expr::ScalarFunction(ScalarFunction { func, args }) = inner {
                    if let Some(kind) = WindowUdf::kind_of(func) {
                        if window.is_some() {
                            return Err(EngineError::user("GROUP BY has two window() calls"));
                        }
                        let spec = spec_of_args(kind, args)?;
                        let time = state.create_physical_expr(args[0].clone(), in_df)?;
                        key_names.insert(0, format!("window time: {}", unqualified(&args[0])));
                        if let Expr::Column(c) = &args[0] {
                            watermarked = ctx.watermark_of(&c.name).is_some();
                        }
                        window = Some(WindowGroup {
                            position: pos,
                            time,
                            spec,
                        });
                        continue;
                    }
                }
                keys.push(state.create_physical_expr(g.clone(), in_df)?);
                key_types.push(g.get_type(in_df.as_ref())?);
                key_names.push(unqualified(inner));
            }
            let mut aggs = Vec::new();
            for e in &a.aggr_expr {
                let lowered = LoweredAggregateBuilder::new(
                    e,
                    in_df,
                    &in_schema,
                    state.execution_props(),
                    &PhysicalPlanningContext::default(),
                )
                .build()?;
                if !lowered.order_bys.is_empty() {
                    return Err(EngineError::user(
                        "unsupported construct in streaming query: ORDER BY inside an aggregate",
                    ));
                }
                aggs.push(AggSpec {
                    expr: lowered.aggregate,
                    filter: lowered.filter,
                });
            }
            let agg_names = a.aggr_expr.iter().map(unqualified).collect();
            let mut op = AggregateOp::new(
                window,
                keys,
                key_types,
                aggs,
                Arc::new(a.schema.as_arrow().clone()),
                ctx.mode,
                watermarked,
            )?;
            op.set_names(key_names, agg_names);
            ctx.agg = Some((StatefulOp::Aggregate(op), in_schema, pre));
            Ok(Node::Input)
        }
        other => Err(EngineError::user(format!(
            "unsupported construct in streaming query: {}",
            other.display()
        ))),
    }
}
