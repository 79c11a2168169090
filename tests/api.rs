//! The Rust API end to end: the two-line pipeline, SQL over views, the memory and foreach_batch
//! sinks, the batch clock, malformed input in every mode, and the errors a user must get.

mod common;

use std::fs;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use common::*;
use sluice::prelude::*;

const SCHEMA: &str =
    "event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING";

fn session() -> Session {
    Session::builder()
        .app_name("test")
        .build()
        .expect("session")
}

fn event(ts: &str, action: &str, user: i64, value: f64) -> String {
    format!(
        "{{\"event_time\":\"{ts}\",\"action\":\"{action}\",\"user_id\":{user},\"value\":{value},\"country\":\"DE\"}}\n"
    )
}

fn user_ids(batches: &[RecordBatch], column: &str) -> Vec<i64> {
    let mut v: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            let c = b
                .column_by_name(column)
                .expect("column")
                .as_primitive::<Int64Type>()
                .clone();
            c.iter().flatten().collect::<Vec<_>>()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn two_line_pipeline_into_memory_table_queried_with_sql() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(
        &input,
        "a.json",
        &(event("2025-01-01T00:00:00Z", "click", 1, 150.0)
            + &event("2025-01-01T00:00:01Z", "view", 2, 10.0)),
        0,
    );
    put_file(
        &input,
        "b.json",
        &event("2025-01-01T00:00:02Z", "click", 3, 50.0),
        1,
    );
    let s = session();
    let events = s
        .read_stream()
        .schema(SCHEMA)
        .json(input.to_str().expect("path"))
        .expect("load");
    let q = events
        .filter(col("action").eq(lit("click")))
        .expect("filter")
        .write_stream()
        .format("memory")
        .query_name("clicks")
        .trigger(Trigger::AvailableNow)
        .start()
        .expect("start");
    q.await_termination().expect("done");
    let rows = s
        .sql("SELECT user_id FROM clicks")
        .expect("sql")
        .collect()
        .expect("collect");
    assert_eq!(user_ids(&rows, "user_id"), vec![1, 3]);
    let p = q.last_progress().expect("progress");
    assert_eq!(p.num_input_rows, 3);
    let json: serde_json::Value = serde_json::from_str(&p.json()).expect("json");
    for key in [
        "id",
        "runId",
        "name",
        "timestamp",
        "batchId",
        "numInputRows",
        "inputRowsPerSecond",
        "processedRowsPerSecond",
        "durationMs",
        "sources",
        "sink",
    ] {
        assert!(json.get(key).is_some(), "progress lacks {key}: {json}");
    }
    assert!(!q.is_active());
    assert_eq!(q.recent_progress().len(), 1);
    assert_eq!(q.status().message, "Stopped");
}

#[test]
fn sql_over_a_view_with_dataframe_columns_and_foreach_batch() {
    let w = workdir();
    let input = w.path().join("in");
    for i in 0..3 {
        put_file(
            &input,
            &format!("{i}.json"),
            &event("2025-01-01T00:00:00Z", "buy", i, i as f64 * 10.0),
            i as u64,
        );
    }
    let s = session();
    s.read_stream()
        .format("json")
        .schema(SCHEMA)
        .option("maxFilesPerTrigger", 1)
        .load(input.to_str().expect("path"))
        .expect("load")
        .with_column("double_value", col("value") * lit(2.0))
        .expect("with_column")
        .with_column_renamed("user_id", "uid")
        .expect("rename")
        .drop(&["country"])
        .expect("drop")
        .create_or_replace_temp_view("events")
        .expect("view");
    let df = s
        .sql("SELECT uid, double_value FROM events WHERE double_value >= 20")
        .expect("sql");
    type Seen = Vec<(u64, Vec<i64>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let seen2 = Arc::clone(&seen);
    let q = df
        .write_stream()
        .foreach_batch(move |id, batches| {
            seen2
                .lock()
                .expect("lock")
                .push((id, user_ids(batches, "uid")));
            Ok(())
        })
        .trigger(Trigger::AvailableNow)
        .start()
        .expect("start");
    q.await_termination().expect("done");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen, vec![(0, vec![]), (1, vec![1]), (2, vec![2])]);
}

#[test]
fn now_is_the_batch_timestamp_recorded_in_the_offsets_log_even_after_a_rerun() {
    let w = workdir();
    put_file(
        &w.path().join("in"),
        "a.json",
        &event("2025-01-01T00:00:00Z", "x", 1, 1.0),
        0,
    );
    let p = w.path().join("p.toml");
    fs::write(
        &p,
        format!(
            "[source.events]\nformat = \"json\"\npath = \"in\"\nschema = \"{SCHEMA}\"\n\n\
             [query.q]\nsql = \"SELECT user_id, now() AS t, current_timestamp() AS t2 FROM events\"\n\
             trigger = \"available-now\"\ncheckpoint = \"chk\"\nsink = {{ format = \"csv\", path = \"out\" }}\n"
        ),
    )
    .expect("write");
    let o = run_pipeline(&p, &[("SLUICE_CRASH_AT", "mid-sink@0")]);
    assert!(killed(&o));
    std::thread::sleep(Duration::from_millis(20)); // the re-run happens at a later wall-clock time
    let o = run_pipeline(&p, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let offsets = fs::read_to_string(w.path().join("chk/offsets/0")).expect("offsets");
    let entry: serde_json::Value =
        serde_json::from_str(offsets.lines().nth(1).expect("json")).expect("parse");
    let ms = entry["batchTimestampMs"].as_i64().expect("ts");
    let expected = chrono::DateTime::from_timestamp_millis(ms)
        .expect("ts")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    assert_eq!(
        committed_lines(&w.path().join("out"), false),
        vec![format!("1,{expected},{expected}")]
    );
}

#[test]
fn file_arrival_starts_a_batch_and_stop_finishes_cleanly() {
    let w = workdir();
    let input = w.path().join("in");
    fs::create_dir_all(&input).expect("mkdir");
    let s = session();
    let q = s
        .read_stream()
        .schema(SCHEMA)
        .json(input.to_str().expect("path"))
        .expect("load")
        .write_stream()
        .format("memory")
        .query_name("arrivals")
        .start()
        .expect("start");
    wait_until(
        "the query to wait for data",
        Duration::from_secs(30),
        || q.status().message == "Waiting for data to arrive",
    );
    assert!(q.last_progress().is_none());
    for i in 0..3 {
        put_file(
            &input,
            &format!("f{i}.json"),
            &event("2025-01-01T00:00:00Z", "a", i, 1.0),
            i as u64,
        );
        wait_until("the file's batch", Duration::from_secs(30), || {
            q.recent_progress()
                .iter()
                .map(|p| p.num_input_rows)
                .sum::<u64>()
                == i as u64 + 1
        });
    }
    // hidden and underscore files are ignored
    fs::write(input.join("_SUCCESS"), "x").expect("write");
    fs::write(input.join(".partial.json"), "{").expect("write");
    put_file(
        &input,
        "g.json",
        &event("2025-01-01T00:00:00Z", "a", 9, 1.0),
        9,
    );
    wait_until("the last batch", Duration::from_secs(30), || {
        q.recent_progress()
            .iter()
            .map(|p| p.num_input_rows)
            .sum::<u64>()
            == 4
    });
    q.stop();
    assert!(!q.is_active());
    assert!(q.exception().is_none());
    let rows = s
        .sql("SELECT user_id FROM arrivals")
        .expect("sql")
        .collect()
        .expect("collect");
    assert_eq!(user_ids(&rows, "user_id"), vec![0, 1, 2, 9]);
}

const MALFORMED_JSON: &str = "{\"user_id\": 1, \"value\": 1.5}\n{\"user_id\": 2, \"value\": \"abc\"}\nnot json at all\n{\"user_id\": 4, \"value\": 4.0}\n";
const MALFORMED_CSV: &str = "user_id,value\n1,1.5\n2,abc\n3,3.0,extra\n4,4.0\n";

fn read_mode(
    format: &str,
    content: &str,
    mode: &str,
    with_corrupt: bool,
) -> sluice::Result<Vec<RecordBatch>> {
    let w = workdir();
    let input = w.path().join("in");
    put_file(&input, &format!("data.{format}"), content, 0);
    let s = session();
    let schema = if with_corrupt {
        "user_id BIGINT, value DOUBLE, _corrupt_record STRING"
    } else {
        "user_id BIGINT, value DOUBLE"
    };
    let q = s
        .read_stream()
        .format(format)
        .schema(schema)
        .option("mode", mode)
        .option("header", "true")
        .load(input.to_str().expect("path"));
    let q = match format {
        "json" => s
            .read_stream()
            .format(format)
            .schema(schema)
            .option("mode", mode)
            .load(input.to_str().expect("path")),
        _ => q,
    }?
    .write_stream()
    .format("memory")
    .query_name("t")
    .trigger(Trigger::Once)
    .start()?;
    q.await_termination()
        .map_err(|e| sluice::EngineError::User(e.message))?;
    s.sql("SELECT * FROM t").expect("sql").collect()
}

#[test]
fn malformed_records_in_all_three_modes() {
    for (format, content, bad_line) in [("json", MALFORMED_JSON, 2), ("csv", MALFORMED_CSV, 3)] {
        // PERMISSIVE with a corrupt record column: every row kept, bad ones null with raw text
        let rows = read_mode(format, content, "PERMISSIVE", true).expect("permissive");
        let n: usize = rows.iter().map(|b| b.num_rows()).sum();
        assert_eq!(n, 4, "{format}");
        assert_eq!(user_ids(&rows, "user_id"), vec![1, 4], "{format}");
        let corrupt: Vec<String> = rows
            .iter()
            .flat_map(|b| {
                let c = b
                    .column_by_name("_corrupt_record")
                    .expect("c")
                    .as_string::<i32>()
                    .clone();
                c.iter().flatten().map(str::to_string).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(corrupt.len(), 2, "{format}: {corrupt:?}");
        assert!(
            corrupt.iter().any(|c| c.contains("abc")),
            "{format}: {corrupt:?}"
        );
        // PERMISSIVE without it: rows kept as nulls
        let rows = read_mode(format, content, "PERMISSIVE", false).expect("permissive");
        assert_eq!(
            rows.iter().map(|b| b.num_rows()).sum::<usize>(),
            4,
            "{format}"
        );
        // DROPMALFORMED
        let rows = read_mode(format, content, "DROPMALFORMED", false).expect("drop");
        assert_eq!(user_ids(&rows, "user_id"), vec![1, 4], "{format}");
        assert_eq!(
            rows.iter().map(|b| b.num_rows()).sum::<usize>(),
            2,
            "{format}"
        );
        // FAILFAST names the file and the line
        let err = read_mode(format, content, "FAILFAST", false)
            .expect_err("failfast")
            .to_string();
        assert!(
            err.contains(&format!("data.{format} line {bad_line}")),
            "{format}: {err}"
        );
    }
}

#[test]
fn user_errors_name_the_thing() {
    let w = workdir();
    let input = w.path().join("in");
    fs::create_dir_all(&input).expect("mkdir");
    let path = input.to_str().expect("path");
    let s = session();
    let err = s
        .read_stream()
        .json(path)
        .expect_err("no schema")
        .to_string();
    assert!(err.contains("needs a schema"), "{err}");
    let err = s
        .read_stream()
        .schema(SCHEMA)
        .option("maxFilesPerTrigge", 1)
        .json(path)
        .expect_err("typo")
        .to_string();
    assert!(err.contains("unknown option 'maxFilesPerTrigge'"), "{err}");
    let err = s
        .read_stream()
        .format("avro")
        .schema(SCHEMA)
        .load(path)
        .expect_err("format")
        .to_string();
    assert!(err.contains("unknown source format 'avro'"), "{err}");
    let err = s
        .read_stream()
        .schema("a STRNG")
        .json(path)
        .expect_err("ddl")
        .to_string();
    assert!(err.contains("unknown type STRNG"), "{err}");
    let err = s
        .read_stream()
        .schema(SCHEMA)
        .json(w.path().join("nope").to_str().expect("p"))
        .expect_err("missing")
        .to_string();
    assert!(err.contains("does not exist"), "{err}");

    let df = s.read_stream().schema(SCHEMA).json(path).expect("load");
    df.create_or_replace_temp_view("events").expect("view");
    for (sql, construct) in [
        (
            "SELECT DISTINCT ON (action) action FROM events",
            "DISTINCT ON",
        ),
        ("SELECT * FROM events ORDER BY value", "ORDER BY"),
        ("SELECT * FROM events LIMIT 3", "LIMIT"),
        (
            // an outer stream-stream join whose state nothing bounds (inner runs, as in Spark)
            "SELECT a.user_id FROM events a LEFT JOIN events b ON a.user_id = b.user_id",
            "LeftOuter join between two streaming DataFrame/Datasets is not supported without a watermark",
        ),
        (
            "SELECT user_id, row_number() OVER (ORDER BY value) FROM events",
            "window functions",
        ),
    ] {
        let err = s
            .sql(sql)
            .expect("plans")
            .write_stream()
            .format("console")
            .start()
            .expect_err(sql)
            .to_string();
        assert!(
            err.contains("unsupported construct") && err.contains(construct),
            "{sql}: {err}"
        );
    }
    let err = df
        .clone()
        .write_stream()
        .format("kafkaa")
        .start()
        .expect_err("sink")
        .to_string();
    assert!(err.contains("unknown sink format 'kafkaa'"), "{err}");
    let err = df
        .clone()
        .write_stream()
        .format("csv")
        .option("path", w.path().join("o").to_str().expect("p"))
        .checkpoint_location(w.path().join("c"))
        .output_mode(OutputMode::Update)
        .start()
        .expect_err("mode")
        .to_string();
    assert!(err.contains("does not support output mode update"), "{err}");
    let err = df
        .clone()
        .write_stream()
        .format("console")
        .output_mode(OutputMode::Complete)
        .start()
        .expect_err("complete")
        .to_string();
    assert!(err.contains("Complete output mode not supported"), "{err}");
    let err = df
        .clone()
        .write_stream()
        .format("csv")
        .option("path", "x")
        .start()
        .expect_err("chk")
        .to_string();
    assert!(err.contains("checkpointLocation"), "{err}");
    let err = df.clone().collect().expect_err("batch").to_string();
    assert!(err.contains("write_stream().start()"), "{err}");
    // a checkpoint that is not ours is refused, never silently restarted from zero
    let foreign = w.path().join("foreign");
    fs::create_dir_all(&foreign).expect("mkdir");
    fs::write(foreign.join("notes.txt"), "x").expect("write");
    let err = df
        .write_stream()
        .format("console")
        .checkpoint_location(&foreign)
        .start()
        .expect_err("foreign")
        .to_string();
    assert!(err.contains("not a Sluice checkpoint"), "{err}");
}

#[test]
fn csv_options_infer_schema_text_and_parquet_round_trip() {
    let w = workdir();
    let csv_in = w.path().join("csv");
    put_file(
        &csv_in,
        "a.csv",
        "id;name;ts\n1;NA;01/02/2025 10:00\n2;bob;02/02/2025 11:30\n",
        0,
    );
    let s = session();
    let q = s
        .read_stream()
        .format("csv")
        .schema("id BIGINT, name STRING, ts TIMESTAMP")
        .options([
            ("header", "true"),
            ("sep", ";"),
            ("nullValue", "NA"),
            ("timestampFormat", "dd/MM/yyyy HH:mm"),
        ])
        .load(csv_in.to_str().expect("p"))
        .expect("load")
        .write_stream()
        .format("parquet")
        .option("path", w.path().join("pq").to_str().expect("p"))
        .checkpoint_location(w.path().join("chk1"))
        .trigger(Trigger::AvailableNow)
        .start()
        .expect("start");
    q.await_termination().expect("done");
    // read the Parquet output back as a stream, schema taken from the files
    let q = s
        .read_stream()
        .parquet(w.path().join("pq").to_str().expect("p"))
        .expect("parquet schema")
        .write_stream()
        .format("memory")
        .query_name("back")
        .trigger(Trigger::AvailableNow)
        .start()
        .expect("start");
    q.await_termination().expect("done");
    let rows = s
        .sql("SELECT id, name, CAST(ts AS VARCHAR) AS ts FROM back ORDER BY id")
        .expect("sql")
        .collect()
        .expect("collect");
    let text = arrow::util::pretty::pretty_format_batches(&rows)
        .expect("fmt")
        .to_string();
    assert!(
        text.contains("| 1  |      | 2025-02-01T10:00:00Z"),
        "{text}"
    );
    assert!(
        text.contains("| 2  | bob  | 2025-02-02T11:30:00Z"),
        "{text}"
    );

    let json_in = w.path().join("json");
    put_file(&json_in, "a.json", "{\"k\": 1, \"s\": \"x\"}\n", 0);
    let df = s
        .read_stream()
        .option("inferSchema", true)
        .json(json_in.to_str().expect("p"))
        .expect("infer");
    assert_eq!(
        df.schema().field_with_name("k").expect("k").data_type(),
        &arrow::datatypes::DataType::Int64
    );

    let text_in = w.path().join("text");
    put_file(&text_in, "a.txt", "hello\r\nworld\n", 0);
    let q = s
        .read_stream()
        .text(text_in.to_str().expect("p"))
        .expect("text")
        .write_stream()
        .format("memory")
        .query_name("lines")
        .trigger(Trigger::Once)
        .start()
        .expect("start");
    q.await_termination().expect("done");
    let rows = s
        .sql("SELECT value FROM lines")
        .expect("sql")
        .collect()
        .expect("collect");
    let text = arrow::util::pretty::pretty_format_batches(&rows)
        .expect("fmt")
        .to_string();
    assert!(
        text.contains("| hello |") && text.contains("| world |"),
        "{text}"
    );
}

#[test]
fn clean_source_archives_only_committed_files_and_files_are_never_read_twice() {
    let w = workdir();
    let input = w.path().join("in");
    let archive = w.path().join("archive");
    for i in 0..3 {
        put_file(
            &input,
            &format!("{i}.json"),
            &event("2025-01-01T00:00:00Z", "a", i, 1.0),
            i as u64,
        );
    }
    let p = w.path().join("p.toml");
    fs::write(
        &p,
        format!(
            "[source.events]\nformat = \"json\"\npath = \"in\"\nschema = \"{SCHEMA}\"\n\
             options = {{ maxFilesPerTrigger = 1, cleanSource = \"archive\", sourceArchiveDir = \"{}\" }}\n\n\
             [query.q]\nsql = \"SELECT user_id FROM events\"\ntrigger = \"available-now\"\ncheckpoint = \"chk\"\n\
             sink = {{ format = \"csv\", path = \"out\" }}\n",
            archive.display()
        ),
    )
    .expect("write");
    // killed after batch 1's sink write: file 1 must still be in place for the re-run
    let o = run_pipeline(&p, &[("SLUICE_CRASH_AT", "after-sink@1")]);
    assert!(killed(&o));
    assert!(
        !input.join("0.json").exists(),
        "batch 0 was committed: its file is archived"
    );
    assert!(
        input.join("1.json").exists(),
        "batch 1 is not committed: its file stays"
    );
    let o = run_pipeline(&p, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::read_dir(&input).expect("ls").count(), 0);
    let archived = fs::read_dir(archive.join(input.strip_prefix("/").expect("abs")))
        .expect("archive")
        .count();
    assert_eq!(archived, 3);
    assert_eq!(
        sorted(committed_lines(&w.path().join("out"), false)),
        vec!["0", "1", "2"]
    );
    // a run over the same checkpoint with the files put back reads nothing again
    for i in 0..3 {
        put_file(
            &input,
            &format!("{i}.json"),
            &event("2025-01-01T00:00:00Z", "a", i, 1.0),
            i as u64,
        );
    }
    let o = run_pipeline(&p, &[]);
    assert!(o.status.success());
    assert_eq!(committed_lines(&w.path().join("out"), false).len(), 3);
}

#[test]
fn daemon_exit_codes() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(&input, "bad.json", "{\"user_id\": \"x\"}\n", 0);
    let write = |body: &str| {
        let p = w.path().join("p.toml");
        fs::write(&p, body).expect("write");
        p
    };
    let src = "[source.events]\nformat = \"json\"\npath = \"in\"\nschema = \"user_id BIGINT\"\n";
    // unknown option: a pipeline error before anything runs → 2
    let p = write(&format!("{src}options = {{ maxFilesPerTriggr = 1 }}\n[query.q]\nsql = \"SELECT * FROM events\"\nsink = {{ format = \"console\" }}\n"));
    let o = run_pipeline(&p, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("maxFilesPerTriggr"));
    // unknown key in the file → 2
    let p = write(&format!(
        "{src}[query.q]\nsql = \"SELECT * FROM events\"\nsinkk = {{ format = \"console\" }}\n"
    ));
    assert_eq!(run_pipeline(&p, &[]).status.code(), Some(2));
    // FAILFAST on bad data: the query fails for good → 1
    let p = write(&format!("{src}options = {{ mode = \"FAILFAST\" }}\n[query.q]\nsql = \"SELECT * FROM events\"\ntrigger = \"once\"\nsink = {{ format = \"console\" }}\n"));
    let o = run_pipeline(&p, &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.json line 1"));
    // --help documents the format
    let o = std::process::Command::new(sluice_bin())
        .args(["run", "--help"])
        .output()
        .expect("help");
    assert!(String::from_utf8_lossy(&o.stdout).contains("[source.events]"));
}

#[test]
fn polling_watch_mode_finds_new_files_too() {
    let w = workdir();
    let input = w.path().join("in");
    fs::create_dir_all(&input).expect("mkdir");
    let s = session();
    let q = s
        .read_stream()
        .schema(SCHEMA)
        .option("watchMode", "poll")
        .option("pollInterval", "50 milliseconds")
        .json(input.to_str().expect("path"))
        .expect("load")
        .write_stream()
        .format("memory")
        .query_name("polled")
        .start()
        .expect("start");
    wait_until("the query to wait", Duration::from_secs(30), || {
        q.status().message == "Waiting for data to arrive"
    });
    put_file(
        &input,
        "a.json",
        &event("2025-01-01T00:00:00Z", "a", 7, 1.0),
        0,
    );
    wait_until("the polled file's batch", Duration::from_secs(30), || {
        q.last_progress().is_some_and(|p| p.num_input_rows == 1)
    });
    q.stop();
    let rows = s
        .sql("SELECT user_id FROM polled")
        .expect("sql")
        .collect()
        .expect("collect");
    assert_eq!(user_ids(&rows, "user_id"), vec![7]);
    let err = s
        .read_stream()
        .schema(SCHEMA)
        .option("watchMode", "sometimes")
        .json(input.to_str().expect("path"))
        .expect("load")
        .write_stream()
        .format("console")
        .start()
        .expect_err("bad watch mode")
        .to_string();
    assert!(err.contains("watchMode"), "{err}");
}
