//! Delta Lake: the medallion pipeline (examples/medallion.toml) run stage by stage, uninterrupted
//! and killed with SIGKILL at random crash points of every stage, every table compared; the
//! tables checked against values computed here, their logs (one commit per batch carrying the
//! query's transaction), and read by an independent reader (Python `deltalake`); the sink's
//! modes, partitioning and schema rules; the source's limits, starting version and refusal of
//! rewrites.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use common::delta::{python, rows};
use common::*;
use sluice::connectors::delta::read_table;
use sluice::prelude::*;

const FILES: u64 = 6;

/// One raw event: (id, epoch seconds, action as sent, user, value, country as sent).
type Raw = (u64, i64, &'static str, Option<i64>, f64, &'static str);

/// Raw events per file, with redeliveries (same line twice) and dirty rows.
fn raw_events() -> Vec<Vec<Raw>> {
    let actions = [" Click", "view", "BUY ", "scroll"];
    let countries = ["de", "FR", "us", "JP"];
    let mut x: u64 = 11;
    let mut files = Vec::new();
    for f in 0..FILES {
        let mut evs = Vec::new();
        for i in 0..40u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = x >> 24;
            let id = f * 40 + i;
            let e: Raw = (
                id,
                1_735_689_600 + (id as i64) * 90,
                actions[(r % 4) as usize],
                if r.is_multiple_of(23) {
                    None
                } else {
                    Some((r % 30) as i64)
                },
                (r % 800) as f64 / 8.0 - if r.is_multiple_of(17) { 200.0 } else { 0.0 },
                countries[((r >> 8) % 4) as usize],
            );
            evs.push(e);
            if r.is_multiple_of(7) {
                evs.push(e); // redelivered
            }
        }
        files.push(evs);
    }
    files
}

fn stage_raw(dir: &Path) {
    for (f, evs) in raw_events().iter().enumerate() {
        let body: String = evs
            .iter()
            .map(|(id, t, a, u, v, c)| {
                let ts = chrono::DateTime::from_timestamp(*t, 0)
                    .expect("t")
                    .format("%Y-%m-%dT%H:%M:%SZ");
                let u = u.map_or("null".to_string(), |u| u.to_string());
                format!(
                    "{{\"event_id\":\"e{id}\",\"event_time\":\"{ts}\",\"action\":\"{a}\",\"user_id\":{u},\"value\":{v},\"country\":\"{c}\"}}\n"
                )
            })
            .collect();
        put_file(
            &dir.join("data/raw"),
            &format!("raw-{f:02}.json"),
            &body,
            f as u64,
        );
    }
}

fn medallion(dir: &Path) -> PathBuf {
    let p = dir.join("medallion.toml");
    fs::copy(common::repo_dir().join("examples/medallion.toml"), &p).expect("copy the example");
    p
}

/// (version, operation, txns) of each commit, read from the JSON commit files.
/// (version, operation, (app id, txn version) of each txn action).
type Commit = (u64, String, Vec<(String, i64)>);

fn log(path: &Path) -> Vec<Commit> {
    let mut out = Vec::new();
    for e in fs::read_dir(path.join("_delta_log")).expect("log") {
        let name = e.expect("e").file_name().to_string_lossy().into_owned();
        let Some(v) = name
            .strip_suffix(".json")
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        let text = fs::read_to_string(path.join("_delta_log").join(&name)).expect("commit");
        let mut op = String::new();
        let mut txns = Vec::new();
        for line in text.lines() {
            let j: serde_json::Value = serde_json::from_str(line).expect("json");
            if let Some(ci) = j.get("commitInfo") {
                op = ci["operation"].as_str().unwrap_or_default().to_string();
            }
            if let Some(t) = j.get("txn") {
                txns.push((
                    t["appId"].as_str().unwrap_or_default().to_string(),
                    t["version"].as_i64().unwrap_or(-1),
                ));
            }
        }
        out.push((v, op, txns));
    }
    out.sort();
    out
}

fn query_id(chk: &Path) -> String {
    let text = fs::read_to_string(chk.join("metadata")).expect("metadata");
    let json = text.lines().nth(1).expect("metadata json");
    serde_json::from_str::<serde_json::Value>(json).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string()
}

/// The batch timestamps recorded in a checkpoint's offsets log, as µs.
fn batch_timestamps_us(chk: &Path) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir(chk.join("offsets")).expect("offsets") {
        let text = fs::read_to_string(e.expect("e").path()).expect("offsets entry");
        let json = text.lines().nth(1).expect("json");
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        out.insert(v["batchTimestampMs"].as_i64().expect("ts") * 1000);
    }
    out
}

const STAGES: [&str; 3] = ["bronze", "silver", "gold"];
/// Crash points a Delta batch has (its sink writes and commits in one delta-rs call).
const POINTS: [&str; 5] = [
    "after-offsets",
    "mid-sink",
    "after-sink",
    "after-state",
    "after-commit",
];

#[test]
fn medallion_killed_at_random_points_in_every_stage_equals_uninterrupted() {
    let clean = workdir();
    stage_raw(clean.path());
    let p = medallion(clean.path());
    for stage in STAGES {
        let o = run_pipeline_args(&p, &["--available-now", "--query", stage], &[]);
        assert!(
            o.status.success(),
            "{stage}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let killed = workdir();
    stage_raw(killed.path());
    let pk = medallion(killed.path());
    for stage in STAGES {
        let points = random_crash_points(5, FILES, &POINTS);
        run_killed(&pk, &["--available-now", "--query", stage], &points);
        let (a, b) = (
            clean.path().join("data").join(stage),
            killed.path().join("data").join(stage),
        );
        // bronze's ingest_time is the batch timestamp: another run, another time
        let skip: &[&str] = if stage == "bronze" {
            &["ingest_time"]
        } else {
            &[]
        };
        assert_eq!(
            rows(&b, skip),
            rows(&a, skip),
            "{stage}: killed at {points:?}"
        );
    }
    let data = killed.path().join("data");

    // bronze: every raw line once (redeliveries included), ingest_time = its batch's timestamp
    let raw = raw_events();
    let bronze = read_table(data.join("bronze").to_str().expect("p")).expect("bronze");
    let n: usize = bronze.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, raw.iter().map(Vec::len).sum::<usize>());
    let stamps = batch_timestamps_us(&data.join("chk/bronze"));
    for b in &bronze {
        let it = b
            .column_by_name("ingest_time")
            .expect("ingest_time")
            .as_primitive::<TimestampMicrosecondType>();
        for v in it.iter() {
            assert!(
                stamps.contains(&v.expect("ingest time")),
                "ingest_time {v:?} is a batch timestamp"
            );
        }
    }

    // silver: cleaned and deduplicated, as computed here
    let mut want_silver: BTreeMap<u64, (i64, String, i64, f64, String)> = BTreeMap::new();
    for (id, t, a, u, v, c) in raw.iter().flatten() {
        if let (Some(u), true) = (u, *v >= 0.0) {
            want_silver.insert(*id, (*t, a.trim().to_lowercase(), *u, *v, c.to_uppercase()));
        }
    }
    let silver = read_table(data.join("silver").to_str().expect("p")).expect("silver");
    let mut got_ids: Vec<String> = Vec::new();
    for b in &silver {
        let ids = b.column_by_name("event_id").expect("id").as_string::<i32>();
        let actions = b.column_by_name("action").expect("a").as_string::<i32>();
        for i in 0..b.num_rows() {
            let id: u64 = ids.value(i)[1..].parse().expect("id");
            assert_eq!(actions.value(i), want_silver[&id].1, "action cleaned");
            got_ids.push(ids.value(i).to_string());
        }
    }
    got_ids.sort();
    let mut want_ids: Vec<String> = want_silver.keys().map(|i| format!("e{i}")).collect();
    want_ids.sort();
    assert_eq!(got_ids, want_ids, "silver: each clean event once");

    // gold: events and value per hour and action
    let mut want_gold: BTreeMap<(i64, String), (i64, f64)> = BTreeMap::new();
    for (t, a, _, v, _) in want_silver.values() {
        let e = want_gold
            .entry((t - t.rem_euclid(3600), a.clone()))
            .or_default();
        e.0 += 1;
        e.1 += v;
    }
    let gold = gold_rows(&data.join("gold"));
    let want: Vec<String> = want_gold
        .iter()
        .map(|((w, a), (n, s))| format!("{w}|{a}|{n}|{s:?}"))
        .collect();
    assert_eq!(gold, want, "gold vs computed here");

    // the logs: one commit per batch carrying (query id, batch id), each batch id once
    for stage in STAGES {
        let id = query_id(&data.join("chk").join(stage));
        let commits = log(&data.join(stage));
        let mut versions: Vec<i64> = Vec::new();
        for (v, op, txns) in &commits {
            match op.as_str() {
                "CREATE TABLE" | "OPTIMIZE" => assert!(txns.is_empty(), "{stage} v{v}"),
                _ => {
                    assert_eq!(txns.len(), 1, "{stage} v{v} {op}: one txn per batch commit");
                    assert_eq!(txns[0].0, id, "{stage} v{v}: the app id is the query id");
                    versions.push(txns[0].1);
                }
            }
        }
        let n = versions.len() as i64;
        assert_eq!(
            versions,
            (0..n).collect::<Vec<_>>(),
            "{stage}: batches 0..{n} once each, in order"
        );
        assert!(
            n >= FILES as i64,
            "{stage}: at least one batch per raw file"
        );
    }
}

/// The data files of the table at its latest version (added and not removed), from the log.
fn active_files(path: &Path) -> BTreeSet<String> {
    let mut live = BTreeSet::new();
    let mut names: Vec<(u64, String)> = fs::read_dir(path.join("_delta_log"))
        .expect("log")
        .filter_map(|e| {
            let n = e.ok()?.file_name().to_string_lossy().into_owned();
            let v = n.strip_suffix(".json")?.parse().ok()?;
            Some((v, n))
        })
        .collect();
    names.sort();
    for (_, n) in names {
        let text = fs::read_to_string(path.join("_delta_log").join(n)).expect("commit");
        for line in text.lines() {
            let j: serde_json::Value = serde_json::from_str(line).expect("json");
            if let Some(p) = j.get("add").and_then(|a| a["path"].as_str()) {
                live.insert(p.to_string());
            }
            if let Some(p) = j.get("remove").and_then(|a| a["path"].as_str()) {
                live.remove(p);
            }
        }
    }
    live
}

/// Every `.parquet` file in the table directory, relative to it (the log's excepted).
fn parquet_files_on_disk(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                if !p.ends_with("_delta_log") {
                    walk(root, &p, out);
                }
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let rel = p.strip_prefix(root).expect("under the table");
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// A kill after a batch's Parquet file is written and before its commit (`mid-sink`) leaves a
/// file no commit references; when the batch runs again the sink removes it (from its journal
/// of written files), so a plain Parquet reader of the directory sees the table's rows only.
#[test]
fn a_killed_batchs_data_files_are_removed_when_it_runs_again() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(&input, "1.json", &ev("00:00:00", "click", 1, 1.0), 0);
    put_file(&input, "2.json", &ev("00:01:00", "view", 2, 2.0), 1);
    put_file(&input, "3.json", &ev("00:02:00", "buy", 3, 3.0), 2);
    let p = w.path().join("p.toml");
    fs::write(
        &p,
        format!(
            "[source.events]\nformat = \"json\"\npath = \"in\"\nschema = \"{SCHEMA}\"\n\
             options = {{ maxFilesPerTrigger = 1 }}\n\n[query.copy]\n\
             sql = \"SELECT * FROM events\"\ntrigger = \"available-now\"\n\
             checkpoint = \"chk\"\nsink = {{ format = \"delta\", path = \"table\" }}\n"
        ),
    )
    .expect("pipeline");
    let o = run_pipeline(&p, &[("SLUICE_CRASH_AT", "mid-sink@1")]);
    assert!(killed(&o), "{}", String::from_utf8_lossy(&o.stderr));
    let table = w.path().join("table");
    let orphans: Vec<String> = parquet_files_on_disk(&table)
        .difference(&active_files(&table))
        .cloned()
        .collect();
    assert_eq!(orphans.len(), 1, "the killed batch's file: {orphans:?}");
    let o = run_pipeline(&p, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        parquet_files_on_disk(&table),
        active_files(&table),
        "no file outside the table"
    );
    assert_eq!(rows(&table, &[]).len(), 3, "every row once");
}

/// `optimizeEvery = 3`: after batches 2 and 5 the sink compacts the table: an OPTIMIZE commit
/// that replaces the small files by one, with the rows unchanged.
#[test]
fn optimize_every_compacts_the_table_every_n_batches() {
    let w = workdir();
    let input = w.path().join("in");
    for i in 0..7u64 {
        put_file(
            &input,
            &format!("{i}.json"),
            &ev(&format!("00:0{i}:00"), "click", i as i64, i as f64),
            i,
        );
    }
    let table = w.path().join("t");
    let s = session();
    run_to_end(
        json_stream(&s, &input)
            .write_stream()
            .format("delta")
            .option("path", table.to_str().expect("p"))
            .option("optimizeEvery", 3)
            .checkpoint_location(w.path().join("chk"))
            .trigger(Trigger::AvailableNow)
            .start()
            .expect("start"),
    );
    let ops: Vec<String> = log(&table).into_iter().map(|(_, op, _)| op).collect();
    assert_eq!(
        ops.iter().filter(|o| o.as_str() == "OPTIMIZE").count(),
        2,
        "{ops:?}"
    );
    // CREATE, 3 writes, OPTIMIZE, 3 writes, OPTIMIZE, 1 write
    let optimize_at: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.as_str() == "OPTIMIZE")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(optimize_at, [4, 8], "{ops:?}");
    // 6 files compacted into one, plus the last batch's file
    assert_eq!(active_files(&table).len(), 2, "{ops:?}");
    assert_eq!(rows(&table, &[]).len(), 7);
    let users: BTreeSet<String> = rows(&table, &[])
        .iter()
        .map(|r| r.split('|').nth(2).expect("user").to_string())
        .collect();
    assert_eq!(users.len(), 7, "every row once: {users:?}");
}

/// Gold as `window_start_s|action|events|total_value` lines.
fn gold_rows(path: &Path) -> Vec<String> {
    let batches = read_table(path.to_str().expect("p")).expect("gold");
    let mut out = Vec::new();
    for b in &batches {
        let ws = b
            .column_by_name("window_start")
            .expect("ws")
            .as_primitive::<TimestampMicrosecondType>();
        let a = b.column_by_name("action").expect("a").as_string::<i32>();
        let n = b
            .column_by_name("events")
            .expect("n")
            .as_primitive::<Int64Type>();
        let s = b
            .column_by_name("total_value")
            .expect("s")
            .as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            out.push(format!(
                "{}|{}|{}|{:?}",
                ws.value(i) / 1_000_000,
                a.value(i),
                n.value(i),
                s.value(i)
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn tables_are_readable_by_an_independent_delta_reader() {
    let w = workdir();
    stage_raw(w.path());
    let p = medallion(w.path());
    for stage in STAGES {
        let o = run_pipeline_args(&p, &["--available-now", "--query", stage], &[]);
        assert!(
            o.status.success(),
            "{stage}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let gold = w.path().join("data/gold");
    let script = r#"
import os, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1])
rows = t.to_pyarrow_table().to_pylist()
for r in rows:
    print(f"{int(r['window_start'].timestamp())}|{r['action']}|{r['events']}|{r['total_value']!r}")
print("history", len(t.history()))
# deltalake 1.6.6 aborts at interpreter teardown about half the time
# ("terminate called without an active exception", after all output is
# printed): leave without the teardown once the output is flushed.
sys.stdout.flush()
os._exit(0)
"#;
    let o = std::process::Command::new(python())
        .args(["-c", script])
        .arg(&gold)
        .output()
        .unwrap_or_else(|e| panic!("run {} (scripts/test installs it): {e}", python()));
    assert!(
        o.status.success(),
        "python deltalake: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("history"))
        .map(str::to_string)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        gold_rows(&gold),
        "the Python reader sees what delta-rs sees"
    );
    let history: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("history "))
        .and_then(|n| n.parse().ok())
        .expect("history");
    assert_eq!(
        history,
        log(&gold).len(),
        "the Python reader sees every commit"
    );
}

fn session() -> Session {
    Session::builder().build().expect("session")
}

fn ev(t: &str, action: &str, user: i64, value: f64) -> String {
    format!("{{\"event_time\":\"2025-01-01T{t}Z\",\"action\":\"{action}\",\"user_id\":{user},\"value\":{value}}}\n")
}

const SCHEMA: &str = "event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE";

fn json_stream(s: &Session, dir: &Path) -> DataFrame {
    s.read_stream()
        .schema(SCHEMA)
        .option("maxFilesPerTrigger", 1)
        .json(dir.to_str().expect("p"))
        .expect("load")
}

fn run_to_end(q: sluice::StreamingQuery) {
    q.await_termination().expect("query");
}

#[test]
fn sink_modes_partitioning_schema_checks_and_history() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(
        &input,
        "1.json",
        &(ev("00:00:00", "click", 1, 1.0) + &ev("00:01:00", "view", 2, 2.0)),
        0,
    );
    put_file(
        &input,
        "2.json",
        &(ev("00:02:00", "click", 1, 3.0) + &ev("01:00:00", "buy", 3, 4.0)),
        1,
    );
    let s = session();

    // append, partitioned by action
    let events = w.path().join("events");
    run_to_end(
        json_stream(&s, &input)
            .write_stream()
            .format("delta")
            .option("path", events.to_str().expect("p"))
            .option("partitionBy", "action")
            .checkpoint_location(w.path().join("chk-append"))
            .trigger(Trigger::AvailableNow)
            .start()
            .expect("start"),
    );
    assert_eq!(
        rows(&events, &[]),
        [
            "2025-01-01T00:00:00Z|click|1|1.0",
            "2025-01-01T00:01:00Z|view|2|2.0",
            "2025-01-01T00:02:00Z|click|1|3.0",
            "2025-01-01T01:00:00Z|buy|3|4.0",
        ]
    );
    for part in ["action=click", "action=view", "action=buy"] {
        assert!(events.join(part).is_dir(), "{part} directory");
    }
    let ops: Vec<String> = log(&events).into_iter().map(|(_, op, _)| op).collect();
    assert_eq!(
        ops,
        ["CREATE TABLE", "WRITE", "WRITE"],
        "one commit per batch"
    );

    // complete: the table is overwritten by each batch's full result
    let totals = w.path().join("totals");
    run_to_end(
        json_stream(&s, &input)
            .group_by(vec![col("action")])
            .agg(vec![
                count(lit(1)).alias("n"),
                sum(col("value")).alias("total"),
            ])
            .expect("agg")
            .write_stream()
            .format("delta")
            .option("path", totals.to_str().expect("p"))
            .output_mode(OutputMode::Complete)
            .checkpoint_location(w.path().join("chk-complete"))
            .trigger(Trigger::AvailableNow)
            .start()
            .expect("start"),
    );
    assert_eq!(
        rows(&totals, &[]),
        ["buy|1|4.0", "click|2|4.0", "view|1|2.0"]
    );

    // update: MERGE on the grouping keys
    let merged = w.path().join("merged");
    run_to_end(
        json_stream(&s, &input)
            .group_by(vec![col("user_id")])
            .agg(vec![max(col("value")).alias("top")])
            .expect("agg")
            .write_stream()
            .format("delta")
            .option("path", merged.to_str().expect("p"))
            .output_mode(OutputMode::Update)
            .checkpoint_location(w.path().join("chk-update"))
            .trigger(Trigger::AvailableNow)
            .start()
            .expect("start"),
    );
    assert_eq!(rows(&merged, &[]), ["1|3.0", "2|2.0", "3|4.0"]);
    let ops: Vec<String> = log(&merged).into_iter().map(|(_, op, _)| op).collect();
    assert_eq!(ops, ["CREATE TABLE", "MERGE", "MERGE"]);

    // a stream with a column the table lacks: refused by name, accepted with mergeSchema
    let wider = |merge: bool, chk: &str| {
        json_stream(&s, &input)
            .with_column("score", col("value") * lit(10.0))
            .expect("col")
            .write_stream()
            .format("delta")
            .option("path", events.to_str().expect("p"))
            .option("mergeSchema", merge)
            .checkpoint_location(w.path().join(chk))
            .trigger(Trigger::AvailableNow)
            .start()
            .expect("start")
    };
    let err = wider(false, "chk-wide1")
        .await_termination()
        .expect_err("refused");
    assert!(
        err.to_string().contains("no column(s) score Float64"),
        "{err}"
    );
    assert!(err.to_string().contains("mergeSchema"), "{err}");
    run_to_end(wider(true, "chk-wide2"));
    let all = rows(&events, &[]);
    assert_eq!(all.len(), 8);
    // (the schema merge puts the partition column last)
    assert!(
        all.contains(&"2025-01-01T00:00:00Z|1|1.0|click|NULL".to_string()),
        "{all:?}"
    );
    assert!(
        all.contains(&"2025-01-01T00:00:00Z|1|1.0|click|10.0".to_string()),
        "{all:?}"
    );
}

/// The seed's query — a `window` struct among the grouping keys — into Delta in update mode:
/// MERGE matches on the struct's fields, and a NULL group key is one row updated in place, as
/// in Spark's result. Read back by the independent reader.
#[test]
fn update_mode_merges_on_a_window_struct_and_a_null_key() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(
        &input,
        "1.json",
        &(ev("00:00:00", "click", 1, 1.0) + &ev("00:10:00", "view", 2, 1.0)),
        0,
    );
    let no_action =
        |t: &str| format!("{{\"event_time\":\"2025-01-01T{t}Z\",\"user_id\":9,\"value\":1.0}}\n");
    put_file(
        &input,
        "2.json",
        &(ev("00:20:00", "click", 1, 1.0) + &no_action("00:30:00")),
        1,
    );
    put_file(
        &input,
        "3.json",
        &(no_action("00:40:00") + &ev("01:05:00", "click", 3, 1.0)),
        2,
    );
    let s = session();
    json_stream(&s, &input)
        .create_or_replace_temp_view("events")
        .expect("view");
    let table = w.path().join("counts");
    run_to_end(
        s.sql("SELECT action, window, count(*) AS n FROM events GROUP BY action, window(event_time, '1 hour')")
            .expect("sql")
            .write_stream()
            .format("delta")
            .option("path", table.to_str().expect("p"))
            .output_mode(OutputMode::Update)
            .checkpoint_location(w.path().join("chk"))
            .trigger(Trigger::AvailableNow)
            .start()
            .expect("start"),
    );
    let ops: Vec<String> = log(&table).into_iter().map(|(_, op, _)| op).collect();
    assert_eq!(ops, ["CREATE TABLE", "MERGE", "MERGE", "MERGE"]);
    let script = r#"
import os, sys
from deltalake import DeltaTable
for r in DeltaTable(sys.argv[1]).to_pyarrow_table().to_pylist():
    w = r['window']
    print(f"{w['start'].strftime('%H:%M')}-{w['end'].strftime('%H:%M')}|{r['action']}|{r['n']}")
sys.stdout.flush()
os._exit(0)
"#;
    let o = std::process::Command::new(python())
        .args(["-c", script])
        .arg(&table)
        .output()
        .unwrap_or_else(|e| panic!("run {} (scripts/test installs it): {e}", python()));
    assert!(
        o.status.success(),
        "python deltalake: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut got: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "00:00-01:00|None|2",
            "00:00-01:00|click|2",
            "00:00-01:00|view|1",
            "01:00-02:00|click|1",
        ]
    );
}

#[test]
fn source_reads_new_commits_with_limits_and_starting_version_and_refuses_rewrites() {
    let w = workdir();
    let input = w.path().join("in");
    for i in 0..4u64 {
        put_file(
            &input,
            &format!("{i}.json"),
            &ev(&format!("00:0{i}:00"), "click", i as i64, i as f64),
            i,
        );
    }
    let s = session();
    let table = w.path().join("t");
    let tpath = table.to_str().expect("p").to_string();
    run_to_end(
        json_stream(&s, &input)
            .write_stream()
            .format("delta")
            .option("path", &tpath)
            .checkpoint_location(w.path().join("chk-w"))
            .trigger(Trigger::AvailableNow)
            .start()
            .expect("start"),
    );
    // versions: 0 create, 1..4 one file each
    let read = |opts: &[(&str, &str)], name: &str| {
        let mut r = s.read_stream().format("delta");
        for (k, v) in opts {
            r = r.option(k, *v);
        }
        let q = r
            .load(&tpath)
            .expect("load")
            .write_stream()
            .format("memory")
            .query_name(name)
            .checkpoint_location(w.path().join(format!("chk-{name}")))
            .trigger(Trigger::AvailableNow)
            .start()
            .expect("start");
        let res = q.await_termination();
        let batches = q.recent_progress().len();
        (res, batches)
    };
    let users = |name: &str| {
        let b = s
            .sql(&format!("SELECT user_id FROM {name} ORDER BY user_id"))
            .expect("sql")
            .collect()
            .expect("collect");
        b.iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect::<Vec<i64>>()
    };
    let (res, batches) = read(&[("maxFilesPerTrigger", "1")], "all_rows");
    res.expect("read");
    assert_eq!(users("all_rows"), [0, 1, 2, 3]);
    assert_eq!(batches, 4, "one file per batch");
    let (res, _) = read(&[("startingVersion", "3")], "from_v3");
    res.expect("read");
    assert_eq!(users("from_v3"), [2, 3], "versions 3 and 4");

    // a stream copy of the table, then rewritten by an overwrite (as another writer would)
    let other = w.path().join("other");
    run_to_end(
        s.read_stream()
            .format("delta")
            .load(&tpath)
            .expect("load")
            .write_stream()
            .format("delta")
            .option("path", other.to_str().expect("p"))
            .checkpoint_location(w.path().join("chk-copy"))
            .trigger(Trigger::AvailableNow)
            .start()
            .expect("start"),
    );
    assert_eq!(rows(&other, &[]).len(), 4, "a stream copy of the table");
    let first_user;
    {
        use sluice::connectors::deltalake;
        let first = read_table(other.to_str().expect("p")).expect("read")[0].slice(0, 1);
        first_user = first
            .column_by_name("user_id")
            .expect("user_id")
            .as_primitive::<Int64Type>()
            .value(0);
        let rt = tokio::runtime::Runtime::new().expect("rt");
        rt.block_on(async {
            let url = deltalake::ensure_table_uri(other.to_str().expect("p")).expect("url");
            let t = deltalake::open_table(url).await.expect("open");
            t.write(vec![first])
                .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
                .await
                .expect("overwrite")
        });
    }
    let read_other = |opts: &[(&str, &str)], name: &str| {
        let mut r = s.read_stream().format("delta");
        for (k, v) in opts {
            r = r.option(k, *v);
        }
        r.load(other.to_str().expect("p"))
            .expect("load")
            .write_stream()
            .format("memory")
            .query_name(name)
            .checkpoint_location(w.path().join(format!("chk-{name}")))
            .trigger(Trigger::AvailableNow)
            .start()
            .expect("start")
            .await_termination()
    };
    let err = read_other(&[], "strict").expect_err("refused");
    assert!(
        err.to_string().contains("removes or rewrites data"),
        "{err}"
    );
    assert!(err.to_string().contains("skipChangeCommits"), "{err}");
    read_other(&[("skipChangeCommits", "true")], "skipping").expect("skips the rewrite");
    assert_eq!(users("skipping"), [0, 1, 2, 3]);
    // ignoreChanges (Spark's meaning): the rewrite's added file is read again
    read_other(&[("ignoreChanges", "true")], "changes").expect("reads the rewrite");
    let mut again = users("changes");
    again.sort();
    let mut want = vec![0, 1, 2, 3, first_user];
    want.sort();
    assert_eq!(
        again, want,
        "the four appends, then the rewritten table's one row"
    );
}

/// The medallion pipeline at the daemon's default log level: Sluice's own lines (batches, the
/// table it creates), not delta-rs's per-commit INFO chatter nor its ERROR on every new table.
#[test]
fn default_logs_carry_sluices_lines_not_delta_rs_chatter() {
    let w = workdir();
    stage_raw(w.path());
    let p = medallion(w.path());
    let o = std::process::Command::new(sluice_bin())
        .arg("run")
        .arg(&p)
        .arg("--available-now")
        .env_remove("SLUICE_LOG")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("batch committed"),
        "Sluice's own INFO lines: {err}"
    );
    assert!(err.contains("delta: creating table"), "{err}");
    assert!(!err.contains("No files in log segment"), "{err}");
    assert!(!err.contains("ERROR"), "no error in a clean run: {err}");
    for line in err.lines() {
        assert!(
            !line.contains(" deltalake")
                && !line.contains(" delta_kernel")
                && !line.contains("buoyant_kernel"),
            "a delta-rs line at the default level: {line}"
        );
    }
}
