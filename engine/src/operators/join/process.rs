//! One batch of a stream-stream join in one partition (see the module map in `mod.rs` and the
//! state layout in `keys.rs`): the touched keys' rows are read with one multi-get per side,
//! changed in memory, and each touched key is written back once.

use ahash::AHashMap as HashMap;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, take};
use sluice_state::store::{StateChanges, StateStore};

use super::keys::{
    batch_key, batch_keys_end, count_key, due_evictions, encode_evictions, list_key, KeyRows,
};
use super::{JoinOp, StreamJoinType};
use crate::error::{EngineError, Result};
use crate::operators::stateful::{OperatorOutput, RowCounts, Watermarks};
use crate::operators::window::event_micros;

/// What the batch has done so far, before it becomes [`StateChanges`].
struct Work<'a> {
    store: &'a dyn StateStore,
    wm: Watermarks,
    /// The keys' rows read (and changed) in this batch; `index` finds them by (side, key).
    lists: Vec<KeyRows>,
    /// (side, key) of each of `lists`.
    list_keys: Vec<(u8, Vec<u8>)>,
    index: [HashMap<Vec<u8>, usize>; 2],
    /// (time, key) of the rows each side buffers in this batch.
    evictions: [Vec<(i64, Vec<u8>)>; 2],
    /// Eviction lists of earlier batches rewritten (`Some`) or deleted (`None`).
    eviction_lists: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    held: [i64; 2],
    counts: RowCounts,
    updated: [u64; 2],
}

impl Work<'_> {
    /// The rows of each wanted `(side, key)` (their index in `lists`), reading those not read
    /// yet with one multi-get.
    fn load(&mut self, wanted: &[(u8, &[u8])]) -> Result<Vec<usize>> {
        let mut out = Vec::with_capacity(wanted.len());
        let mut missing: Vec<(usize, (u8, Vec<u8>))> = Vec::new();
        for (i, (side, key)) in wanted.iter().enumerate() {
            match self.index[*side as usize].get(*key) {
                Some(&at) => out.push(at),
                None => {
                    out.push(usize::MAX);
                    missing.push((i, (*side, key.to_vec())));
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let keys: Vec<Vec<u8>> = missing.iter().map(|(_, (s, k))| list_key(*s, k)).collect();
        let values = self.store.multi_get(&keys)?;
        for ((i, k), v) in missing.into_iter().zip(values) {
            let at = match self.index[k.0 as usize].get(&k.1) {
                Some(&at) => at, // wanted twice in this call
                None => {
                    let rows = match v {
                        Some(v) => KeyRows::decode(v)?,
                        None => KeyRows::default(),
                    };
                    self.index[k.0 as usize].insert(k.1.clone(), self.lists.len());
                    self.lists.push(rows);
                    self.list_keys.push(k);
                    self.lists.len() - 1
                }
            };
            out[i] = at;
        }
        Ok(out)
    }
}

pub(super) fn run(
    op: &JoinOp,
    store: &dyn StateStore,
    inputs: [&RecordBatch; 2],
    wm: Watermarks,
) -> Result<OperatorOutput> {
    let counters = store.multi_get(&[count_key(0), count_key(1)])?;
    let held = |v: &Option<Vec<u8>>| -> i64 {
        v.as_deref()
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes)
            .unwrap_or(0)
    };
    let before = [held(&counters[0]), held(&counters[1])];
    let mut w = Work {
        store,
        wm,
        lists: Vec::new(),
        list_keys: Vec::new(),
        index: [HashMap::new(), HashMap::new()],
        evictions: [Vec::new(), Vec::new()],
        eviction_lists: Vec::new(),
        held: before,
        counts: RowCounts::default(),
        updated: [0, 0],
    };
    let mut out = OperatorOutput::default();
    for (side, input) in inputs.into_iter().enumerate() {
        arrive(op, side, input, &mut w, &mut out)?;
    }
    for side in 0..2 {
        evict(op, side, &mut w, &mut out)?;
    }
    // the batch's changes: each touched key once, this batch's eviction lists, the counters
    let mut changes = StateChanges::default();
    for (list, (side, key)) in w.lists.iter().zip(&w.list_keys) {
        if !list.dirty {
            continue;
        }
        let k = list_key(*side, key);
        if list.is_empty() {
            changes.deletes.push(k);
        } else {
            changes.puts.push((k, list.encode()));
        }
    }
    for (k, v) in w.eviction_lists {
        match v {
            Some(v) => changes.puts.push((k, v)),
            None => changes.deletes.push(k),
        }
    }
    for (side, mut ev) in w.evictions.into_iter().enumerate() {
        if !ev.is_empty() {
            ev.sort();
            changes
                .puts
                .push((batch_key(side as u8, wm.batch_id), encode_evictions(&ev)));
        }
    }
    let mut delta = 0i64;
    for (side, (held, before)) in w.held.iter().zip(before).enumerate() {
        changes
            .puts
            .push((count_key(side as u8), held.to_be_bytes().to_vec()));
        delta += held - before;
    }
    // rows held, not keys: the store's count is the operator's numRowsTotal
    changes.rows_delta = delta;
    out.changes = changes;
    out.counts = Some(w.counts);
    out.custom_metrics = vec![
        ("left.numRowsTotal", w.held[0].max(0) as u64),
        ("right.numRowsTotal", w.held[1].max(0) as u64),
        ("left.numRowsUpdated", w.updated[0]),
        ("right.numRowsUpdated", w.updated[1]),
    ];
    Ok(out)
}

/// The event times (µs) of `expr` over `batch`.
fn times(
    expr: &std::sync::Arc<dyn datafusion::physical_plan::PhysicalExpr>,
    batch: &RecordBatch,
) -> Result<arrow::array::TimestampMicrosecondArray> {
    event_micros(&expr.evaluate(batch)?.into_array(batch.num_rows())?)
}

/// Side `side`'s rows at or before the previous batch's watermark are late: dropped (and kept
/// for the late-data sink); the others are returned.
fn drop_late(
    op: &JoinOp,
    side: usize,
    input: &RecordBatch,
    w: &Work<'_>,
    out: &mut OperatorOutput,
) -> Result<RecordBatch> {
    let Some(t) = &op.sides[side].spec.late_time else {
        return Ok(input.clone());
    };
    let ts = times(t, input)?;
    let late: BooleanArray = (0..ts.len())
        .map(|i| Some(ts.is_valid(i) && ts.value(i) <= w.wm.late_us))
        .collect();
    let n_late = late.true_count();
    if n_late == 0 {
        return Ok(input.clone());
    }
    out.dropped_by_watermark += n_late as u64;
    let rows = filter_record_batch(input, &late)?;
    out.late_rows.push(op.late_shape(side, &rows)?);
    Ok(filter_record_batch(input, &arrow::compute::not(&late)?)?)
}

/// Side `side`'s rows of the batch: late ones dropped, the rest joined with the other side's
/// buffered rows and buffered.
fn arrive(
    op: &JoinOp,
    side: usize,
    input: &RecordBatch,
    w: &mut Work<'_>,
    out: &mut OperatorOutput,
) -> Result<()> {
    if input.num_rows() == 0 {
        return Ok(());
    }
    let batch = drop_late(op, side, input, w, out)?;
    let n = batch.num_rows();
    if n == 0 {
        return Ok(());
    }
    let spec = &op.sides[side].spec;
    let (keys, null_keys) = op.key_rows(side, &batch)?;
    let rows = op.sides[side].rows.convert_columns(batch.columns())?;
    let is_null = |i: usize| null_keys.as_ref().is_some_and(|v| v[i]);
    let (me, other) = (side as u8, 1 - side as u8);
    let semi = op.kind == StreamJoinType::LeftSemi;

    // 1. the batch's keys: the other side's rows to match, this side's to append to
    let mut slot_of: HashMap<&[u8], usize> = HashMap::new();
    let mut slots: Vec<Vec<u8>> = Vec::new();
    let mut row_slot = Vec::with_capacity(n);
    for i in 0..n {
        let k = keys.row(i).data();
        let s = *slot_of.entry(k).or_insert_with(|| {
            slots.push(k.to_vec());
            slots.len() - 1
        });
        row_slot.push(s);
    }
    let mut wanted: Vec<(u8, &[u8])> = Vec::with_capacity(slots.len() * 2);
    for k in &slots {
        wanted.push((other, k));
        wanted.push((me, k));
    }
    let at = w.load(&wanted)?;
    // the lists of each slot's key: the other side's, this side's
    let other_list: Vec<usize> = at.iter().step_by(2).copied().collect();
    let own_list: Vec<usize> = at.iter().skip(1).step_by(2).copied().collect();

    // 2. candidate pairs (a left-semi right row only looks for left rows not yet emitted)
    let skip_matched = semi && side == 1;
    let mut this_idx: Vec<u32> = Vec::new();
    let mut cand_idx: Vec<u32> = Vec::new();
    // the candidates: every buffered row of the other side under a key of the batch, numbered
    // from its key's first one
    let mut cand: Vec<(usize, usize)> = Vec::new(); // (slot, position in its list)
    let mut base: Vec<Option<u32>> = vec![None; slots.len()];
    for (i, &s) in row_slot.iter().enumerate() {
        if is_null(i) {
            continue;
        }
        let list = &w.lists[other_list[s]];
        if list.rows.is_empty() {
            continue;
        }
        let b = *base[s].get_or_insert_with(|| {
            let b = cand.len() as u32;
            cand.extend((0..list.rows.len()).map(|pos| (s, pos)));
            b
        });
        for (pos, r) in list.rows.iter().enumerate() {
            if r.removed || (skip_matched && r.matched) {
                continue;
            }
            this_idx.push(i as u32);
            cand_idx.push(b + pos as u32);
        }
    }
    let mut this_matched = vec![false; n];
    let mut cand_matched = vec![false; cand.len()];
    let parser = op.sides[other as usize].rows.parser();
    if !this_idx.is_empty() {
        let other_cols = op.sides[other as usize].rows.convert_rows(
            cand.iter()
                .map(|(s, pos)| parser.parse(w.lists[other_list[*s]].row(*pos))),
        )?;
        let ti = UInt32Array::from(this_idx.clone());
        let ci = UInt32Array::from(cand_idx.clone());
        let this_cols = take_cols(batch.columns(), &ti)?;
        let other_cols_taken = take_cols(&other_cols, &ci)?;
        let pairs = ti.len();
        let joined = match side {
            0 => op.joined_batch(this_cols, other_cols_taken, pairs)?,
            _ => op.joined_batch(other_cols_taken, this_cols, pairs)?,
        };
        let pass: BooleanArray = match &op.filter {
            Some(f) => {
                let m = f.evaluate(&joined)?.into_array(pairs)?;
                let m = m.as_boolean_opt().ok_or_else(|| {
                    EngineError::bug(format!("join condition returned {}", m.data_type()))
                })?;
                // null is not true
                (0..pairs)
                    .map(|p| Some(m.is_valid(p) && m.value(p)))
                    .collect()
            }
            None => BooleanArray::from(vec![true; pairs]),
        };
        for p in 0..pairs {
            if pass.value(p) {
                this_matched[this_idx[p] as usize] = true;
                cand_matched[cand_idx[p] as usize] = true;
            }
        }
        if !semi {
            let rows = filter_record_batch(&joined, &pass)?;
            if rows.num_rows() > 0 {
                out.rows.push(rows);
            }
        } else if side == 1 {
            // left rows emitted at their first match
            let emit: UInt32Array = (0..cand.len() as u32)
                .filter(|j| cand_matched[*j as usize])
                .collect();
            if !emit.is_empty() {
                let len = emit.len();
                out.rows
                    .push(semi_batch(op, take_cols(&other_cols, &emit)?, len)?);
            }
        }
    }
    if semi && side == 0 {
        let emit: UInt32Array = (0..n as u32)
            .filter(|i| this_matched[*i as usize])
            .collect();
        if !emit.is_empty() {
            let len = emit.len();
            out.rows
                .push(semi_batch(op, take_cols(batch.columns(), &emit)?, len)?);
        }
    }
    // 3. the other side's rows that matched now: flagged, or (left semi) emitted and forgotten
    for (j, (s, pos)) in cand.iter().enumerate() {
        if !cand_matched[j] {
            continue;
        }
        let list = &mut w.lists[other_list[*s]];
        let r = &mut list.rows[*pos];
        if skip_matched {
            r.removed = true;
            list.dirty = true;
            w.held[other as usize] -= 1;
            if r.batch == w.wm.batch_id {
                // buffered and emitted within one batch: Spark counts it neither as written
                // nor as removed
                w.counts.updated -= 1;
                w.updated[other as usize] -= 1;
            } else {
                w.counts.removed += 1;
            }
        } else if !r.matched {
            r.matched = true;
            list.dirty = true;
        }
    }
    // 4. this side's rows into state
    let evict_times = match &spec.evict {
        Some((e, _)) => Some(times(e, &batch)?),
        None => None,
    };
    let threshold = spec
        .evict
        .as_ref()
        .filter(|_| w.wm.evict_us > 0)
        .map(|(_, off)| w.wm.evict_us + off);
    let mut pad_now: Vec<u32> = Vec::new();
    for i in 0..n {
        let matched = this_matched[i];
        if semi && side == 0 && matched {
            continue;
        }
        let time = evict_times
            .as_ref()
            .and_then(|t| t.is_valid(i).then(|| t.value(i)));
        if let (Some(t), Some(th)) = (time, threshold) {
            if t <= th {
                // already past its state watermark: never held, except to come out padded
                if op.kind.outer(side) && !matched {
                    pad_now.push(i as u32);
                    w.counts.updated += 1;
                    w.counts.removed += 1;
                    w.updated[side] += 1;
                }
                continue;
            }
        }
        let slot = row_slot[i];
        if let Some(t) = time.filter(|_| spec.evict.is_some()) {
            w.evictions[side].push((t, slots[slot].clone()));
        }
        w.lists[own_list[slot]].push(w.wm.batch_id, i as u32, time, matched, rows.row(i).data());
        w.held[side] += 1;
        w.counts.updated += 1;
        w.updated[side] += 1;
    }
    if !pad_now.is_empty() {
        let len = pad_now.len();
        let cols = take_cols(batch.columns(), &UInt32Array::from(pad_now))?;
        out.rows.push(op.padded(side, cols, len)?);
    }
    Ok(())
}

/// Evicts side `side`'s rows at or before its state watermark; an outer side's unmatched rows
/// come out padded with nulls.
fn evict(op: &JoinOp, side: usize, w: &mut Work<'_>, out: &mut OperatorOutput) -> Result<()> {
    let Some((_, off)) = &op.sides[side].spec.evict else {
        return Ok(());
    };
    if w.wm.evict_us <= 0 {
        return Ok(());
    }
    let threshold = w.wm.evict_us + off;
    let me = side as u8;
    // the earlier batches' eviction lists: the keys with rows at or before the threshold
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut rewritten = Vec::new();
    let mut failed = None;
    w.store
        .scan(&batch_key(me, 0), Some(&batch_keys_end(me)), &mut |k, v| {
            // read in place, as far as the threshold
            match due_evictions(v, threshold) {
                Ok((due, rest)) => {
                    if !due.is_empty() {
                        keys.extend(due.into_iter().map(|(_, key)| key));
                        rewritten.push((k.to_vec(), (!rest.is_empty()).then(|| rest.to_vec())));
                    }
                    Ok(true)
                }
                Err(e) => {
                    failed = Some(e);
                    Ok(false)
                }
            }
        })?;
    if let Some(e) = failed {
        return Err(e);
    }
    w.eviction_lists.extend(rewritten);
    keys.sort();
    keys.dedup();
    let wanted: Vec<(u8, &[u8])> = keys.iter().map(|k| (me, k.as_slice())).collect();
    let at = w.load(&wanted)?;
    let mut pad: Vec<Vec<u8>> = Vec::new();
    for i in at {
        let list = &mut w.lists[i];
        for j in 0..list.rows.len() {
            let r = list.rows[j];
            if r.removed || r.time.is_none_or(|t| t > threshold) {
                continue;
            }
            if op.kind.outer(side) && !r.matched {
                pad.push(list.row(j).to_vec());
            }
            list.rows[j].removed = true;
            list.dirty = true;
            w.held[side] -= 1;
            w.counts.removed += 1;
        }
    }
    if !pad.is_empty() {
        let parser = op.sides[side].rows.parser();
        let cols = op.sides[side]
            .rows
            .convert_rows(pad.iter().map(|r| parser.parse(r)))?;
        out.rows.push(op.padded(side, cols, pad.len())?);
    }
    Ok(())
}

fn take_cols(cols: &[ArrayRef], idx: &UInt32Array) -> Result<Vec<ArrayRef>> {
    cols.iter()
        .map(|c| Ok(take(c.as_ref(), idx, None)?))
        .collect()
}

/// Left rows as the left-semi join's output (the left side's columns only).
fn semi_batch(op: &JoinOp, cols: Vec<ArrayRef>, n: usize) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new_with_options(
        std::sync::Arc::new(arrow::datatypes::Schema::new(super::nullable(
            op.sides[0].spec.schema.fields(),
        ))),
        cols,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
    )?)
}
