//! Streaming deduplication: `drop_duplicates(cols)` and `drop_duplicates_within_watermark(cols)`.
//!
//! State key: the arrow-row encoding of the key columns; value: the event time (µs) after which
//! the key may be forgotten. Without a watermark every key is kept forever (as in Spark). With a
//! watermark on an event-time column: `drop_duplicates` (the event time among the key columns)
//! forgets a key once the watermark passes its event time and drops rows at or below the
//! previous watermark as late; `drop_duplicates_within_watermark` keeps the first row of a key
//! and forgets the key once the watermark passes its first event time plus the delay.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use datafusion::common::{Column, DFSchemaRef};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_plan::PhysicalExpr;
use sluice_state::store::{StateChanges, StateStore};

use crate::error::{EngineError, Result};
use crate::operators::stateful::{OperatorOutput, StatefulOperator, Watermarks};
use crate::operators::window::event_micros;

/// The deduplication node of the logical plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Hash)]
pub struct DedupNode {
    /// Input.
    pub input: LogicalPlan,
    /// Key columns.
    pub columns: Vec<Column>,
    /// `drop_duplicates_within_watermark`.
    pub within_watermark: bool,
}

impl DedupNode {
    /// Wraps `input`.
    pub fn plan(input: LogicalPlan, columns: Vec<Column>, within_watermark: bool) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(DedupNode {
                input,
                columns,
                within_watermark,
            }),
        })
    }
}

impl UserDefinedLogicalNodeCore for DedupNode {
    fn name(&self) -> &str {
        if self.within_watermark {
            "DeduplicateWithinWatermark"
        } else {
            "Deduplicate"
        }
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }
    fn expressions(&self) -> Vec<Expr> {
        self.columns.iter().cloned().map(Expr::Column).collect()
    }
    fn prevent_predicate_push_down_columns(&self) -> std::collections::HashSet<String> {
        self.input
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}", self.name(), self.columns)
    }
    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        let columns = exprs
            .into_iter()
            .filter_map(|e| match e {
                Expr::Column(c) => Some(c),
                _ => None,
            })
            .collect();
        Ok(Self {
            input: inputs.pop().unwrap_or_else(|| self.input.clone()),
            columns,
            within_watermark: self.within_watermark,
        })
    }
}

/// The deduplication operator.
pub struct DedupOp {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_types: Vec<DataType>,
    converter: RowConverter,
    /// The watermarked event-time column and the delay, ms: rows at or below the previous
    /// watermark are late and dropped (whatever the keys, as in Spark).
    time: Option<(Arc<dyn PhysicalExpr>, i64)>,
    /// Whether keys are forgotten once the watermark passes them: the event time is among the
    /// keys, or within the watermark. Otherwise they are kept forever.
    evicts: bool,
    within_watermark: bool,
    /// The key columns' names.
    key_names: Vec<String>,
}

impl fmt::Debug for DedupOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupOp")
            .field("keys", &self.key_types)
            .field("within_watermark", &self.within_watermark)
            .finish()
    }
}

impl DedupOp {
    /// Builds the operator. `time_in_keys`: the watermarked column is one of the keys.
    pub fn new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        key_names: Vec<String>,
        key_types: Vec<DataType>,
        time: Option<(Arc<dyn PhysicalExpr>, i64)>,
        time_in_keys: bool,
        within_watermark: bool,
    ) -> Result<Self> {
        if within_watermark && time.is_none() {
            return Err(EngineError::user(
                "drop_duplicates_within_watermark needs a watermark (with_watermark(...)) on the stream",
            ));
        }
        Ok(Self {
            converter: RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())?,
            keys,
            key_types,
            evicts: time.is_some() && (time_in_keys || within_watermark),
            time,
            within_watermark,
            key_names,
        })
    }

    /// What the stored state means.
    pub fn fingerprint(&self) -> String {
        let keys: Vec<String> = self.key_types.iter().map(|t| t.to_string()).collect();
        serde_json::json!({
            "v": 2,
            "deduplicate": keys,
            "keyColumns": self.key_names,
            "withinWatermark": self.within_watermark,
        })
        .to_string()
    }

    /// The fingerprint of checkpoints written before key names were part of it.
    pub fn legacy_fingerprint(&self) -> String {
        let keys: Vec<String> = self.key_types.iter().map(|t| t.to_string()).collect();
        serde_json::json!({"deduplicate": keys, "withinWatermark": self.within_watermark})
            .to_string()
    }

    /// `drop_duplicates_within_watermark`.
    pub fn within_watermark(&self) -> bool {
        self.within_watermark
    }

    /// Whether a watermark applies.
    pub fn uses_watermark(&self) -> bool {
        self.time.is_some()
    }

    /// Processes one batch: the first row of each new key is emitted.
    fn process_batch(
        &self,
        store: &dyn StateStore,
        batch: &RecordBatch,
        late_wm: i64,
        evict_wm: i64,
    ) -> Result<OperatorOutput> {
        let n = batch.num_rows();
        let rows = self.key_rows(batch)?;
        let times: Option<TimestampMicrosecondArray> = match &self.time {
            Some((t, _)) => Some(event_micros(&t.evaluate(batch)?.into_array(n)?)?),
            None => None,
        };
        let delay_us = self.time.as_ref().map_or(0, |(_, d)| d * 1000);
        let mut out = OperatorOutput::default();
        let mut seen: HashSet<&[u8]> = HashSet::new();
        let mut candidates = Vec::new();
        let mut late = Vec::new();
        for i in 0..n {
            if let Some(ts) = &times {
                // a row at or below the previous watermark is late (Spark drops it)
                if ts.is_valid(i) && ts.value(i) <= late_wm {
                    late.push(i as u32);
                    continue;
                }
            }
            if seen.insert(rows.row(i).data()) {
                candidates.push(i);
            }
        }
        out.dropped_by_watermark = late.len() as u64;
        if !late.is_empty() {
            out.late_rows
                .push(take_record_batch(batch, &UInt32Array::from(late))?);
        }
        let keys: Vec<Vec<u8>> = candidates
            .iter()
            .map(|i| rows.row(*i).data().to_vec())
            .collect();
        let stored = store.multi_get(&keys)?;
        let mut emit = Vec::new();
        let mut changes = StateChanges::default();
        for ((i, k), s) in candidates.iter().zip(keys).zip(stored) {
            if s.is_some() {
                continue;
            }
            emit.push(*i as u32);
            let expiry = match &times {
                Some(ts) if self.evicts && ts.is_valid(*i) => {
                    ts.value(*i) + if self.within_watermark { delay_us } else { 0 }
                }
                _ => i64::MAX,
            };
            // a key the watermark already passed is stored and removed in this same batch, as
            // Spark's eviction scan (after the batch's puts) sees it: counted in both
            if self.evicts && evict_wm > 0 && expiry <= evict_wm {
                changes.deletes.push(k.clone());
            }
            changes.puts.push((k, expiry.to_be_bytes().to_vec()));
        }
        // forget stored keys the watermark has reached (Spark: expiry <= watermark)
        if self.evicts && evict_wm > 0 {
            store.scan(&[], None, &mut |k, v| {
                let mut b = [0u8; 8];
                if v.len() == 8 {
                    b.copy_from_slice(v);
                    if i64::from_be_bytes(b) <= evict_wm {
                        changes.deletes.push(k.to_vec());
                    }
                }
                Ok(true)
            })?;
        }
        changes.rows_delta = changes.puts.len() as i64 - changes.deletes.len() as i64;
        if !emit.is_empty() {
            out.rows
                .push(take_record_batch(batch, &UInt32Array::from(emit))?);
        }
        out.changes = changes;
        Ok(out)
    }
}

impl DedupOp {
    /// The key columns of `batch`'s rows, row-encoded.
    fn key_rows(&self, batch: &RecordBatch) -> Result<arrow::row::Rows> {
        let n = batch.num_rows();
        let key_arrays = self
            .keys
            .iter()
            .map(|k| Ok(k.evaluate(batch)?.into_array(n)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.converter.convert_columns(&key_arrays)?)
    }
}

impl StatefulOperator for DedupOp {
    fn name(&self) -> &'static str {
        if self.within_watermark {
            "dedupeWithinWatermark"
        } else {
            "dedupe"
        }
    }

    fn fingerprint(&self) -> Result<String> {
        Ok(DedupOp::fingerprint(self))
    }

    fn legacy_fingerprint(&self) -> Result<String> {
        Ok(DedupOp::legacy_fingerprint(self))
    }

    fn uses_watermark(&self) -> bool {
        DedupOp::uses_watermark(self)
    }

    fn drops_late(&self) -> bool {
        DedupOp::uses_watermark(self)
    }

    /// The deduplication keys: copies of a key always meet in one partition.
    fn partition_key(
        &self,
        _input: usize,
        batch: &RecordBatch,
    ) -> Result<Option<arrow::row::Rows>> {
        Ok(Some(self.key_rows(batch)?))
    }

    fn process(
        &self,
        store: &dyn StateStore,
        inputs: &[RecordBatch],
        watermarks: Watermarks,
    ) -> Result<OperatorOutput> {
        let input = inputs
            .first()
            .ok_or_else(|| EngineError::bug("dedup without input"))?;
        self.process_batch(store, input, watermarks.late_us, watermarks.evict_us)
    }
}
