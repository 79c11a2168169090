//! What a checkpoint's state means: each stateful operator records a fingerprint of its keys,
//! window and aggregates in `<checkpoint>/state/<op>.schema` the first time it runs, and a
//! restart (or `sluice validate`) refuses a query whose state would be read wrongly.

use sluice_state::CheckpointDir;

use crate::error::{EngineError, Result};

/// How a recorded state fingerprint compares with the query's. Pure; table-tested.
#[derive(Debug, PartialEq, Eq)]
enum Fingerprint {
    /// Nothing recorded yet.
    Missing,
    /// The same.
    Same,
    /// Written before key expressions were recorded: same types, taken as this query's.
    Legacy,
    /// Another aggregation's state.
    Different(String),
}

fn compare_fingerprint(found: Option<&str>, fingerprint: &str, legacy: &str) -> Fingerprint {
    match found.map(|f| f.strip_prefix("v1\n").unwrap_or(f)) {
        None => Fingerprint::Missing,
        Some(f) if f == fingerprint => Fingerprint::Same,
        Some(f) if f == legacy => Fingerprint::Legacy,
        Some(f) => Fingerprint::Different(f.to_string()),
    }
}

fn read_fingerprint(path: &std::path::Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::io(path, e)),
    }
}

fn different_aggregation(path: &std::path::Path, found: &str, fingerprint: &str) -> EngineError {
    EngineError::user(format!(
        "the state this checkpoint describes in {} was written by a different aggregation (group keys, window or \
         aggregates changed): it holds {found}, this query needs {fingerprint}. \
         Restarting on it would give wrong results; use a new checkpoint location",
        path.display()
    ))
}

/// [`check_state_fingerprint`] without writing anything (for `sluice validate`).
pub(crate) fn verify_state_fingerprint(
    checkpoint: &std::path::Path,
    index: usize,
    fingerprint: &str,
    legacy: &str,
) -> Result<()> {
    let path = sluice_state::state_fingerprint_path(checkpoint, index);
    let found = read_fingerprint(&path)?;
    match compare_fingerprint(found.as_deref(), fingerprint, legacy) {
        Fingerprint::Different(f) => Err(different_aggregation(&path, &f, fingerprint)),
        _ => Ok(()),
    }
}

/// Records what operator `index`'s state means the first time, and refuses to start when the
/// query changed so that the stored state would be read wrongly (other keys or aggregates).
pub(crate) fn check_state_fingerprint(
    checkpoint: &CheckpointDir,
    index: usize,
    fingerprint: &str,
    legacy: &str,
) -> Result<()> {
    let path = sluice_state::state_fingerprint_path(checkpoint.root(), index);
    if let Some(dir) = path.parent() {
        sluice_state::atomic::ensure_dir(dir)?;
    }
    let found = read_fingerprint(&path)?;
    match compare_fingerprint(found.as_deref(), fingerprint, legacy) {
        Fingerprint::Same => Ok(()),
        Fingerprint::Missing | Fingerprint::Legacy => {
            sluice_state::atomic::write_atomic(&path, format!("v1\n{fingerprint}").as_bytes())?;
            Ok(())
        }
        Fingerprint::Different(f) => Err(different_aggregation(&path, &f, fingerprint)),
    }
}

#[cfg(test)]
mod tests {
    use super::{compare_fingerprint, Fingerprint};

    #[test]
    fn fingerprints() {
        // (recorded, expected)
        let table = [
            (None, Fingerprint::Missing),
            (Some("v1\nnew"), Fingerprint::Same),
            (Some("new"), Fingerprint::Same),
            (Some("v1\nold"), Fingerprint::Legacy),
            (Some("v1\nother"), Fingerprint::Different("other".into())),
        ];
        for (found, want) in table {
            assert_eq!(compare_fingerprint(found, "new", "old"), want, "{found:?}");
        }
    }
}
