//! User values that must never panic nor run unbounded work: durations, DDL strings, window
//! arguments, option values (a seeded property test through the API and `sluice validate`),
//! and values refused with a message naming them (a watermark on a column that is not a
//! timestamp, a window that would put a row in too many windows, a type nested too deeply,
//! an event time outside Spark's range).

mod common;

use std::fs;
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

fn session() -> sluice::Session {
    sluice::Session::builder().build().expect("session")
}

#[test]
fn each_bad_value_is_refused_naming_it() {
    let w = workdir();
    let input = w.path().join("in");
    fs::create_dir_all(&input).expect("in");
    let s = session();
    let err = |r: sluice::Result<sluice::DataFrame>| -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    };
    // a watermark on a STRING column (Spark: event time must be a window or a timestamp)
    let e = err(s
        .read_stream()
        .schema("ts STRING, v INT")
        .json(input.to_str().expect("p"))
        .and_then(|df| df.with_watermark("ts", "1 minute")));
    assert!(
        e.contains("event time must be defined on a timestamp"),
        "{e}"
    );
    assert!(e.contains("'ts' is of type Utf8"), "{e}");
    // durations too long to compute with
    for (d, needle) in [
        ("99999999999999999999 seconds", "longer than 1000 years"),
        ("100000000000000 days", "longer than 1000 years"),
        ("1e308 days", "is not a duration"),
        ("NaN seconds", "is not a duration"),
    ] {
        let e = err(s
            .read_stream()
            .schema("ts TIMESTAMP")
            .json(input.to_str().expect("p"))
            .and_then(|df| df.with_watermark("ts", d)));
        assert!(e.contains(needle), "{d}: {e}");
        assert!(e.contains(d), "the value is named: {e}");
    }
    // a type nested too deeply
    let deep = format!("v {}INT{}", "ARRAY<".repeat(100), ">".repeat(100));
    let e = err(s
        .read_stream()
        .schema(deep.as_str())
        .json(input.to_str().expect("p")));
    assert!(e.contains("nest deeper than 64 levels"), "{e}");
    // a window putting each row in 604,800 windows
    s.read_stream()
        .schema("ts TIMESTAMP")
        .json(input.to_str().expect("p"))
        .and_then(|df| df.with_watermark("ts", "1 minute"))
        .and_then(|df| df.create_or_replace_temp_view("t").map(|_| df))
        .expect("view");
    let e = s
        .sql("SELECT count(*) FROM t GROUP BY window(ts, '7 days', '1 second')")
        .and_then(|q| {
            q.write_stream()
                .format("console")
                .trigger(sluice::Trigger::AvailableNow)
                .start()
                .map(|_| ())
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("604800 windows"), "{e}");
    assert!(e.contains("use a longer slide"), "{e}");
}

/// Two stateful operators in one query are the user's to change (a clear refusal), not an
/// internal error.
#[test]
fn chained_stateful_operators_outside_append_mode_are_refused_as_the_users() {
    let w = workdir();
    let input = w.path().join("in");
    fs::create_dir_all(&input).expect("in");
    let s = session();
    s.read_stream()
        .schema("ts TIMESTAMP, action STRING")
        .json(input.to_str().expect("p"))
        .and_then(|df| df.create_or_replace_temp_view("t").map(|_| df))
        .expect("view");
    for sql in [
        "SELECT count(*) AS n FROM (SELECT DISTINCT action FROM t)",
        "SELECT n, count(*) AS c FROM (SELECT action, count(*) AS n FROM t GROUP BY action) GROUP BY n",
        "SELECT DISTINCT n FROM (SELECT action, count(*) AS n FROM t GROUP BY action)",
    ] {
        let e = s
            .sql(sql)
            .and_then(|q| {
                q.write_stream()
                    .format("memory")
                    .query_name("two")
                    .output_mode(sluice::OutputMode::Complete)
                    .start()
                    .map(|_| ())
            })
            .expect_err(sql);
        assert_eq!(e.kind(), sluice::ErrorKind::User, "{sql}: {e}");
        assert!(
            e.to_string().contains("Multiple stateful operators")
                && e.to_string().contains("append mode only"),
            "{sql}: {e}"
        );
        // in append mode a chain runs, but an aggregation must close windows by a watermark
        let e = s
            .sql(sql)
            .and_then(|q| {
                q.write_stream()
                    .format("memory")
                    .query_name("two")
                    .output_mode(sluice::OutputMode::Append)
                    .start()
                    .map(|_| ())
            })
            .expect_err(sql);
        assert_eq!(e.kind(), sluice::ErrorKind::User, "{sql}: {e}");
        assert!(
            e.to_string().contains("Append output mode not supported"),
            "{sql}: {e}"
        );
    }
}

/// A JSON number far outside Spark's timestamp range (milliseconds written where seconds are
/// read: 3e11 s is the year 11476) is a malformed record, not a batch that fails for good: under
/// FAILFAST the error names the value and what to do; PERMISSIVE keeps the record in
/// `_corrupt_record` and the other rows go on.
#[test]
fn an_event_time_outside_sparks_range_is_a_malformed_record() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(
        &input,
        "a.json",
        "{\"ts\": \"2025-01-01T00:00:00Z\"}\n{\"ts\": 300000000000}\n",
        0,
    );
    let s = session();
    let run = |mode: &str, name: &str| {
        s.read_stream()
            .schema("ts TIMESTAMP, _corrupt_record STRING")
            .option("mode", mode)
            .json(input.to_str().expect("p"))
            .expect("load")
            .write_stream()
            .format("memory")
            .query_name(name)
            .trigger(sluice::Trigger::AvailableNow)
            .checkpoint_location(w.path().join(name))
            .start()
            .expect("start")
            .await_termination()
    };
    let e = run("FAILFAST", "strict").expect_err("failfast");
    assert_eq!(e.kind, sluice::ErrorKind::User, "{e}");
    assert!(e.message.contains("outside 0001-01-01..9999-12-31"), "{e}");
    assert!(e.message.contains("milliseconds"), "{e}");
    run("PERMISSIVE", "kept").expect("permissive");
    let b = s
        .sql("SELECT _corrupt_record FROM kept WHERE ts IS NULL")
        .expect("sql")
        .collect()
        .expect("collect");
    let text = sluice::arrow::util::pretty::pretty_format_batches(&b)
        .expect("fmt")
        .to_string();
    assert!(text.contains("300000000000"), "{text}");
}

/// A small xorshift generator for the property test below (seeded; SLUICE_TEST_SEED replays).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[(self.next() % v.len() as u64) as usize]
    }
    fn number(&mut self) -> String {
        match self.next() % 8 {
            0 => "99999999999999999999".into(),
            1 => format!("-{}", self.next() % 1000),
            2 => format!("{}.{}", self.next() % 100, self.next() % 1000),
            3 => "1e308".into(),
            4 => "0".into(),
            5 => "NaN".into(),
            6 => u64::MAX.to_string(),
            _ => (self.next() % 100_000).to_string(),
        }
    }
    fn duration(&mut self) -> String {
        let unit = self.pick(&[
            "seconds", "second", "ms", "minutes", "hours", "days", "weeks", "", "years", "µs", "h",
        ]);
        let n = self.number();
        match self.next() % 5 {
            0 => format!("{n} {unit} {} {unit}", self.number()),
            1 => format!("interval {n} {unit}"),
            2 => self.pick(&["", " ", "abc", "1 2 3", "--1 s"]).to_string(),
            _ => format!("{n} {unit}"),
        }
    }
    fn ddl(&mut self) -> String {
        let depth = (self.next() % 300) as usize;
        let inner = self.pick(&[
            "INT",
            "STRING",
            "DECIMAL(99, 3)",
            "DECIMAL(5, 9)",
            "x",
            "MAP<INT",
        ]);
        let wrap = self.pick(&["ARRAY<", "STRUCT<a: ", "MAP<STRING, "]);
        let mut t = String::new();
        for _ in 0..depth {
            t.push_str(wrap);
        }
        t.push_str(inner);
        for _ in 0..depth {
            t.push('>');
        }
        match self.next() % 4 {
            0 => format!("ts TIMESTAMP, v {t}"),
            1 => format!("ts TIMESTAMP, v {t}, v {t}"),
            2 => self
                .pick(&[
                    "",
                    ",",
                    "ts",
                    "ts TIMESTAMP,",
                    "`unterminated",
                    "ts TIMESTAMP NOT",
                    "a INT COMMENT",
                ])
                .to_string(),
            _ => format!(
                "ts TIMESTAMP, v {}",
                self.pick(&["INT", "STRING", "DOUBLE"])
            ),
        }
    }
}

/// Random option values, durations, DDL strings and window arguments through the API and
/// through `sluice validate`: each is accepted or refused with a message; nothing panics.
#[test]
fn random_user_values_never_panic() {
    let mut rng = Rng(test_seed() | 1);
    let w = workdir();
    fs::create_dir_all(w.path().join("in")).expect("in");
    let input = w.path().join("in");
    let s = sluice::Session::builder().build().expect("session");
    for case in 0..400 {
        let ddl = rng.ddl();
        let delay = rng.duration();
        let size = rng.duration();
        let slide = rng.duration();
        let trigger = rng.duration();
        let max_files = rng.number();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = sluice::EngineError::user("");
            let _ = sluice_engine::parse_duration(&delay);
            let _ = sluice_engine::parse_ddl_schema(&ddl);
            let df = s
                .read_stream()
                .schema(ddl.as_str())
                .option("maxFilesPerTrigger", &max_files)
                .json(input.to_str().expect("p"));
            let Ok(df) = df else { return };
            let Ok(df) = df.with_watermark("ts", &delay) else {
                return;
            };
            if df.create_or_replace_temp_view("fuzz").is_err() {
                return;
            }
            let sql = format!(
                "SELECT window.start AS ws, count(*) AS n FROM fuzz \
                 GROUP BY window(ts, '{size}', '{slide}')"
            );
            if let Ok(q) = s.sql(&sql) {
                let run = q
                    .write_stream()
                    .format("memory")
                    .query_name("fuzz_out")
                    .trigger(sluice::Trigger::AvailableNow)
                    .checkpoint_location(w.path().join(format!("chk-{case}")))
                    .start()
                    .map(|q| q.await_termination());
                if let Ok(Err(e)) = run {
                    // a panic on the query's thread is reported as a bug: never
                    assert_ne!(e.kind, sluice::ErrorKind::Bug, "{e}");
                }
            }
            let _ = trigger.parse::<sluice::Trigger>();
        }));
        assert!(
            outcome.is_ok(),
            "case {case} panicked: ddl {ddl:?}, delay {delay:?}, window ({size:?}, {slide:?}), \
             trigger {trigger:?}, maxFilesPerTrigger {max_files:?}"
        );
        if case % 20 == 0 {
            // the same values in a pipeline file, through `sluice validate`
            let p = w.path().join("fuzz.toml");
            let body = format!(
                "[source.events]\nformat = \"json\"\npath = \"in\"\nschema = {ddl:?}\n\
                 watermark = {{ column = \"ts\", delay = {delay:?} }}\n\
                 options = {{ maxFilesPerTrigger = {max_files:?} }}\n\n\
                 [query.q]\nsql = {sql:?}\ntrigger = {trigger:?}\ncheckpoint = \"chk\"\n\
                 sink = {{ format = \"console\" }}\n",
                sql = format!(
                    "SELECT window.start AS ws, count(*) AS n FROM events \
                     GROUP BY window(ts, '{size}', '{slide}')"
                )
            );
            fs::write(&p, body).expect("write");
            let o = sluice(&["validate", p.to_str().expect("p")]);
            let (_, err) = text(&o);
            assert!(
                matches!(o.status.code(), Some(0) | Some(2)),
                "validate case {case}: {:?}: {err}",
                o.status
            );
            assert!(!err.contains("panicked"), "validate case {case}: {err}");
        }
    }
}

/// A directory of every kind of bad input, read by the daemon into a JSON sink with a
/// `_corrupt_record` column: each value is in its column (coerced as Spark coerces), or its
/// whole record is in `_corrupt_record` and counted and logged — nothing disappears.
/// (Files written in place slowly, grown after their batch, or deleted after it: see
/// tests/triggers.rs.)
#[test]
fn every_bad_input_lands_somewhere_visible() {
    let w = workdir();
    let input = w.path().join("in");
    fs::create_dir_all(&input).expect("in");
    let put_bytes = |name: &str, bytes: &[u8], seq: u64| {
        let tmp = input.join(format!(".{name}"));
        fs::write(&tmp, bytes).expect("write");
        let f = fs::File::options().write(true).open(&tmp).expect("open");
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + seq))
            .expect("mtime");
        fs::rename(&tmp, input.join(name)).expect("rename");
    };
    put_bytes(
        "bom.json",
        b"\xEF\xBB\xBF{\"time\":\"2025-01-01T00:00:00Z\",\"action\":\"bom\"}\n",
        0,
    );
    put_bytes(
        "latin1.json",
        b"{\"time\":\"2025-01-01T00:00:01Z\",\"action\":\"caf\xe9\"}\n",
        1,
    );
    put_bytes(
        "types.json",
        b"{\"time\":\"2025-01-01T00:00:02Z\",\"action\":123}\n\
          {\"time\":\"2025-01-01T00:00:03Z\",\"action\":true}\n\
          {\"time\":\"2025-01-01T00:00:04Z\",\"action\":[\"x\"]}\n",
        2,
    );
    put_bytes(
        "epoch.json",
        b"{\"time\":1469501107,\"action\":\"Open\"}\n\
          {\"time\":\"1469501107\",\"action\":\"quoted\"}\n",
        3,
    );
    put_bytes(
        "broken.json",
        b"{\"time\":\"2025-01-01T00:00:05Z\",\"action\":\"ok\"}\nnot json at all\n",
        4,
    );
    let p = w.path().join("p.toml");
    fs::write(
        &p,
        r#"[source.events]
format = "json"
path = "in"
schema = "time TIMESTAMP, action STRING, _corrupt_record STRING"

[query.q]
sql = "SELECT time, action, _corrupt_record FROM events"
trigger = "available-now"
checkpoint = "chk"
sink = { format = "json", path = "out" }
progress_log = "progress.jsonl"
"#,
    )
    .expect("pipeline");
    let o = Command::new(sluice_bin())
        .arg("run")
        .arg(&p)
        .env("SLUICE_LOG", "warn")
        .output()
        .expect("run");
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let rows: Vec<serde_json::Value> = committed_lines(&w.path().join("out"), false)
        .iter()
        .map(|l| serde_json::from_str(l).expect("json row"))
        .collect();
    let by_action = |a: &str| rows.iter().find(|r| r["action"] == a).cloned();
    // coerced or cleaned as Spark does: into their columns
    assert!(by_action("bom").is_some(), "a BOM is ignored: {rows:?}");
    assert!(
        by_action("123").is_some(),
        "a number into a STRING keeps its text: {rows:?}"
    );
    assert!(
        by_action("true").is_some(),
        "a boolean into a STRING keeps its text: {rows:?}"
    );
    let open = by_action("Open").expect("epoch row");
    assert_eq!(
        open["time"], "2016-07-26T02:45:07.000Z",
        "epoch seconds: {open}"
    );
    assert!(by_action("ok").is_some());
    // malformed: whole record in _corrupt_record
    let corrupt: Vec<String> = rows
        .iter()
        .filter_map(|r| r["_corrupt_record"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        corrupt.len(),
        4,
        "latin-1, an array into a string, a quoted number into a timestamp, not JSON: {rows:?}"
    );
    assert!(
        corrupt.iter().any(|c| c.contains("\"quoted\"")),
        "a quoted number is not a timestamp (Spark): {corrupt:?}"
    );
    assert!(corrupt.iter().any(|c| c.contains("caf")), "{corrupt:?}");
    assert!(corrupt.iter().any(|c| c.contains("[\"x\"]")), "{corrupt:?}");
    assert!(
        corrupt.iter().any(|c| c == "not json at all"),
        "{corrupt:?}"
    );
    assert_eq!(
        rows.len(),
        9,
        "every input record (9 lines in 5 files) is a row: {rows:?}"
    );
    // counted in progress, logged with the file and line
    let progress = fs::read_to_string(w.path().join("progress.jsonl")).expect("progress");
    let malformed: u64 = progress
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .flat_map(|p| {
            p["sources"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|s| {
                    s["metrics"]["numMalformedRecords"]
                        .as_str()
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                })
        })
        .sum();
    assert_eq!(malformed, 4, "{progress}");
    for (file, line) in [
        ("latin1.json", 1),
        ("types.json", 3),
        ("epoch.json", 2),
        ("broken.json", 2),
    ] {
        assert!(
            err.contains(&format!("{file} line {line}")),
            "a log line names {file} line {line}: {err}"
        );
    }
}

/// Session settings: Sluice's own (`sluice.retry.*`) and Spark's are taken, anything else is
/// refused naming the key — never a panic (an unknown DataFusion key used to panic in the
/// builder).
#[test]
fn session_settings_are_taken_or_refused_by_name() {
    let s = sluice::Session::builder()
        .config("sluice.retry.maxRetries", "2")
        .config("datafusion.execution.batch_size", "4096")
        .build()
        .expect("known settings");
    assert_eq!(s.conf("sluice.retry.maxRetries").as_deref(), Some("2"));
    for bad in [
        "nonsense.key",
        "datafusion.execution.nope",
        "sluice.retry.nope",
        "spark.sql.nope",
    ] {
        let e = sluice::Session::builder()
            .config(bad, "1")
            .build()
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"))
            .to_string();
        assert!(e.contains(bad), "{e}");
    }
}

/// librdkafka settings Sluice owns are refused with the reason, whatever the prefix's case —
/// not silently overwritten.
#[cfg(feature = "kafka")]
#[test]
fn kafka_settings_sluice_owns_are_refused_with_the_reason() {
    let s = session();
    for (key, why) in [
        ("kafka.auto.offset.reset", "use startingOffsets"),
        ("Kafka.enable.auto.commit", "kept in the checkpoint"),
    ] {
        let e = s
            .read_stream()
            .format("kafka")
            .option("kafka.bootstrap.servers", "127.0.0.1:9")
            .option("subscribe", "t")
            .option(key, "x")
            .load_default()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(key) && e.contains(why), "{key}: {e}");
    }
}

/// Options that used to be accepted and then had no effect are refused, naming the option.
#[test]
fn options_without_effect_are_refused_by_name() {
    let w = workdir();
    let input = w.path().join("in");
    fs::create_dir_all(&input).expect("in");
    let s = session();
    let df = || {
        s.read_stream()
            .schema("a BIGINT")
            .json(input.to_str().expect("p"))
            .expect("load")
    };
    let start_err = |r: sluice::Result<sluice::StreamingQuery>| -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    };
    // the csv sink's separator is one character, as the csv source's
    let e = start_err(
        df().write_stream()
            .format("csv")
            .option("path", w.path().join("o").to_str().expect("p"))
            .option("sep", "ab")
            .checkpoint_location(w.path().join("c1"))
            .start(),
    );
    assert!(e.contains("option 'sep' must be a single character"), "{e}");
    // a file source flag is checked whether or not it is used
    let e = s
        .read_stream()
        .schema("a BIGINT")
        .option("mergeSchema", "banana")
        .parquet(input.to_str().expect("p"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("mergeSchema"), "{e}");
    #[cfg(feature = "jdbc")]
    {
        let e = start_err(
            df().write_stream()
                .format("jdbc")
                .option("url", "jdbc:postgresql://127.0.0.1:9/db")
                .option("dbtable", "t")
                .option("driver", "com.mysql.cj.jdbc.Driver")
                .checkpoint_location(w.path().join("c2"))
                .start(),
        );
        assert!(e.contains("option 'driver'"), "{e}");
    }
    #[cfg(feature = "kafka")]
    {
        let kafka = |opts: &[(&str, &str)], schema: Option<&str>| -> String {
            let mut r = s
                .read_stream()
                .format("kafka")
                .option("kafka.bootstrap.servers", "127.0.0.1:9")
                .option("subscribe", "t");
            if let Some(sc) = schema {
                r = r.schema(sc);
            }
            for (k, v) in opts {
                r = r.option(k, *v);
            }
            r.load_default()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = kafka(&[("mode", "FAILFAST")], None);
        assert!(
            e.contains("option 'mode' applies to values parsed with a schema"),
            "{e}"
        );
        let e = kafka(&[("includeHeaders", "true")], Some("n BIGINT"));
        assert!(e.contains("includeHeaders with a value schema"), "{e}");
    }
}

/// Parquet's `mergeSchema` (Spark's meaning): the union of the columns of every file present,
/// instead of the first file's.
#[test]
fn parquet_merge_schema_takes_the_union_of_the_files_columns() {
    use std::sync::Arc;

    use parquet::arrow::ArrowWriter;
    use sluice::arrow::array::{ArrayRef, Int64Array, StringArray};
    use sluice::arrow::record_batch::RecordBatch;

    let w = workdir();
    let input = w.path().join("in");
    fs::create_dir_all(&input).expect("in");
    let write = |name: &str, batch: RecordBatch, seq: u64| {
        let tmp = input.join(format!(".{name}"));
        let f = fs::File::create(&tmp).expect("create");
        let mut wr = ArrowWriter::try_new(f, batch.schema(), None).expect("writer");
        wr.write(&batch).expect("write");
        wr.close().expect("close");
        let f = fs::File::options().write(true).open(&tmp).expect("open");
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + seq))
            .expect("mtime");
        fs::rename(&tmp, input.join(name)).expect("rename");
    };
    let a: ArrayRef = Arc::new(Int64Array::from(vec![1]));
    let b: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
    write(
        "1.parquet",
        RecordBatch::try_from_iter([("a", a.clone())]).expect("batch"),
        0,
    );
    write(
        "2.parquet",
        RecordBatch::try_from_iter([("a", a), ("b", b)]).expect("batch"),
        1,
    );
    let s = session();
    let names = |merge: bool| -> Vec<String> {
        s.read_stream()
            .option("mergeSchema", merge.to_string())
            .parquet(input.to_str().expect("p"))
            .expect("load")
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    };
    assert_eq!(names(false), ["a"], "the first file's columns");
    assert_eq!(names(true), ["a", "b"], "every file's columns");
}
