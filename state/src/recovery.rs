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
