//! The operator commands: `sluice validate` and `sluice checkpoint inspect|state`, on good and
//! broken inputs (missing file, unknown option, bad SQL, corrupt checkpoint file, a batch that
//! was not committed, a directory that is not a checkpoint).

mod common;

use std::fs;
use std::path::PathBuf;
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
    ] {
        let bp = w.path().join("broken.toml");
        fs::write(&bp, broken).expect("write");
        let o = sluice(&["validate", bp.to_str().expect("p")]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{needle}: {err}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
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

    // a corrupt offsets entry: the error names the file
    let bad = chk.join("offsets").join(last.to_string());
    fs::write(&bad, "v1\n{not json").expect("corrupt");
    let o = sluice(&["checkpoint", "inspect", chk_s]);
    assert_eq!(o.status.code(), Some(2));
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
    assert!(lines[0].contains("rows/s"), "{err}");

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
