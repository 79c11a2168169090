//! The Kinesis source's offsets and the pure decisions over them: where each shard is read
//! from, which shards may be read (a child only after all its parents are finished, as the
//! Kinesis Client Library does), and when a shard is finished.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A position in a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Pos {
    /// Before its oldest record.
    TrimHorizon,
    /// Before its first record that arrived at or after this time (ms since the epoch).
    AtMs(i64),
    /// After the record with this sequence number.
    After(String),
}

/// One shard in an offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPos {
    /// Where the query started reading the shard (never changes).
    pub from: Pos,
    /// How far it has read.
    pub pos: Pos,
    /// The shard is closed and every record of it is read.
    #[serde(default)]
    pub done: bool,
}

/// Every shard the query has started reading, by shard id.
pub type Positions = BTreeMap<String, ShardPos>;

/// A shard as the stream lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: String,
    /// Its parent and adjacent parent (a split has one, a merge two).
    pub parents: Vec<String>,
    /// The last sequence number of a closed shard.
    pub ending: Option<String>,
}

/// Sequence numbers are decimal strings of up to 128 bits: compared as numbers.
pub fn seq_cmp(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Where shard `s` is read from next: `None` when it is finished, or waits for a parent. A
/// shard the query has not read yet starts at `initial` when it has no parent the stream or
/// the offsets know of (a parent past retention is gone), and before its oldest record once
/// every parent is finished.
pub fn next_read(
    s: &ShardInfo,
    listing: &[ShardInfo],
    state: &Positions,
    initial: &Pos,
) -> Option<(Pos, Pos)> {
    if let Some(p) = state.get(&s.id) {
        return (!p.done).then(|| (p.from.clone(), p.pos.clone()));
    }
    let known: Vec<&String> = s
        .parents
        .iter()
        .filter(|p| state.contains_key(*p) || listing.iter().any(|l| &l.id == *p))
        .collect();
    if known.iter().any(|p| !state.get(*p).is_some_and(|x| x.done)) {
        return None;
    }
    let from = if known.is_empty() {
        initial.clone()
    } else {
        Pos::TrimHorizon
    };
    Some((from.clone(), from))
}

/// Whether a shard is finished after a read: the service said so (no next iterator), or the
/// shard is closed and the read reached its last sequence number, or found nothing more.
pub fn finished(
    s: &ShardInfo,
    pos: &Pos,
    records: usize,
    next_iterator: bool,
    behind_ms: Option<i64>,
) -> bool {
    if !next_iterator {
        return true;
    }
    let Some(end) = &s.ending else {
        return false;
    };
    match pos {
        Pos::After(seq) if seq_cmp(seq, end) != Ordering::Less => true,
        _ => records == 0 && behind_ms.unwrap_or(0) == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str], ending: Option<&str>) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            ending: ending.map(str::to_string),
        }
    }

    fn at(pos: Pos, done: bool) -> ShardPos {
        ShardPos {
            from: Pos::TrimHorizon,
            pos,
            done,
        }
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert_eq!(seq_cmp("9", "10"), Ordering::Less);
        assert_eq!(
            seq_cmp(
                "49590338271490256608559692538361571095921575989136588898",
                "49590338271490256608559692538361571095921575989136588899"
            ),
            Ordering::Less
        );
        assert_eq!(seq_cmp("007", "7"), Ordering::Equal);
    }

    #[test]
    fn children_wait_for_their_parents() {
        let p = shard("p", &[], Some("7"));
        let c1 = shard("c1", &["p"], None);
        let m = shard("m", &["c1", "x"], None); // a merge of c1 and a shard x past retention
        let listing = vec![p.clone(), c1.clone(), m.clone()];
        let latest = Pos::AtMs(5);
        let mut state = Positions::new();
        // (shard, state, want)
        assert_eq!(
            next_read(&p, &listing, &state, &latest),
            Some((latest.clone(), latest.clone()))
        );
        assert_eq!(
            next_read(&c1, &listing, &state, &latest),
            None,
            "parent not read yet"
        );
        state.insert("p".into(), at(Pos::After("3".into()), false));
        assert_eq!(
            next_read(&c1, &listing, &state, &latest),
            None,
            "parent not finished"
        );
        assert_eq!(
            next_read(&p, &listing, &state, &latest),
            Some((Pos::TrimHorizon, Pos::After("3".into())))
        );
        state.insert("p".into(), at(Pos::After("7".into()), true));
        assert_eq!(next_read(&p, &listing, &state, &latest), None, "finished");
        assert_eq!(
            next_read(&c1, &listing, &state, &latest),
            Some((Pos::TrimHorizon, Pos::TrimHorizon)),
            "a child reads from its oldest record"
        );
        assert_eq!(
            next_read(&m, &listing, &state, &latest),
            None,
            "c1 not finished"
        );
        state.insert("c1".into(), at(Pos::TrimHorizon, true));
        assert_eq!(
            next_read(&m, &listing, &state, &latest),
            Some((Pos::TrimHorizon, Pos::TrimHorizon)),
            "x is gone: only c1 counts"
        );
    }

    #[test]
    fn a_shard_is_finished_at_its_end() {
        let open = shard("o", &[], None);
        let closed = shard("c", &[], Some("7"));
        let after = |s: &str| Pos::After(s.into());
        // (shard, position after the read, records read, next iterator?, behind, finished)
        let table = [
            (&open, after("9"), 3, true, Some(0), false),
            (&open, after("9"), 0, false, None, true),
            (&closed, after("5"), 2, true, Some(10), false),
            (&closed, after("7"), 2, true, Some(10), true),
            (&closed, after("12"), 0, true, Some(0), true),
            (&closed, Pos::TrimHorizon, 0, true, Some(0), true),
            (&closed, Pos::TrimHorizon, 0, true, Some(40), false),
        ];
        for (s, pos, n, next, behind, want) in table {
            assert_eq!(
                finished(s, &pos, n, next, behind),
                want,
                "{s:?} {pos:?} {n} {next} {behind:?}"
            );
        }
    }

    #[test]
    fn offsets_are_plain_json() {
        let mut p = Positions::new();
        p.insert(
            "shardId-000000000001".into(),
            ShardPos {
                from: Pos::AtMs(1_700_000_000_000),
                pos: Pos::After("42".into()),
                done: false,
            },
        );
        let text = serde_json::to_string(&p).expect("json");
        assert_eq!(
            text,
            r#"{"shardId-000000000001":{"from":{"atMs":1700000000000},"pos":{"after":"42"},"done":false}}"#
        );
        assert_eq!(serde_json::from_str::<Positions>(&text).expect("parse"), p);
    }
}
