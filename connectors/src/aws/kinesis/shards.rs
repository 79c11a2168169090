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
    /// Its first sequence number.
    pub starting: Option<String>,
    /// The last sequence number of a closed shard.
    pub ending: Option<String>,
}

/// Sequence numbers are decimal strings of up to 128 bits: compared as numbers.
pub fn seq_cmp(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Where shard `s` is read from next: `None` when it is finished, or waits for a parent (one
/// the stream or the offsets know of: a parent past retention is gone). A shard the query has
/// not read yet starts at `initial` — before its oldest record, or at the query's start time
/// (`latest` and `at_timestamp`, valid on every shard: a child of a shard split before the
/// query started does not bring back records from before that time).
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
    Some((initial.clone(), initial.clone()))
}

/// Whether a shard is finished after a read: the service said so (no next iterator), or the
/// shard is closed and the read reached its last sequence number (or it is closed empty: its
/// last sequence number is before its first). An empty read of a closed shard proves nothing
/// (Kinesis may answer empty before the end).
pub fn finished(s: &ShardInfo, pos: &Pos, records: usize, next_iterator: bool) -> bool {
    if !next_iterator {
        return true;
    }
    let Some(end) = &s.ending else {
        return false;
    };
    let empty_shard = s
        .starting
        .as_deref()
        .is_some_and(|start| seq_cmp(end, start) == Ordering::Less);
    match pos {
        Pos::After(seq) => seq_cmp(seq, end) != Ordering::Less,
        _ => empty_shard && records == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str], ending: Option<&str>) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            starting: Some("1".into()),
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
            Some((latest.clone(), latest.clone())),
            "a child starts where the query did"
        );
        assert_eq!(
            next_read(&m, &listing, &state, &latest),
            None,
            "c1 not finished"
        );
        state.insert("c1".into(), at(Pos::TrimHorizon, true));
        assert_eq!(
            next_read(&m, &listing, &state, &latest),
            Some((latest.clone(), latest.clone())),
            "x is gone: only c1 counts"
        );
        assert_eq!(
            next_read(&m, &listing, &state, &Pos::TrimHorizon),
            Some((Pos::TrimHorizon, Pos::TrimHorizon)),
            "from the oldest record when the query reads from there"
        );
    }

    #[test]
    fn a_shard_is_finished_at_its_end() {
        let open = shard("o", &[], None);
        let closed = shard("c", &[], Some("7"));
        let closed_empty = shard("e", &[], Some("0"));
        let after = |s: &str| Pos::After(s.into());
        // (shard, position after the read, records read, next iterator?, finished)
        let table = [
            (&open, after("9"), 3, true, false),
            (&open, after("9"), 0, false, true),
            (&closed, after("5"), 2, true, false),
            (&closed, after("7"), 2, true, true),
            (&closed, after("12"), 0, true, true),
            (&closed, Pos::TrimHorizon, 0, true, false),
            (&closed, Pos::AtMs(5), 0, true, false),
            (&closed_empty, Pos::TrimHorizon, 0, true, true),
        ];
        for (s, pos, n, next, want) in table {
            assert_eq!(finished(s, &pos, n, next), want, "{s:?} {pos:?} {n} {next}");
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
