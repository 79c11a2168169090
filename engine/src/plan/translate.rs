//! From a DataFusion logical plan to Sluice's streaming plan.
//!
//! Streams appear in logical plans as scans of a [`StreamTable`]. When a query starts, its plan
//! is analysed (type coercion, views inlined), its time functions are bound to the batch clock,
//! it is optimised, and then translated once into stateless nodes and a chain of stateful
//! operators whose expressions are DataFusion physical expressions. Every batch runs through
//! that same program: nothing is planned per batch.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Expr, LogicalPlan, ReturnFieldArgs, ScalarUDF};

use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::ExprSchemable;
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;

use super::node::Node;
use super::static_table::static_of_scan;
use super::stream::{stream_of_scan, StreamTable, WatermarkSpec};
use super::stream_plan::Stage;
use crate::connector::OutputMode;
use crate::error::{EngineError, Result};
use crate::operators::aggregate::{AggSpec, AggregateOp, WindowGroup};
use crate::operators::clock::{BatchClock, BatchClockUdf};
use crate::operators::dedup::{DedupNode, DedupOp};
use crate::operators::generate::GenerateNode;
use crate::operators::watermark::WatermarkNode;
use crate::operators::window::{spec_of_args, WindowTimeUdf, WindowUdf};

/// How many streaming plans this process has built (one per started query, never per batch).
pub static PLANS_BUILT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What translation collects besides the nodes: the streams, the stateful stages, the
/// watermarks.
pub(crate) struct Ctx<'a> {
    pub(crate) state: &'a SessionState,
    pub(crate) sources: Vec<Arc<StreamTable>>,
    /// The stateful operators translated so far, nearest the sources first.
    pub(crate) stages: Vec<Stage>,
    pub(crate) watermarks: Vec<WatermarkSpec>,
    /// Names under which a watermarked column is known (its own, its aliases, the UNION's
    /// output name for it, an aggregation's window over it), with the watermark's delay:
    /// Spark's watermark column metadata.
    pub(crate) watermarked: Vec<(String, i64)>,
    pub(crate) mode: OutputMode,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(state: &'a SessionState, mode: OutputMode) -> Self {
        Self {
            state,
            sources: Vec::new(),
            stages: Vec::new(),
            watermarks: Vec::new(),
            watermarked: Vec::new(),
            mode,
        }
    }

    pub(crate) fn watermark_of(&self, name: &str) -> Option<i64> {
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

    /// The watermark delay of an event-time expression: a watermarked column, or
    /// `window_time(w)` of a window `w` over one (Spark's `window_time` keeps the metadata).
    pub(crate) fn watermark_of_expr(&self, e: &Expr) -> Option<i64> {
        match e {
            Expr::Column(c) => self.watermark_of(&c.name),
            Expr::Alias(a) => self.watermark_of_expr(&a.expr),
            Expr::ScalarFunction(ScalarFunction { func, args })
                if func.name() == WindowTimeUdf::NAME && args.len() == 1 =>
            {
                self.watermark_of_expr(&args[0])
            }
            _ => None,
        }
    }
}

/// `SELECT DISTINCT` over a stream is Spark's `dropDuplicates()` on every column (state evicted
/// by the watermark when the event-time column is among them), not an aggregation: rewritten to
/// the dedup operator before the optimiser would turn it into a GROUP BY.
pub(crate) fn distinct_to_dedup(plan: LogicalPlan) -> Result<LogicalPlan> {
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
pub(crate) fn key_flags(plan: &LogicalPlan) -> Option<Vec<bool>> {
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

pub(crate) fn nullable_schema(s: &Schema) -> SchemaRef {
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
pub(crate) fn streaming_optimizer(prune_columns: bool) -> datafusion::optimizer::Optimizer {
    let rules = datafusion::optimizer::Optimizer::new()
        .rules
        .into_iter()
        .filter(|r| r.name() != "single_distinct_aggregation_to_group_by")
        .filter(|r| prune_columns || r.name() != "optimize_projections")
        .collect();
    datafusion::optimizer::Optimizer::with_rules(rules)
}

/// Refuses constructs a stateless streaming query cannot run, naming them.
pub(crate) fn check_supported(plan: &LogicalPlan) -> Result<()> {
    let mut err = None;
    plan.apply_with_subqueries(|p| {
        let what = match p {
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::TableScan(_) => None,
            LogicalPlan::Aggregate(_) => None,
            LogicalPlan::Extension(e)
                if e.node.as_any().is::<WatermarkNode>()
                    || e.node.as_any().is::<DedupNode>()
                    || e.node.as_any().is::<GenerateNode>() =>
            {
                None
            }
            LogicalPlan::Distinct(_) => Some("DISTINCT ON is not supported on a stream yet"),
            LogicalPlan::Join(_) => None,
            // only over an aggregation in complete mode (translate says so)
            LogicalPlan::Sort(_) => None,
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
            if stream_of_scan(scan).is_none() && static_of_scan(scan).is_none() && !is_view(scan) {
                err = Some(EngineError::user(format!(
                    "unsupported construct in streaming query: table '{}' is neither a stream \
                     nor a static table (read static tables with session.read(), or a \
                     pipeline file's [table.*] section)",
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
pub(crate) fn bind_clock(plan: LogicalPlan, clock: &BatchClock) -> Result<LogicalPlan> {
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

pub(crate) fn translate(plan: &LogicalPlan, ctx: &mut Ctx<'_>) -> Result<Node> {
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
            // (and so is `window_time(w)` of a watermarked window `w`, under any alias)
            for (e, f) in p.expr.iter().zip(p.schema.fields()) {
                if let Some(d) = ctx.watermark_of_expr(e) {
                    ctx.mark_watermarked(f.name(), d);
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
        LogicalPlan::Sort(s) => {
            let input = translate(&s.input, ctx)?;
            let over_aggregation = s
                .input
                .exists(|p| Ok(matches!(p, LogicalPlan::Aggregate(_))))?;
            if !over_aggregation || ctx.mode != OutputMode::Complete || s.fetch.is_some() {
                return Err(EngineError::user(
                    "unsupported construct in streaming query: ORDER BY (Spark's rule: sorting \
                     is not supported on streaming DataFrames/Datasets, unless it is on an \
                     aggregated DataFrame/Dataset in Complete output mode; LIMIT is not \
                     supported)",
                ));
            }
            let keys = s
                .expr
                .iter()
                .map(|k| {
                    Ok((
                        state.create_physical_expr(k.expr.clone(), s.input.schema())?,
                        !k.asc,
                        k.nulls_first,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Node::Sort {
                input: Box::new(input),
                keys,
                schema: nullable_schema(s.input.schema().as_arrow()),
            })
        }
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
            let below = translate(&d.input, ctx)?;
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
                    let mut e = Expr::Column(datafusion::common::Column::from_name(col.clone()));
                    // a window struct (an aggregation's output) is judged by its end, as
                    // Spark's watermark predicate on a window column is
                    if matches!(
                        e.get_type(in_df.as_ref())?,
                        arrow::datatypes::DataType::Struct(_)
                    ) {
                        e = datafusion::functions::core::expr_fn::get_field(e, "end");
                    }
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
            ctx.stages
                .push(Stage::single(Box::new(op), in_schema, below));
            Ok(Node::Input)
        }
        LogicalPlan::Extension(e) if e.node.as_any().is::<GenerateNode>() => {
            let g = e
                .node
                .as_any()
                .downcast_ref::<GenerateNode>()
                .ok_or_else(|| EngineError::bug("generate node"))?;
            let input = translate(&g.input, ctx)?;
            let column = g.input.schema().index_of_column(&g.column)?;
            Ok(Node::Generate {
                input: Box::new(input),
                column,
                position: g.position.is_some(),
                outer: g.outer,
                schema: nullable_schema(e.node.schema().as_arrow()),
            })
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
            let below = translate(&a.input, ctx)?;
            let in_df = a.input.schema();
            let in_schema: SchemaRef = Arc::new(in_df.as_arrow().clone());
            let mut window = None;
            let mut keys = Vec::new();
            let mut key_types = Vec::new();
            let mut watermarked = false;
            let mut window_pos = None;
            let mut window_delay = None;
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
                        window_delay = ctx.watermark_of_expr(&args[0]);
                        watermarked = window_delay.is_some();
                        window_pos = Some(pos);
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
            // the window of the output is event time too: `window_time(window)` of it can be
            // windowed again downstream (Spark ≥ 3.4)
            if let (Some(pos), Some(delay)) = (window_pos, window_delay) {
                if let Some(f) = a.schema.fields().get(pos) {
                    ctx.mark_watermarked(f.name(), delay);
                }
            }
            ctx.stages
                .push(Stage::single(Box::new(op), in_schema, below));
            Ok(Node::Input)
        }
        LogicalPlan::Join(j) => super::join::translate_join(j, ctx),
        other => Err(EngineError::user(format!(
            "unsupported construct in streaming query: {}",
            other.display()
        ))),
    }
}
