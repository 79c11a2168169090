//! The aggregation's accumulators: DataFusion `GroupsAccumulator`s fed with a batch's rows,
//! and their intermediate states encoded for the state store (arrow-row format) and back.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;

use super::AggregateOp;
use crate::error::{EngineError, Result};

impl AggregateOp {
    pub(super) fn new_accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggs
            .iter()
            .map(|a| {
                if a.expr.groups_accumulator_supported() {
                    Ok(a.expr.create_groups_accumulator()?)
                } else {
                    let e = Arc::clone(&a.expr);
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        e.create_accumulator()
                    })) as Box<dyn GroupsAccumulator>)
                }
            })
            .collect()
    }

    /// Feeds `batch` (its rows in groups `group_idx`) into the accumulators.
    /// `mask`: rows to leave out (false), besides each aggregate's own FILTER. Every argument
    /// is evaluated before any accumulator changes; if that fails while rows are masked (a late
    /// row the aggregate would never have seen, e.g. a failing cast), the masked rows are taken
    /// out of the batch and it is tried again, so late rows cannot fail a batch.
    pub(super) fn update_accumulators(
        &self,
        accs: &mut [Box<dyn GroupsAccumulator>],
        batch: &RecordBatch,
        group_idx: &[usize],
        mask: Option<&BooleanArray>,
        num_groups: usize,
    ) -> Result<()> {
        let inputs = match (self.evaluate_agg_inputs(batch, mask), mask) {
            (Ok(inputs), _) => inputs,
            (Err(_), Some(m)) => {
                let on_time = filter_record_batch(batch, m)?;
                let idx: Vec<usize> = group_idx
                    .iter()
                    .zip(m.iter())
                    .filter(|(_, keep)| keep.unwrap_or(false))
                    .map(|(g, _)| *g)
                    .collect();
                return self.update_accumulators(accs, &on_time, &idx, None, num_groups);
            }
            (Err(e), None) => return Err(e),
        };
        for ((args, filter), acc) in inputs.into_iter().zip(accs.iter_mut()) {
            acc.update_batch(&args, group_idx, filter.as_ref(), num_groups)?;
        }
        Ok(())
    }

    /// The argument columns and the row filter (FILTER and `mask`) of every aggregate.
    pub(super) fn evaluate_agg_inputs(
        &self,
        batch: &RecordBatch,
        mask: Option<&BooleanArray>,
    ) -> Result<Vec<(Vec<ArrayRef>, Option<BooleanArray>)>> {
        let n = batch.num_rows();
        self.aggs
            .iter()
            .map(|a| {
                let args = a
                    .expr
                    .expressions()
                    .iter()
                    .map(|e| Ok(e.evaluate(batch)?.into_array(n)?))
                    .collect::<Result<Vec<_>>>()?;
                let filter = match &a.filter {
                    Some(f) => {
                        let v = f.evaluate(batch)?.into_array(n)?;
                        Some(
                            v.as_any()
                                .downcast_ref::<BooleanArray>()
                                .cloned()
                                .ok_or_else(|| EngineError::bug("FILTER is not boolean"))?,
                        )
                    }
                    None => None,
                };
                let filter = match (filter, mask) {
                    (None, m) => m.cloned(),
                    (Some(f), None) => Some(f),
                    (Some(f), Some(m)) => Some(arrow::compute::and(&f, m)?),
                };
                Ok((args, filter))
            })
            .collect()
    }

    pub(super) fn decode_states(&self, vals: &[&[u8]]) -> Result<Vec<Vec<ArrayRef>>> {
        let parser = self.state_converter.parser();
        let rows = vals.iter().map(|v| parser.parse(v));
        let cols = self.state_converter.convert_rows(rows)?;
        let mut out = Vec::with_capacity(self.state_counts.len());
        let mut it = cols.into_iter();
        for c in &self.state_counts {
            out.push(it.by_ref().take(*c).collect());
        }
        Ok(out)
    }

    /// The intermediate states of `num_groups` groups, per aggregate. No groups (a partition
    /// without rows in this batch) gives empty columns of the state types: an adapted
    /// accumulator would return no columns at all.
    pub(super) fn states_of(
        &self,
        accs: &mut [Box<dyn GroupsAccumulator>],
        num_groups: usize,
    ) -> Result<Vec<Vec<ArrayRef>>> {
        if num_groups == 0 {
            return self
                .aggs
                .iter()
                .map(|a| {
                    Ok(a.expr
                        .state_fields()?
                        .iter()
                        .map(|f| arrow::array::new_empty_array(f.data_type()))
                        .collect())
                })
                .collect();
        }
        Ok(accs
            .iter_mut()
            .map(|a| a.state(EmitTo::All))
            .collect::<std::result::Result<_, _>>()?)
    }

    /// The encoded states of `num_groups` groups (empty values when the aggregation has no
    /// aggregate functions: `GROUP BY` alone).
    pub(super) fn encode_states(
        &self,
        states: &[Vec<ArrayRef>],
        num_groups: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let cols: Vec<ArrayRef> = states.iter().flatten().cloned().collect();
        if cols.is_empty() {
            return Ok(vec![Vec::new(); num_groups]);
        }
        let rows = self.state_converter.convert_columns(&cols)?;
        Ok((0..rows.num_rows())
            .map(|i| rows.row(i).as_ref().to_vec())
            .collect())
    }
}
