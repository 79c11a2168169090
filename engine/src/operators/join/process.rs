//! One batch of a stream-stream join in one partition (see the module map in `mod.rs`).

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, take};
use sluice_state::store::{StateChanges, StateStore};

use super::keys::{
    count_key, key_of_time_value, key_prefix, row_key, row_value, time_key, time_key_after,
    time_key_row, time_value,
};
use super::{JoinOp, StreamJoinType};
use crate::error::{EngineError, Result};
use crate::operators::stateful::{OperatorOutput, RowCounts, Watermarks};
use crate::operators::window::event_micros;

/// A row of this batch that goes into state.
struct NewRow {
    key: Vec<u8>,
    row: Vec<u8>,
    idx: u32,
    time: Option<i64>,
    matched: bool,
    /// Removed again in this batch (a left-semi row matched by a right row of the batch).
    removed: bool,
}

/// A buffered row of the other side, a candidate for matching.
struct Candidate {
    /// Where it lives: committed in the store (its entry key) or new in this batch (index in
    /// `new[side]`).
    at: Place,
    matched: bool,
    row: Vec<u8>,
}

enum Place {
    Stored(Vec<u8>),
    New(usize),
}

/// What the batch has done so far, before it becomes [`StateChanges`].
struct Work<'a> {
    store: &'a dyn StateStore,
    wm: Watermarks,
    /// Entries rewritten (`Some`) or deleted (`None`) among the committed ones.
    pending: HashMap<Vec<u8>, Option<Vec<u8>>>,
    new: [Vec<NewRow>; 2],
    /// New rows by join key, per side.
    new_by_key: [HashMap<Vec<u8>, Vec<usize>>; 2],
    held: [i64; 2],
    counts: RowCounts,
    updated: [u64; 2],
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
    let mut w = Work {
        store,
        wm,
        pending: HashMap::new(),
        new: [Vec::new(), Vec::new()],
        new_by_key: [HashMap::new(), HashMap::new()],
        held: [held(&counters[0]), held(&counters[1])],
        counts: RowCounts::default(),
        updated: [0, 0],
    };
    let mut out = OperatorOutput::default();
    for side in 0..2 {
        arrive(op, side, inputs[side], &mut w, &mut out)?;
    }
    for side in 0..2 {
        evict(op, side, &mut w, &mut out)?;
    }
    // the batch's changes
    let mut changes = StateChanges::default();
    let mut delta = 0i64;
    for (k, v) in w.pending {
        match v {
            Some(v) => changes.puts.push((k, v)),
            None => changes.deletes.push(k),
        }
    }
    for (side, rows) in w.new.iter().enumerate() {
        for r in rows.iter().filter(|r| !r.removed) {
            changes.puts.push((
                row_key(side as u8, &r.key, wm.batch_id, r.idx),
                row_value(r.matched, &r.row),
            ));
            if let Some(t) = r.time {
                changes.puts.push((
                    time_key(side as u8, t, wm.batch_id, r.idx),
                    time_value(&r.key),
                ));
            }
        }
    }
    for side in 0..2 {
        changes
            .puts
            .push((count_key(side as u8), w.held[side].to_be_bytes().to_vec()));
        delta += w.held[side] - held(&counters[side]);
    }
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
    let spec = &op.sides[side].spec;
    // 1. late rows: at or before the previous batch's watermark
    let batch = match &spec.late_time {
        Some(t) => {
            let ts = times(t, input)?;
            let late: BooleanArray = (0..ts.len())
                .map(|i| Some(ts.is_valid(i) && ts.value(i) <= w.wm.late_us))
                .collect();
            let n_late = late.true_count();
            if n_late > 0 {
                out.dropped_by_watermark += n_late as u64;
                let rows = filter_record_batch(input, &late)?;
                out.late_rows.push(op.late_shape(side, &rows)?);
                filter_record_batch(input, &arrow::compute::not(&late)?)?
            } else {
                input.clone()
            }
        }
        None => input.clone(),
    };
    let n = batch.num_rows();
    if n == 0 {
        return Ok(());
    }
    let (keys, null_keys) = op.key_rows(side, &batch)?;
    let rows = op.sides[side].rows.convert_columns(batch.columns())?;
    let other = 1 - side;
    let semi = op.kind == StreamJoinType::LeftSemi;

    // 2. the other side's buffered rows with the batch's keys
    let mut cands: Vec<Candidate> = Vec::new();
    let mut by_key: HashMap<&[u8], (usize, usize)> = HashMap::new();
    for i in 0..n {
        if null_keys.as_ref().is_some_and(|v| v[i]) {
            continue;
        }
        let k = keys.row(i).data();
        if by_key.contains_key(k) {
            continue;
        }
        let start = cands.len();
        let prefix = key_prefix(other as u8, k);
        let mut end = prefix.clone();
        end.push(0xff);
        let mut found = Vec::new();
        w.store.scan(&prefix, None, &mut |ek, v| {
            if !ek.starts_with(&prefix) {
                return Ok(false);
            }
            found.push((ek.to_vec(), v.to_vec()));
            Ok(true)
        })?;
        for (ek, v) in found {
            let v = match w.pending.get(&ek) {
                Some(None) => continue,
                Some(Some(nv)) => nv.clone(),
                None => v,
            };
            let Some((&flag, row)) = v.split_first() else {
                return Err(EngineError::bug("a join state entry without a value"));
            };
            cands.push(Candidate {
                at: Place::Stored(ek),
                matched: flag != 0,
                row: row.to_vec(),
            });
        }
        if let Some(idx) = w.new_by_key[other].get(k) {
            for &j in idx {
                let r = &w.new[other][j];
                if !r.removed {
                    cands.push(Candidate {
                        at: Place::New(j),
                        matched: r.matched,
                        row: r.row.clone(),
                    });
                }
            }
        }
        by_key.insert(k, (start, cands.len()));
    }
    // a left-semi right row only looks for left rows not yet emitted
    let skip_matched = semi && side == 1;

    // 3. candidate pairs, then the condition
    let mut this_idx: Vec<u32> = Vec::new();
    let mut cand_idx: Vec<u32> = Vec::new();
    for i in 0..n {
        if null_keys.as_ref().is_some_and(|v| v[i]) {
            continue;
        }
        if let Some(&(s, e)) = by_key.get(keys.row(i).data()) {
            for (j, c) in cands.iter().enumerate().take(e).skip(s) {
                if skip_matched && c.matched {
                    continue;
                }
                this_idx.push(i as u32);
                cand_idx.push(j as u32);
            }
        }
    }
    let mut this_matched = vec![false; n];
    let mut cand_matched = vec![false; cands.len()];
    if !this_idx.is_empty() {
        let parser = op.sides[other].rows.parser();
        let other_cols = op.sides[other]
            .rows
            .convert_rows(cands.iter().map(|c| parser.parse(&c.row)))?;
        let ti = UInt32Array::from(this_idx.clone());
        let ci = UInt32Array::from(cand_idx.clone());
        let this_cols = take_cols(batch.columns(), &ti)?;
        let other_cols = take_cols(&other_cols, &ci)?;
        let pairs = ti.len();
        let joined = match side {
            0 => op.joined_batch(this_cols, other_cols, pairs)?,
            _ => op.joined_batch(other_cols, this_cols, pairs)?,
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
            // left rows emitted at their first match, and no longer held
            let emit: Vec<u32> = (0..cands.len())
                .filter(|j| cand_matched[*j])
                .map(|j| j as u32)
                .collect();
            if !emit.is_empty() {
                let cols = op.sides[0]
                    .rows
                    .convert_rows(emit.iter().map(|j| parser.parse(&cands[*j as usize].row)))?;
                out.rows.push(semi_batch(op, cols, emit.len())?);
            }
        }
    }
    if semi && side == 0 {
        let emit: Vec<u32> = (0..n)
            .filter(|i| this_matched[*i])
            .map(|i| i as u32)
            .collect();
        if !emit.is_empty() {
            let len = emit.len();
            let cols = take_cols(batch.columns(), &UInt32Array::from(emit))?;
            out.rows.push(semi_batch(op, cols, len)?);
        }
    }
    // 4. the other side's rows that matched now
    for (j, c) in cands.iter().enumerate() {
        // a left-semi left row is emitted once, then forgotten
        let remove = semi && side == 1;
        if !cand_matched[j] || (c.matched && !remove) {
            continue;
        }
        match &c.at {
            Place::Stored(ek) => {
                if remove {
                    w.pending.insert(ek.clone(), None);
                    if let Some(tk) = stored_time_key(op, other, ek, &c.row)? {
                        w.pending.insert(tk, None);
                    }
                    w.held[other] -= 1;
                    w.counts.removed += 1;
                } else {
                    w.pending.insert(ek.clone(), Some(row_value(true, &c.row)));
                }
            }
            Place::New(k) => {
                let r = &mut w.new[other][*k];
                if remove {
                    // buffered and emitted within one batch: Spark counts it neither as
                    // written nor as removed
                    r.removed = true;
                    w.held[other] -= 1;
                    w.counts.updated -= 1;
                    w.updated[other] -= 1;
                } else {
                    r.matched = true;
                }
            }
        }
    }
    // 5. this side's rows into state
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
        let key = keys.row(i).data().to_vec();
        let k = w.new[side].len();
        w.new_by_key[side].entry(key.clone()).or_default().push(k);
        w.new[side].push(NewRow {
            key,
            row: rows.row(i).data().to_vec(),
            idx: i as u32,
            time,
            matched,
            removed: false,
        });
        w.held[side] += 1;
        w.counts.updated += 1;
        w.updated[side] += 1;
    }
    if !pad_now.is_empty() {
        let cols = take_cols(batch.columns(), &UInt32Array::from(pad_now.clone()))?;
        out.rows.push(op.padded(side, cols, pad_now.len())?);
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
    let from = vec![b'T', side as u8];
    let to = time_key_after(side as u8, threshold);
    let mut found: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    w.store.scan(&from, Some(&to), &mut |k, v| {
        found.push((k.to_vec(), v.to_vec()));
        Ok(true)
    })?;
    let mut entries = Vec::with_capacity(found.len());
    for (tk, v) in &found {
        if matches!(w.pending.get(tk), Some(None)) {
            continue;
        }
        let (batch, idx) =
            time_key_row(tk).ok_or_else(|| EngineError::bug("a join time-index key"))?;
        let key =
            key_of_time_value(v).ok_or_else(|| EngineError::bug("a join time-index value"))?;
        entries.push((tk.clone(), row_key(side as u8, key, batch, idx)));
    }
    let stored = w
        .store
        .multi_get(&entries.iter().map(|(_, rk)| rk.clone()).collect::<Vec<_>>())?;
    let mut pad: Vec<Vec<u8>> = Vec::new();
    for ((tk, rk), v) in entries.into_iter().zip(stored) {
        let v = match w.pending.get(&rk) {
            Some(None) => continue,
            Some(Some(nv)) => nv.clone(),
            None => match v {
                Some(v) => v,
                None => return Err(EngineError::bug("a join time-index entry without its row")),
            },
        };
        let Some((&flag, row)) = v.split_first() else {
            return Err(EngineError::bug("a join state entry without a value"));
        };
        if op.kind.outer(side) && flag == 0 {
            pad.push(row.to_vec());
        }
        w.pending.insert(rk, None);
        w.pending.insert(tk, None);
        w.held[side] -= 1;
        w.counts.removed += 1;
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

/// The time-index key of a buffered row of `side` (entry key `ek`, encoded row `row`), if the
/// side evicts by time.
fn stored_time_key(op: &JoinOp, side: usize, ek: &[u8], row: &[u8]) -> Result<Option<Vec<u8>>> {
    let Some((e, _)) = &op.sides[side].spec.evict else {
        return Ok(None);
    };
    let parser = op.sides[side].rows.parser();
    let cols = op.sides[side].rows.convert_rows([parser.parse(row)])?;
    let b = RecordBatch::try_new_with_options(
        std::sync::Arc::new(arrow::datatypes::Schema::new(super::nullable(
            op.sides[side].spec.schema.fields(),
        ))),
        cols,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    let t = times(e, &b)?;
    if !t.is_valid(0) {
        return Ok(None);
    }
    let (batch, idx) = super::keys::row_key_row(ek, ek.len() - 12)
        .ok_or_else(|| EngineError::bug("a join row key"))?;
    Ok(Some(time_key(side as u8, t.value(0), batch, idx)))
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
