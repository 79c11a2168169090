//! Session windows (`session_window(ts, gap)`): an event opens the session `[ts, ts + gap)`;
//! sessions of the same key that overlap merge, within a batch and across batches.
//!
//! State key: `group key row ++ session start (8 bytes)`, so the sessions of a key are one
//! prefix scan; value: `session end (8 bytes) ++ intermediate states`. Per batch: the batch's
//! rows are sorted by (key, time) and cut into sessions, aggregated in memory, then merged with
//! the stored sessions of the keys they touch. Sessions whose end is at or before the watermark
//! are emitted (append) and forgotten; finding them scans the whole state (O(state) per batch).

use std::collections::{BTreeMap, HashSet};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, take};
use datafusion::logical_expr::EmitTo;
use sluice_state::store::{StateChanges, StateStore};

use super::{decode_end, encode_end, AggOutput, AggregateOp};
use crate::connector::OutputMode;
use crate::error::{EngineError, Result};
use crate::operators::window::event_micros;

/// One session before output: its key bytes (group key row), bounds, and where its states are.
struct Merged {
    key: Vec<u8>,
    start: i64,
    end: i64,
    /// Existing state keys it replaces.
    replaces: Vec<Vec<u8>>,
}

fn state_key(key: &[u8], start: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 8);
    k.extend_from_slice(key);
    k.extend_from_slice(&encode_end(start));
    k
}

impl AggregateOp {
    pub(super) fn process_sessions(
        &self,
        store: &dyn StateStore,
        batch: &RecordBatch,
        late_wm: i64,
        evict_wm: i64,
    ) -> Result<AggOutput> {
        let w = self
            .window
            .clone()
            .ok_or_else(|| EngineError::bug("session aggregation without window"))?;
        let gap = w.spec.size_us;
        let n = batch.num_rows();
        let mut out = AggOutput::default();
        let ts = event_micros(&w.time.evaluate(batch)?.into_array(n)?)?;
        crate::operators::window::check_event_times(&ts)?;

        // late rows: their own session [ts, ts + gap) ended at or before the previous watermark
        let watermarked = self.drops_late();
        let keep: Vec<bool> = (0..n)
            .map(|i| ts.is_valid(i) && !(watermarked && ts.value(i) + gap <= late_wm))
            .collect();
        let late_mask: Vec<bool> = (0..n).map(|i| ts.is_valid(i) && !keep[i]).collect();
        if late_mask.iter().any(|l| *l) {
            out.late_rows
                .push(filter_record_batch(batch, &BooleanArray::from(late_mask))?);
            out.dropped_by_watermark = out.late_rows[0].num_rows() as u64;
        }
        let rows_batch = filter_record_batch(batch, &BooleanArray::from(keep.clone()))?;
        let m = rows_batch.num_rows();
        let times: Vec<i64> = (0..n).filter(|i| keep[*i]).map(|i| ts.value(i)).collect();
        let key_rows = self.key_rows(&rows_batch)?;
        let key_of = |i: usize| -> &[u8] {
            match &key_rows {
                Some(r) => r.row(i).data(),
                None => &[],
            }
        };

        // 1. the batch's own sessions, per key, from rows sorted by (key, time)
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|a, b| key_of(*a).cmp(key_of(*b)).then(times[*a].cmp(&times[*b])));
        let mut group_idx = vec![0usize; m];
        let mut sessions: Vec<(Vec<u8>, i64, i64)> = Vec::new(); // (key, start, end)
        for &i in &order {
            let (k, t) = (key_of(i), times[i]);
            match sessions.last_mut() {
                Some((sk, _, end)) if sk.as_slice() == k && t < *end => *end = (*end).max(t + gap),
                _ => sessions.push((k.to_vec(), t, t + gap)),
            }
            group_idx[i] = sessions.len() - 1;
        }
        let mut accs = self.new_accumulators()?;
        self.update_accumulators(&mut accs, &rows_batch, &group_idx, None, sessions.len())?;
        let batch_states = self.states_of(&mut accs, sessions.len())?;

        // 2. stored sessions of the touched keys, merged with the batch's
        let mut by_key: BTreeMap<Vec<u8>, Vec<(i64, i64, Source)>> = BTreeMap::new();
        for (s, (k, start, end)) in sessions.iter().enumerate() {
            by_key
                .entry(k.clone())
                .or_default()
                .push((*start, *end, Source::Batch(s)));
        }
        let mut stored_vals: Vec<Vec<u8>> = Vec::new();
        let mut stored_keys: Vec<Vec<u8>> = Vec::new();
        for (k, list) in by_key.iter_mut() {
            store.scan(k, None, &mut |sk, v| {
                if sk.len() != k.len() + 8 || !sk.starts_with(k) {
                    return Ok(false);
                }
                let start = decode_end(&sk[k.len()..]);
                let end = decode_end(v);
                list.push((start, end, Source::Stored(stored_vals.len())));
                stored_vals.push(v[8..].to_vec());
                stored_keys.push(sk.to_vec());
                Ok(true)
            })?;
        }
        let mut merged: Vec<Merged> = Vec::new();
        let mut batch_to_final = vec![0usize; sessions.len()];
        let mut stored_to_final = vec![0usize; stored_vals.len()];
        for (k, list) in by_key.iter_mut() {
            list.sort_by_key(|(s, e, _)| (*s, *e));
            let mut cur: Option<Merged> = None;
            for (s, e, src) in list.iter() {
                let extend = cur.as_ref().is_some_and(|c| *s < c.end);
                if !extend {
                    if let Some(c) = cur.take() {
                        merged.push(c);
                    }
                    cur = Some(Merged {
                        key: k.clone(),
                        start: *s,
                        end: *e,
                        replaces: vec![],
                    });
                }
                let c = cur
                    .as_mut()
                    .ok_or_else(|| EngineError::bug("session merge"))?;
                c.end = c.end.max(*e);
                let idx = merged.len();
                match src {
                    Source::Batch(b) => batch_to_final[*b] = idx,
                    Source::Stored(st) => {
                        stored_to_final[*st] = idx;
                        c.replaces.push(stored_keys[*st].clone());
                    }
                }
            }
            if let Some(c) = cur.take() {
                merged.push(c);
            }
        }
        let mut finals = self.new_accumulators()?;
        let stored_states = if stored_vals.is_empty() {
            None
        } else {
            Some(self.decode_states(&stored_vals.iter().map(|v| v.as_slice()).collect::<Vec<_>>())?)
        };
        for (i, acc) in finals.iter_mut().enumerate() {
            if let Some(ss) = &stored_states {
                acc.merge_batch(&ss[i], &stored_to_final, merged.len())?;
            }
            acc.merge_batch(&batch_states[i], &batch_to_final, merged.len())?;
        }
        let final_states = self.states_of(&mut finals, merged.len())?;
        let encoded = self.encode_states(&final_states, merged.len())?;

        // 3. state changes and output
        let evict = |end: i64| watermarked && self.mode != OutputMode::Complete && end <= evict_wm;
        let mut changes = StateChanges::default();
        let mut put_keys: HashSet<Vec<u8>> = HashSet::new();
        let mut emit: Vec<usize> = Vec::new();
        let mut delta: i64 = 0;
        for (i, s) in merged.iter().enumerate() {
            let gone = evict(s.end);
            let emit_it = match self.mode {
                OutputMode::Update | OutputMode::Complete => true,
                OutputMode::Append => gone,
            };
            if emit_it {
                emit.push(i);
            }
            delta -= s.replaces.len() as i64;
            if !gone {
                let key = state_key(&s.key, s.start);
                let mut value = encode_end(s.end).to_vec();
                value.extend_from_slice(&encoded[i]);
                put_keys.insert(key.clone());
                changes.puts.push((key, value));
                delta += 1;
            }
        }
        for s in &merged {
            for r in &s.replaces {
                if !put_keys.contains(r) {
                    changes.deletes.push(r.clone());
                }
            }
        }
        // untouched stored sessions: evicted by the watermark, or (complete) emitted as they are
        let touched: HashSet<&[u8]> = stored_keys.iter().map(|k| k.as_slice()).collect();
        let mut extra: Vec<(Vec<u8>, i64, i64, Vec<u8>)> = Vec::new();
        if watermarked || self.mode == OutputMode::Complete {
            store.scan(&[], None, &mut |k, v| {
                if touched.contains(k) || k.len() < 8 || v.len() < 8 {
                    return Ok(true);
                }
                let end = decode_end(v);
                if self.mode == OutputMode::Complete || end <= evict_wm {
                    let key = k[..k.len() - 8].to_vec();
                    extra.push((key, decode_end(&k[k.len() - 8..]), end, v[8..].to_vec()));
                    if self.mode != OutputMode::Complete {
                        changes.deletes.push(k.to_vec());
                        delta -= 1;
                    }
                }
                Ok(true)
            })?;
        }
        if self.mode == OutputMode::Update {
            extra.clear();
        }
        changes.rows_delta = delta;
        if !emit.is_empty() || !extra.is_empty() {
            let total = emit.len() + extra.len();
            let mut values_accs = self.new_accumulators()?;
            let emit_idx = UInt32Array::from(emit.iter().map(|i| *i as u32).collect::<Vec<_>>());
            let extra_states = if extra.is_empty() {
                None
            } else {
                Some(self.decode_states(&extra.iter().map(|e| e.3.as_slice()).collect::<Vec<_>>())?)
            };
            for (i, acc) in values_accs.iter_mut().enumerate() {
                let t: Vec<ArrayRef> = final_states[i]
                    .iter()
                    .map(|c| Ok(take(c.as_ref(), &emit_idx, None)?))
                    .collect::<Result<_>>()?;
                acc.merge_batch(&t, &(0..emit.len()).collect::<Vec<_>>(), total)?;
                if let Some(es) = &extra_states {
                    acc.merge_batch(&es[i], &(emit.len()..total).collect::<Vec<_>>(), total)?;
                }
            }
            let values = values_accs
                .iter_mut()
                .map(|a| a.evaluate(EmitTo::All))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let mut parts: Vec<&[u8]> = emit.iter().map(|i| merged[*i].key.as_slice()).collect();
            parts.extend(extra.iter().map(|e| e.0.as_slice()));
            let mut starts: Vec<i64> = emit.iter().map(|i| merged[*i].start).collect();
            starts.extend(extra.iter().map(|e| e.1));
            let mut ends: Vec<i64> = emit.iter().map(|i| merged[*i].end).collect();
            ends.extend(extra.iter().map(|e| e.2));
            out.rows
                .push(self.output_from_parts(&parts, Some((starts, ends)), values)?);
        }
        out.changes = changes;
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Batch(usize),
    Stored(usize),
}
