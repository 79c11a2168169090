//! The operator commands: `sluice validate` and `sluice checkpoint inspect|state`, on good and
//! broken inputs (missing file, unknown option, bad SQL, corrupt checkpoint file, a batch that
//! was not committed, a directory that is not a checkpoint).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn sluice(args: &[&str]) -> Output {
    Command::new(sluice_bin())
        .args(args)
        .env("SLUICE_LOG", "warn")
        .output()
        .expect("run sluice")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Stages the `sliding_append` golden case (a stateful query) in a fresh directory.
fn stage() -> (tempfile::TempDir, PathBuf) {
    let w = workdir();
    let golden = common::repo_dir().join("tests/golden/sliding_append");
    stage_inputs(&golden.join("input"), &w.path().join("in"));
    let p = w.path().join("pipeline.toml");
    fs::copy(golden.join("pipeline.toml"), &p).expect("copy");
    (w, p)
}

#[test]
fn validate_prints_the_plan_and_names_what_is_wrong() {
    let (w, p) = stage();
    let o = sluice(&["validate", p.to_str().expect("p")]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("pipeline.toml: OK"), "{out}");
    assert!(out.contains("query sliding"), "{out}");
    assert!(out.contains("Aggregate:"), "the plan is printed: {out}");
    assert!(out.contains("EventTimeWatermark"), "{out}");
    assert!(
        out.contains(
            "guarantee: exactly-once (replayable sources (json) and an idempotent csv sink)"
        ),
        "{out}"
    );

    // a missing file
    let o = sluice(&["validate", w.path().join("nope.toml").to_str().expect("p")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("nope.toml"), "{}", text(&o).1);

    // an unknown option, a bad column, a missing input directory
    let good = fs::read_to_string(&p).expect("read");
    for (broken, needle) in [
        (
            good.replace("maxFilesPerTrigger = 1", "maxFilesPerTriger = 1"),
            "maxFilesPerTriger",
        ),
        (good.replace("sum(value)", "sum(valu)"), "valu"),
        (
            good.replace("path = \"in\"", "path = \"missing\""),
            "missing",
        ),
        (
            good.replace("output_mode = \"append\"", "output_mode = \"sideways\""),
            "sideways",
        ),
        (
            good.replace(
                "maxFilesPerTrigger = 1",
                "maxFilesPerTrigger = 1, cleanSource = \"bogus\"",
            ),
            "option 'cleanSource' must be off, archive or delete",
        ),
    ] {
        let bp = w.path().join("broken.toml");
        fs::write(&bp, broken).expect("write");
        let o = sluice(&["validate", bp.to_str().expect("p")]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{needle}: {err}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

/// Every file under `dir` (relative path) with a hash of its bytes.
fn tree_hashes(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    use std::hash::{Hash, Hasher};
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                fs::read(&p).expect("read").hash(&mut h);
                let rel = p.strip_prefix(dir).expect("under dir");
                out.insert(rel.to_string_lossy().into_owned(), h.finish());
            }
        }
    }
    out
}

#[test]
fn checkpoint_inspect_and_state_on_good_and_broken_checkpoints() {
    let (w, p) = stage();
    let o = run_pipeline(&p, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let chk = w.path().join("chk/sliding");
    let chk_s = chk.to_str().expect("p");
    let commits: Vec<u64> = fs::read_dir(chk.join("commits"))
        .expect("commits")
        .filter_map(|e| e.ok()?.file_name().to_string_lossy().parse().ok())
        .collect();
    let last = *commits.iter().max().expect("a commit");
    let id = fs::read_to_string(chk.join("metadata")).expect("metadata");
    let before = tree_hashes(&chk);
    assert!(
        before.keys().any(|p| p.contains("state/0/")),
        "the state is partitioned: {:?}",
        before.keys().collect::<Vec<_>>()
    );

    let o = sluice(&["checkpoint", "inspect", chk_s]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(id.contains(
        out.lines()
            .nth(1)
            .expect("id line")
            .split_whitespace()
            .nth(2)
            .expect("id")
    ));
    assert!(
        out.contains(&format!("last batch   {last} (committed)")),
        "{out}"
    );
    assert!(out.contains("logOffset"), "offsets per source: {out}");
    assert!(
        out.contains("watermark    2025-01-01T00:06:30.000Z"),
        "{out}"
    );
    assert!(out.contains("operator 0: "), "state per operator: {out}");

    let o = sluice(&[
        "checkpoint",
        "state",
        chk_s,
        "--operator",
        "0",
        "--limit",
        "2",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.starts_with("operator 0: "), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("0 ") || l.starts_with("1 "))
            .count(),
        2,
        "{out}"
    );
    // reading opened the state read-only: not a byte changed, nothing added or removed
    assert_eq!(
        tree_hashes(&chk),
        before,
        "checkpoint inspect/state changed the checkpoint"
    );
    let o = sluice(&["checkpoint", "state", chk_s, "--operator", "7"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("no state operator 7 (operators: 0)"),
        "{}",
        text(&o).1
    );

    // the last batch not committed: inspect says the next start re-runs it
    fs::remove_file(chk.join("commits").join(last.to_string())).expect("rm commit");
    let (out, _) = text(&sluice(&["checkpoint", "inspect", chk_s]));
    assert!(
        out.contains(&format!(
            "last batch   {last} (NOT committed: the next start re-runs batch {last}"
        )),
        "{out}"
    );

    // a corrupt offsets entry: the error names the file (exit 1: the checkpoint, as for run)
    let bad = chk.join("offsets").join(last.to_string());
    fs::write(&bad, "v1\n{not json").expect("corrupt");
    let o = sluice(&["checkpoint", "inspect", chk_s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains(bad.to_str().expect("p")),
        "{}",
        text(&o).1
    );

    // not a checkpoint
    let o = sluice(&[
        "checkpoint",
        "inspect",
        w.path().join("in").to_str().expect("p"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("is not a Sluice checkpoint"),
        "{}",
        text(&o).1
    );
}

#[test]
fn backfill_progress_as_lines_or_as_a_bar_on_a_terminal() {
    let (_w, p) = stage();
    let o = run_pipeline_args(&p, &["--available-now"], &[]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("backfill sliding:"))
        .collect();
    assert!(lines.len() >= 2, "one line per batch: {err}");
    assert!(lines.last().expect("last").contains("100%"), "{err}");
    assert!(lines.last().expect("last").ends_with("done"), "{err}");
    assert_eq!(
        lines.iter().filter(|l| l.ends_with("done")).count(),
        1,
        "done once, at the end: {err}"
    );
    // rates are rows over the time since the query started: plausible, never billions
    for l in &lines {
        let rate = l
            .split(", ")
            .find(|p| p.ends_with("rows/s"))
            .expect("a rate")
            .trim_end_matches(" rows/s");
        if let Ok(r) = rate.parse::<f64>() {
            assert!(r < 10_000_000.0, "{l}");
        } else {
            assert_eq!(rate, "–", "{l}");
        }
    }

    // on a terminal (script(1) gives it a pty): one bar redrawn in place
    let (_w, p) = stage();
    let cmd = format!(
        "SLUICE_LOG=warn {} run {} --available-now",
        sluice_bin().display(),
        p.display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script (util-linux)");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("\r"), "redrawn with carriage returns: {out:?}");
    assert!(
        out.contains("[##############################] 100%"),
        "{out:?}"
    );
}

#[cfg(all(feature = "kafka", feature = "jdbc"))]
#[test]
fn validate_checks_that_brokers_and_databases_answer() {
    let w = workdir();
    std::fs::create_dir_all(w.path().join("in")).expect("in");
    let closed = common::db::free_port();
    let write = |body: String| {
        let p = w.path().join("p.toml");
        fs::write(&p, body).expect("write");
        p
    };
    let p = write(format!(
        r#"[source.events]
format = "json"
path = "in"
schema = "a BIGINT"

[query.q]
sql = "SELECT a FROM events"
checkpoint = "chk"
sink = {{ format = "jdbc", options = {{ url = "jdbc:postgresql://127.0.0.1:{closed}/db?user=u&password=hunter2", dbtable = "t", connectTimeout = "1 second" }} }}
"#
    ));
    let o = sluice(&["validate", p.to_str().expect("p")]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("sink not reachable"), "{err}");
    assert!(
        err.contains(&format!("postgresql://u@127.0.0.1:{closed}/db")),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "no password in errors: {err}");

    let p = write(format!(
        r#"[source.events]
format = "kafka"
options = {{ "kafka.bootstrap.servers" = "127.0.0.1:{closed}", subscribe = "t" }}

[query.q]
sql = "SELECT key FROM events"
checkpoint = "chk2"
sink = {{ format = "console" }}
"#
    ));
    let o = sluice(&["validate", p.to_str().expect("p")]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("reaching the brokers 127.0.0.1:{closed}")),
        "{err}"
    );
}

/// Writes `body` as a pipeline file in a fresh directory with an empty `in/`.
fn pipeline_file(body: &str) -> (tempfile::TempDir, PathBuf) {
    let w = workdir();
    fs::create_dir_all(w.path().join("in")).expect("in");
    let p = w.path().join("p.toml");
    fs::write(&p, body).expect("write");
    (w, p)
}

const SOURCE: &str = "[source.events]\nformat = \"json\"\npath = \"in\"\nschema = \"a BIGINT\"\n\n";

#[test]
fn foreach_batch_in_a_pipeline_file_says_it_needs_a_program() {
    let (_w, p) = pipeline_file(&format!(
        "{SOURCE}[query.q]\nsql = \"SELECT a FROM events\"\ncheckpoint = \"chk\"\nsink = {{ format = \"foreach_batch\" }}\n"
    ));
    let o = sluice(&["validate", p.to_str().expect("p")]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("exists only in a program"), "{err}");
    assert!(
        err.contains("not as a format name nor in a pipeline file"),
        "{err}"
    );
    assert!(
        !err.contains("available: ") || !err.contains(", foreach_batch"),
        "foreach_batch is not offered as a format: {err}"
    );
    // a console sink: at-least-once, and validate says why
    let (_w2, p2) = pipeline_file(&format!(
        "{SOURCE}[query.q]\nsql = \"SELECT a FROM events\"\nsink = {{ format = \"console\" }}\n"
    ));
    let o = sluice(&["validate", p2.to_str().expect("p")]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        out.contains("guarantee: at-least-once (the console sink writes a re-run batch again)"),
        "{out}"
    );
}

#[test]
fn a_missing_schema_in_a_pipeline_file_names_the_pipeline_key() {
    let (_w, p) = pipeline_file(
        "[source.events]\nformat = \"json\"\npath = \"in\"\n\n[query.q]\nsql = \"SELECT * FROM events\"\nsink = { format = \"console\" }\n",
    );
    let o = sluice(&["validate", p.to_str().expect("p")]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("source 'events'"), "{err}");
    assert!(err.contains("`schema = \"col TYPE, ...\"`"), "{err}");
    assert!(err.contains("[source.events]"), "{err}");
    assert!(
        !err.contains(".schema("),
        "no Rust call in a pipeline file's error: {err}"
    );
}

#[test]
fn inspect_names_a_missing_directory_as_missing() {
    let w = workdir();
    let missing = w.path().join("nonexistent");
    let o = sluice(&["checkpoint", "inspect", missing.to_str().expect("p")]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("does not exist"), "{err}");
    assert!(!err.contains("not a Sluice checkpoint"), "{err}");
}

#[test]
fn validate_creates_nothing() {
    let (w, p) = stage();
    let good = fs::read_to_string(&p).expect("read");
    let with_logs = good.replace(
        "progress_log = \"progress.jsonl\"",
        "progress_log = \"logs/deep/progress.jsonl\"",
    );
    fs::write(&p, with_logs).expect("write");
    let before: Vec<String> = fs::read_dir(w.path())
        .expect("ls")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    let o = sluice(&["validate", p.to_str().expect("p")]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        out.contains("is created at start"),
        "a new checkpoint: {out}"
    );
    let after: Vec<String> = fs::read_dir(w.path())
        .expect("ls")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(before, after, "validate made {after:?}");
    assert!(!w.path().join("chk").exists() && !w.path().join("logs").exists());
    assert!(!w.path().join("out").exists(), "no output directory");
}

/// Runs the sliding golden pipeline with stderr captured as a file (not a terminal), at the
/// daemon's default log level.
#[test]
fn logs_on_a_redirected_stderr_have_no_colours_and_say_when_the_daemon_exits() {
    let (_w, p) = stage();
    let o = Command::new(sluice_bin())
        .arg("run")
        .arg(&p)
        .env_remove("SLUICE_LOG")
        .output()
        .expect("run");
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escapes in a redirected log: {err:?}"
    );
    assert!(
        err.contains("query 'sliding' stopped; no query left running"),
        "{err}"
    );
    // the run's first line for the query says its guarantee
    assert!(
        err.contains("starting query sliding: exactly-once"),
        "{err}"
    );
    assert!(err.contains("every query is done; exiting"), "{err}");
}

#[test]
fn a_query_failing_alone_does_not_say_that_others_go_on() {
    // a user error at run time: FAILFAST on a malformed line
    let (w, p) = pipeline_file(
        "[source.events]\nformat = \"json\"\npath = \"in\"\nschema = \"a BIGINT\"\noptions = { mode = \"FAILFAST\" }\n\n\
         [query.q]\nsql = \"SELECT a FROM events\"\ntrigger = \"available-now\"\ncheckpoint = \"chk\"\n\
         sink = { format = \"json\", path = \"out\" }\n",
    );
    fs::write(w.path().join("in/bad.json"), "{\"a\": 1}\nnot json\n").expect("write");
    let o = run_pipeline(&p, &[("SLUICE_LOG", "info")]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("query 'q' failed for good"), "{err}");
    assert!(err.contains("no query left running"), "{err}");
    assert!(!err.contains("other queries go on"), "{err}");
}

/// A checkpoint whose state another aggregation wrote: `validate` says so (as a start would),
/// reading the checkpoint without changing it.
#[test]
fn validate_refuses_a_changed_aggregation_over_an_existing_checkpoint() {
    let (w, p) = stage();
    let o = run_pipeline(&p, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let schema_file = w.path().join("chk/sliding/state/0.schema");
    let before = fs::read(&schema_file).expect("the state's fingerprint");
    let good = fs::read_to_string(&p).expect("read");
    fs::write(
        &p,
        good.replace("sum(value) AS total", "max(value) AS total"),
    )
    .expect("write");
    let o = sluice(&["validate", p.to_str().expect("p")]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("different aggregation"), "{err}");
    assert_eq!(fs::read(&schema_file).expect("fingerprint"), before);
}

#[test]
fn run_help_lists_every_source_and_sink_format() {
    let o = sluice(&["run", "--help"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    let s = sluice::Session::builder().build().expect("session");
    let mut formats = s.registry().source_formats();
    formats.extend(s.registry().sink_formats());
    formats.sort();
    formats.dedup();
    let built = sluice::connectors::FORMATS
        .iter()
        .filter(|f| f.feature.is_none_or(|x| sluice::features().contains(&x)))
        .count();
    assert_eq!(formats.len(), built, "{formats:?}");
    for f in &formats {
        // format names are case-insensitive (the registry keeps them in lower case)
        let listed = out.lines().any(|l| {
            l.trim_start()
                .to_ascii_lowercase()
                .starts_with(&format!("{f} "))
        });
        assert!(
            listed,
            "`sluice run --help` does not list format {f}:\n{out}"
        );
    }
    // and the catalogue the help is made from names every format this build has
    for f in &formats {
        assert!(
            sluice::connectors::FORMATS
                .iter()
                .any(|x| x.name.eq_ignore_ascii_case(f)),
            "{f} missing from sluice_connectors::FORMATS"
        );
    }
    assert!(out.contains("foreach_batch is a function"), "{out}");
}

/// A checkpoint file cut to 0 bytes (a crash of the file system), in whichever log: the run
/// fails with exit 1 (one class, one code), says the file is truncated and how to recover —
/// and following that advice recovers the query.
#[test]
fn a_truncated_checkpoint_file_exits_1_saying_how_to_recover() {
    let (w, p) = stage();
    let o = run_pipeline(&p, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let chk = w.path().join("chk/sliding");
    let last_of = |dir: &str| -> std::path::PathBuf {
        let d = chk.join(dir);
        let mut ids: Vec<u64> = fs::read_dir(&d)
            .expect("log")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        ids.sort();
        d.join(ids.last().expect("an entry").to_string())
    };
    for (log, needle) in [
        (
            "offsets",
            "was planned but never committed; remove this file",
        ),
        ("commits", "reached its sink; remove this file"),
        ("sources/0", "truncated"),
    ] {
        let f = last_of(log);
        let saved = fs::read(&f).expect("entry");
        fs::write(&f, b"").expect("truncate");
        let o = run_pipeline(&p, &[]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{log}: {err}");
        assert!(err.contains("is truncated (0 bytes)"), "{log}: {err}");
        assert!(err.contains(needle), "{log}: {err}");
        assert!(
            err.contains(f.to_str().expect("p")),
            "names the file: {err}"
        );
        assert!(!err.contains("use another checkpoint location"), "{err}");
        fs::write(&f, saved).expect("restore");
    }
    // the advice for the last commit entry: remove it, and the query goes on
    let f = last_of("commits");
    fs::write(&f, b"").expect("truncate");
    fs::remove_file(&f).expect("remove as told");
    let o = run_pipeline(&p, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
}
