//! Where a (re)started query resumes: a pure function of the last entries of its logs.

/// What the executor must do first when a query starts on a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartDecision {
    /// No batch was ever planned: start with batch 0 from the sources' initial offsets.
    Fresh,
    /// Batch `last_committed` is fully done: plan batch `last_committed + 1` from its end offsets.
    Resume {
        /// The last batch whose commit entry exists.
        last_committed: u64,
    },
    /// Batch `batch` was planned (its offsets entry exists) but not committed: run it again with
    /// exactly the offsets recorded for it, before anything new.
    Rerun {
        /// The batch to re-run.
        batch: u64,
    },
}

/// Decides how to start from the highest offsets entry and the highest commit entry.
///
/// Returns an error message when the logs contradict each other (a commit without its offsets, a
/// gap of more than one batch): the checkpoint was damaged or mixed with another one, and
/// guessing would silently lose or duplicate data.
pub fn resolve_start(
    last_offsets: Option<u64>,
    last_commit: Option<u64>,
) -> Result<StartDecision, String> {
    match (last_offsets, last_commit) {
        (None, None) => Ok(StartDecision::Fresh),
        (None, Some(m)) => Err(format!(
            "commit entry {m} exists but there is no offsets entry: the offsets log was deleted"
        )),
        (Some(0), None) => Ok(StartDecision::Rerun { batch: 0 }),
        (Some(n), None) => Err(format!(
            "offsets entry {n} exists but the commit log is empty: the commit log was deleted"
        )),
        (Some(n), Some(m)) if m == n => Ok(StartDecision::Resume { last_committed: n }),
        (Some(n), Some(m)) if m + 1 == n => Ok(StartDecision::Rerun { batch: n }),
        (Some(n), Some(m)) if m > n => Err(format!(
            "commit entry {m} is newer than the last offsets entry {n}"
        )),
        (Some(n), Some(m)) => Err(format!(
            "offsets run to batch {n} but commits stop at batch {m}: more than one batch is uncommitted"
        )),
    }
}

/// What recovery does with a stateful operator's store before the query's first batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateRecovery {
    /// The store holds the state the logs need (or already holds the batch to re-run).
    Ready,
    /// Restore the store to `snapshot` (`None`: empty), then replay batches
    /// `replay.0..=replay.1` (if any) from their offsets entries, without writing to the sink.
    Rebuild {
        /// The snapshot to start from.
        snapshot: Option<u64>,
        /// The batches to replay, inclusive.
        replay: Option<(u64, u64)>,
    },
}

/// Decides how the store comes to hold the state the logs need: the state after the last
/// committed batch (or, for a re-run, after the batch before it; a store already holding the
/// re-run batch is fine too, as the sink has it).
///
/// `state_batch`: the batch the store holds; `snapshots`: the store's snapshot batches;
/// `oldest_offsets`: the oldest offsets entry still kept. Replaying batch k needs the offsets
/// entries k − 1 (where it starts) and k. An error says why the state cannot be rebuilt.
pub fn plan_state_recovery(
    decision: StartDecision,
    state_batch: Option<u64>,
    snapshots: &[u64],
    oldest_offsets: Option<u64>,
) -> Result<StateRecovery, String> {
    let needed = match decision {
        StartDecision::Fresh => None,
        StartDecision::Resume { last_committed } => Some(last_committed),
        StartDecision::Rerun { batch } => {
            if state_batch == Some(batch) {
                return Ok(StateRecovery::Ready);
            }
            batch.checked_sub(1)
        }
    };
    if state_batch == needed {
        return Ok(StateRecovery::Ready);
    }
    let Some(needed) = needed else {
        // the logs start from scratch: so does the state
        return Ok(StateRecovery::Rebuild {
            snapshot: None,
            replay: None,
        });
    };
    let snapshot = snapshots.iter().copied().filter(|s| *s <= needed).max();
    let from = snapshot.map_or(0, |s| s + 1);
    if from > needed {
        return Ok(StateRecovery::Rebuild {
            snapshot,
            replay: None,
        });
    }
    let first_entry_needed = from.saturating_sub(1);
    if oldest_offsets.is_none_or(|o| o > first_entry_needed) {
        return Err(format!(
            "the state holds batch {}, but the logs need the state after batch {needed}; rebuilding it \
             from {} needs the offsets entries from batch {first_entry_needed} on, and the oldest one \
             kept is {}",
            state_batch.map_or("none".to_string(), |b| b.to_string()),
            snapshot.map_or("an empty state".to_string(), |s| format!("the snapshot of batch {s}")),
            oldest_offsets.map_or("none".to_string(), |o| o.to_string()),
        ));
    }
    Ok(StateRecovery::Rebuild {
        snapshot,
        replay: Some((from, needed)),
    })
}

/// The first offsets/commits entry to keep once batch `current` is committed: the last
/// `min_batches_to_retain` batches, and for a stateful query also the snapshot (of those in
/// `snapshots`) from which the oldest of them can be rebuilt (all entries when there is none).
pub fn first_log_entry_to_keep(
    current: u64,
    min_batches_to_retain: u64,
    snapshots: Option<&[u64]>,
) -> u64 {
    let keep_from = (current + 1).saturating_sub(min_batches_to_retain.max(1));
    match snapshots {
        None => keep_from,
        Some(snaps) => snaps
            .iter()
            .copied()
            .filter(|s| *s <= keep_from)
            .max()
            .unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StartDecision::*;

    /// (last offsets entry, last commit entry, expected decision or error text)
    type Case = (
        Option<u64>,
        Option<u64>,
        Result<StartDecision, &'static str>,
    );

    #[test]
    fn table() {
        let cases: &[Case] = &[
            (None, None, Ok(Fresh)),
            (Some(0), None, Ok(Rerun { batch: 0 })),
            (Some(0), Some(0), Ok(Resume { last_committed: 0 })),
            (Some(1), Some(0), Ok(Rerun { batch: 1 })),
            (Some(7), Some(7), Ok(Resume { last_committed: 7 })),
            (Some(8), Some(7), Ok(Rerun { batch: 8 })),
            (None, Some(3), Err("offsets log was deleted")),
            (Some(5), None, Err("commit log was deleted")),
            (Some(5), Some(6), Err("newer than")),
            (Some(9), Some(6), Err("more than one batch")),
        ];
        for (offsets, commit, expected) in cases {
            let got = resolve_start(*offsets, *commit);
            match (expected, &got) {
                (Ok(e), Ok(g)) => assert_eq!(e, g, "{offsets:?} {commit:?}"),
                (Err(e), Err(g)) => assert!(g.contains(e), "{offsets:?} {commit:?}: {g}"),
                _ => panic!("{offsets:?} {commit:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;
    use StartDecision::*;

    /// (decision, state batch, snapshots, oldest offsets entry, expected plan or error text)
    type RecoveryCase = (
        StartDecision,
        Option<u64>,
        Vec<u64>,
        Option<u64>,
        Result<StateRecovery, &'static str>,
    );

    #[test]
    fn state_recovery_table() {
        let ready = Ok(StateRecovery::Ready);
        let rebuild = |snapshot, replay| Ok(StateRecovery::Rebuild { snapshot, replay });
        // (decision, state batch, snapshots, oldest offsets entry) → plan
        let cases: Vec<RecoveryCase> = vec![
            (Fresh, None, vec![], None, ready),
            (
                Resume { last_committed: 7 },
                Some(7),
                vec![0, 5],
                Some(0),
                ready,
            ),
            (Rerun { batch: 8 }, Some(7), vec![], Some(0), ready),
            // died after the state commit, before the commit entry: the sink has batch 8 too
            (Rerun { batch: 8 }, Some(8), vec![], Some(0), ready),
            // the logs were removed: start over, and so does the state
            (Fresh, Some(4), vec![0], None, rebuild(None, None)),
            // state lost (an empty store): replay everything
            (
                Resume { last_committed: 3 },
                None,
                vec![],
                Some(0),
                rebuild(None, Some((0, 3))),
            ),
            // state behind (an old copy): from the newest usable snapshot
            (
                Resume { last_committed: 12 },
                Some(4),
                vec![0, 10],
                Some(0),
                rebuild(Some(10), Some((11, 12))),
            ),
            // state ahead (log entries removed to reprocess): back to an older snapshot
            (
                Resume { last_committed: 7 },
                Some(12),
                vec![0, 5, 10],
                Some(0),
                rebuild(Some(5), Some((6, 7))),
            ),
            (
                Rerun { batch: 8 },
                Some(12),
                vec![0, 5, 10],
                Some(0),
                rebuild(Some(5), Some((6, 7))),
            ),
            // the snapshot is exactly the batch needed
            (
                Resume { last_committed: 10 },
                Some(12),
                vec![0, 10],
                Some(3),
                rebuild(Some(10), None),
            ),
            // the offsets entries the replay needs were purged
            (
                Resume { last_committed: 12 },
                None,
                vec![],
                Some(5),
                Err("oldest one kept is 5"),
            ),
            (
                Resume { last_committed: 12 },
                Some(1),
                vec![5],
                Some(5),
                rebuild(Some(5), Some((6, 12))),
            ),
            (
                Resume { last_committed: 12 },
                Some(1),
                vec![4],
                Some(5),
                Err("from batch 4 on"),
            ),
        ];
        for (decision, state, snaps, oldest, expected) in cases {
            let got = plan_state_recovery(decision, state, &snaps, oldest);
            match (&expected, &got) {
                (Ok(e), Ok(g)) => assert_eq!(e, g, "{decision:?} {state:?} {snaps:?} {oldest:?}"),
                (Err(e), Err(g)) => assert!(g.contains(e), "{decision:?}: {g}"),
                _ => panic!("{decision:?} {state:?} {snaps:?} {oldest:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn log_retention() {
        // stateless: the last N batches
        assert_eq!(first_log_entry_to_keep(150, 100, None), 51);
        assert_eq!(first_log_entry_to_keep(50, 100, None), 0);
        // stateful: back to the snapshot the oldest retained batch is rebuilt from
        assert_eq!(
            first_log_entry_to_keep(150, 100, Some(&[40, 50, 60, 150])),
            50
        );
        assert_eq!(first_log_entry_to_keep(150, 100, Some(&[51, 60])), 51);
        // no snapshot old enough: keep everything
        assert_eq!(first_log_entry_to_keep(150, 100, Some(&[60, 150])), 0);
        assert_eq!(first_log_entry_to_keep(150, 100, Some(&[])), 0);
    }
}
