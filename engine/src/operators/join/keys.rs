//! How a stream-stream join lays out its buffered rows in a partition's state store: one entry
//! per join key and side (so probing a batch's keys is one multi-get, and a batch writes each
//! touched key once), an eviction list per side and batch, and a row counter per side.
//!
//! ```text
//! K side klen key   → the side's buffered rows with that key: batch, idx, time, matched, row
//! B side batch      → (time, key) of the rows that batch buffered, by time: the eviction scan
//!                     reads these few entries instead of every row
//! C side            → rows held (i64)
//! ```
//! `side` is 0 (left) or 1 (right); `key` the arrow-row encoded join key; `batch`/`idx` the
//! batch that brought the row and its position in that batch's partition input, so identical
//! rows stay separate rows, each with its own matched flag (as in Spark); `time` the row's
//! eviction time (µs), absent when the side is never evicted. An eviction list is a hint: a row
//! already gone (a left-semi row emitted at its match) is simply not found there.

use crate::error::{EngineError, Result};

/// A buffered row: its bytes are `buf[start..start + len]` of its key's [`KeyRows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The batch that buffered it.
    pub batch: u64,
    /// Its position in that batch's partition input.
    pub idx: u32,
    /// Its eviction time, µs.
    pub time: Option<i64>,
    /// Whether it has matched a row of the other side.
    pub matched: bool,
    start: usize,
    len: usize,
    /// Removed in the batch being processed (not written back).
    pub removed: bool,
}

/// A side's buffered rows of one join key: the stored entry's bytes (rows appended by the
/// batch after them), and each row's place in them.
#[derive(Debug, Default)]
pub struct KeyRows {
    buf: Vec<u8>,
    /// The rows, in the order they were buffered.
    pub rows: Vec<Stored>,
    /// Changed by the batch (to be written back).
    pub dirty: bool,
}

impl KeyRows {
    /// The rows of a stored entry (its bytes are kept, not copied row by row).
    pub fn decode(buf: Vec<u8>) -> Result<Self> {
        let mut rows = Vec::new();
        let mut v = &buf[..];
        while !v.is_empty() {
            let batch = u64_of(take(&mut v, 8)?)?;
            let idx = u32_of(take(&mut v, 4)?)?;
            let time = match take(&mut v, 1)?[0] {
                0 => None,
                _ => Some(u64_of(take(&mut v, 8)?)? as i64),
            };
            let matched = take(&mut v, 1)?[0] != 0;
            let len = u32_of(take(&mut v, 4)?)? as usize;
            let start = buf.len() - v.len();
            take(&mut v, len)?;
            rows.push(Stored {
                batch,
                idx,
                time,
                matched,
                start,
                len,
                removed: false,
            });
        }
        Ok(Self {
            buf,
            rows,
            dirty: false,
        })
    }

    /// The encoded columns of row `i`.
    pub fn row(&self, i: usize) -> &[u8] {
        let r = &self.rows[i];
        &self.buf[r.start..r.start + r.len]
    }

    /// Buffers a row.
    pub fn push(&mut self, batch: u64, idx: u32, time: Option<i64>, matched: bool, row: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(row);
        self.rows.push(Stored {
            batch,
            idx,
            time,
            matched,
            start,
            len: row.len(),
            removed: false,
        });
        self.dirty = true;
    }

    /// Whether no row is left.
    pub fn is_empty(&self) -> bool {
        self.rows.iter().all(|r| r.removed)
    }

    /// The entry to store: the rows not removed.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.buf.len() + self.rows.len() * 26);
        for (i, r) in self.rows.iter().enumerate().filter(|(_, r)| !r.removed) {
            v.extend_from_slice(&r.batch.to_be_bytes());
            v.extend_from_slice(&r.idx.to_be_bytes());
            match r.time {
                Some(t) => {
                    v.push(1);
                    v.extend_from_slice(&t.to_be_bytes());
                }
                None => v.push(0),
            }
            v.push(r.matched as u8);
            v.extend_from_slice(&(r.len as u32).to_be_bytes());
            v.extend_from_slice(self.row(i));
        }
        v
    }
}

/// The entry of `side`'s rows with join key `key`.
pub fn list_key(side: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + 4 + key.len());
    k.push(b'K');
    k.push(side);
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The eviction list of the rows `side` buffered in `batch`.
pub fn batch_key(side: u8, batch: u64) -> Vec<u8> {
    let mut k = vec![b'B', side];
    k.extend_from_slice(&batch.to_be_bytes());
    k
}

/// The first key after every eviction list of `side`.
pub fn batch_keys_end(side: u8) -> Vec<u8> {
    vec![b'B', side + 1]
}

/// The per-side row counter.
pub fn count_key(side: u8) -> Vec<u8> {
    vec![b'C', side]
}

fn corrupt() -> EngineError {
    EngineError::bug("a join state entry that does not decode")
}

fn take<'a>(v: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if v.len() < n {
        return Err(corrupt());
    }
    let (head, rest) = v.split_at(n);
    *v = rest;
    Ok(head)
}

fn u64_of(b: &[u8]) -> Result<u64> {
    Ok(u64::from_be_bytes(b.try_into().map_err(|_| corrupt())?))
}

fn u32_of(b: &[u8]) -> Result<u32> {
    Ok(u32::from_be_bytes(b.try_into().map_err(|_| corrupt())?))
}

/// Items of an eviction list: (time, join key).
pub type Evictions = Vec<(i64, Vec<u8>)>;

/// Encodes an eviction list (sorted by time).
pub fn encode_evictions(items: &[(i64, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (t, k) in items {
        v.extend_from_slice(&t.to_be_bytes());
        v.extend_from_slice(&(k.len() as u32).to_be_bytes());
        v.extend_from_slice(k);
    }
    v
}

/// Decodes an eviction list.
#[cfg(test)]
pub fn decode_evictions(v: &[u8]) -> Result<Vec<(i64, Vec<u8>)>> {
    let (due, rest) = due_evictions(v, i64::MAX)?;
    debug_assert!(rest.is_empty());
    Ok(due)
}

/// The items of an eviction list (sorted by time) at or before `threshold`, and the encoded
/// rest, read only as far as needed.
pub fn due_evictions(mut v: &[u8], threshold: i64) -> Result<(Evictions, &[u8])> {
    let mut out = Vec::new();
    while v.len() >= 8 {
        let t = u64_of(&v[..8])? as i64;
        if t > threshold {
            break;
        }
        take(&mut v, 8)?;
        let len = u32_of(take(&mut v, 4)?)? as usize;
        out.push((t, take(&mut v, len)?.to_vec()));
    }
    if !v.is_empty() && v.len() < 8 {
        return Err(corrupt());
    }
    Ok((out, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_eviction_lists_round_trip() {
        let mut rows = KeyRows::default();
        rows.push(3, 7, Some(-5), true, b"abc");
        rows.push(4, 0, None, false, b"");
        rows.push(4, 1, Some(9), false, b"xyz");
        let back = KeyRows::decode(rows.encode()).expect("ok");
        assert_eq!(back.rows.len(), 3);
        for i in 0..3 {
            assert_eq!(back.row(i), rows.row(i));
            let (a, b) = (back.rows[i], rows.rows[i]);
            assert_eq!(
                (a.batch, a.idx, a.time, a.matched),
                (b.batch, b.idx, b.time, b.matched)
            );
        }
        // removed rows are not written back
        rows.rows[0].removed = true;
        let back = KeyRows::decode(rows.encode()).expect("ok");
        assert_eq!((back.rows.len(), back.row(1)), (2, &b"xyz"[..]));
        assert!(KeyRows::decode(vec![1, 2, 3]).is_err(), "truncated entry");
        let ev = vec![
            (i64::MIN, b"k".to_vec()),
            (9, Vec::new()),
            (12, b"xy".to_vec()),
        ];
        let bytes = encode_evictions(&ev);
        assert_eq!(decode_evictions(&bytes).expect("ok"), ev);
        // read up to a threshold: the due items, and the rest still encoded
        for (threshold, due) in [
            (i64::MIN, 1),
            (8, 1),
            (9, 2),
            (11, 2),
            (12, 3),
            (i64::MAX, 3),
        ] {
            let (got, rest) = due_evictions(&bytes, threshold).expect("ok");
            assert_eq!(got, ev[..due].to_vec(), "{threshold}");
            assert_eq!(rest, &encode_evictions(&ev[due..])[..], "{threshold}");
        }
    }

    #[test]
    fn keys_of_one_side_stay_apart() {
        // a longer key never shares an entry with a shorter one, sides and kinds never mix
        assert_ne!(
            list_key(0, b"ab"),
            list_key(0, b"abc")[..list_key(0, b"ab").len()]
        );
        assert!(batch_key(0, u64::MAX) < batch_keys_end(0));
        assert!(batch_key(1, 0) >= batch_keys_end(0));
        assert!(batch_key(0, 1) < batch_key(0, 2));
    }
}
