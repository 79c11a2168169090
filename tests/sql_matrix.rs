//! Stateful SQL beyond the golden query: aliases, reordered GROUP BY, HAVING, sliding windows,
//! a CTE over the stream, a filter on the window column, and the DataFrame API's group_by/agg.
//! Complete mode into a memory table; expected rows are worked out by hand in the comments and
//! compared as Arrow values (each expected cell is parsed into its column's type; `NULL` is a
//! null), so a null or a wrong type cannot hide in a printed table.

mod common;

use common::*;
use sluice::datafusion::scalar::ScalarValue;
use sluice::prelude::*;

const EVENTS: &str = "\
{\"event_time\":\"2025-01-01T00:00:10Z\",\"action\":\"a\",\"value\":1.0}
{\"event_time\":\"2025-01-01T00:00:50Z\",\"action\":\"b\",\"value\":2.0}
{\"event_time\":\"2025-01-01T00:01:10Z\",\"action\":\"a\",\"value\":4.0}
{\"event_time\":\"2025-01-01T00:01:20Z\",\"action\":\"a\",\"value\":8.0}
{\"event_time\":\"2025-01-01T00:02:30Z\",\"action\":\"b\",\"value\":16.0}
";

fn run(sql: &str, order_by: &str) -> Rows {
    let w = workdir();
    let input = w.path().join("in");
    // two files, so that state is merged across batches
    let (first, second) = EVENTS.split_at(
        EVENTS
            .find("{\"event_time\":\"2025-01-01T00:01:20Z\"")
            .expect("split"),
    );
    put_file(&input, "1.json", first, 0);
    put_file(&input, "2.json", second, 1);
    let s = Session::builder().build().expect("session");
    s.read_stream()
        .schema("event_time TIMESTAMP, action STRING, value DOUBLE")
        .option("maxFilesPerTrigger", 1)
        .json(input.to_str().expect("p"))
        .expect("load")
        .create_or_replace_temp_view("events")
        .expect("view");
    let q = s
        .sql(sql)
        .expect("sql")
        .write_stream()
        .format("memory")
        .query_name("result")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(w.path().join("chk"))
        .start()
        .expect("start");
    q.await_termination().expect("done");
    table_rows(&s, &format!("SELECT * FROM result ORDER BY {order_by}"))
}

/// The rows of a query over the memory tables, each cell as an Arrow scalar.
struct Rows {
    schema: arrow::datatypes::SchemaRef,
    rows: Vec<Vec<ScalarValue>>,
}

fn table_rows(s: &Session, sql: &str) -> Rows {
    let df = s.sql(sql).expect("sql");
    let batches = df.collect().expect("collect");
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| std::sync::Arc::new(arrow::datatypes::Schema::empty()));
    let mut rows = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, i).expect("scalar"))
                    .collect(),
            );
        }
    }
    Rows { schema, rows }
}

impl PartialEq<Vec<&str>> for Rows {
    /// Each expected line holds one cell per column, comma-separated, parsed into the column's
    /// type (`NULL`: a null of that type).
    fn eq(&self, expected: &Vec<&str>) -> bool {
        if self.rows.len() != expected.len() {
            return false;
        }
        self.rows.iter().zip(expected).all(|(row, line)| {
            let cells: Vec<&str> = line.split(',').collect();
            cells.len() == row.len()
                && row
                    .iter()
                    .zip(&cells)
                    .zip(self.schema.fields())
                    .all(|((got, want), f)| {
                        let want = if *want == "NULL" {
                            ScalarValue::try_from(f.data_type()).expect("null")
                        } else {
                            match ScalarValue::from(*want).cast_to(f.data_type()) {
                                Ok(v) => v,
                                Err(_) => return false,
                            }
                        };
                        *got == want
                    })
        })
    }
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let types: Vec<String> = self
            .schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        writeln!(f, "[{}]", types.join(", "))?;
        for r in &self.rows {
            let cells: Vec<String> = r
                .iter()
                .map(|v| {
                    if v.is_null() {
                        "NULL".into()
                    } else {
                        v.to_string()
                    }
                })
                .collect();
            writeln!(f, "  {}", cells.join(","))?;
        }
        Ok(())
    }
}

#[test]
fn aliases_and_reordered_group_by() {
    // 1-minute windows: 00:00 {a, b}, 00:01 {a, a}, 00:02 {b}
    let got = run(
        "SELECT action AS act, window.start AS ws, count(*) AS n FROM events \
         GROUP BY action, window(event_time, '1 minute')",
        "ws, act",
    );
    assert_eq!(
        got,
        vec![
            "a,2025-01-01T00:00:00Z,1",
            "b,2025-01-01T00:00:00Z,1",
            "a,2025-01-01T00:01:00Z,2",
            "b,2025-01-01T00:02:00Z,1"
        ]
    );
}

#[test]
fn the_golden_query_in_complete_mode() {
    // the query as written; 00:01 a merges a row of each batch (4.0 + 8.0)
    let got = run(
        "SELECT window.start AS window_start, window.end AS window_end, action, count(*) AS count, \
         sum(value) AS sum, avg(value) AS avg, max(value) AS max FROM events \
         GROUP BY window(event_time, '1 minute'), action",
        "window_start, action",
    );
    assert_eq!(
        got,
        vec![
            "2025-01-01T00:00:00Z,2025-01-01T00:01:00Z,a,1,1.0,1.0,1.0",
            "2025-01-01T00:00:00Z,2025-01-01T00:01:00Z,b,1,2.0,2.0,2.0",
            "2025-01-01T00:01:00Z,2025-01-01T00:02:00Z,a,2,12.0,6.0,8.0",
            "2025-01-01T00:02:00Z,2025-01-01T00:03:00Z,b,1,16.0,16.0,16.0"
        ]
    );
}

#[test]
fn having() {
    let got = run(
        "SELECT window.start AS ws, action, count(*) AS n FROM events \
         GROUP BY window(event_time, '1 minute'), action HAVING count(*) > 1",
        "ws",
    );
    assert_eq!(got, vec!["2025-01-01T00:01:00Z,a,2"]);
}

#[test]
fn sliding_windows_put_a_row_in_every_window_covering_it() {
    // 2-minute windows every minute: [23:59,00:01) = 1+2, [00:00,00:02) = 1+2+4+8,
    // [00:01,00:03) = 4+8+16, [00:02,00:04) = 16
    let got = run(
        "SELECT window.start AS ws, window.end AS we, sum(value) AS s FROM events \
         GROUP BY window(event_time, '2 minutes', '1 minute')",
        "ws",
    );
    assert_eq!(
        got,
        vec![
            "2024-12-31T23:59:00Z,2025-01-01T00:01:00Z,3.0",
            "2025-01-01T00:00:00Z,2025-01-01T00:02:00Z,15.0",
            "2025-01-01T00:01:00Z,2025-01-01T00:03:00Z,28.0",
            "2025-01-01T00:02:00Z,2025-01-01T00:04:00Z,16.0"
        ]
    );
}

#[test]
fn dataframe_sliding_windows_match_the_sql_ones() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(&input, "1.json", EVENTS, 0);
    let s = Session::builder().build().expect("session");
    let q = s
        .read_stream()
        .schema("event_time TIMESTAMP, action STRING, value DOUBLE")
        .json(input.to_str().expect("p"))
        .expect("load")
        .group_by([sliding_window(col("event_time"), "2 minutes", "1 minute")])
        .agg([sum(col("value")).alias("s")])
        .expect("agg")
        .write_stream()
        .format("memory")
        .query_name("sliding")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::AvailableNow)
        .start()
        .expect("start");
    q.await_termination().expect("done");
    let got = table_rows(
        &s,
        "SELECT get_field(\"window\", 'start') AS ws, get_field(\"window\", 'end') AS we, s \
         FROM sliding ORDER BY s",
    );
    // as sliding_windows_put_a_row_in_every_window_covering_it
    assert_eq!(
        got,
        vec![
            "2024-12-31T23:59:00Z,2025-01-01T00:01:00Z,3.0",
            "2025-01-01T00:00:00Z,2025-01-01T00:02:00Z,15.0",
            "2025-01-01T00:02:00Z,2025-01-01T00:04:00Z,16.0",
            "2025-01-01T00:01:00Z,2025-01-01T00:03:00Z,28.0",
        ]
    );
}

#[test]
fn cte_over_the_stream_with_the_window_struct() {
    let got = run(
        "WITH w AS (SELECT window, action, count(*) AS n FROM events \
                    GROUP BY window(event_time, '1 minute'), action) \
         SELECT window.start AS ws, n FROM w WHERE action = 'a'",
        "ws",
    );
    assert_eq!(
        got,
        vec!["2025-01-01T00:00:00Z,1", "2025-01-01T00:01:00Z,2"]
    );
}

#[test]
fn filter_on_the_window_column_in_a_subquery() {
    let got = run(
        "SELECT ws, n FROM (SELECT window.start AS ws, count(*) AS n FROM events \
                            GROUP BY window(event_time, '1 minute')) \
         WHERE ws >= TIMESTAMP '2025-01-01T00:01:00Z'",
        "ws",
    );
    assert_eq!(
        got,
        vec!["2025-01-01T00:01:00Z,2", "2025-01-01T00:02:00Z,1"]
    );
}

#[test]
fn dataframe_group_by_agg_and_non_windowed_aggregation() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(&input, "1.json", EVENTS, 0);
    let s = Session::builder().build().expect("session");
    let q = s
        .read_stream()
        .schema("event_time TIMESTAMP, action STRING, value DOUBLE")
        .json(input.to_str().expect("p"))
        .expect("load")
        .group_by([col("action")])
        .agg([
            count(lit(1)).alias("n"),
            max(col("value")).alias("biggest"),
            avg(col("value")).alias("mean"),
        ])
        .expect("agg")
        .write_stream()
        .format("memory")
        .query_name("per_action")
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .start()
        .expect("start");
    q.await_termination().expect("done");
    // a: 1, 4, 8 -> n 3, max 8, avg 13/3; b: 2, 16 -> n 2, max 16, avg 9
    assert_eq!(
        table_rows(
            &s,
            "SELECT action, n, biggest, mean FROM per_action ORDER BY action"
        ),
        vec!["a,3,8.0,4.333333333333333", "b,2,16.0,9.0"]
    );
    // append without a watermark is refused with the reason
    let err = s
        .read_stream()
        .schema("event_time TIMESTAMP, action STRING, value DOUBLE")
        .json(input.to_str().expect("p"))
        .expect("load")
        .group_by([window(col("event_time"), "1 minute")])
        .count()
        .expect("count")
        .write_stream()
        .format("console")
        .start()
        .expect_err("append without watermark")
        .to_string();
    assert!(err.contains("without a watermark"), "{err}");
}

#[test]
fn restarting_with_an_incompatible_aggregation_is_refused() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(&input, "1.json", EVENTS, 0);
    let s = Session::builder().build().expect("session");
    let start = |sql: &str| {
        s.read_stream()
            .schema("event_time TIMESTAMP, action STRING, value DOUBLE")
            .json(input.to_str().expect("p"))
            .expect("load")
            .create_or_replace_temp_view("events")
            .expect("view");
        s.sql(sql)
            .expect("sql")
            .write_stream()
            .format("console")
            .output_mode(OutputMode::Update)
            .trigger(Trigger::AvailableNow)
            .checkpoint_location(w.path().join("chk"))
            .start()
    };
    start("SELECT action, count(*) AS n FROM events GROUP BY action")
        .expect("first run")
        .await_termination()
        .expect("done");
    // same query: resumes
    start("SELECT action, count(*) AS n FROM events GROUP BY action")
        .expect("same query")
        .await_termination()
        .expect("done");
    // other aggregate, other key: refused with a message
    for sql in [
        "SELECT action, sum(value) AS n FROM events GROUP BY action",
        "SELECT value, count(*) AS n FROM events GROUP BY value",
        // same key type, another key expression
        "SELECT upper(action) AS action, count(*) AS n FROM events GROUP BY upper(action)",
    ] {
        let err = start(sql).expect_err(sql).to_string();
        assert!(err.contains("different aggregation"), "{sql}: {err}");
    }
}

/// Runs `sql` in update mode over `files` (one batch each), restarting the query on the same
/// checkpoint after `restart_after` files; returns the last row emitted per first column.
fn run_with_restart(sql: &str, files: &[&str], restart_after: usize, mode: OutputMode) -> Rows {
    let w = workdir();
    let input = w.path().join("in");
    let mut last: std::collections::BTreeMap<String, Vec<ScalarValue>> = Default::default();
    let mut schema = None;
    for (phase, range) in [(0, 0..restart_after), (1, restart_after..files.len())] {
        for i in range {
            put_file(&input, &format!("{i}.json"), files[i], i as u64);
        }
        let s = Session::builder().build().expect("session");
        s.read_stream()
            .schema("event_time TIMESTAMP, action STRING, value DOUBLE")
            .option("maxFilesPerTrigger", 1)
            .json(input.to_str().expect("p"))
            .expect("load")
            .create_or_replace_temp_view("events")
            .expect("view");
        let q = s
            .sql(sql)
            .expect("sql")
            .write_stream()
            .format("memory")
            .query_name("result")
            .output_mode(mode)
            .trigger(Trigger::AvailableNow)
            .checkpoint_location(w.path().join("chk"))
            .start()
            .expect("start");
        q.await_termination().expect("done");
        let got = table_rows(&s, "SELECT * FROM result");
        if mode == OutputMode::Complete {
            last.clear();
        }
        for row in got.rows {
            last.insert(row[0].to_string(), row);
        }
        schema = Some(got.schema);
        assert!(phase < 2);
    }
    Rows {
        schema: schema.expect("ran"),
        rows: last.into_values().collect(),
    }
}

#[test]
fn sliding_windows_and_complete_mode_survive_a_restart() {
    let files: Vec<String> = EVENTS.lines().map(|l| format!("{l}\n")).collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let sql = "SELECT window.start AS ws, sum(value) AS s, count(*) AS n FROM events \
               GROUP BY window(event_time, '2 minutes', '1 minute')";
    let expected = vec![
        "2024-12-31T23:59:00Z,3.0,2",
        "2025-01-01T00:00:00Z,15.0,4",
        "2025-01-01T00:01:00Z,28.0,3",
        "2025-01-01T00:02:00Z,16.0,1",
    ];
    assert_eq!(
        run_with_restart(sql, &files, 2, OutputMode::Update),
        expected
    );
    assert_eq!(
        run_with_restart(sql, &files, 3, OutputMode::Complete),
        expected
    );
}

#[test]
fn more_aggregates_merge_across_batches_and_a_restart() {
    // per action over all five events: a = {1, 4, 8}, b = {2, 16}
    let files: Vec<String> = EVENTS.lines().map(|l| format!("{l}\n")).collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let got = run_with_restart(
        "SELECT action, count(DISTINCT value) AS d, min(value) AS lo, first_value(value) AS f, \
                last_value(value) AS l, approx_distinct(CAST(value AS BIGINT)) AS ad, \
                approx_percentile_cont(value, 0.5) AS med \
         FROM events GROUP BY action",
        &files,
        2,
        OutputMode::Update,
    );
    assert_eq!(got, vec!["a,3,1.0,1.0,8.0,3,4.0", "b,2,2.0,2.0,16.0,2,9.0"]);
}

#[test]
fn spark_aggregate_names_and_a_lone_count_distinct() {
    // per action over all five events: a = {1, 4, 8}, b = {2, 16}
    let files: Vec<String> = EVENTS.lines().map(|l| format!("{l}\n")).collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    // count(DISTINCT x) alone (DataFusion's optimiser would turn it into two aggregations)
    let got = run_with_restart(
        "SELECT action, count(DISTINCT value) AS d FROM events GROUP BY action",
        &files,
        2,
        OutputMode::Update,
    );
    assert_eq!(got, vec!["a,3", "b,2"]);
    let got = run_with_restart(
        "SELECT action, count(DISTINCT value) AS d, sum(value) AS s FROM events GROUP BY action",
        &files,
        3,
        OutputMode::Update,
    );
    assert_eq!(got, vec!["a,3,13.0", "b,2,18.0"]);
    // Spark's names: first, last, approx_count_distinct, approx_percentile
    let got = run_with_restart(
        "SELECT action, first(value) AS f, last(value) AS l, \
                approx_count_distinct(CAST(value AS BIGINT)) AS ad, approx_percentile(value, 0.5) AS med \
         FROM events GROUP BY action",
        &files,
        2,
        OutputMode::Update,
    );
    assert_eq!(got, vec!["a,1.0,8.0,3,4.0", "b,2.0,16.0,2,9.0"]);
}

#[test]
fn session_windows_merge_within_and_across_batches_and_a_restart() {
    let ev = |ts: &str, a: &str, v: f64| {
        format!("{{\"event_time\":\"2025-01-01T{ts}Z\",\"action\":\"{a}\",\"value\":{v}}}\n")
    };
    // batch 0: a has two sessions [00:00:10, 00:01:10) and [00:01:20, 00:02:20); b one.
    // batch 1: a@00:00:55 opens [00:00:55, 00:01:55), which overlaps both stored sessions of a:
    // all three become [00:00:10, 00:02:20) with 3 events; b@00:02:30 is a new session.
    let first = ev("00:00:10", "a", 1.0) + &ev("00:00:50", "b", 2.0) + &ev("00:01:20", "a", 8.0);
    let second = ev("00:00:55", "a", 4.0) + &ev("00:02:30", "b", 16.0);
    let sql = "SELECT session_window.start AS s, action, session_window.end AS e, count(*) AS n, \
               sum(value) AS total FROM events GROUP BY action, session_window(event_time, '1 minute')";
    let expected = vec![
        "2025-01-01T00:00:10Z,a,2025-01-01T00:02:20Z,3,13.0",
        "2025-01-01T00:00:50Z,b,2025-01-01T00:01:50Z,1,2.0",
        "2025-01-01T00:02:30Z,b,2025-01-01T00:03:30Z,1,16.0",
    ];
    assert_eq!(
        run_with_restart(
            sql,
            &[first.as_str(), second.as_str()],
            1,
            OutputMode::Complete
        ),
        expected
    );
}

#[test]
fn session_windows_in_append_mode_close_with_the_watermark() {
    let w = workdir();
    let input = w.path().join("in");
    let ev = |ts: &str, a: &str, v: f64| {
        format!("{{\"event_time\":\"2025-01-01T{ts}Z\",\"action\":\"{a}\",\"value\":{v}}}\n")
    };
    put_file(
        &input,
        "1.json",
        &(ev("00:00:10", "a", 1.0) + &ev("00:00:50", "b", 2.0) + &ev("00:01:20", "a", 8.0)),
        0,
    );
    put_file(
        &input,
        "2.json",
        &(ev("00:00:55", "a", 4.0) + &ev("00:02:30", "b", 16.0)),
        1,
    );
    let s = Session::builder().build().expect("session");
    let q = s
        .read_stream()
        .schema("event_time TIMESTAMP, action STRING, value DOUBLE")
        .option("maxFilesPerTrigger", 1)
        .json(input.to_str().expect("p"))
        .expect("load")
        .with_watermark("event_time", "0 seconds")
        .expect("wm")
        .group_by([col("action"), session_window(col("event_time"), "1 minute")])
        .agg([count(lit(1)).alias("n"), sum(col("value")).alias("total")])
        .expect("agg")
        .write_stream()
        .format("memory")
        .query_name("sessions")
        .trigger(Trigger::AvailableNow)
        .start()
        .expect("start");
    q.await_termination().expect("done");
    // final watermark 00:02:30: the sessions ending 00:02:20 and 00:01:50 are closed and emitted
    // once; b's session [00:02:30, 00:03:30) is still open
    assert_eq!(
        table_rows(
            &s,
            "SELECT action, CAST(get_field(session_window, 'end') AS VARCHAR) AS e, n, total \
             FROM sessions ORDER BY action"
        ),
        vec![
            "a,2025-01-01T00:02:20Z,3,13.0",
            "b,2025-01-01T00:01:50Z,1,2.0"
        ]
    );
}

/// A null in a result column is a null, not a missing cell that shifts the others.
#[test]
fn a_null_cell_is_compared_as_a_null() {
    let got = run(
        "SELECT window.start AS ws, CASE WHEN action = 'a' THEN NULL ELSE action END AS act, \
         count(*) AS n FROM events GROUP BY window(event_time, '1 minute'), action",
        "ws, act",
    );
    assert_eq!(
        got,
        vec![
            "2025-01-01T00:00:00Z,b,1",
            "2025-01-01T00:00:00Z,NULL,1",
            "2025-01-01T00:01:00Z,NULL,2",
            "2025-01-01T00:02:00Z,b,1"
        ]
    );
    assert_ne!(
        got,
        vec![
            "2025-01-01T00:00:00Z,b,1",
            "2025-01-01T00:00:00Z,1",
            "2025-01-01T00:01:00Z,2",
            "2025-01-01T00:02:00Z,b,1"
        ]
    );
}

#[test]
fn a_late_row_whose_aggregate_argument_cannot_be_computed_is_dropped_not_fatal() {
    let w = workdir();
    let input = w.path().join("in");
    let ev = |ts: &str, v: &str| {
        format!("{{\"event_time\":\"2025-01-01T{ts}Z\",\"action\":\"a\",\"value\":\"{v}\"}}\n")
    };
    put_file(&input, "1.json", &ev("00:05:10", "1"), 0);
    put_file(&input, "2.json", &ev("00:05:20", "2"), 1);
    // batch 2: 00:01:00 is late (its window ends 00:02 <= 00:05:10, batch 1's watermark) and
    // its value is no number; the aggregate never sees it, so it must not fail the batch
    put_file(
        &input,
        "3.json",
        &(ev("00:01:00", "oops") + &ev("00:07:00", "4")),
        2,
    );
    put_file(&input, "4.json", &ev("00:09:00", "8"), 3);
    let s = Session::builder().build().expect("session");
    s.read_stream()
        .schema("event_time TIMESTAMP, action STRING, value STRING")
        .option("maxFilesPerTrigger", 1)
        .json(input.to_str().expect("p"))
        .expect("load")
        .with_watermark("event_time", "0 seconds")
        .expect("wm")
        .create_or_replace_temp_view("events")
        .expect("view");
    let q = s
        .sql(
            "SELECT CAST(window.start AS VARCHAR) AS ws, action, sum(CAST(value AS BIGINT)) AS total \
             FROM events GROUP BY window(event_time, '1 minute'), action",
        )
        .expect("sql")
        .write_stream()
        .format("memory")
        .query_name("result")
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(w.path().join("chk"))
        .start()
        .expect("start");
    q.await_termination().expect("a late row failed the batch");
    let dropped: u64 = q
        .recent_progress()
        .iter()
        .flat_map(|p| {
            p.state_operators
                .iter()
                .map(|o| o.num_rows_dropped_by_watermark)
        })
        .sum();
    assert_eq!(dropped, 1);
    // the watermark 00:09 closes [00:07, 00:08) too
    assert_eq!(
        table_rows(&s, "SELECT * FROM result ORDER BY ws"),
        vec!["2025-01-01T00:05:00Z,a,3", "2025-01-01T00:07:00Z,a,4"]
    );
}
