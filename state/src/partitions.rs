//! Recovery decisions for partitioned state: pure functions of the batch each partition store
//! of each stateful operator has committed.
//!
//! A batch's state is committed partition by partition, operators nearest the sink first, after
//! the sink has the batch. A crash between those commits leaves some stores at the batch and
//! the rest one batch behind; re-running the batch then brings the others forward while the
//! sink, which has it, is left alone. Committing downstream operators first guarantees that an
//! operator with an uncommitted partition has every upstream operator wholly uncommitted, so
//! the rows it needs are computed again.

use crate::recovery::{plan_state_recovery, StartDecision, StateRecovery};

/// What running batch `batch` must do, given what the stores hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchActions {
    /// Whether the batch's rows go to the sink: no store has committed it yet.
    pub write_sink: bool,
    /// `run[op][partition]`: whether that partition processes the batch (it has not committed
    /// it); the others are skipped.
    pub run: Vec<Vec<bool>>,
}

/// Decides which partitions run batch `batch`. `committed[op][p]`: the batch partition `p` of
/// operator `op` (nearest the sources first) has committed. Every store must hold `batch` or
/// the batch before it, and the commit order must have been kept (an operator with an
/// uncommitted partition has all its upstream operators uncommitted); otherwise the error says
/// what was found.
pub fn partition_actions(
    committed: &[Vec<Option<u64>>],
    batch: u64,
) -> Result<BatchActions, String> {
    let before = batch.checked_sub(1);
    let mut run = Vec::with_capacity(committed.len());
    for (op, parts) in committed.iter().enumerate() {
        let mut r = Vec::with_capacity(parts.len());
        for (p, c) in parts.iter().enumerate() {
            if *c == Some(batch) {
                r.push(false);
            } else if *c == before {
                r.push(true);
            } else {
                return Err(format!(
                    "partition {p} of stateful operator {op} holds batch {}, but batch {batch} \
                     needs the state after batch {}",
                    c.map_or("none".into(), |b| b.to_string()),
                    before.map_or("none (empty)".into(), |b| b.to_string()),
                ));
            }
        }
        run.push(r);
    }
    for (down, parts) in run.iter().enumerate() {
        if parts.iter().any(|r| *r) {
            if let Some(up) = run[..down].iter().position(|u| u.iter().any(|r| !*r)) {
                return Err(format!(
                    "stateful operator {up} committed batch {batch} before operator {down} \
                     (downstream) did in all its partitions: the batch cannot be re-run exactly"
                ));
            }
        }
    }
    let write_sink = run.iter().flatten().all(|r| *r);
    Ok(BatchActions { write_sink, run })
}

/// [`plan_state_recovery`] over every partition store of every operator. `snapshots`: the
/// snapshot batches every store has. Stores that agree are judged as one; stores that differ
/// are fine only for a re-run they can finish with [`partition_actions`]; otherwise all are
/// restored to a common snapshot and the batches after it replayed.
pub fn plan_partitioned_recovery(
    decision: StartDecision,
    committed: &[Vec<Option<u64>>],
    snapshots: &[u64],
    oldest_offsets: Option<u64>,
) -> Result<StateRecovery, String> {
    let mut all = committed.iter().flatten();
    let Some(first) = all.next() else {
        return Ok(StateRecovery::Ready);
    };
    if all.all(|c| c == first) {
        return plan_state_recovery(decision, *first, snapshots, oldest_offsets);
    }
    if let StartDecision::Rerun { batch } = decision {
        if partition_actions(committed, batch).is_ok() {
            return Ok(StateRecovery::Ready);
        }
    }
    // the stores disagree beyond one interrupted commit: rebuild them all together (no store
    // holds "the batch before the first", so none is taken as ready)
    let needed = match decision {
        StartDecision::Fresh => None,
        StartDecision::Resume { last_committed } => Some(last_committed),
        StartDecision::Rerun { batch } => batch.checked_sub(1),
    };
    match needed {
        None => Ok(StateRecovery::Rebuild {
            snapshot: None,
            replay: None,
        }),
        // `None` is not the batch needed, so the stores are rebuilt from a snapshot
        Some(_) => plan_state_recovery(decision, None, snapshots, oldest_offsets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StartDecision::*;

    /// (stores per operator, batch to run, expected (write sink, run) or error text)
    type Case = (
        Vec<Vec<Option<u64>>>,
        u64,
        Result<(bool, Vec<Vec<bool>>), &'static str>,
    );

    #[test]
    fn which_partitions_run_a_batch() {
        let cases: Vec<Case> = vec![
            // a normal batch: every store at the batch before
            (
                vec![vec![Some(4), Some(4)], vec![Some(4)]],
                5,
                Ok((true, vec![vec![true, true], vec![true]])),
            ),
            // batch 0 on new stores
            (
                vec![vec![None, None]],
                0,
                Ok((true, vec![vec![true, true]])),
            ),
            // every store committed it (died before the commit log): nothing runs, no sink
            (
                vec![vec![Some(5), Some(5)], vec![Some(5), Some(5)]],
                5,
                Ok((false, vec![vec![false, false], vec![false, false]])),
            ),
            // died inside the downstream operator's commits: upstream runs whole again, the
            // downstream partitions that committed are skipped, the sink has the batch
            (
                vec![vec![Some(4), Some(4)], vec![Some(5), Some(4)]],
                5,
                Ok((false, vec![vec![true, true], vec![false, true]])),
            ),
            // died inside the upstream operator's commits (downstream all done)
            (
                vec![vec![None, Some(0)], vec![Some(0), Some(0)]],
                0,
                Ok((false, vec![vec![true, false], vec![false, false]])),
            ),
            // upstream committed while downstream did not: the order was broken
            (
                vec![vec![Some(5), Some(4)], vec![Some(4), Some(4)]],
                5,
                Err("committed batch 5 before operator 1"),
            ),
            // a store two batches behind
            (
                vec![vec![Some(3), Some(4)]],
                5,
                Err("partition 0 of stateful operator 0 holds batch 3"),
            ),
            (vec![vec![Some(6)]], 5, Err("holds batch 6")),
            (vec![], 3, Ok((true, vec![]))),
        ];
        for (committed, batch, want) in cases {
            let got = partition_actions(&committed, batch);
            match (&want, &got) {
                (Ok((sink, run)), Ok(g)) => {
                    assert_eq!(
                        (*sink, run),
                        (g.write_sink, &g.run),
                        "{committed:?} {batch}"
                    )
                }
                (Err(e), Err(g)) => assert!(g.contains(e), "{committed:?}: {g}"),
                _ => panic!("{committed:?} {batch}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn recovery_over_partitions() {
        let ready = Ok(StateRecovery::Ready);
        type Stores = Vec<Vec<Option<u64>>>;
        let cases: Vec<(StartDecision, Stores, Vec<u64>, _)> = vec![
            (
                Resume { last_committed: 7 },
                vec![vec![Some(7), Some(7)]],
                vec![],
                ready.clone(),
            ),
            // an interrupted commit: the re-run finishes it
            (
                Rerun { batch: 8 },
                vec![vec![Some(8), Some(7)]],
                vec![],
                ready.clone(),
            ),
            // stores that disagree otherwise: all back to the common snapshot, then replay
            (
                Resume { last_committed: 12 },
                vec![vec![Some(12), Some(4)]],
                vec![0, 10],
                Ok(StateRecovery::Rebuild {
                    snapshot: Some(10),
                    replay: Some((11, 12)),
                }),
            ),
            (
                Rerun { batch: 8 },
                vec![vec![Some(8), Some(6)]],
                vec![5],
                Ok(StateRecovery::Rebuild {
                    snapshot: Some(5),
                    replay: Some((6, 7)),
                }),
            ),
            (
                Fresh,
                vec![vec![Some(3), None]],
                vec![],
                Ok(StateRecovery::Rebuild {
                    snapshot: None,
                    replay: None,
                }),
            ),
            (Fresh, vec![], vec![], ready),
        ];
        for (decision, committed, snaps, want) in cases {
            let got = plan_partitioned_recovery(decision, &committed, &snaps, Some(0));
            assert_eq!(got, want, "{decision:?} {committed:?} {snaps:?}");
        }
    }
}
