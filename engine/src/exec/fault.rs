//! Crash points for tests of exactly-once behaviour.
//!
//! When the environment variable `SLUICE_CRASH_AT` is `<point>@<batch>` (e.g.
//! `after-sink@3`), the process kills itself with SIGKILL when it reaches that point in that
//! batch: no destructor, no flush, as a power cut or `kill -9` would. Points: `after-offsets`
//! (offsets entry written, nothing else), `mid-sink` (a sink wrote part of its output),
//! `after-sink` (sink done, commit entry not written), `after-commit`. Unset, this costs one
//! cached lookup.

use std::sync::OnceLock;

fn target() -> &'static Option<(String, u64)> {
    static T: OnceLock<Option<(String, u64)>> = OnceLock::new();
    T.get_or_init(|| {
        let v = std::env::var("SLUICE_CRASH_AT").ok()?;
        let (p, b) = v.split_once('@')?;
        Some((p.to_string(), b.parse().ok()?))
    })
}

/// Kills the process if `SLUICE_CRASH_AT` names this point and batch.
pub fn crash_point(point: &str, batch: u64) {
    if let Some((p, b)) = target() {
        if p == point && *b == batch {
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
