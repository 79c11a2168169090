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

use std::sync::atomic::{AtomicI64, Ordering};

use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::ExprSchemable;
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use sluice_state::store::{CommitStats, StateChanges, StateStore};

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

/// One operator of the streaming plan.
#[derive(Debug)]
enum Node {
    /// The rows of the stage's input (the aggregate's output for the stage above it).
    Input,
    Watermark {
        input: Box<Node>,
        column: usize,
        max: Arc<AtomicI64>,
    },
    Scan {
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
}

impl Node {
    fn execute(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        match self {
            Node::Input => Ok(batch.clone()),
            Node::Watermark { input, column, max } => {
                let b = input.execute(batch)?;
                let ts = event_micros(b.column(*column))?;
                if let Some(m) = arrow::compute::max(&ts) {
                    max.fetch_max(m, Ordering::SeqCst);
                }
                Ok(b)
            }
            Node::Scan { projection, schema } => {
                let b = match projection {
                    Some(p) => batch.project(p)?,
                    None => batch.clone(),
                };
                // the source's schema may differ in metadata/nullability only
                Ok(RecordBatch::try_new(
                    Arc::clone(schema),
                    b.columns().to_vec(),
                )?)
            }
            Node::Filter { input, predicate } => {
                let b = input.execute(batch)?;
                let mask = predicate.evaluate(&b)?.into_array(b.num_rows())?;
                let mask = mask.as_boolean_opt().ok_or_else(|| {
                    EngineError::bug(format!("filter predicate returned {}", mask.data_type()))
                })?;
                Ok(filter_record_batch(&b, mask)?)
            }
            Node::Project {
                input,
                exprs,
                schema,
            } => {
                let b = input.execute(batch)?;
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
    /// The watermark delay, ms, if the plan has `with_watermark`.
    pub watermark_delay_ms: Option<i64>,
    /// Output columns that are functions of the grouping keys only (an aggregation's keys, the
    /// window among them): the default upsert keys of update-mode sinks. `None` without one.
    pub key_columns: Option<Vec<String>>,
    /// The stateless operators (up to the aggregate's input, or the whole plan).
    pre: Node,
    /// The aggregation and the stateless operators above it.
    agg: Option<AggStage>,
    /// Largest event time (µs) seen by the watermark node in the current batch.
    max_event_time: Arc<AtomicI64>,
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
    fn set_store(&mut self, store: Box<dyn StateStore>) {
        match self {
            StatefulOp::Aggregate(a) => a.set_store(store),
            StatefulOp::Dedup(d) => d.set_store(store),
        }
    }
    fn fingerprint(&self) -> Result<String> {
        match self {
            StatefulOp::Aggregate(a) => a.fingerprint(),
            StatefulOp::Dedup(d) => Ok(d.fingerprint()),
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
    fn commit(&mut self, batch_id: u64, changes: StateChanges) -> Result<CommitStats> {
        match self {
            StatefulOp::Aggregate(a) => a.commit(batch_id, changes),
            StatefulOp::Dedup(d) => Ok(d.store_mut()?.commit(batch_id, changes)?),
        }
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
    /// State changes to commit after the sink has the batch.
    pub changes: Option<StateChanges>,
    /// Largest event time in the batch, ms.
    pub max_event_time_ms: Option<i64>,
}

struct Ctx<'a> {
    state: &'a SessionState,
    sources: Vec<Arc<StreamTable>>,
    agg: Option<(StatefulOp, SchemaRef, Node)>,
    watermark: Option<(String, i64)>,
    max_event_time: Arc<AtomicI64>,
    mode: OutputMode,
}

impl StreamPlan {
    /// Translates a logical plan. `clock` is the query's batch clock: `now()` and friends read it.
    pub fn build(
        plan: &LogicalPlan,
        state: &SessionState,
        clock: &BatchClock,
        mode: OutputMode,
    ) -> Result<Self> {
        PLANS_BUILT.fetch_add(1, Ordering::SeqCst);
        let analyzed =
            state
                .analyzer()
                .execute_and_check(plan.clone(), state.config_options(), |_, _| {})?;
        let analyzed = distinct_to_dedup(analyzed)?;
        check_supported(&analyzed)?;
        let bound = bind_clock(analyzed, clock)?;
        let optimized = state.optimize(&bound)?;
        check_supported(&optimized)?;
        let mut ctx = Ctx {
            state,
            sources: Vec::new(),
            agg: None,
            watermark: None,
            max_event_time: Arc::new(AtomicI64::new(i64::MIN)),
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
            watermark_delay_ms: ctx.watermark.map(|(_, d)| d),
            key_columns,
            pre,
            agg,
            max_event_time: ctx.max_event_time,
        })
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

    /// Whether the aggregation evicts by watermark (a no-data batch can emit rows).
    pub fn evicts_by_watermark(&self) -> bool {
        self.agg
            .as_ref()
            .is_some_and(|a| matches!(a.op, StatefulOp::Aggregate(_)) && a.op.uses_watermark())
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
        self.max_event_time.store(i64::MIN, Ordering::SeqCst);
        let mut pre_out = Vec::new();
        for batch in inputs.iter().flatten() {
            let b = self.pre.execute(batch)?;
            if b.num_rows() > 0 {
                pre_out.push(b);
            }
        }
        let max = self.max_event_time.load(Ordering::SeqCst);
        let mut out = BatchOutput {
            max_event_time_ms: (max != i64::MIN).then(|| max.div_euclid(1000)),
            ..Default::default()
        };
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
                for b in &r.rows {
                    let b = a.post.execute(b)?;
                    if b.num_rows() > 0 {
                        out.rows.push(b);
                    }
                }
                out.late_rows = r.late_rows;
                out.dropped_by_watermark = r.dropped_by_watermark;
                out.changes = Some(r.changes);
            }
        }
        Ok(out)
    }

    /// Commits the state of batch `batch_id`.
    pub fn commit_state(
        &mut self,
        batch_id: u64,
        changes: StateChanges,
    ) -> Result<Option<CommitStats>> {
        match &mut self.agg {
            Some(a) => Ok(Some(a.op.commit(batch_id, changes)?)),
            None => Ok(None),
        }
    }

    /// Schema of the late input rows (the aggregation's input), if the plan can drop any.
    pub fn late_rows_schema(&self) -> Option<SchemaRef> {
        self.agg
            .as_ref()
            .filter(|a| a.op.uses_watermark())
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
            LogicalPlan::Union(_) => Some("UNION is not supported on a stream yet"),
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
            if !ctx.sources.iter().any(|s| Arc::ptr_eq(s, &stream)) {
                if !ctx.sources.is_empty() {
                    return Err(EngineError::user(
                        "unsupported construct in streaming query: reading two streams in one query (join/union) is not supported yet",
                    ));
                }
                ctx.sources.push(stream);
            }
            Ok(Node::Scan {
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
        LogicalPlan::Extension(e) if e.node.as_any().is::<DedupNode>() => {
            let d = e
                .node
                .as_any()
                .downcast_ref::<DedupNode>()
                .ok_or_else(|| EngineError::bug("dedup node"))?;
            if ctx.agg.is_some() {
                return Err(EngineError::user(
                    "unsupported construct in streaming query: more than one stateful operator in one query",
                ));
            }
            let pre = translate(&d.input, ctx)?;
            let in_df = d.input.schema();
            let in_schema: SchemaRef = Arc::new(in_df.as_arrow().clone());
            let mut keys = Vec::new();
            let mut key_types = Vec::new();
            for c in &d.columns {
                let e = Expr::Column(c.clone());
                key_types.push(e.get_type(in_df.as_ref())?);
                keys.push(state.create_physical_expr(e, in_df)?);
            }
            let time = match &ctx.watermark {
                Some((col, delay)) => {
                    let in_keys = d.columns.iter().any(|c| &c.name == col);
                    if d.within_watermark || in_keys {
                        let e = Expr::Column(datafusion::common::Column::from_name(col.clone()));
                        Some((state.create_physical_expr(e, in_df)?, *delay))
                    } else {
                        None
                    }
                }
                None => None,
            };
            let op = DedupOp::new(keys, key_types, time, d.within_watermark)?;
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
            if ctx.watermark.is_some() {
                return Err(EngineError::user(
                    "more than one watermark in a query is not supported yet",
                ));
            }
            let input = translate(&w.input, ctx)?;
            let column = w.input.schema().index_of_column(&w.column)?;
            ctx.watermark = Some((w.column.name.clone(), w.delay_ms));
            Ok(Node::Watermark {
                input: Box::new(input),
                column,
                max: Arc::clone(&ctx.max_event_time),
            })
        }
        LogicalPlan::Aggregate(a) => {
            if ctx.agg.is_some() {
                return Err(EngineError::user(
                    "unsupported construct in streaming query: more than one aggregation in one query",
                ));
            }
            let pre = translate(&a.input, ctx)?;
            let in_df = a.input.schema();
            let in_schema: SchemaRef = Arc::new(in_df.as_arrow().clone());
            let mut window = None;
            let mut keys = Vec::new();
            let mut key_types = Vec::new();
            let mut watermarked = false;
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
                        if let (Expr::Column(c), Some((wm_col, _))) = (&args[0], &ctx.watermark) {
                            watermarked = &c.name == wm_col;
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
            let op = AggregateOp::new(
                window,
                keys,
                key_types,
                aggs,
                Arc::new(a.schema.as_arrow().clone()),
                ctx.mode,
                watermarked,
            )?;
            ctx.agg = Some((StatefulOp::Aggregate(op), in_schema, pre));
            Ok(Node::Input)
        }
        other => Err(EngineError::user(format!(
            "unsupported construct in streaming query: {}",
            other.display()
        ))),
    }
}
