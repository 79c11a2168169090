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

/// A buffered row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The batch that buffered it.
    pub batch: u64,
    /// Its position in that batch's partition input.
    pub idx: u32,
    /// Its eviction time, µs.
    pub time: Option<i64>,
    /// Whether it has matched a row of the other side.
    pub matched: bool,
    /// Its columns, arrow-row encoded.
    pub row: Vec<u8>,
    /// Removed in the batch being processed (not written back).
    pub removed: bool,
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

/// Encodes a key's rows (those not removed).
pub fn encode_rows(rows: &[Stored]) -> Vec<u8> {
    let mut v = Vec::new();
    for r in rows.iter().filter(|r| !r.removed) {
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
        v.extend_from_slice(&(r.row.len() as u32).to_be_bytes());
        v.extend_from_slice(&r.row);
    }
    v
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

/// Decodes a key's rows.
pub fn decode_rows(mut v: &[u8]) -> Result<Vec<Stored>> {
    let mut out = Vec::new();
    while !v.is_empty() {
        let batch = u64_of(take(&mut v, 8)?)?;
        let idx = u32_of(take(&mut v, 4)?)?;
        let time = match take(&mut v, 1)?[0] {
            0 => None,
            _ => Some(u64_of(take(&mut v, 8)?)? as i64),
        };
        let matched = take(&mut v, 1)?[0] != 0;
        let len = u32_of(take(&mut v, 4)?)? as usize;
        let row = take(&mut v, len)?.to_vec();
        out.push(Stored {
            batch,
            idx,
            time,
            matched,
            row,
            removed: false,
        });
    }
    Ok(out)
}

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
pub fn decode_evictions(mut v: &[u8]) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut out = Vec::new();
    while !v.is_empty() {
        let t = u64_of(take(&mut v, 8)?)? as i64;
        let len = u32_of(take(&mut v, 4)?)? as usize;
        out.push((t, take(&mut v, len)?.to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_eviction_lists_round_trip() {
        let rows = vec![
            Stored {
                batch: 3,
                idx: 7,
                time: Some(-5),
                matched: true,
                row: b"abc".to_vec(),
                removed: false,
            },
            Stored {
                batch: 4,
                idx: 0,
                time: None,
                matched: false,
                row: Vec::new(),
                removed: false,
            },
        ];
        assert_eq!(decode_rows(&encode_rows(&rows)).unwrap(), rows);
        // removed rows are not written back
        let mut gone = rows.clone();
        gone[0].removed = true;
        assert_eq!(
            decode_rows(&encode_rows(&gone)).unwrap(),
            rows[1..].to_vec()
        );
        let ev = vec![(i64::MIN, b"k".to_vec()), (9, Vec::new())];
        assert_eq!(decode_evictions(&encode_evictions(&ev)).unwrap(), ev);
        assert!(decode_rows(&[1, 2, 3]).is_err(), "truncated entry");
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
