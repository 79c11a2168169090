//! The stateless nodes of a streaming plan (scans, watermarks, filters, projections, UNION
//! ALL), each with DataFusion physical expressions, run over a batch's rows.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use datafusion::physical_plan::PhysicalExpr;

use super::static_table::StaticTable;
use super::stream::EventTimeStats;
use crate::error::{EngineError, Result};
use crate::operators::join::static_join::StaticJoin;
use crate::operators::window::event_micros;

/// What a stage of nodes reads: the sources' batches (the stateless stage) or the rows the
/// stateful operator emitted (the stage above it).
#[derive(Clone, Copy)]
pub(crate) enum StageInput<'a> {
    Sources(&'a [Vec<RecordBatch>]),
    Rows(&'a [RecordBatch]),
}

/// One operator of the streaming plan.
#[derive(Debug)]
pub(crate) enum Node {
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
    /// A stream joined with a static table.
    StaticJoin(Box<StaticJoinNode>),
    /// `ORDER BY` of an aggregation's whole result (complete mode only, as in Spark): the
    /// stage's rows sorted together.
    Sort {
        input: Box<Node>,
        /// (key, descending, nulls first)
        keys: Vec<(Arc<dyn PhysicalExpr>, bool, bool)>,
        schema: SchemaRef,
    },
    /// `explode` / `posexplode` (`_outer`) of an array column
    /// ([`generate`](crate::operators::generate)).
    Generate {
        input: Box<Node>,
        column: usize,
        position: bool,
        outer: bool,
        schema: SchemaRef,
    },
}

/// A stream joined with a static table: the stream's nodes, and the nodes over the static
/// table's rows (read once per refresh).
#[derive(Debug)]
pub(crate) struct StaticJoinNode {
    pub(crate) stream: Node,
    /// The static side's nodes, over the table's (projected) rows as the stage input.
    pub(crate) build: Node,
    pub(crate) table: Arc<StaticTable>,
    pub(crate) projection: Option<Vec<usize>>,
    /// The schema of what `build` produces.
    pub(crate) build_schema: SchemaRef,
    pub(crate) join: StaticJoin,
}

impl Node {
    /// Whether the node reads a source (below it or itself).
    pub(crate) fn reads_source(&self) -> bool {
        match self {
            Node::Scan { .. } => true,
            Node::Input => false,
            Node::Watermark { input, .. }
            | Node::Filter { input, .. }
            | Node::Project { input, .. }
            | Node::Generate { input, .. }
            | Node::Sort { input, .. } => input.reads_source(),
            Node::Union { inputs, .. } => inputs.iter().any(Node::reads_source),
            Node::StaticJoin(j) => j.stream.reads_source(),
        }
    }

    /// Whether a watermark node is at or below this node (up to the stage's input).
    pub(crate) fn defines_watermark(&self) -> bool {
        match self {
            Node::Watermark { .. } => true,
            Node::Scan { .. } | Node::Input => false,
            Node::Filter { input, .. }
            | Node::Project { input, .. }
            | Node::Generate { input, .. }
            | Node::Sort { input, .. } => input.defines_watermark(),
            Node::Union { inputs, .. } => inputs.iter().any(Node::defines_watermark),
            Node::StaticJoin(j) => j.stream.defines_watermark(),
        }
    }

    /// Calls `f(source, projection)` for every scan.
    pub(crate) fn scans_mut(&mut self, f: &mut dyn FnMut(usize, &mut Option<Vec<usize>>)) {
        match self {
            Node::Scan {
                source, projection, ..
            } => f(*source, projection),
            Node::Input => {}
            Node::Watermark { input, .. }
            | Node::Filter { input, .. }
            | Node::Project { input, .. }
            | Node::Generate { input, .. }
            | Node::Sort { input, .. } => input.scans_mut(f),
            Node::Union { inputs, .. } => inputs.iter_mut().for_each(|i| i.scans_mut(f)),
            Node::StaticJoin(j) => j.stream.scans_mut(f),
        }
    }

    /// Runs the node over the stage's input; `stats[i]` collects the event times seen by
    /// watermark `i`.
    pub(crate) fn run(
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
            Node::Generate {
                input: child,
                column,
                position,
                outer,
                schema,
            } => child
                .run(input, stats)?
                .iter()
                .map(|b| {
                    crate::operators::generate::generate(b, *column, *position, *outer, schema)
                })
                .filter(|b| !matches!(b, Ok(b) if b.num_rows() == 0))
                .collect(),
            Node::Sort {
                input: child,
                keys,
                schema,
            } => {
                let rows = child.run(input, stats)?;
                if rows.is_empty() {
                    return Ok(rows);
                }
                let all = arrow::compute::concat_batches(schema, &rows)?;
                let n = all.num_rows();
                let columns = keys
                    .iter()
                    .map(|(e, descending, nulls_first)| {
                        Ok(arrow::compute::SortColumn {
                            values: e.evaluate(&all)?.into_array(n)?,
                            options: Some(arrow::compute::SortOptions {
                                descending: *descending,
                                nulls_first: *nulls_first,
                            }),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let order = arrow::compute::lexsort_to_indices(&columns, None)?;
                Ok(vec![arrow::compute::take_record_batch(&all, &order)?])
            }
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
            Node::StaticJoin(j) => {
                let rows = j.stream.run(input, stats)?;
                let read = || -> Result<(SchemaRef, Vec<RecordBatch>)> {
                    let mut batches = j.table.read()?;
                    if let Some(p) = &j.projection {
                        batches = batches
                            .iter()
                            .map(|b| b.project(p))
                            .collect::<std::result::Result<_, _>>()?;
                    }
                    let built = j
                        .build
                        .run(StageInput::Rows(&batches), &mut [])?
                        .into_iter()
                        .map(|b| {
                            Ok(RecordBatch::try_new_with_options(
                                Arc::clone(&j.build_schema),
                                b.columns().to_vec(),
                                &arrow::array::RecordBatchOptions::new()
                                    .with_row_count(Some(b.num_rows())),
                            )?)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok((Arc::clone(&j.build_schema), built))
                };
                j.join.run(&read, rows)
            }
        }
    }
}
