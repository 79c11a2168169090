//! How a stream-stream join lays out its buffered rows in a partition's state store.
//!
//! ```text
//! R side klen key batch idx   → matched(1) row            one entry per buffered row
//! T side time batch idx       → klen key                  the time index, for eviction scans
//! C side                      → rows held (u64)           per-side row count
//! ```
//! `side` is 0 (left) or 1 (right); `key` the arrow-row encoded join key (its length first, so a
//! key is never a prefix of another); `batch`/`idx` the batch that brought the row and its
//! position in that batch's partition input, which makes every buffered row its own entry
//! (identical rows stay separate rows, each with its own matched flag, as in Spark); `time` the
//! row's eviction time with its sign bit flipped, so byte order is time order.

/// The row entry of `side`.
pub fn row_key(side: u8, key: &[u8], batch: u64, idx: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + 4 + key.len() + 12);
    k.push(b'R');
    k.push(side);
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k.extend_from_slice(&batch.to_be_bytes());
    k.extend_from_slice(&idx.to_be_bytes());
    k
}

/// The prefix of every row entry of `side` with join key `key`.
pub fn key_prefix(side: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + 4 + key.len());
    k.push(b'R');
    k.push(side);
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The time-index entry of a row of `side`.
pub fn time_key(side: u8, time_us: i64, batch: u64, idx: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + 8 + 12);
    k.push(b'T');
    k.push(side);
    k.extend_from_slice(&ordered(time_us));
    k.extend_from_slice(&batch.to_be_bytes());
    k.extend_from_slice(&idx.to_be_bytes());
    k
}

/// The first time-index key after every entry of `side` at or before `time_us`.
pub fn time_key_after(side: u8, time_us: i64) -> Vec<u8> {
    let mut k = vec![b'T', side];
    match time_us.checked_add(1) {
        Some(t) => k.extend_from_slice(&ordered(t)),
        None => k.push(0xff),
    }
    k
}

/// The per-side row counter.
pub fn count_key(side: u8) -> Vec<u8> {
    vec![b'C', side]
}

/// `(batch, idx)` of a time-index key.
pub fn time_key_row(k: &[u8]) -> Option<(u64, u32)> {
    if k.len() != 22 {
        return None;
    }
    let batch = u64::from_be_bytes(k[10..18].try_into().ok()?);
    let idx = u32::from_be_bytes(k[18..22].try_into().ok()?);
    Some((batch, idx))
}

/// The time-index value: the row's join key, length first.
pub fn time_value(key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + key.len());
    v.extend_from_slice(&(key.len() as u32).to_be_bytes());
    v.extend_from_slice(key);
    v
}

/// The join key of a time-index value.
pub fn key_of_time_value(v: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(v.get(..4)?.try_into().ok()?) as usize;
    v.get(4..4 + len)
}

/// `(batch, idx)` of a row entry whose key prefix (side and join key) is `prefix_len` long.
pub fn row_key_row(k: &[u8], prefix_len: usize) -> Option<(u64, u32)> {
    let rest = k.get(prefix_len..)?;
    if rest.len() != 12 {
        return None;
    }
    Some((
        u64::from_be_bytes(rest[..8].try_into().ok()?),
        u32::from_be_bytes(rest[8..].try_into().ok()?),
    ))
}

/// A row entry's value: the matched flag, then the arrow-row encoded row.
pub fn row_value(matched: bool, row: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + row.len());
    v.push(matched as u8);
    v.extend_from_slice(row);
    v
}

fn ordered(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_sort_by_time_and_round_trip() {
        let times = [i64::MIN, -5, 0, 7, 1_735_689_600_000_000, i64::MAX];
        let keys: Vec<Vec<u8>> = times.iter().map(|t| time_key(1, *t, 3, 9)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for k in &keys {
            assert_eq!(time_key_row(k), Some((3, 9)));
        }
        // everything at or before t sorts before time_key_after(t)
        assert!(time_key(1, 7, u64::MAX, u32::MAX) < time_key_after(1, 7));
        assert!(time_key(1, 8, 0, 0) > time_key_after(1, 7));
        assert!(time_key(1, i64::MAX, 0, 0) < time_key_after(1, i64::MAX));
        // another side never falls in the range
        assert!(time_key(2, i64::MIN, 0, 0) > time_key_after(1, i64::MAX));
    }

    #[test]
    fn row_keys_of_one_key_share_its_prefix_only() {
        let p = key_prefix(0, b"ab");
        let k = row_key(0, b"ab", 4, 2);
        assert!(k.starts_with(&p));
        assert_eq!(row_key_row(&k, p.len()), Some((4, 2)));
        // a longer key with the same leading bytes is not under the prefix
        assert!(!row_key(0, b"abc", 4, 2).starts_with(&p));
        assert_eq!(key_of_time_value(&time_value(b"ab")), Some(&b"ab"[..]));
    }
}
