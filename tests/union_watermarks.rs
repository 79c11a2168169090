//! Two watermarked streams in one query (UNION ALL) and the multiple-watermark policy: each
//! input keeps its own watermark (max event time − delay); the query's watermark is the
//! minimum of them by default (`min`: the slower input's rows are never late because of the
//! faster one) or their maximum (`max`). Expected rows are worked out by hand below from
//! Spark's rules; each case also runs killed with SIGKILL at random crash points and restarted.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// Event times (minutes:seconds after 2026-01-01T00:00:00Z) of each file of sources a and b;
/// with maxFilesPerTrigger = 1 batch k reads file k of both.
const A: [&str; 5] = ["00:10", "10:00", "10:30", "11:10", "20:00"];
const B: [&str; 5] = ["00:30", "05:30", "07:10", "07:20", "08:30"];

fn ts(ms: &str) -> String {
    format!("2026-01-01T00:{ms}.000Z")
}

fn stage(dir: &Path, policy: &str) -> std::path::PathBuf {
    stage_files(dir, &A, &B, policy)
}

fn stage_files(dir: &Path, a: &[&str], b: &[&str], policy: &str) -> std::path::PathBuf {
    for (src, times) in [("a", a), ("b", b)] {
        for (i, t) in times.iter().enumerate() {
            put_file(
                &dir.join(src),
                &format!("{src}{i}.json"),
                &format!("{{\"event_time\":\"{}\",\"src\":\"{src}\"}}\n", ts(t)),
                i as u64,
            );
        }
    }
    write_pipeline(dir, policy)
}

/// `policy`: the pipeline's `watermark_policy`, none if empty.
fn write_pipeline(dir: &Path, policy: &str) -> std::path::PathBuf {
    let p = dir.join("pipeline.toml");
    let policy_line = if policy.is_empty() {
        String::new()
    } else {
        format!("watermark_policy = \"{policy}\"")
    };
    fs::write(
        &p,
        format!(
            r#"
[source.a]
format = "json"
path = "a"
schema = "event_time TIMESTAMP, src STRING"
watermark = {{ column = "event_time", delay = "1 minute" }}
options = {{ maxFilesPerTrigger = 1 }}

[source.b]
format = "json"
path = "b"
schema = "event_time TIMESTAMP, src STRING"
watermark = {{ column = "event_time", delay = "1 minute" }}
options = {{ maxFilesPerTrigger = 1 }}

[query.both]
sql = """
SELECT window.start AS window_start, window.end AS window_end, count(*) AS n
FROM (SELECT event_time, src FROM a UNION ALL SELECT event_time, src FROM b) AS u
GROUP BY window(event_time, '1 minute')
"""
output_mode = "append"
trigger = "available-now"
checkpoint = "chk"
sink = {{ format = "csv", path = "out" }}
late_data_sink = {{ format = "json", path = "late" }}
progress_log = "progress.jsonl"
{policy_line}
"#
        ),
    )
    .expect("pipeline");
    p
}

fn row(start: &str, end: &str, n: u64) -> String {
    format!("{},{},{n}", ts(start), ts(end))
}

/// min: the query's watermark follows b (the slower input): after batch k it is
/// b's max − 1 min = 04:30, 06:10, 06:20, 07:30; nothing is late, and only the windows
/// ending at or before 07:30 are final: [00:00, 00:01) with a0 and b0, [00:05, 00:06) with b1.
fn expected_min() -> Vec<String> {
    sorted(vec![row("00:00", "01:00", 2), row("05:00", "06:00", 1)])
}

/// max: the watermark follows a: 09:00 after batch 1, 09:30 after batch 2, 10:10 after 3,
/// 19:00 after 4. Batch 2 (watermark 09:00) closes [00:00,00:01), [00:05,00:06) and
/// [00:07,00:08) with b2; b3 (window end 00:08 ≤ 09:00, batch 2's watermark) and b4 (end 00:09
/// ≤ 09:30) are late; the no-data batch at 19:00 closes [00:10,00:11) (a1, a2) and
/// [00:11,00:12) (a3).
fn expected_max() -> Vec<String> {
    sorted(vec![
        row("00:00", "01:00", 2),
        row("05:00", "06:00", 1),
        row("07:00", "08:00", 1),
        row("10:00", "11:00", 2),
        row("11:00", "12:00", 1),
    ])
}

/// Event times of the late rows (the late-data sink gets them whole).
fn late_times(dir: &Path) -> Vec<String> {
    let late = dir.join("late");
    if !late.exists() {
        return Vec::new();
    }
    sorted(
        committed_lines(&late, false)
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("late row JSON");
                v["event_time"].as_str().unwrap_or("").to_string()
            })
            .collect(),
    )
}

fn progress(dir: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(dir.join("progress.jsonl"))
        .expect("progress log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("progress JSON"))
        .collect()
}

fn run_ok(p: &Path) {
    let o = run_pipeline(p, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn min_policy_by_default_holds_the_watermark_at_the_slower_input() {
    let w = workdir();
    // no watermark_policy: Spark's default, min
    let p = stage(w.path(), "");
    run_ok(&p);
    assert_eq!(
        sorted(committed_lines(&w.path().join("out"), false)),
        expected_min()
    );
    assert!(late_times(w.path()).is_empty());
    let prog = progress(w.path());
    let dropped: u64 = prog
        .iter()
        .map(|p| {
            p["stateOperators"][0]["numRowsDroppedByWatermark"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(dropped, 0);
    // the watermarks the batches ran with: 0, then after batch 0 the smaller of
    // 00:10 − 1 min and 00:30 − 1 min (2025-12-31T23:59:10), 04:30, 06:10, 06:20, then a
    // no-data batch at 07:30
    let wms: Vec<String> = prog
        .iter()
        .map(|p| {
            p["eventTime"]["watermark"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let epoch = "1970-01-01T00:00:00.000Z".to_string();
    assert_eq!(
        wms,
        vec![
            epoch,
            "2025-12-31T23:59:10.000Z".to_string(),
            ts("04:30"),
            ts("06:10"),
            ts("06:20"),
            ts("07:30")
        ]
    );
    // event-time statistics of batch 1, as Spark reports them: those of the first watermark
    // operator with rows (a's: 10:00)
    assert_eq!(prog[1]["eventTime"]["min"], ts("10:00"));
    assert_eq!(prog[1]["eventTime"]["max"], ts("10:00"));
    assert_eq!(prog[1]["eventTime"]["avg"], ts("10:00"));
    assert!(prog[5]["eventTime"].get("min").is_none(), "no-data batch");
    // the policy is recorded with the offsets (a restart keeps it)
    let offsets = fs::read_to_string(w.path().join("chk/offsets/0")).expect("offsets/0");
    assert!(
        offsets.contains(r#""spark.sql.streaming.multipleWatermarkPolicy":"min""#),
        "{offsets}"
    );
}

#[test]
fn max_policy_follows_the_faster_input_and_the_slower_ones_rows_are_late() {
    let w = workdir();
    let p = stage(w.path(), "max");
    run_ok(&p);
    assert_eq!(
        sorted(committed_lines(&w.path().join("out"), false)),
        expected_max()
    );
    assert_eq!(late_times(w.path()), vec![ts("07:20"), ts("08:30")]);
    let dropped: u64 = progress(w.path())
        .iter()
        .map(|p| {
            p["stateOperators"][0]["numRowsDroppedByWatermark"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(dropped, 2);
}

#[test]
fn both_policies_killed_and_restarted_give_the_same_rows() {
    let points = ["after-offsets", "after-sink", "after-state", "after-commit"];
    for (policy, expected) in [("min", expected_min()), ("max", expected_max())] {
        let w = workdir();
        let p = stage(w.path(), policy);
        // random points, plus the middle of batch 2's sink write (both policies write rows then)
        let batch_of = |c: &String| -> u64 {
            c.rsplit('@')
                .next()
                .and_then(|b| b.parse().ok())
                .unwrap_or(0)
        };
        let mut crashes: Vec<String> = random_crash_points(3, 6, &points)
            .into_iter()
            .filter(|c| batch_of(c) != 2)
            .collect();
        crashes.push("mid-sink@2".to_string());
        crashes.sort_by_key(batch_of);
        run_killed(&p, &[], &crashes);
        assert_eq!(
            sorted(committed_lines(&w.path().join("out"), false)),
            expected,
            "{policy}"
        );
        assert_eq!(
            sorted(visible_lines(&w.path().join("out"), false)),
            expected,
            "{policy}: visible files"
        );
    }
}

#[test]
fn a_restart_keeps_the_policy_the_checkpoint_was_written_with() {
    let w = workdir();
    let p = stage(w.path(), "max");
    let o = run_pipeline(&p, &[("SLUICE_CRASH_AT", "after-commit@2")]);
    assert!(killed(&o), "{}", String::from_utf8_lossy(&o.stderr));
    // the pipeline now asks for min; the checkpoint says max, and max it stays
    write_pipeline(w.path(), "min");
    run_ok(&p);
    assert_eq!(
        sorted(committed_lines(&w.path().join("out"), false)),
        expected_max()
    );
}

#[test]
fn stateless_union_of_two_streams_in_the_dataframe_api() {
    use sluice::prelude::*;
    let w = workdir();
    stage(w.path(), "min");
    let session = Session::builder().build().expect("session");
    let read = |d: &str| {
        session
            .read_stream()
            .schema("event_time TIMESTAMP, src STRING")
            .json(w.path().join(d).to_str().expect("path"))
            .expect("stream")
    };
    let rows = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink_rows = std::sync::Arc::clone(&rows);
    let q = read("a")
        .union(read("b"))
        .expect("union")
        .filter(col("event_time").gt_eq(cast(
            lit("2026-01-01T00:07:00Z"),
            sluice::datafusion::arrow::datatypes::DataType::Timestamp(
                sluice::datafusion::arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into()),
            ),
        )))
        .expect("filter")
        .write_stream()
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(w.path().join("chk"))
        .foreach_batch(move |_, batches| {
            for b in batches {
                let src = b
                    .column_by_name("src")
                    .expect("src")
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .expect("utf8")
                    .clone();
                let mut g = sink_rows.lock().expect("lock");
                g.extend(src.iter().map(|s| s.unwrap_or("").to_string()));
            }
            Ok(())
        })
        .start()
        .expect("start");
    q.await_termination().expect("run");
    let mut got = rows.lock().expect("lock").clone();
    got.sort();
    // a: 10:00, 10:30, 11:10, 20:00; b: 07:10, 07:20, 08:30
    assert_eq!(got, vec!["a", "a", "a", "a", "b", "b", "b"]);
    // both sources are in the offsets log
    let offsets = fs::read_to_string(w.path().join("chk/offsets/0")).expect("offsets/0");
    assert_eq!(offsets.matches("logOffset").count(), 2, "{offsets}");
}

/// b runs ahead, then goes quiet: under `min` the query's watermark follows a (b's own watermark
/// stays where it was). Each input's watermark is kept in the commit log, so a restart in the
/// middle continues the same way (Spark forgets them on restart and would hold the watermark
/// at 0 until b sent data again).
#[test]
fn a_silent_input_keeps_its_watermark_across_a_restart() {
    let a = ["00:10", "01:00", "03:00", "05:00", "07:00"];
    let b = ["00:30", "09:00"];
    // watermark after batch 1: min(00:00, 08:00) = 00:00; then a alone: 02:00, 04:00, 06:00.
    // Closed at 06:00: [00:00,00:01) with a0 and b0, [00:01,00:02), [00:03,00:04), [00:05,00:06)
    let expected = sorted(vec![
        row("00:00", "01:00", 2),
        row("01:00", "02:00", 1),
        row("03:00", "04:00", 1),
        row("05:00", "06:00", 1),
    ]);
    let w = workdir();
    let p = stage_files(w.path(), &a, &b, "min");
    run_ok(&p);
    assert_eq!(
        sorted(committed_lines(&w.path().join("out"), false)),
        expected
    );
    for at in ["after-commit@1", "after-offsets@2", "after-commit@3"] {
        let w = workdir();
        let p = stage_files(w.path(), &a, &b, "min");
        let o = run_pipeline(&p, &[("SLUICE_CRASH_AT", at)]);
        assert!(killed(&o), "{at}: {}", String::from_utf8_lossy(&o.stderr));
        run_ok(&p);
        assert_eq!(
            sorted(committed_lines(&w.path().join("out"), false)),
            expected,
            "killed at {at}"
        );
    }
}

#[test]
fn a_stream_read_above_the_aggregation_is_refused() {
    let w = workdir();
    stage(w.path(), "min");
    let session = sluice::Session::builder().build().expect("session");
    for name in ["a", "b"] {
        session
            .read_stream()
            .schema("event_time TIMESTAMP, src STRING")
            .json(w.path().join(name).to_str().expect("path"))
            .expect("stream")
            .create_or_replace_temp_view(name)
            .expect("view");
    }
    let err = session
        .sql(
            "SELECT src, count(*) AS n FROM a GROUP BY src \
             UNION ALL SELECT src, CAST(1 AS BIGINT) AS n FROM b",
        )
        .expect("sql")
        .write_stream()
        .format("console")
        .output_mode(sluice::OutputMode::Update)
        .start()
        .expect_err("a stream above an aggregation")
        .to_string();
    assert!(err.contains("above a stateful operator"), "{err}");
}
