//! The streaming aggregation operator: windowed or not, with its state in a [`StateStore`].
//!
//! Per micro-batch: assign rows to windows, drop rows whose window ended at or before the
//! previous batch's watermark (counted, and handed to the late-data sink), aggregate the batch
//! in memory with DataFusion's vectorised `GroupsAccumulator`s, load the stored states of only
//! the groups the batch touched (one multi-get), merge, and emit per output mode: update = the
//! touched groups; append = the groups whose window ended at or before the current watermark
//! (then dropped from state); complete = every group. The state changes are committed
//! through the [`StateStore`] after the sink has the batch, in one synced write with the batch id.
//!
//! Keys: `window end (8 bytes, order-preserving) ++ arrow-row encoding of the other group keys`,
//! so that eviction is one range scan from the start. Values: the arrow-row encoding of the
//! aggregates' intermediate states (e.g. sum and count for avg).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::{filter_record_batch, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::EmitTo;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::PhysicalExpr;
use sluice_state::store::{StateChanges, StateStore};

use crate::connector::OutputMode;
use crate::error::{EngineError, Result};
use crate::operators::window::{event_micros, window_struct, WindowKind, WindowSpec};

#[path = "aggregate_states.rs"]
mod aggregate_states;
#[path = "session_agg.rs"]
mod session_agg;

/// One aggregate function of the operator.
#[derive(Debug)]
pub struct AggSpec {
    /// The physical aggregate.
    pub expr: Arc<AggregateFunctionExpr>,
    /// `FILTER (WHERE ...)`.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

/// Where the window goes among the group columns, and its shape.
#[derive(Debug, Clone)]
pub struct WindowGroup {
    /// Position among the group-by expressions.
    pub position: usize,
    /// The time column expression (evaluated on the operator's input).
    pub time: Arc<dyn PhysicalExpr>,
    /// The window shape.
    pub spec: WindowSpec,
}

pub use crate::operators::stateful::OperatorOutput as AggOutput;

/// The aggregation operator.
pub struct AggregateOp {
    window: Option<WindowGroup>,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    aggs: Vec<AggSpec>,
    key_converter: RowConverter,
    key_types: Vec<DataType>,
    state_converter: RowConverter,
    state_counts: Vec<usize>,
    output_schema: SchemaRef,
    mode: OutputMode,
    /// Whether window ends are compared with the watermark (the window's time column is the
    /// watermarked column).
    watermarked: bool,
    /// The key expressions by column name (the window's time column first, if any).
    key_names: Vec<String>,
    /// The aggregate expressions by column name.
    agg_names: Vec<String>,
}

impl std::fmt::Debug for AggregateOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateOp")
            .field("window", &self.window)
            .field("aggs", &self.aggs.len())
            .finish()
    }
}

fn encode_end(end: i64) -> [u8; 8] {
    ((end as u64) ^ (1 << 63)).to_be_bytes()
}

fn decode_end(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}

impl AggregateOp {
    /// Builds the operator. `key_types` are the data types of `keys`; `output_schema` is the
    /// logical Aggregate's schema (group columns, then aggregates).
    pub fn new(
        window: Option<WindowGroup>,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        key_types: Vec<DataType>,
        aggs: Vec<AggSpec>,
        output_schema: SchemaRef,
        mode: OutputMode,
        watermarked: bool,
    ) -> Result<Self> {
        let key_converter =
            RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())?;
        let mut state_fields = Vec::new();
        let mut state_counts = Vec::new();
        for a in &aggs {
            // an aggregate that cannot run on these types fails at start(), not in a batch
            a.expr.create_accumulator()?;
            let f = a.expr.state_fields()?;
            state_counts.push(f.len());
            state_fields.extend(f.into_iter().map(|f| SortField::new(f.data_type().clone())));
        }
        Ok(Self {
            window,
            keys,
            aggs,
            key_converter,
            key_types,
            state_converter: RowConverter::new(state_fields)?,
            state_counts,
            output_schema,
            mode,
            watermarked,
            key_names: Vec::new(),
            agg_names: Vec::new(),
        })
    }

    /// What the stored state means: group key types, window shape, aggregate functions and
    /// their intermediate state types. A checkpoint written by another aggregation must not be
    /// read by this one.
    pub fn fingerprint(&self) -> Result<String> {
        Ok(self.fingerprint_of(true)?.to_string())
    }

    /// The fingerprint checkpoints written before key and argument expressions were part of
    /// it recorded (types only): accepted once, then rewritten in the current form.
    pub fn legacy_fingerprint(&self) -> Result<String> {
        Ok(self.fingerprint_of(false)?.to_string())
    }

    fn fingerprint_of(&self, with_exprs: bool) -> Result<serde_json::Value> {
        let mut aggs = Vec::new();
        for (i, a) in self.aggs.iter().enumerate() {
            let states: Vec<String> = a
                .expr
                .state_fields()?
                .iter()
                .map(|f| f.data_type().to_string())
                .collect();
            let mut agg = serde_json::json!({
                "function": a.expr.fun().name(),
                "distinct": a.expr.is_distinct(),
                "state": states,
            });
            if with_exprs {
                agg["expr"] = self.agg_names.get(i).cloned().unwrap_or_default().into();
            }
            aggs.push(agg);
        }
        let window = self.window.as_ref().map(|w| {
            serde_json::json!({"kind": format!("{:?}", w.spec.kind), "size_us": w.spec.size_us, "slide_us": w.spec.slide_us, "offset_us": w.spec.offset_us})
        });
        let keys: Vec<String> = self.key_types.iter().map(|t| t.to_string()).collect();
        let mut fp = serde_json::json!({"window": window, "keys": keys, "aggregates": aggs});
        if with_exprs {
            // the key expressions by column name: grouping by another column of the same type
            // must not read these groups (positions may move when the source gains columns)
            fp["v"] = 2.into();
            fp["keyExprs"] = self.key_names.clone().into();
        }
        Ok(fp)
    }

    /// Names the key expressions (besides the window, with the window's time column first when
    /// there is one) and the aggregate expressions for [`fingerprint`](Self::fingerprint).
    pub fn set_names(&mut self, keys: Vec<String>, aggs: Vec<String>) {
        self.key_names = keys;
        self.agg_names = aggs;
    }

    /// Whether the operator's window is on the watermarked column.
    pub fn uses_watermark(&self) -> bool {
        self.watermarked && self.window.is_some()
    }

    /// Whether late rows are dropped and windows closed by the watermark: append and update
    /// modes (complete mode keeps every group and every row, as Spark does).
    pub fn drops_late(&self) -> bool {
        self.uses_watermark() && self.mode != OutputMode::Complete
    }

    /// Processes one batch's input. `late_wm` / `evict_wm`: the previous and the current
    /// watermark, µs.
    fn process_batch(
        &self,
        store: &dyn StateStore,
        batch: &RecordBatch,
        late_wm: i64,
        evict_wm: i64,
    ) -> Result<AggOutput> {
        if self
            .window
            .as_ref()
            .is_some_and(|w| w.spec.kind == WindowKind::Session)
        {
            return self.process_sessions(store, batch, late_wm, evict_wm);
        }
        let n = batch.num_rows();
        let mut out = AggOutput::default();

        // 1. window assignment (row i of the expanded input = input row take[i] in window ends[i])
        let (take_idx, ends): (Option<UInt32Array>, Vec<i64>) = match &self.window {
            None => (None, vec![0; n]),
            Some(w) => {
                let ts = event_micros(&w.time.evaluate(batch)?.into_array(n)?)?;
                crate::operators::window::check_event_times(&ts)?;
                let tumbling = w.spec.slide_us == w.spec.size_us;
                if tumbling && ts.null_count() == 0 {
                    // one window per row: no expansion, no copy
                    let ends = ts
                        .values()
                        .iter()
                        .map(|t| w.spec.last_start(*t) + w.spec.size_us)
                        .collect();
                    (None, ends)
                } else {
                    let mut idx = Vec::with_capacity(n);
                    let mut ends = Vec::with_capacity(n);
                    for (i, t) in ts.iter().enumerate() {
                        let Some(t) = t else { continue }; // no event time: no window (as Spark)
                        let before = ends.len();
                        w.spec.windows_of(t, &mut ends);
                        idx.extend(std::iter::repeat_n(i as u32, ends.len() - before));
                    }
                    (Some(UInt32Array::from(idx)), ends)
                }
            }
        };
        let expanded = match &take_idx {
            None => batch.clone(),
            Some(idx) => {
                let cols = batch
                    .columns()
                    .iter()
                    .map(|c| Ok(take(c.as_ref(), idx, None)?))
                    .collect::<Result<Vec<_>>>()?;
                RecordBatch::try_new(batch.schema(), cols)?
            }
        };
        let m = expanded.num_rows();

        // 2. late rows: window end <= previous watermark
        let late: Vec<bool> = if self.drops_late() {
            ends.iter().map(|e| *e <= late_wm).collect()
        } else {
            vec![false; m]
        };
        let key_rows = self.key_rows(&expanded)?;

        // 3. group indices of the on-time rows (no allocation per row: keys borrow the encoded
        //    rows); distinct late groups are counted
        let mut groups: HashMap<(i64, &[u8]), usize, ahash::RandomState> =
            HashMap::with_capacity_and_hasher(1024, ahash::RandomState::new());
        let mut group_keys: Vec<Vec<u8>> = Vec::new();
        let mut group_idx = Vec::with_capacity(m);
        let mut late_groups: std::collections::HashSet<(i64, &[u8]), ahash::RandomState> =
            Default::default();
        let mut keep = Vec::with_capacity(m);
        let with_window = self.window.is_some();
        for i in 0..m {
            let key_part: &[u8] = match &key_rows {
                Some(r) => r.row(i).data(),
                None => &[],
            };
            let k = (ends[i], key_part);
            if late[i] {
                late_groups.insert(k);
                keep.push(false);
                group_idx.push(0); // filtered out below
                continue;
            }
            keep.push(true);
            let next = group_keys.len();
            let g = *groups.entry(k).or_insert_with(|| {
                let mut full = Vec::with_capacity(8 + key_part.len());
                if with_window {
                    full.extend_from_slice(&encode_end(ends[i]));
                }
                full.extend_from_slice(key_part);
                group_keys.push(full);
                next
            });
            group_idx.push(g);
        }
        out.dropped_by_watermark = late_groups.len() as u64;
        if late.iter().any(|l| *l) {
            // the late input rows themselves (each input row once)
            let mut late_input = vec![false; n];
            for (i, l) in late.iter().enumerate() {
                if *l {
                    let row = take_idx.as_ref().map_or(i, |t| t.value(i) as usize);
                    late_input[row] = true;
                }
            }
            out.late_rows
                .push(filter_record_batch(batch, &BooleanArray::from(late_input))?);
        }
        // late rows stay in the batch, masked out of the accumulators (no copy of the batch)
        let on_time_mask = (out.dropped_by_watermark > 0).then(|| BooleanArray::from(keep));
        let num_groups = group_keys.len();

        let mut accs = self.new_accumulators()?;
        // 4. the stored states of the touched groups first (order-sensitive aggregates such as
        //    first_value/last_value see earlier batches before this one)
        let stored = store.multi_get(&group_keys)?;
        let mut found_idx = Vec::new();
        let mut found_vals = Vec::new();
        for (g, v) in stored.iter().enumerate() {
            if let Some(v) = v {
                found_idx.push(g);
                found_vals.push(v.as_slice());
            }
        }
        if !found_idx.is_empty() {
            let states = self.decode_states(&found_vals)?;
            for (acc, cols) in accs.iter_mut().zip(states) {
                acc.merge_batch(&cols, &found_idx, num_groups)?;
            }
        }
        // 5. then this batch, aggregated in memory (vectorised)
        if num_groups > 0 {
            self.update_accumulators(
                &mut accs,
                &expanded,
                &group_idx,
                on_time_mask.as_ref(),
                num_groups,
            )?;
        }

        let new_groups = num_groups - found_idx.len();
        let mut states = self.states_of(&mut accs, num_groups)?;

        // 6. what is emitted and what stays
        let evict = |end: i64| {
            self.uses_watermark() && self.mode != OutputMode::Complete && end <= evict_wm
        };
        let ends_of: Vec<i64> = group_keys
            .iter()
            .map(|k| {
                if self.window.is_some() {
                    decode_end(k)
                } else {
                    0
                }
            })
            .collect();
        let mut emit_touched: Vec<usize> = Vec::new();
        let mut changes = StateChanges::default();
        let mut state_rows = self.encode_states(&states, num_groups)?;
        let mut rows_delta = new_groups as i64;
        for g in 0..num_groups {
            let gone = evict(ends_of[g]);
            let emit = match self.mode {
                OutputMode::Update | OutputMode::Complete => true,
                OutputMode::Append => {
                    if self.uses_watermark() {
                        gone
                    } else {
                        false
                    }
                }
            };
            if emit {
                emit_touched.push(g);
            }
            if gone {
                out.evicted_touched += 1;
                if stored[g].is_some() {
                    changes.deletes.push(group_keys[g].clone());
                } else {
                    out.evicted_new += 1;
                }
                rows_delta -= 1;
            } else {
                changes
                    .puts
                    .push((group_keys[g].clone(), std::mem::take(&mut state_rows[g])));
            }
        }

        // stored groups the batch did not touch: evicted (append emits them) or, in complete
        // mode, emitted as they are
        let mut extra_keys: Vec<Vec<u8>> = Vec::new();
        let mut extra_vals: Vec<Vec<u8>> = Vec::new();
        let scan_to: Option<Vec<u8>> = match self.mode {
            OutputMode::Complete => None,
            _ if self.uses_watermark() => Some(encode_end(evict_wm.saturating_add(1)).to_vec()),
            _ => Some(Vec::new()),
        };
        if scan_to.as_ref().is_none_or(|t| !t.is_empty()) {
            let touched: std::collections::HashSet<&[u8]> =
                group_keys.iter().map(|k| k.as_slice()).collect();
            store.scan(&[], scan_to.as_deref(), &mut |k, v| {
                if !touched.contains(k) {
                    extra_keys.push(k.to_vec());
                    extra_vals.push(v.to_vec());
                }
                Ok(true)
            })?;
        }
        if self.mode != OutputMode::Complete {
            for k in &extra_keys {
                changes.deletes.push(k.clone());
                rows_delta -= 1;
            }
        }
        changes.rows_delta = rows_delta;

        // 7. build the output rows (update mode evicts untouched groups silently)
        if self.mode == OutputMode::Update {
            extra_keys.clear();
            extra_vals.clear();
        }
        if !emit_touched.is_empty() || !extra_keys.is_empty() {
            let mut keys: Vec<&[u8]> = emit_touched
                .iter()
                .map(|g| group_keys[*g].as_slice())
                .collect();
            keys.extend(extra_keys.iter().map(|k| k.as_slice()));
            // final values: states of the emitted groups, merged into fresh accumulators
            let touched_idx =
                UInt32Array::from(emit_touched.iter().map(|g| *g as u32).collect::<Vec<_>>());
            let extra_states =
                if extra_vals.is_empty() {
                    None
                } else {
                    Some(self.decode_states(
                        &extra_vals.iter().map(|v| v.as_slice()).collect::<Vec<_>>(),
                    )?)
                };
            let total = keys.len();
            let mut finals = self.new_accumulators()?;
            for (i, acc) in finals.iter_mut().enumerate() {
                let t: Vec<ArrayRef> = states[i]
                    .iter()
                    .map(|c| Ok(take(c.as_ref(), &touched_idx, None)?))
                    .collect::<Result<_>>()?;
                let idx: Vec<usize> = (0..emit_touched.len()).collect();
                acc.merge_batch(&t, &idx, total)?;
                if let Some(es) = &extra_states {
                    let idx: Vec<usize> = (emit_touched.len()..total).collect();
                    acc.merge_batch(&es[i], &idx, total)?;
                }
            }
            let values = finals
                .iter_mut()
                .map(|a| a.evaluate(EmitTo::All))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            out.rows.push(self.output_batch(&keys, values)?);
        }
        states.clear();
        out.changes = changes;
        Ok(out)
    }

    /// The group keys (besides the window) of `batch`'s rows, row-encoded; `None` when the only
    /// key is the window (every row's key part is then empty).
    fn key_rows(&self, batch: &RecordBatch) -> Result<Option<arrow::row::Rows>> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let n = batch.num_rows();
        let arrays = self
            .keys
            .iter()
            .map(|k| Ok(k.evaluate(batch)?.into_array(n)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(self.key_converter.convert_columns(&arrays)?))
    }

    fn output_batch(&self, keys: &[&[u8]], values: Vec<ArrayRef>) -> Result<RecordBatch> {
        let offset = if self.window.is_some() { 8 } else { 0 };
        let parts: Vec<&[u8]> = keys.iter().map(|k| &k[offset..]).collect();
        let windows = self.window.as_ref().map(|w| {
            let ends: Vec<i64> = keys.iter().map(|k| decode_end(k)).collect();
            let starts: Vec<i64> = ends.iter().map(|e| e - w.spec.size_us).collect();
            (starts, ends)
        });
        self.output_from_parts(&parts, windows, values)
    }

    /// Builds output rows from group-key row bytes, window bounds and aggregate values.
    fn output_from_parts(
        &self,
        key_parts: &[&[u8]],
        windows: Option<(Vec<i64>, Vec<i64>)>,
        values: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let key_cols = if self.keys.is_empty() {
            Vec::new()
        } else {
            let parser = self.key_converter.parser();
            self.key_converter
                .convert_rows(key_parts.iter().map(|k| parser.parse(k)))?
        };
        let mut cols: Vec<ArrayRef> = Vec::new();
        let mut key_iter = key_cols.into_iter();
        let mut windows = windows;
        let n_groups = self.keys.len() + usize::from(self.window.is_some());
        for pos in 0..n_groups {
            match &self.window {
                Some(w) if w.position == pos => {
                    let (starts, ends) = windows
                        .take()
                        .ok_or_else(|| EngineError::bug("window bounds missing"))?;
                    let ts = |v: Vec<i64>| TimestampMicrosecondArray::from(v).with_timezone("UTC");
                    cols.push(window_struct(ts(starts), ts(ends)));
                }
                _ => cols.push(
                    key_iter
                        .next()
                        .ok_or_else(|| EngineError::bug("group key count"))?,
                ),
            }
        }
        cols.extend(values);
        // align types and nullability with the planned schema
        let fields: Vec<Field> = self
            .output_schema
            .fields()
            .iter()
            .zip(&cols)
            .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), true))
            .collect();
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}

impl crate::operators::stateful::StatefulOperator for AggregateOp {
    fn name(&self) -> &'static str {
        match &self.window {
            Some(w) if w.spec.kind == WindowKind::Session => "sessionWindowStateStoreSaveExec",
            _ => "stateStoreSave",
        }
    }

    fn fingerprint(&self) -> Result<String> {
        AggregateOp::fingerprint(self)
    }

    fn legacy_fingerprint(&self) -> Result<String> {
        AggregateOp::legacy_fingerprint(self)
    }

    fn uses_watermark(&self) -> bool {
        AggregateOp::uses_watermark(self)
    }

    fn drops_late(&self) -> bool {
        AggregateOp::drops_late(self)
    }

    /// The group keys besides the window: a group (and a session) never spans partitions.
    fn partition_key(
        &self,
        _input: usize,
        batch: &RecordBatch,
    ) -> Result<Option<arrow::row::Rows>> {
        self.key_rows(batch)
    }

    fn process(
        &self,
        store: &dyn StateStore,
        inputs: &[RecordBatch],
        watermarks: crate::operators::stateful::Watermarks,
    ) -> Result<AggOutput> {
        let input = inputs
            .first()
            .ok_or_else(|| EngineError::bug("aggregation without input"))?;
        self.process_batch(store, input, watermarks.late_us, watermarks.evict_us)
    }
}
