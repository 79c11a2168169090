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

use crate::clock::{BatchClock, BatchClockUdf};
use crate::connector::SourceSpec;
use crate::error::{EngineError, Result};

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
    root: Node,
}

impl StreamPlan {
    /// Translates a logical plan. `clock` is the query's batch clock: `now()` and friends read it.
    pub fn build(plan: &LogicalPlan, state: &SessionState, clock: &BatchClock) -> Result<Self> {
        let analyzed =
            state
                .analyzer()
                .execute_and_check(plan.clone(), state.config_options(), |_, _| {})?;
        check_supported(&analyzed)?;
        let bound = bind_clock(analyzed, clock)?;
        let optimized = state.optimize(&bound)?;
        check_supported(&optimized)?;
        let mut sources = Vec::new();
        let root = translate(&optimized, state, &mut sources)?;
        if sources.is_empty() {
            return Err(EngineError::user(
                "the query reads no stream: start() needs a DataFrame from read_stream() (use collect() for batch tables)",
            ));
        }
        let output_schema = nullable_schema(optimized.schema().as_arrow());
        Ok(Self {
            sources,
            output_schema,
            stateful: false,
            root,
        })
    }

    /// Runs one micro-batch's input (the batches of the single source) through the plan.
    pub fn execute(&self, inputs: &[Vec<RecordBatch>]) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for batch in inputs.iter().flatten() {
            let b = self.root.execute(batch)?;
            if b.num_rows() > 0 {
                out.push(b);
            }
        }
        Ok(out)
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
            LogicalPlan::Aggregate(_) => Some(
                "aggregation (GROUP BY or an aggregate function) is not supported on a stream yet",
            ),
            LogicalPlan::Distinct(_) => Some("DISTINCT is not supported on a stream yet"),
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

fn translate(
    plan: &LogicalPlan,
    state: &SessionState,
    sources: &mut Vec<Arc<StreamTable>>,
) -> Result<Node> {
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
            if !sources.iter().any(|s| Arc::ptr_eq(s, &stream)) {
                if !sources.is_empty() {
                    return Err(EngineError::user(
                        "unsupported construct in streaming query: reading two streams in one query (join/union) is not supported yet",
                    ));
                }
                sources.push(stream);
            }
            Ok(Node::Scan {
                projection: scan.projection.clone(),
                schema: Arc::new(scan.projected_schema.as_arrow().clone()),
            })
        }
        LogicalPlan::Filter(f) => {
            let input = translate(&f.input, state, sources)?;
            let predicate = state.create_physical_expr(f.predicate.clone(), f.input.schema())?;
            Ok(Node::Filter {
                input: Box::new(input),
                predicate,
            })
        }
        LogicalPlan::Projection(p) => {
            let input = translate(&p.input, state, sources)?;
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
        LogicalPlan::SubqueryAlias(a) => translate(&a.input, state, sources),
        other => Err(EngineError::user(format!(
            "unsupported construct in streaming query: {}",
            other.display()
        ))),
    }
}
