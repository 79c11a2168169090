//! Lakehouse ingestion, end to end with the `sluice` binary on examples/medallion.toml: Auto
//! Loader over JSON files whose shape changes midway (a new column from one file on, a value of
//! another type, a field differing only in case) in each schema evolution mode, expectations
//! with their quarantine table, the pipeline run as a graph of tables (stage after stage with
//! --available-now), each uninterrupted and killed with SIGKILL at random crash points of every
//! stage; the bronze table read by an independent reader (Python `deltalake`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::delta::{python_rows, rows};
use common::*;
use serde_json::{json, Value};

const FILES: u64 = 8;
/// The first file with the new column `device`.
const NEW_COLUMN_FROM: u64 = 3;

/// Raw records per file: redeliveries (the same record again, in the same or the next file),
/// dirty rows (no user, negative value), and the shape changes.
fn raw() -> Vec<Vec<Value>> {
    let actions = [" Click", "view", "BUY ", "scroll"];
    let countries = ["de", "FR", "us", "JP"];
    let mut x: u64 = 5;
    let mut files: Vec<Vec<Value>> = Vec::new();
    let mut carry: Option<Value> = None;
    for f in 0..FILES {
        let mut recs: Vec<Value> = carry.take().into_iter().collect();
        for i in 0..25u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = x >> 24;
            let id = f * 25 + i;
            let ts = chrono::DateTime::from_timestamp(1_735_689_600 + id as i64 * 150, 0)
                .expect("t")
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let mut e = json!({
                "event_id": format!("e{id}"),
                "event_time": ts,
                "action": actions[(r % 4) as usize],
                "user_id": if r.is_multiple_of(19) { Value::Null } else { json!(r % 40) },
                "value": (r % 900) as f64 / 8.0 - if r.is_multiple_of(13) { 150.0 } else { 0.0 },
                "country": countries[((r >> 8) % 4) as usize],
            });
            if f >= NEW_COLUMN_FROM {
                e["device"] = json!(["ios", "android", "web"][((r >> 4) % 3) as usize]);
            }
            if f == 5 && i == 2 {
                e["value"] = json!("n/a"); // another type than the column's
            }
            if f == 6 && i == 3 {
                let c = e["country"].take();
                e.as_object_mut().expect("o").remove("country");
                e["Country"] = c; // differs only in case
            }
            recs.push(e.clone());
            if r.is_multiple_of(7) {
                recs.push(e.clone()); // redelivered at once
            } else if r.is_multiple_of(11) {
                carry = Some(e); // redelivered with the next file
            }
        }
        files.push(recs);
    }
    files
}

fn stage(dir: &Path) {
    for (f, recs) in raw().iter().enumerate() {
        let body: String = recs.iter().map(|r| format!("{r}\n")).collect();
        put_file(
            &dir.join("data/raw"),
            &format!("raw-{f:02}.json"),
            &body,
            f as u64,
        );
    }
}

/// The example pipeline, with the schema inferred from the first two files only (so the new
/// column arrives midway), a progress log for silver, and `mode` as the evolution mode.
fn pipeline(dir: &Path, mode: Option<&str>) -> PathBuf {
    let text = fs::read_to_string(repo_dir().join("examples/medallion.toml")).expect("example");
    let mut extra = r#""cloudFiles.schemaInference.sampleSize.numFiles" = "2", "#.to_string();
    if let Some(m) = mode {
        extra.push_str(&format!(r#""cloudFiles.schemaEvolutionMode" = "{m}", "#));
    }
    let text = text
        .replacen(
            r#""cloudFiles.maxFilesPerTrigger""#,
            &format!(r#"{extra}"cloudFiles.maxFilesPerTrigger""#),
            1,
        )
        .replacen(
            "checkpoint = \"data/chk/silver\"",
            "checkpoint = \"data/chk/silver\"\nprogress_log = \"data/progress/silver.jsonl\"",
            1,
        );
    assert!(
        text.contains("sampleSize") && text.contains("progress/silver"),
        "example changed"
    );
    let p = dir.join("medallion.toml");
    fs::write(&p, text).expect("write pipeline");
    p
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Distinct raw events by id (redeliveries are the same record).
fn events() -> BTreeMap<String, Value> {
    raw()
        .into_iter()
        .flatten()
        .map(|e| (e["event_id"].as_str().expect("id").to_string(), e))
        .collect()
}

fn failing_user(e: &Value) -> bool {
    e["user_id"].is_null()
}

/// `value >= 0` is FALSE (a value that is not a number is NULL in its column: it passes).
fn failing_value(e: &Value) -> bool {
    e["value"].as_f64().is_some_and(|v| v < 0.0)
}

/// The same instant, written by Python (`+00:00`) or by the generator (`Z`).
fn same_value(column: &Value, input: &Value) -> bool {
    match (column, input) {
        (Value::String(c), Value::String(i)) if c != i => {
            let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
            t(c).is_some() && t(c) == t(i)
        }
        (Value::Number(c), Value::Number(i)) => c.as_f64() == i.as_f64(),
        (c, i) => c == i,
    }
}

/// Bronze, read by Python `deltalake`: every raw record once per delivery, and every input
/// value either in its column or in `_rescued_data` (with the file it came from).
fn check_bronze(dir: &Path, evolved: bool) {
    let (names, bronze) = python_rows(&dir.join("data/bronze"));
    assert_eq!(names.contains(&"device".to_string()), evolved, "{names:?}");
    assert!(names.contains(&"_rescued_data".to_string()), "{names:?}");
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for e in raw().iter().flatten() {
        *want
            .entry(e["event_id"].as_str().expect("id").to_string())
            .or_default() += 1;
    }
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let events = events();
    let mut rescued_rows = 0;
    for row in &bronze {
        let id = row["event_id"].as_str().expect("event_id").to_string();
        *got.entry(id.clone()).or_default() += 1;
        let rescued: Option<Value> = row["_rescued_data"]
            .as_str()
            .map(|s| serde_json::from_str(s).expect("rescued json"));
        if let Some(r) = &rescued {
            rescued_rows += 1;
            assert!(
                r["_file_path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/data/raw/raw-")),
                "{r}"
            );
        }
        for (k, v) in events[&id].as_object().expect("record") {
            let in_column = row.get(k).is_some_and(|c| same_value(c, v));
            let in_rescued = rescued.as_ref().and_then(|r| r.get(k)) == Some(v);
            assert!(in_column || in_rescued, "{id}.{k} = {v} lost: {row}");
        }
    }
    assert_eq!(got, want, "every delivery once");
    // the value of another type, the field in another case and (rescue mode) every device
    let rescued = |e: &&Value| {
        e["value"].is_string()
            || e.get("Country").is_some()
            || (!evolved && e.get("device").is_some())
    };
    assert_eq!(rescued_rows, raw().iter().flatten().filter(rescued).count());
}

/// Silver, quarantine and gold as computed here from the distinct raw events.
fn check_downstream(dir: &Path) {
    let data = dir.join("data");
    let events = events();
    let ids = |path: &Path| -> Vec<String> {
        let mut v: Vec<String> = rows(path, &[])
            .iter()
            .map(|r| {
                r.split('|')
                    .find(|c| c.starts_with('e'))
                    .expect("event id")
                    .to_string()
            })
            .collect();
        v.sort();
        v
    };
    let bad = |e: &Value| failing_user(e) || failing_value(e);
    let mut want_silver: Vec<String> = events
        .iter()
        .filter(|(_, e)| !bad(e))
        .map(|(k, _)| k.clone())
        .collect();
    want_silver.sort();
    assert_eq!(
        ids(&data.join("silver")),
        want_silver,
        "silver: each clean event once"
    );
    let mut want_q: Vec<String> = events
        .iter()
        .filter(|(_, e)| bad(e))
        .map(|(k, _)| k.clone())
        .collect();
    want_q.sort();
    assert!(!want_q.is_empty());
    assert_eq!(
        ids(&data.join("quarantine/silver")),
        want_q,
        "quarantine: each dropped row once"
    );

    // gold: events and value per hour and action
    let mut want: BTreeMap<(i64, String), (i64, f64)> = BTreeMap::new();
    for e in events.values().filter(|e| !bad(e)) {
        let t = chrono::DateTime::parse_from_rfc3339(e["event_time"].as_str().expect("t"))
            .expect("t")
            .timestamp();
        let a = e["action"].as_str().expect("a").trim().to_lowercase();
        let g = want.entry((t - t.rem_euclid(3600), a)).or_default();
        g.0 += 1;
        g.1 += e["value"].as_f64().unwrap_or(0.0);
    }
    let (_, gold) = python_rows(&data.join("gold"));
    let mut got: BTreeMap<(i64, String), (i64, f64)> = BTreeMap::new();
    for r in gold {
        let w = chrono::DateTime::parse_from_rfc3339(r["window_start"].as_str().expect("ws"))
            .expect("ws")
            .timestamp();
        got.insert(
            (w, r["action"].as_str().expect("a").to_string()),
            (
                r["events"].as_i64().expect("n"),
                r["total_value"].as_f64().unwrap_or(0.0),
            ),
        );
    }
    assert_eq!(got.len(), want.len());
    for (k, (n, s)) in &want {
        let (gn, gs) = got[k];
        assert_eq!(gn, *n, "{k:?}");
        assert!((gs - s).abs() < 1e-6, "{k:?}: {gs} vs {s}");
    }
}

/// The expectation counts of silver's progress, summed over its batches.
fn quality(dir: &Path) -> (BTreeMap<String, (u64, u64)>, u64) {
    let text = fs::read_to_string(dir.join("data/progress/silver.jsonl")).expect("progress");
    let mut per: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut dropped = 0;
    for l in text.lines() {
        let p: Value = serde_json::from_str(l).expect("progress json");
        let dq = &p["dataQuality"];
        dropped += dq["dropped_records"].as_u64().expect("dropped");
        for e in dq["expectations"].as_array().expect("expectations") {
            assert_eq!(e["dataset"], "silver");
            let c = per
                .entry(e["name"].as_str().expect("name").to_string())
                .or_default();
            c.0 += e["passed_records"].as_u64().expect("passed");
            c.1 += e["failed_records"].as_u64().expect("failed");
        }
    }
    (per, dropped)
}

/// Every table but bronze's ingest time and rescued file paths (another directory per run).
fn tables(dir: &Path) -> Vec<Vec<String>> {
    let d = dir.join("data");
    let prefix = dir.display().to_string();
    ["bronze", "silver", "quarantine/silver", "gold"]
        .iter()
        .map(|t| {
            rows(&d.join(t), &["ingest_time"])
                .into_iter()
                .map(|r| r.replace(&prefix, "<dir>"))
                .collect()
        })
        .collect()
}

/// Starts `sluice run` in the background, its log (Sluice's INFO lines) into `log`: a pipe
/// nobody reads while the daemon runs would fill and block it.
fn spawn_logged(p: &Path, log: &Path) -> std::process::Child {
    std::process::Command::new(sluice_bin())
        .arg("run")
        .arg(p)
        .env("SLUICE_LOG", "warn,sluice=info")
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn sluice")
}

/// An uninterrupted `--available-now` run of the example over the staged input, in `mode`:
/// its directory and its log.
fn staged_run(mode: Option<&str>) -> (tempfile::TempDir, String) {
    let w = workdir();
    stage(w.path());
    let o = run_pipeline_args(&pipeline(w.path(), mode), &["--available-now"], &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    (w, err)
}

/// What `sluice <command> <pipeline>` prints, checking it exits 0.
fn sluice_stdout(command: &str, p: &Path) -> String {
    let o = std::process::Command::new(sluice_bin())
        .arg(command)
        .arg(p)
        .output()
        .expect("run sluice");
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stops a daemon started by [`spawn_logged`] (SIGTERM), checks it exited 0, returns its log.
fn stop_logged(child: std::process::Child, log: &Path) -> String {
    signal(&child, "TERM");
    let o = child.wait_with_output().expect("wait");
    let err = fs::read_to_string(log).expect("log");
    assert!(o.status.success(), "{err}");
    err
}

/// A table's rows (as [`tables`] gives them), empty while it has no commit yet.
fn rows_if_any(path: &Path) -> Vec<String> {
    match sluice::connectors::delta::read_table(path.to_str().expect("p")) {
        Ok(_) => rows(path, &["ingest_time"]),
        Err(_) => Vec::new(),
    }
}

/// Crash points in every stage, in the order the run reaches them (each must fire): two per
/// stage, at distinct batches, each at a point drawn from the seed (printed, to replay a run).
fn crash_points() -> Vec<String> {
    const POINTS: [&str; 5] = [
        "after-offsets",
        "mid-sink",
        "after-sink",
        "after-state",
        "after-commit",
    ];
    let mut x = test_seed() | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    for q in ["bronze", "silver", "gold"] {
        // gold's batch 0 may write no data file (mid-sink): its kills start at batch 1
        let first = u64::from(q == "gold");
        let a = first + next() % (FILES - 1 - first);
        let b = loop {
            let b = first + next() % (FILES - 1 - first);
            if b != a {
                break b;
            }
        };
        for batch in [a.min(b), a.max(b)] {
            out.push(format!("{q}:{}@{batch}", POINTS[(next() % 5) as usize]));
        }
    }
    out
}

#[test]
fn add_new_columns_restarts_rescues_and_survives_kills_as_stages_or_a_graph() {
    // uninterrupted, the whole graph in one run
    let (clean, err) = staged_run(None);
    assert!(
        err.contains("new columns device")
            && err.contains("raw-03.json")
            && err.contains("schema version 1"),
        "the stop names the columns, the file and the version: {err}"
    );
    assert!(err.contains("restarting it with the new schema"), "{err}");
    check_bronze(clean.path(), true);
    check_downstream(clean.path());
    let versions: Vec<String> = fs::read_dir(
        clean
            .path()
            .join("data/chk/bronze/_autoloader/raw/_schemas"),
    )
    .expect("schema location in the checkpoint")
    .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
    .collect();
    assert_eq!(sorted(versions), ["0", "1"]);

    // expectations: counts equal a count over the input, dropped = the quarantine
    let events = events();
    let (per, dropped) = quality(clean.path());
    let n = events.len() as u64;
    let count = |f: &dyn Fn(&Value) -> bool| events.values().filter(|e| f(e)).count() as u64;
    let want_user = count(&failing_user);
    let want_value = count(&failing_value);
    assert_eq!(per["valid_user"], (n - want_user, want_user));
    assert_eq!(per["non_negative_value"], (n - want_value, want_value));
    assert_eq!(per["valid_event_time"], (n, 0));
    assert_eq!(per["known_action"], (n, 0));
    assert_eq!(dropped, count(&|e| failing_user(e) || failing_value(e)));

    // the stages one at a time give the same tables
    let staged = workdir();
    stage(staged.path());
    let ps = pipeline(staged.path(), None);
    for q in ["bronze", "silver", "gold"] {
        let o = run_pipeline_args(&ps, &["--available-now", "--query", q], &[]);
        assert!(o.status.success(), "{q}: {}", stderr(&o));
    }
    assert_eq!(
        tables(staged.path()),
        tables(clean.path()),
        "stages one at a time"
    );

    // killed at random points of every stage, restarted: the same tables again
    let killed = workdir();
    stage(killed.path());
    let pk = pipeline(killed.path(), None);
    let points = crash_points();
    run_killed(&pk, &["--available-now"], &points);
    assert_eq!(
        tables(killed.path()),
        tables(clean.path()),
        "killed at {points:?}"
    );
    check_bronze(killed.path(), true);
}

#[test]
fn rescue_mode_keeps_the_schema_and_the_values_also_when_killed() {
    let (clean, err) = staged_run(Some("rescue"));
    assert!(!err.contains("new columns"), "{err}");
    check_bronze(clean.path(), false);
    check_downstream(clean.path());

    let killed = workdir();
    stage(killed.path());
    let pk = pipeline(killed.path(), Some("rescue"));
    let points = crash_points();
    run_killed(&pk, &["--available-now"], &points);
    assert_eq!(
        tables(killed.path()),
        tables(clean.path()),
        "killed at {points:?}"
    );
}

#[test]
fn fail_on_new_columns_stays_stopped_until_the_schema_is_updated() {
    let w = workdir();
    stage(w.path());
    let p = pipeline(w.path(), Some("failOnNewColumns"));
    // killed before the file with the new column, then run: it stops there, twice
    run_killed_then(&p, &[format!("bronze:after-sink@{}", NEW_COLUMN_FROM - 2)]);
    for _ in 0..2 {
        let o = run_pipeline_args(&p, &["--available-now"], &[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("failOnNewColumns")
                && err.contains("device")
                && err.contains("raw-03.json"),
            "{err}"
        );
    }
    let bronze = rows(&w.path().join("data/bronze"), &[]);
    let before: usize = raw()[..NEW_COLUMN_FROM as usize].iter().map(Vec::len).sum();
    assert_eq!(
        bronze.len(),
        before,
        "the batches before the new column, once"
    );

    // the user adds the column to the schema location: the query goes on with it
    let dir = w.path().join("data/chk/bronze/_autoloader/raw/_schemas");
    let v0: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("0")).expect("v0")).expect("json");
    let mut v1 = v0.clone();
    v1["version"] = json!(1);
    v1["schema"] = json!(format!(
        "{}, device STRING",
        v0["schema"].as_str().expect("s")
    ));
    fs::write(dir.join("1"), v1.to_string()).expect("write v1");
    let o = run_pipeline_args(&p, &["--available-now"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_bronze(w.path(), true);
    check_downstream(w.path());
}

/// Runs killed at each point (each must fire), without the final run to the end.
fn run_killed_then(p: &Path, points: &[String]) {
    for at in points {
        let o = run_pipeline_args(p, &["--available-now"], &[("SLUICE_CRASH_AT", at)]);
        assert!(killed(&o), "expected SIGKILL at {at}: {}", stderr(&o));
    }
}

#[test]
fn a_failing_expectation_stops_before_the_sink_commits() {
    let w = workdir();
    stage(w.path());
    let p = pipeline(w.path(), None);
    let text = fs::read_to_string(&p).expect("p").replace(
        r#"condition = "value >= 0", on_violation = "drop""#,
        r#"condition = "value >= 0", on_violation = "fail""#,
    );
    fs::write(&p, text).expect("w");
    let first_bad = raw()
        .iter()
        .position(|f| f.iter().any(failing_value))
        .expect("a file with a negative value") as u64;
    for _ in 0..2 {
        let o = run_pipeline_args(&p, &["--available-now"], &[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("expectation 'non_negative_value'")
                && err.contains(&format!("batch {first_bad} of 'silver'"))
                && err.contains("\"value\":-"),
            "{err}"
        );
    }
    // the batches before the failing one are in silver, the failing one is not committed
    let commits = fs::read_dir(w.path().join("data/chk/silver/commits"))
        .expect("commits")
        .count() as u64;
    assert_eq!(commits, first_bad);
    // (the table exists once the sink opened it; it holds only the committed batches)
    if w.path().join("data/silver/_delta_log").exists() {
        let silver = rows(&w.path().join("data/silver"), &[]);
        assert!(
            silver.iter().all(|r| !r.contains("|-")),
            "no negative value written"
        );
    }
}

#[test]
fn the_graph_is_printed_and_cycles_and_unknown_names_are_refused() {
    let w = workdir();
    let p = pipeline(w.path(), None);
    let out = sluice_stdout("graph", &p);
    assert_eq!(
        out.lines().map(str::trim).collect::<Vec<_>>(),
        [
            "inputs:",
            "raw (source, cloudFiles data/raw)",
            "stage 1:",
            "bronze <- raw  => delta data/bronze",
            "stage 2:",
            "silver <- bronze  => delta data/silver, 4 expectation(s)",
            "stage 3:",
            "gold <- silver  => delta data/gold",
        ]
    );
    let text = fs::read_to_string(&p).expect("p");
    let cyclic = text.replace("FROM raw", "FROM gold");
    fs::write(&p, cyclic).expect("w");
    let (code, msg) = validate_pipeline(&p);
    assert_eq!(code, Some(2), "{msg}");
    assert!(
        msg.contains("cycle") && msg.contains("bronze -> silver -> gold -> bronze"),
        "{msg}"
    );
    fs::write(&p, text.replace("FROM silver", "FROM silverr")).expect("w");
    let (code, msg) = validate_pipeline(&p);
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("query 'gold' reads 'silverr'"), "{msg}");
    fs::write(
        &p,
        text.replace(
            "\"cloudFiles.format\"",
            "\"cloudFiles.formatt\" = \"json\", \"cloudFiles.format\"",
        ),
    )
    .expect("w");
    stage(w.path());
    let (code, msg) = validate_pipeline(&p);
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("unknown option 'cloudFiles.formatt'"), "{msg}");
}

fn json_files(dir: &Path, files: &[&str]) {
    for (i, body) in files.iter().enumerate() {
        put_file(dir, &format!("{i}.json"), body, i as u64);
    }
}

#[test]
fn expectations_in_the_dataframe_api_count_drop_quarantine_and_fail() {
    use sluice::prelude::*;
    let w = workdir();
    let input = w.path().join("in");
    json_files(
        &input,
        &[
            "{\"id\":1,\"v\":1.5}\n{\"id\":null,\"v\":2}\n{\"id\":3,\"v\":-1}\n",
            "{\"id\":4,\"v\":null}\n{\"id\":null,\"v\":-3}\n",
        ],
    );
    let s = Session::builder().build().expect("session");
    let stream = || {
        s.read_stream()
            .schema("id BIGINT, v DOUBLE")
            .option("maxFilesPerTrigger", 1)
            .json(input.to_str().expect("p"))
            .expect("load")
    };
    let err = stream()
        .expect("bad", "nope > 1")
        .expect_err("unknown column");
    assert!(err.to_string().contains("expectation 'bad'"), "{err}");

    let quarantine = w.path().join("quarantine");
    let q = stream()
        .expect("non_negative", "v >= 0")
        .and_then(|d| d.expect_or_drop("has_id", "id IS NOT NULL"))
        .expect("expectations")
        .write_stream()
        .format("memory")
        .query_name("clean")
        .quarantine_sink("json", [("path", quarantine.to_str().expect("p"))])
        .checkpoint_location(w.path().join("chk"))
        .trigger(Trigger::AvailableNow)
        .start()
        .expect("start");
    q.await_termination().expect("run");
    let kept: Vec<String> = s
        .sql("SELECT id FROM clean ORDER BY id")
        .expect("sql")
        .collect()
        .expect("rows")
        .iter()
        .flat_map(|b| {
            let c =
                arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).expect("c");
            let c = c
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .expect("s")
                .clone();
            c.iter()
                .map(|v| v.unwrap_or("NULL").to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(kept, ["1", "3", "4"], "warn keeps, drop removes");
    let dropped = sorted(committed_lines(&quarantine, false));
    assert_eq!(
        dropped,
        [r#"{"v":-3.0}"#, r#"{"v":2.0}"#],
        "the dropped rows, once"
    );
    let counts: Vec<(u64, u64, u64, u64, u64)> = q
        .recent_progress()
        .iter()
        .map(|p| {
            let dq = p.data_quality.as_ref().expect("dataQuality");
            let (a, b) = (&dq.expectations[0], &dq.expectations[1]);
            assert_eq!(
                (a.name.as_str(), b.name.as_str()),
                ("non_negative", "has_id")
            );
            (
                a.passed_records,
                a.failed_records,
                b.passed_records,
                b.failed_records,
                dq.dropped_records,
            )
        })
        .collect();
    // NULL passes: v = null counts as passed
    assert_eq!(counts, [(2, 1, 2, 1, 1), (1, 1, 1, 1, 1)]);

    // a quarantine sink needs a drop rule; a fail rule stops the query at its batch
    let err = stream()
        .expect("non_negative", "v >= 0")
        .expect("df")
        .write_stream()
        .format("memory")
        .query_name("x")
        .quarantine_sink("json", [("path", "q2")])
        .checkpoint_location(w.path().join("chk2"))
        .start()
        .expect_err("no drop rule");
    assert!(err.to_string().contains("quarantine sink"), "{err}");
    let q = stream()
        .expect_or_fail("non_negative", "v >= 0")
        .expect("df")
        .write_stream()
        .format("memory")
        .query_name("strict")
        .checkpoint_location(w.path().join("chk3"))
        .trigger(Trigger::AvailableNow)
        .start()
        .expect("start");
    let err = q.await_termination().expect_err("fails");
    assert!(
        err.to_string().contains("expectation 'non_negative'")
            && err.to_string().contains("batch 0"),
        "{err}"
    );
    assert!(q.recent_progress().is_empty(), "batch 0 not committed");
}

#[test]
fn delta_available_now_reads_up_to_the_version_of_its_start() {
    use sluice::connectors::deltalake;
    use sluice::prelude::*;
    use std::sync::{Arc, Mutex};
    let w = workdir();
    let input = w.path().join("in");
    json_files(&input, &["{\"id\":1}\n", "{\"id\":2}\n"]);
    let s = Session::builder().build().expect("session");
    let table = w.path().join("t");
    let tpath = table.to_str().expect("p").to_string();
    s.read_stream()
        .schema("id BIGINT")
        .option("maxFilesPerTrigger", 1)
        .json(input.to_str().expect("p"))
        .expect("load")
        .write_stream()
        .format("delta")
        .option("path", &tpath)
        .checkpoint_location(w.path().join("chk-w"))
        .trigger(Trigger::AvailableNow)
        .start()
        .expect("start")
        .await_termination()
        .expect("write");
    // while the reader runs its first batch, another writer appends to the table
    let read = |tag: &str| -> Vec<Vec<i64>> {
        let seen: Arc<Mutex<Vec<Vec<i64>>>> = Arc::default();
        let (seen2, tpath2) = (Arc::clone(&seen), tpath.clone());
        s.read_stream()
            .format("delta")
            .option("maxFilesPerTrigger", 1)
            .load(&tpath)
            .expect("load")
            .write_stream()
            .foreach_batch(move |batch_id, batches| {
                let ids: Vec<i64> = batches
                    .iter()
                    .flat_map(|b| {
                        b.column(0)
                            .as_any()
                            .downcast_ref::<arrow::array::Int64Array>()
                            .expect("ids")
                            .values()
                            .to_vec()
                    })
                    .collect();
                if batch_id == 0 && ids == [1] {
                    let rt = tokio::runtime::Runtime::new().expect("rt");
                    let one = batches[0].slice(0, 1);
                    rt.block_on(async {
                        let url = deltalake::ensure_table_uri(&tpath2).expect("url");
                        let t = deltalake::open_table(url).await.expect("open");
                        t.write(vec![one]).await.expect("append")
                    });
                }
                seen2.lock().expect("lock").push(ids);
                Ok(())
            })
            .checkpoint_location(w.path().join("chk-r"))
            .query_name(tag)
            .trigger(Trigger::AvailableNow)
            .start()
            .expect("start")
            .await_termination()
            .expect("read");
        let v = seen.lock().expect("lock").clone();
        v
    };
    let first: Vec<Vec<i64>> = read("first")
        .into_iter()
        .filter(|b| !b.is_empty())
        .collect();
    assert_eq!(
        first,
        [vec![1], vec![2]],
        "the commit appended during the run waits"
    );
    let second: Vec<Vec<i64>> = read("second")
        .into_iter()
        .filter(|b| !b.is_empty())
        .collect();
    assert_eq!(second, [vec![1]], "the next available-now run reads it");
}

#[test]
fn validate_infers_an_auto_loader_schema_without_keeping_it() {
    let w = workdir();
    stage(w.path());
    let p = pipeline(w.path(), None);
    let out = sluice_stdout("validate", &p);
    // the inferred columns are in bronze's plan, the rules listed; nothing was kept
    assert!(
        out.contains("raw.event_id") && out.contains("raw._rescued_data"),
        "{out}"
    );
    assert!(
        out.contains("expectation valid_user: user_id IS NOT NULL (on violation: drop)"),
        "{out}"
    );
    assert!(
        !w.path().join("data/chk").exists(),
        "validate created nothing"
    );
}

#[test]
fn a_continuous_run_starts_each_query_once_the_tables_it_reads_exist() {
    let (clean, _) = staged_run(None);
    let want = tables(clean.path());

    let w = workdir();
    stage(w.path());
    let p = pipeline(w.path(), None);
    let log = w.path().join("daemon.log");
    let child = spawn_logged(&p, &log);
    let gold = w.path().join("data/gold/_delta_log");
    wait_until(
        "gold equal to the available-now run's",
        std::time::Duration::from_secs(120),
        || gold.exists() && rows_if_any(&w.path().join("data/gold")) == want[3],
    );
    let err = stop_logged(child, &log);
    assert!(
        err.contains("query 'silver' waits for the tables of bronze to exist")
            && err.contains("query 'gold' waits for the tables of silver to exist"),
        "{err}"
    );
    assert_eq!(tables(w.path()), want, "every table as in the staged run");
}

#[test]
fn a_running_reader_restarts_with_the_columns_its_upstream_added() {
    let w = workdir();
    let p = w.path().join("p.toml");
    fs::write(
        &p,
        r#"[source.raw]
format = "cloudFiles"
path = "data/raw"
options = { "cloudFiles.format" = "json", "cloudFiles.maxFilesPerTrigger" = "1" }

[query.bronze]
sql = "SELECT * FROM raw"
checkpoint = "data/chk/bronze"
sink = { format = "delta", path = "data/bronze", options = { mergeSchema = "true" } }

[query.copy]
sql = "SELECT * FROM bronze"
read.bronze = { options = { maxFilesPerTrigger = "1" } }
checkpoint = "data/chk/copy"
sink = { format = "delta", path = "data/copy", options = { mergeSchema = "true" } }
"#,
    )
    .expect("pipeline");
    let files = raw();
    let write = |range: std::ops::Range<usize>| {
        for f in range {
            let body: String = files[f].iter().map(|r| format!("{r}\n")).collect();
            put_file(
                &w.path().join("data/raw"),
                &format!("raw-{f:02}.json"),
                &body,
                f as u64,
            );
        }
    };
    let deliveries = |n: usize| files[..n].iter().map(Vec::len).sum::<usize>();
    write(0..NEW_COLUMN_FROM as usize);
    let log = w.path().join("daemon.log");
    let child = spawn_logged(&p, &log);
    let copy = w.path().join("data/copy");
    let copied = || rows_if_any(&copy).len();
    // copy runs, with the first schema, before the files with the new column arrive
    wait_until(
        "copy of the first files",
        std::time::Duration::from_secs(60),
        || copied() == deliveries(NEW_COLUMN_FROM as usize),
    );
    write(NEW_COLUMN_FROM as usize..files.len());
    wait_until(
        "copy of every file",
        std::time::Duration::from_secs(120),
        || copied() == deliveries(files.len()),
    );
    let err = stop_logged(child, &log);
    assert!(
        err.contains("query 'bronze' restarts once copy (reading its table) have stopped")
            && err.contains("query 'copy' restarts to read the new columns of its input"),
        "{err}"
    );
    // the copy has the new column, with every value bronze has
    let sorted_rows = |t: &str| {
        let (names, rows) = python_rows(&w.path().join("data").join(t));
        let mut rows: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
        rows.sort();
        (names.contains(&"device".to_string()), rows)
    };
    let (bronze_has, bronze) = sorted_rows("bronze");
    let (copy_has, copy_rows) = sorted_rows("copy");
    assert!(bronze_has && copy_has);
    assert_eq!(
        copy_rows, bronze,
        "the copy equals bronze, device values included"
    );
    let with_device = copy_rows
        .iter()
        .filter(|r| r.contains("\"device\":\""))
        .count();
    assert_eq!(
        with_device,
        files[NEW_COLUMN_FROM as usize..]
            .iter()
            .flatten()
            .filter(|e| e.get("device").is_some())
            .count()
    );
}
