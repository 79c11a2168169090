//! Golden tests: each folder of tests/golden holds a pipeline file, its input files and the
//! expected output rows (computed independently of Sluice). Each is run uninterrupted, killed
//! with SIGKILL at every crash point of several batches and restarted, and stopped cleanly
//! (SIGTERM) mid-stream and restarted: the committed output must equal the expected rows every
//! time, and a plain reader of the output directory must see the same rows.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn golden_dir(name: &str) -> PathBuf {
    common::repo_dir().join("tests/golden").join(name)
}

fn expected(name: &str) -> Vec<String> {
    let text = fs::read_to_string(golden_dir(name).join("expected.csv")).expect("expected.csv");
    sorted(text.lines().map(str::to_string).collect())
}

/// Stages a golden case into a fresh directory; returns (dir, pipeline path, number of files).
fn stage(name: &str) -> (tempfile::TempDir, PathBuf, usize) {
    stage_partitioned(name, None)
}

/// [`stage`], the pipeline's state split into `partitions` (its `shuffle_partitions` key).
fn stage_partitioned(name: &str, partitions: Option<usize>) -> (tempfile::TempDir, PathBuf, usize) {
    let w = workdir();
    let n = stage_inputs(&golden_dir(name).join("input"), &w.path().join("in"));
    let p = w.path().join("pipeline.toml");
    let text = fs::read_to_string(golden_dir(name).join("pipeline.toml")).expect("pipeline");
    let text = match partitions {
        Some(n) => format!("shuffle_partitions = {n}\n{text}"),
        None => text,
    };
    fs::write(&p, text).expect("write pipeline");
    (w, p, n)
}

/// Whether the golden case writes a Delta table (else a CSV file sink).
fn is_delta(name: &str) -> bool {
    fs::read_to_string(golden_dir(name).join("pipeline.toml"))
        .expect("pipeline")
        .contains(r#"format = "delta""#)
}

/// The rows of the Delta table at `dir`, as CSV lines.
fn delta_lines(dir: &Path) -> Vec<String> {
    let batches =
        sluice::connectors::delta::read_table(dir.to_str().expect("path")).expect("read table");
    let mut buf = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(false)
            .build(&mut buf);
        for b in &batches {
            w.write(b).expect("csv");
        }
    }
    String::from_utf8(buf)
        .expect("utf8")
        .lines()
        .map(str::to_string)
        .collect()
}

fn check_output(name: &str, dir: &Path, how: &str) {
    let out = dir.join("out");
    if is_delta(name) {
        assert_eq!(
            sorted(delta_lines(&out)),
            expected(name),
            "{name} ({how}): table rows differ from expected"
        );
        return;
    }
    assert_eq!(
        sorted(committed_lines(&out, true)),
        expected(name),
        "{name} ({how}): manifest rows differ from expected"
    );
    assert_eq!(
        sorted(visible_lines(&out, true)),
        expected(name),
        "{name} ({how}): visible files differ from expected"
    );
}

fn progress_lines(dir: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(dir.join("progress.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("progress JSON"))
        .collect()
}

/// Each case with 1, 2 and 8 state partitions: the same rows.
fn uninterrupted(name: &str) {
    for partitions in [1, 2, 8] {
        uninterrupted_with(name, partitions);
    }
}

fn uninterrupted_with(name: &str, partitions: usize) {
    let (w, p, files) = stage_partitioned(name, Some(partitions));
    let o = run_pipeline(&p, &[]);
    assert!(
        o.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    check_output(
        name,
        w.path(),
        &format!("uninterrupted, {partitions} partitions"),
    );
    // maxFilesPerTrigger = 1: one batch per file (then, for a watermarked aggregation, one
    // no-data batch), with Spark's progress fields
    let progress = progress_lines(w.path());
    let data: Vec<&serde_json::Value> = progress
        .iter()
        .filter(|p| p["numInputRows"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert_eq!(data.len(), files, "{name}: one batch per file");
    assert!(
        progress.len() <= files + 1,
        "{name}: at most one no-data batch"
    );
    for (i, p) in data.iter().enumerate() {
        assert_eq!(p["batchId"], i as u64);
        assert!(p["durationMs"]["triggerExecution"].is_u64());
        assert_eq!(p["sources"][0]["endOffset"]["logOffset"], i as u64);
        assert!(p["sink"]["numOutputRows"].is_u64());
    }
}

fn crash_and_restart(name: &str) {
    let points = [
        "after-offsets",
        "mid-sink",
        "mid-sink-renamed",
        "after-sink",
        "after-state",
        "after-commit",
    ];
    for point in points {
        for batch in [0u64, 1, 2] {
            if point.starts_with("mid-sink") && (batch == 0 || is_delta(name)) {
                // batch 0 of `clicks` writes no rows, so it has no mid-sink moment; a Delta
                // commit is one atomic log entry
                continue;
            }
            let (w, p, _) = stage(name);
            let at = format!("{point}@{batch}");
            let o = run_pipeline(&p, &[("SLUICE_CRASH_AT", &at)]);
            assert!(
                killed(&o),
                "{name}: expected SIGKILL at {at}, got {:?}",
                o.status
            );
            let o = run_pipeline(&p, &[]);
            assert!(
                o.status.success(),
                "{name} after {at}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            check_output(name, w.path(), &format!("killed at {at}"));
            // the batch ids in the commit log are contiguous: nothing skipped, nothing doubled
            let commits: Vec<u64> = {
                let mut v: Vec<u64> = fs::read_dir(checkpoint_name(w.path()).join("commits"))
                    .expect("commits")
                    .map(|e| {
                        e.expect("e")
                            .file_name()
                            .to_string_lossy()
                            .parse()
                            .expect("id")
                    })
                    .collect();
                v.sort();
                v
            };
            assert_eq!(commits, (0..commits.len() as u64).collect::<Vec<_>>());
        }
    }
}

/// The query's checkpoint: the one directory under `chk/`.
fn checkpoint_name(dir: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir.join("chk"))
        .expect("chk")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(dirs.len(), 1, "one checkpoint per golden pipeline");
    dirs.remove(0)
}

/// SIGTERM mid-stream: the batch in flight finishes, the daemon exits 0, and a restart resumes.
fn stop_and_restart(name: &str) {
    let (w, p, files) = stage(name);
    // an event-driven (never-ending) variant of the same pipeline
    let text = fs::read_to_string(&p).expect("pipeline");
    let live = w.path().join("live.toml");
    fs::write(
        &live,
        text.replace("trigger = \"available-now\"", "trigger = \"file-arrival\""),
    )
    .expect("write");
    let child = spawn_pipeline(&live, &[]);
    wait_until("a first batch", Duration::from_secs(60), || {
        !progress_lines(w.path()).is_empty()
    });
    signal(&child, "TERM");
    let o = child.wait_with_output().expect("wait");
    assert!(
        o.status.success(),
        "{name}: SIGTERM exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run_pipeline(&p, &[]);
    assert!(
        o.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    check_output(name, w.path(), "stopped and restarted");
    assert!(progress_lines(w.path()).len() <= files + 1);
}

/// Every folder of tests/golden, sorted: discovered, so that a new case cannot be left out of
/// the runs below; a folder that is not a complete case fails the tests.
fn cases() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(common::repo_dir().join("tests/golden"))
        .expect("tests/golden")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    for c in &v {
        for part in ["pipeline.toml", "expected.csv", "input"] {
            assert!(
                golden_dir(c).join(part).exists(),
                "tests/golden/{c} has no {part}: every folder there is a golden case"
            );
        }
    }
    v
}

/// Runs `f` on every golden case; fails naming each case that failed (after trying them all).
fn each_case(how: &str, f: fn(&str)) {
    let cases = cases();
    assert!(cases.len() >= 6, "golden cases found: {cases:?}");
    let mut failed = Vec::new();
    for name in &cases {
        eprintln!("golden {name}: {how}");
        if std::panic::catch_unwind(|| f(name)).is_err() {
            failed.push(name.clone());
        }
    }
    assert!(failed.is_empty(), "golden cases failed ({how}): {failed:?}");
}

#[test]
fn golden_cases_are_discovered() {
    let c = cases();
    for known in [
        "clicks",
        "complete_delta",
        "dedup_append",
        "sessions_append",
        "sliding_append",
        "sql_functions",
    ] {
        assert!(c.iter().any(|x| x == known), "{known} in {c:?}");
    }
}

#[test]
fn golden_cases_uninterrupted() {
    each_case("uninterrupted", uninterrupted);
}

#[test]
fn golden_cases_killed_and_restarted() {
    each_case("killed and restarted", crash_and_restart);
}

#[test]
fn golden_cases_stopped_and_restarted() {
    each_case("stopped and restarted", stop_and_restart);
}
