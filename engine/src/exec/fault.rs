//! Crash points for tests of exactly-once behaviour.
//!
//! When the environment variable `SLUICE_CRASH_AT` is `<point>@<batch>` (e.g.
//! `after-sink@3`), the process kills itself with SIGKILL when it reaches that point in that
//! batch: no destructor, no flush, as a power cut or `kill -9` would. `<query>:<point>@<batch>`
//! (e.g. `silver:after-sink@3`) fires only in the query of that name (a pipeline runs several).
//! Points: `after-offsets` (offsets entry written, nothing else), `mid-sink` (a sink wrote part
//! of its output), `after-sink` (sink done, commit entry not written), `after-commit`; with a
//! checkpoint in object storage also `before-offsets-upload` and `before-commit-upload` (the
//! entry written locally, not yet in the bucket). Unset, this costs one cached lookup.

use std::cell::RefCell;
use std::sync::OnceLock;

/// (query, point, batch).
type Target = (Option<String>, String, u64);

fn parse(v: &str) -> Option<Target> {
    let (p, b) = v.split_once('@')?;
    let (q, p) = match p.split_once(':') {
        Some((q, p)) => (Some(q.to_string()), p),
        None => (None, p),
    };
    Some((q, p.to_string(), b.parse().ok()?))
}

fn target() -> &'static Option<Target> {
    static T: OnceLock<Option<Target>> = OnceLock::new();
    T.get_or_init(|| parse(&std::env::var("SLUICE_CRASH_AT").ok()?))
}

thread_local! {
    /// The name of the query this thread runs (set by the query's thread when it starts).
    static QUERY: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Names the query this thread runs, for query-qualified crash points.
pub fn set_query(name: Option<&str>) {
    QUERY.with(|q| *q.borrow_mut() = name.map(str::to_string));
}

/// The query this thread runs, if named (a sink that writes on other threads captures it).
pub fn current_query() -> Option<String> {
    QUERY.with(|q| q.borrow().clone())
}

/// Kills the process if `SLUICE_CRASH_AT` names this point and batch (and this thread's query).
pub fn crash_point(point: &str, batch: u64) {
    if target().is_some() {
        crash_point_for(current_query().as_deref(), point, batch);
    }
}

/// [`crash_point`] for code running on another thread than its query's.
pub fn crash_point_for(query: Option<&str>, point: &str, batch: u64) {
    if let Some((q, p, b)) = target() {
        if p == point && *b == batch && q.as_deref().is_none_or(|q| Some(q) == query) {
            tracing::warn!("SLUICE_CRASH_AT={point}@{batch}: killing the process");
            let pid = std::process::id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
            // SIGKILL is delivered asynchronously; never go on past the crash point.
            loop {
                std::thread::park();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_a_query() {
        assert_eq!(parse("after-sink@3"), Some((None, "after-sink".into(), 3)));
        assert_eq!(
            parse("silver:mid-sink@0"),
            Some((Some("silver".into()), "mid-sink".into(), 0))
        );
        assert_eq!(parse("after-sink"), None);
        assert_eq!(parse("after-sink@x"), None);
    }
}
