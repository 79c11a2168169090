//! [`StreamPlan`]: the compiled program of one query — stateless nodes and a chain of stateful
//! operators — built once when the query starts and run on every batch. It holds no state: the
//! execution owns the operators' stores and lends them to [`StreamPlan::execute`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;

use super::node::{Node, StageInput};
use super::stream::{EventTimeStats, StreamTable, WatermarkSpec};
use super::translate::{
    bind_clock, check_supported, distinct_to_dedup, key_flags, nullable_schema,
    streaming_optimizer, translate, Ctx, PLANS_BUILT,
};
use crate::connector::OutputMode;
use crate::error::{EngineError, Result};
use crate::operators::clock::BatchClock;
use crate::operators::partitioned::{self, OperatorState};
use crate::operators::stateful::{RowCounts, StatefulOperator, Watermarks};

/// One stateful operator of the plan with the stateless nodes that feed each of its inputs.
#[derive(Debug)]
pub(crate) struct Stage {
    pub(crate) op: Box<dyn StatefulOperator>,
    /// One per input of the operator (a join has two).
    pub(crate) inputs: Vec<Side>,
}

/// One input of a stateful operator.
#[derive(Debug)]
pub(crate) struct Side {
    /// The schema of the input's rows.
    pub(crate) schema: SchemaRef,
    /// The nodes below the operator: over the sources for the first stage, over the previous
    /// operator's output for the others.
    pub(crate) below: Node,
}

impl Stage {
    /// An operator with one input.
    pub(crate) fn single(op: Box<dyn StatefulOperator>, schema: SchemaRef, below: Node) -> Self {
        Self {
            op,
            inputs: vec![Side { schema, below }],
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
    /// The stateful operators, nearest the sources first.
    stages: Vec<Stage>,
    /// The stateless nodes above the last operator (or the whole plan without one).
    top: Node,
}

/// What one stateful operator did in one batch, per partition (`None`: the partition had
/// already committed the batch and was skipped).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartitionBatch {
    /// Spark's `numRowsDroppedByWatermark`.
    pub dropped_by_watermark: u64,
    /// Groups written and removed within the batch (added to the store's updated count).
    pub evicted_touched: u64,
    /// Of those, the ones the store never held (added to its removed count).
    pub evicted_new: u64,
    /// Input rows dropped as late.
    pub late_input_rows: u64,
    /// Rows written and removed as the operator counts them (instead of the store's keys).
    pub counts: Option<RowCounts>,
    /// The operator's own figures for `customMetrics`.
    pub custom_metrics: Vec<(&'static str, u64)>,
}

/// What one batch produced.
#[derive(Debug, Default)]
pub struct BatchOutput {
    /// Rows for the sink.
    pub rows: Vec<RecordBatch>,
    /// Input rows the first operator dropped as late (for the late-data sink).
    pub late_rows: Vec<RecordBatch>,
    /// Per stateful operator (plan order, nearest the sources first), per partition.
    pub operators: Vec<Vec<Option<PartitionBatch>>>,
    /// Event times each watermark (index as in [`StreamPlan::watermarks`]) saw in the batch.
    pub event_stats: Vec<Option<EventTimeStats>>,
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
        let mut ctx = Ctx::new(state, mode);
        let top = translate(&optimized, &mut ctx)?;
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
        let stages = std::mem::take(&mut ctx.stages);
        let above_first = stages
            .iter()
            .skip(1)
            .flat_map(|s| s.inputs.iter().map(|i| &i.below))
            .chain((!stages.is_empty()).then_some(&top));
        for node in above_first {
            if node.defines_watermark() {
                // its event times would come from the operator's output, which a re-run batch
                // only partly recomputes (partitions that committed it are skipped)
                return Err(EngineError::user(
                    "unsupported construct in streaming query: with_watermark above a stateful \
                     operator; declare the watermark on the stream before its first stateful \
                     operator (the operators pass it on downstream, and an aggregation's window \
                     carries event time window_time(window))",
                ));
            }
            if node.reads_source() {
                return Err(EngineError::user(
                    "unsupported construct in streaming query: a stream read above a stateful \
                     operator (e.g. UNION of an aggregated stream with another stream); union \
                     the streams first, then aggregate",
                ));
            }
        }
        if stages.len() > 1 && mode != OutputMode::Append {
            // Spark's UnsupportedOperationChecker
            return Err(EngineError::user(format!(
                "Multiple stateful operators ({}) are not supported with {} output mode on \
                 streaming DataFrames: chaining stateful operations runs in append mode only \
                 (as in Spark)",
                stages
                    .iter()
                    .map(|s| s.op.name())
                    .collect::<Vec<_>>()
                    .join(" → "),
                mode
            )));
        }
        for s in &stages {
            if mode == OutputMode::Append
                && s.op.name() == "stateStoreSave"
                && !s.op.uses_watermark()
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
            stateful: !stages.is_empty(),
            watermarks: ctx.watermarks,
            key_columns,
            stages,
            top,
        })
    }

    /// Calls `f(source, projection)` for every scan of the plan.
    fn scans_mut(&mut self, f: &mut dyn FnMut(usize, &mut Option<Vec<usize>>)) {
        match self.stages.first_mut() {
            Some(s) => s.inputs.iter_mut().for_each(|i| i.below.scans_mut(f)),
            None => self.top.scans_mut(f),
        }
    }

    /// The columns of source `source` the plan reads, ascending (`None`: all of them, or it
    /// reads none).
    pub fn source_columns(&mut self, source: usize) -> Option<Vec<usize>> {
        let mut cols = std::collections::BTreeSet::new();
        let mut all = false;
        self.scans_mut(&mut |s, projection| {
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
        self.scans_mut(&mut |s, projection| {
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

    /// The stateful operators, nearest the sources first (index = the operator's state
    /// directory `state/<index>/`).
    pub fn operators(&self) -> impl Iterator<Item = &dyn StatefulOperator> {
        self.stages.iter().map(|s| s.op.as_ref())
    }

    /// `(operator index, Spark's name)` of every stateful operator.
    pub fn state_operators(&self) -> Vec<(usize, &'static str)> {
        self.operators().map(|o| o.name()).enumerate().collect()
    }

    /// What operator `index`'s state means.
    pub fn state_fingerprint(&self, index: usize) -> Result<String> {
        self.operator(index)?.fingerprint()
    }

    /// The form of [`state_fingerprint`](Self::state_fingerprint) older checkpoints recorded.
    pub fn legacy_state_fingerprint(&self, index: usize) -> Result<String> {
        self.operator(index)?.legacy_fingerprint()
    }

    fn operator(&self, index: usize) -> Result<&dyn StatefulOperator> {
        self.stages
            .get(index)
            .map(|s| s.op.as_ref())
            .ok_or_else(|| EngineError::bug(format!("no stateful operator {index}")))
    }

    /// Whether an operator evicts by watermark (a no-data batch can emit rows).
    pub fn evicts_by_watermark(&self) -> bool {
        self.operators().any(|o| o.drops_late())
    }

    /// Schema of the late input rows (the first operator's input), if it can drop any.
    pub fn late_rows_schema(&self) -> Option<SchemaRef> {
        self.stages.first().filter(|s| s.op.drops_late()).map(|s| {
            let schemas: Vec<SchemaRef> = s.inputs.iter().map(|i| Arc::clone(&i.schema)).collect();
            s.op.late_rows_schema(&schemas)
        })
    }

    /// Runs one micro-batch's input (the batches of each source) through the plan.
    ///
    /// `state[k]` holds operator k's partitions; partition p of operator k processes the batch
    /// only where `run[k][p]` (a partition that already committed the batch is skipped: see
    /// `sluice_state::partition_actions`). Each operator's changes are staged in its stores;
    /// the caller commits them after the sink has the rows. The event times of the watermark
    /// nodes are collected whatever is skipped. `threads`: the worker pool's size.
    pub fn execute(
        &self,
        inputs: &[Vec<RecordBatch>],
        watermarks: Watermarks,
        state: &mut [OperatorState],
        run: &[Vec<bool>],
        threads: usize,
    ) -> Result<BatchOutput> {
        if state.len() != self.stages.len() || run.len() != self.stages.len() {
            return Err(EngineError::bug("state given for another plan"));
        }
        let mut stats = vec![None; self.watermarks.len()];
        let mut out = BatchOutput::default();
        let mut rows: Vec<RecordBatch> = Vec::new();
        let mut wm = watermarks;
        for (k, stage) in self.stages.iter().enumerate() {
            let input = match k {
                0 => StageInput::Sources(inputs),
                _ => StageInput::Rows(&rows),
            };
            let n = state[k].stores.len();
            let mut parts: Vec<Vec<RecordBatch>> = (0..n).map(|_| Vec::new()).collect();
            for (i, side) in stage.inputs.iter().enumerate() {
                let below = side.below.run(input, &mut stats)?;
                let split = partitioned::split(stage.op.as_ref(), i, &below, &side.schema, n)?;
                for (p, b) in split.into_iter().enumerate() {
                    parts[p].push(b);
                }
            }
            let outs = partitioned::process(
                stage.op.as_ref(),
                &mut state[k],
                parts,
                &run[k],
                wm,
                threads,
            )?;
            rows = Vec::new();
            let mut per_partition = Vec::with_capacity(n);
            for o in outs {
                per_partition.push(o.map(|o| {
                    let late_input_rows = o.late_rows.iter().map(|b| b.num_rows() as u64).sum();
                    rows.extend(o.rows);
                    if k == 0 {
                        out.late_rows.extend(o.late_rows);
                    }
                    PartitionBatch {
                        dropped_by_watermark: o.dropped_by_watermark,
                        evicted_touched: o.evicted_touched,
                        evicted_new: o.evicted_new,
                        late_input_rows,
                        counts: o.counts,
                        custom_metrics: o.custom_metrics,
                    }
                }));
            }
            out.operators.push(per_partition);
            wm = Watermarks {
                late_us: stage.op.output_watermark(wm.late_us),
                evict_us: stage.op.output_watermark(wm.evict_us),
                batch_id: wm.batch_id,
            };
        }
        let input = match self.stages.is_empty() {
            true => StageInput::Sources(inputs),
            false => StageInput::Rows(&rows),
        };
        out.rows = self.top.run(input, &mut stats)?;
        out.event_stats = stats;
        Ok(out)
    }
}
