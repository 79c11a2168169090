//! The JDBC sink against a real PostgreSQL 15 and a real MariaDB (started by `scripts/services`),
//! each test on its own database: the seed pipeline (JSON files → 1-hour window count by action →
//! update mode) and an append pipeline, killed with SIGKILL at random crash points and restarted,
//! must leave the same table as an uninterrupted run and as counts computed here independently;
//! complete mode; type mapping; refusals of tables that don't fit; database errors; and a
//! PostgreSQL outage of more than 10 s mid-stream.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::db::{Maria, Pg, PrivatePg};
use common::*;
use sluice::prelude::*;

const SCHEMA: &str =
    "event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING";
const ACTIONS: [&str; 3] = ["click", "view", "buy"];
const FILES: u64 = 8;

/// A deterministic event: (epoch seconds, action, user, value).
fn events_of_file(f: u64) -> Vec<(i64, &'static str, i64, f64)> {
    let mut state = f * 7919 + 17;
    let mut out = Vec::new();
    for i in 0..30 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let x = state >> 33;
        // each file covers ~40 minutes, later files later; some events up to 25 min out of order
        let t = 1_735_689_600 + (f as i64) * 2400 + (i as i64) * 80 - (x % 1500) as i64;
        out.push((
            t,
            ACTIONS[(x % 3) as usize],
            (x % 50) as i64,
            ((x % 1000) as f64) / 4.0,
        ));
    }
    out
}

fn iso(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .expect("time")
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn pg_ts(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .expect("time")
        .format("%Y-%m-%d %H:%M:%S+00")
        .to_string()
}

fn maria_ts(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .expect("time")
        .format("%Y-%m-%d %H:%M:%S.000000")
        .to_string()
}

/// Stages the input files in `dir/in` (before the query starts).
fn stage_events(dir: &Path) {
    for f in 0..FILES {
        let body: String = events_of_file(f)
            .iter()
            .map(|(t, a, u, v)| {
                format!(
                    "{{\"event_time\":\"{}\",\"action\":\"{a}\",\"user_id\":{u},\"value\":{v},\"country\":\"DE\"}}\n",
                    iso(*t)
                )
            })
            .collect();
        put_file(&dir.join("in"), &format!("events-{f:02}.json"), &body, f);
    }
}

/// Hourly counts by action, computed here from the generated events.
fn expected_counts(ts: fn(i64) -> String) -> Vec<String> {
    let mut m: BTreeMap<(i64, &str), u64> = BTreeMap::new();
    for f in 0..FILES {
        for (t, a, _, _) in events_of_file(f) {
            *m.entry((t - t.rem_euclid(3600), a)).or_default() += 1;
        }
    }
    sorted(
        m.into_iter()
            .map(|((w, a), n)| format!("{}|{}|{a}|{n}", ts(w), ts(w + 3600)))
            .collect(),
    )
}

fn pipeline(dir: &Path, sql: &str, mode: &str, url: &str, table: &str) -> std::path::PathBuf {
    pipeline_with(dir, sql, mode, url, table, "")
}

/// Like [`pipeline`], with more sink options (`, key = "value"` pairs).
fn pipeline_with(
    dir: &Path,
    sql: &str,
    mode: &str,
    url: &str,
    table: &str,
    more: &str,
) -> std::path::PathBuf {
    let p = dir.join("pipeline.toml");
    fs::write(
        &p,
        format!(
            r#"[source.events]
format = "json"
path = "in"
schema = "{SCHEMA}"
options = {{ maxFilesPerTrigger = "1" }}

[query.q]
sql = "{sql}"
output_mode = "{mode}"
trigger = "available-now"
checkpoint = "chk"
sink = {{ format = "jdbc", options = {{ url = "{url}", dbtable = "{table}"{more} }} }}
progress_log = "progress.jsonl"
"#
        ),
    )
    .expect("write pipeline");
    p
}

/// Every crash point of a JDBC batch (mid-sink: rows written, transaction not committed).
const POINTS: [&str; 5] = [
    "after-offsets",
    "mid-sink",
    "after-sink",
    "after-state",
    "after-commit",
];

fn crash_points(n: usize) -> Vec<String> {
    random_crash_points(n, FILES, &POINTS)
}

fn run_ok(p: &Path) {
    let o = run_pipeline(p, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

const SEED_SQL: &str = "SELECT window, action, count(*) AS count FROM events GROUP BY window(event_time, '1 hour'), action";

#[test]
fn postgres_seed_pipeline_update_mode_killed_at_random_points_equals_uninterrupted() {
    let pg = Pg::shared();
    let select = "SELECT window_start, window_end, action, count FROM counts ORDER BY 1, 3";
    let expected = expected_counts(pg_ts);

    let clean = workdir();
    stage_events(clean.path());
    let db_clean = pg.new_db("seed_clean");
    run_ok(&pipeline(
        clean.path(),
        SEED_SQL,
        "update",
        &pg.jdbc_url(&db_clean),
        "counts",
    ));
    let uninterrupted = sorted(pg.query(&db_clean, select));
    assert_eq!(
        uninterrupted, expected,
        "uninterrupted run vs counts computed here"
    );
    // the table was created with the window flattened and the grouping columns as primary key
    assert_eq!(
        pg.query(
            &db_clean,
            "SELECT column_name || ':' || data_type FROM information_schema.columns \
             WHERE table_name = 'counts' ORDER BY ordinal_position"
        ),
        [
            "window_start:timestamp with time zone",
            "window_end:timestamp with time zone",
            "action:text",
            "count:bigint"
        ]
    );
    let pk = pg.query(
        &db_clean,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
         AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'counts'::regclass AND i.indisunique \
         AND i.indnullsnotdistinct ORDER BY 1",
    );
    assert_eq!(pk, ["action", "window_end", "window_start"]);
    // the marker row names the last batch
    assert_eq!(
        pg.query(&db_clean, "SELECT batch_id FROM _sluice_batches"),
        [(FILES - 1).to_string()]
    );

    let w = workdir();
    stage_events(w.path());
    let db = pg.new_db("seed_killed");
    let p = pipeline(w.path(), SEED_SQL, "update", &pg.jdbc_url(&db), "counts");
    let points = crash_points(6);
    run_killed(&p, &[], &points);
    assert_eq!(
        sorted(pg.query(&db, select)),
        uninterrupted,
        "killed at {points:?}"
    );
}

#[test]
fn mariadb_seed_pipeline_update_mode_killed_at_random_points_equals_uninterrupted() {
    let m = Maria::shared();
    let select = "SELECT window_start, window_end, action, count FROM counts ORDER BY 1, 3";
    let expected = expected_counts(maria_ts);

    let clean = workdir();
    stage_events(clean.path());
    let db_clean = m.new_db("seed_clean");
    run_ok(&pipeline(
        clean.path(),
        SEED_SQL,
        "update",
        &m.jdbc_url(&db_clean),
        "counts",
    ));
    let uninterrupted = sorted(m.query(&db_clean, select));
    assert_eq!(uninterrupted, expected);
    // string keys are VARCHAR; the upsert key is a generated hash of the group key, unique and
    // NULL-safe (a NULL group key is a row of its own, as in Spark)
    assert_eq!(
        m.query(
            &db_clean,
            "SELECT CONCAT(COLUMN_NAME, ':', COLUMN_TYPE, ':', COLUMN_KEY) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'counts' ORDER BY ORDINAL_POSITION"
        ),
        [
            "window_start:datetime(6):",
            "window_end:datetime(6):",
            "action:varchar(255):",
            "count:bigint(20):",
            "_sluice_key:binary(32):UNI"
        ]
    );

    let w = workdir();
    stage_events(w.path());
    let db = m.new_db("seed_killed");
    let p = pipeline(w.path(), SEED_SQL, "update", &m.jdbc_url(&db), "counts");
    let points = crash_points(6);
    run_killed(&p, &[], &points);
    assert_eq!(
        sorted(m.query(&db, select)),
        uninterrupted,
        "killed at {points:?}"
    );
}

const APPEND_SQL: &str = "SELECT event_time, action, user_id, value FROM events WHERE value >= 100";

fn expected_append(ts: fn(i64) -> String) -> Vec<String> {
    let mut out = Vec::new();
    for f in 0..FILES {
        for (t, a, u, v) in events_of_file(f) {
            if v >= 100.0 {
                out.push(format!("{}|{a}|{u}|{v}", ts(t)));
            }
        }
    }
    sorted(out)
}

#[test]
fn append_pipeline_killed_at_random_points_writes_every_row_once_postgres_and_mariadb() {
    let pg = Pg::shared();
    let m = Maria::shared();
    let select = "SELECT event_time, action, user_id, value FROM clicks";
    for (name, url_of, query, ts) in [
        (
            "postgres",
            Box::new(|db: &str| pg.jdbc_url(db)) as Box<dyn Fn(&str) -> String>,
            Box::new(|db: &str| pg.query(db, select)) as Box<dyn Fn(&str) -> Vec<String>>,
            pg_ts as fn(i64) -> String,
        ),
        (
            "mariadb",
            Box::new(|db: &str| m.jdbc_url(db)),
            Box::new(|db: &str| m.query(db, select)),
            maria_ts,
        ),
    ] {
        let db = if name == "postgres" {
            pg.new_db("append")
        } else {
            m.new_db("append")
        };
        let w = workdir();
        stage_events(w.path());
        let p = pipeline(w.path(), APPEND_SQL, "append", &url_of(&db), "clicks");
        let points = crash_points(5);
        run_killed(&p, &[], &points);
        // both print DOUBLE 125.0 as 125, as Rust does
        assert_eq!(
            sorted(query(&db)),
            expected_append(ts),
            "{name}: killed at {points:?}"
        );
    }
}

#[test]
fn complete_mode_replaces_the_table_in_the_batch_transaction_and_survives_kills() {
    let pg = Pg::shared();
    let sql = "SELECT action, count(*) AS n, max(user_id) AS top_user FROM events GROUP BY action";
    let mut want: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    for f in 0..FILES {
        for (_, a, u, _) in events_of_file(f) {
            let e = want.entry(a).or_insert((0, i64::MIN));
            e.0 += 1;
            e.1 = e.1.max(u);
        }
    }
    let want: Vec<String> = want
        .into_iter()
        .map(|(a, (n, u))| format!("{a}|{n}|{u}"))
        .collect();
    let w = workdir();
    stage_events(w.path());
    let db = pg.new_db("complete");
    let p = pipeline(w.path(), sql, "complete", &pg.jdbc_url(&db), "totals");
    let points = crash_points(5);
    run_killed(&p, &[], &points);
    assert_eq!(
        sorted(pg.query(&db, "SELECT action, n, top_user FROM totals")),
        want,
        "killed at {points:?}"
    );
}

#[test]
fn types_round_trip_through_the_dataframe_api_postgres_and_mariadb() {
    let pg = Pg::shared();
    let m = Maria::shared();
    let w = workdir();
    let input = w.path().join("in");
    put_file(
        &input,
        "a.json",
        concat!(
            "{\"id\":1,\"name\":\"quote \\\" comma , newline \\n end\",\"ok\":true,\"price\":12.34,\"at\":\"2025-03-01T10:00:00.123456Z\",\"day\":\"2025-03-01\"}\n",
            "{\"id\":2,\"name\":\"\",\"ok\":false,\"price\":-0.5,\"at\":\"2025-03-01T10:00:01Z\",\"day\":\"2025-03-02\"}\n",
            "{\"id\":3}\n"
        ),
        0,
    );
    for (name, url, db) in [
        ("postgres", pg.jdbc_url(&pg.new_db("types")), "pg"),
        ("mariadb", m.jdbc_url(&m.new_db("types")), "maria"),
    ] {
        let s = Session::builder().build().expect("session");
        let df = s
            .read_stream()
            .schema(
                "id BIGINT, name STRING, ok BOOLEAN, price DECIMAL(10, 2), at TIMESTAMP, day DATE",
            )
            .json(input.to_str().expect("path"))
            .expect("load");
        let q = df
            .write_stream()
            .format("jdbc")
            .option("url", &url)
            .option("dbtable", "typed")
            .trigger(Trigger::AvailableNow)
            .checkpoint_location(w.path().join(format!("chk-{db}")))
            .start()
            .expect("start");
        q.await_termination().expect("query");
        let database = url
            .rsplit('/')
            .next()
            .and_then(|s| s.split('?').next())
            .expect("db")
            .to_string();
        if name == "postgres" {
            let rows = pg.query(
                &database,
                "SELECT id, name, ok, price, at, day, pg_typeof(price), pg_typeof(at) FROM typed ORDER BY id",
            );
            assert_eq!(
                rows,
                [
                    "1|quote \" comma , newline \n end|t|12.34|2025-03-01 10:00:00.123456+00|2025-03-01|numeric|timestamp with time zone",
                    "2||f|-0.50|2025-03-01 10:00:01+00|2025-03-02|numeric|timestamp with time zone",
                    "3||||||numeric|timestamp with time zone",
                ]
                .join("\n")
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>(),
                "{name}"
            );
            // an empty string stays empty, NULL stays NULL
            assert_eq!(
                pg.query(
                    &database,
                    "SELECT id FROM typed WHERE name = '' OR (id = 3 AND name IS NULL) ORDER BY id"
                ),
                ["2", "3"]
            );
        } else {
            let rows = m.query(
                &database,
                "SELECT id, REPLACE(name, '\\n', '<nl>'), ok, price, at, day FROM typed ORDER BY id",
            );
            assert_eq!(
                rows,
                [
                    "1|quote \" comma , newline <nl> end|1|12.34|2025-03-01 10:00:00.123456|2025-03-01",
                    "2||0|-0.50|2025-03-01 10:00:01.000000|2025-03-02",
                    "3|NULL|NULL|NULL|NULL|NULL",
                ],
                "{name}"
            );
        }
    }
}

#[test]
fn an_existing_table_that_does_not_fit_is_refused_naming_table_column_and_types() {
    let pg = Pg::shared();
    let m = Maria::shared();
    let pg_db = pg.new_db("misfit");
    pg.query(&pg_db, "CREATE TABLE counts (window_start TIMESTAMPTZ, window_end TIMESTAMPTZ, action TEXT, count TEXT)");
    let my_db = m.new_db("misfit");
    m.query(&my_db, "CREATE TABLE counts (window_start DATETIME(6), window_end DATETIME(6), action VARCHAR(20))");
    for (url, needle) in [
        (pg.jdbc_url(&pg_db), "column 'count' has type text"),
        (m.jdbc_url(&my_db), "has no column 'count'"),
    ] {
        let w = workdir();
        stage_events(w.path());
        let p = pipeline(w.path(), SEED_SQL, "update", &url, "counts");
        let o = run_pipeline(&p, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(err.contains("table counts"), "{err}");
        assert!(err.contains("Int64"), "the stream's type is named: {err}");
        assert!(
            !err.contains("password=sluice") && !err.contains(":sluice@"),
            "{err}"
        );
    }
    // update mode needs a unique key on the keys (else PostgreSQL refuses ON CONFLICT and
    // MariaDB piles up duplicates): refused when the query starts, and by `sluice validate`,
    // which creates nothing
    let pg_db = pg.new_db("nokey");
    pg.query(&pg_db, "CREATE TABLE counts (window_start TIMESTAMPTZ, window_end TIMESTAMPTZ, action TEXT, count BIGINT)");
    let my_db = m.new_db("nokey");
    m.query(&my_db, "CREATE TABLE counts (window_start DATETIME(6), window_end DATETIME(6), action VARCHAR(20), count BIGINT)");
    for url in [pg.jdbc_url(&pg_db), m.jdbc_url(&my_db)] {
        let w = workdir();
        stage_events(w.path());
        let p = pipeline(w.path(), SEED_SQL, "update", &url, "counts");
        let want = "no PRIMARY KEY or UNIQUE key on exactly (window_start, window_end, action)";
        let (code, err) = validate_pipeline(&p);
        assert_eq!(code, Some(2), "{url}: {err}");
        assert!(err.contains(want), "{url}: {err}");
        assert!(
            !w.path().join("chk").exists(),
            "validate made no checkpoint"
        );
        let o = run_pipeline(&p, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(want), "{url}: {err}");
        assert!(
            !err.contains("ON CONFLICT"),
            "not the database's raw refusal: {err}"
        );
    }
    assert_eq!(pg.query(&pg_db, "SELECT count(*) FROM counts"), ["0"]);
    // a unique `_sluice_key` (MariaDB) counts only when it hashes exactly the keys: one over
    // the action alone would merge the windows of an action into one row
    let my_db = m.new_db("badhash");
    m.query(&my_db, "CREATE TABLE counts (window_start DATETIME(6), window_end DATETIME(6), action VARCHAR(20), count BIGINT, \
         _sluice_key BINARY(32) AS (UNHEX(SHA2(IFNULL(action, 'n'), 256))) STORED, UNIQUE KEY (_sluice_key))");
    let w = workdir();
    stage_events(w.path());
    let p = pipeline(w.path(), SEED_SQL, "update", &m.jdbc_url(&my_db), "counts");
    let (code, err) = validate_pipeline(&p);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("_sluice_key column, but it is not generated from exactly the upsert keys (window_start, window_end, action)"),
        "{err}"
    );
}

/// PostgreSQL sends a NOTICE for `CREATE TABLE IF NOT EXISTS` on an existing table; a restart
/// logs none of that, even at INFO.
#[test]
fn a_restart_logs_no_already_exists_notice() {
    let pg = Pg::shared();
    let db = pg.new_db("notice");
    let w = workdir();
    stage_events(w.path());
    let p = pipeline(w.path(), SEED_SQL, "update", &pg.jdbc_url(&db), "counts");
    for run in 0..2u64 {
        if run == 1 {
            // new input, so that the restarted sink opens the tables again
            put_file(
                &w.path().join("in"),
                "more.json",
                "{\"event_time\":\"2025-01-02T00:00:00Z\",\"action\":\"click\",\"user_id\":1,\"value\":1.0,\"country\":\"DE\"}\n",
                FILES + 1,
            );
        }
        let o = run_pipeline(&p, &[("SLUICE_LOG", "info")]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "run {run}: {err}");
        assert!(!err.contains("already exists"), "run {run}: {err}");
        assert!(
            !err.to_ascii_lowercase().contains("notice"),
            "run {run}: {err}"
        );
        assert!(
            err.contains("batch committed"),
            "run {run} wrote a batch: {err}"
        );
    }
}

#[test]
fn a_constraint_violation_fails_the_query_with_the_database_message_and_no_password() {
    let pg = Pg::shared();
    let db = pg.new_db("constraint");
    pg.query(
        &db,
        "CREATE TABLE clicks (event_time TIMESTAMPTZ, action TEXT, user_id BIGINT CHECK (user_id < 40), value DOUBLE PRECISION)",
    );
    let w = workdir();
    stage_events(w.path());
    let p = pipeline(w.path(), APPEND_SQL, "append", &pg.jdbc_url(&db), "clicks");
    let o = run_pipeline(&p, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a user error, not retried forever: {err}"
    );
    assert!(
        err.contains("clicks_user_id_check"),
        "the database's message: {err}"
    );
    // the server's SQLSTATE, not a line of PostgreSQL's own source ("at line 2023")
    assert!(err.contains("(SQLSTATE 23514)"), "{err}");
    assert!(!err.contains(" at line "), "{err}");
    assert!(!err.contains("password=sluice"), "{err}");
    // nothing of the failed batch is in the table, and no marker says it was written
    assert_eq!(pg.query(&db, "SELECT count(*) FROM clicks"), ["0"]);
    let progress = fs::read_to_string(w.path().join("progress.jsonl")).unwrap_or_default();
    assert!(!progress.contains("password"), "{progress}");
}

#[test]
fn postgres_outage_of_ten_seconds_mid_stream_is_retried_without_loss_or_duplicates() {
    let server = PrivatePg::start();
    let pg = server.client();
    let db = pg.new_db("outage");
    let w = workdir();
    let url = format!(
        "jdbc:postgresql://127.0.0.1:{}/{db}?user=sluice",
        server.port
    );
    let p = w.path().join("pipeline.toml");
    fs::write(
        &p,
        format!(
            r#"[source.events]
format = "json"
path = "in"
schema = "{SCHEMA}"

[query.q]
sql = "{APPEND_SQL}"
checkpoint = "chk"
sink = {{ format = "jdbc", options = {{ url = "{url}", dbtable = "clicks", sinkMaxRetries = "30", sinkRetryBackoff = "200 milliseconds" }} }}
progress_log = "progress.jsonl"
"#
        ),
    )
    .expect("pipeline");
    let mut child = spawn_pipeline(&p, &[]);
    let count = |pg: &Pg| {
        pg.try_query(&db, "SELECT count(*) FROM clicks")
            .ok()
            .and_then(|r| r.first().and_then(|c| c.parse::<usize>().ok()))
    };
    let per_file = |f: u64| events_of_file(f).iter().filter(|e| e.3 >= 100.0).count();
    let put = |f: u64| {
        let body: String = events_of_file(f)
            .iter()
            .map(|(t, a, u, v)| {
                format!(
                    "{{\"event_time\":\"{}\",\"action\":\"{a}\",\"user_id\":{u},\"value\":{v},\"country\":\"DE\"}}\n",
                    iso(*t)
                )
            })
            .collect();
        put_file(
            &w.path().join("in"),
            &format!("events-{f:02}.json"),
            &body,
            f,
        );
    };
    put(0);
    put(1);
    let first: usize = per_file(0) + per_file(1);
    wait_until(
        "the first files in the table",
        Duration::from_secs(60),
        || count(&pg) == Some(first),
    );
    server.stop_server();
    let stopped = std::time::Instant::now();
    // files keep arriving while the database is down
    for f in 2..5 {
        put(f);
    }
    wait_until(
        "a retry to show up in the progress",
        Duration::from_secs(30),
        || {
            // the daemon is alive and waiting, not failed
            child.try_wait().expect("wait").is_none() && stopped.elapsed() > Duration::from_secs(10)
        },
    );
    server.start_server();
    for f in 5..FILES {
        put(f);
    }
    let all: usize = (0..FILES).map(per_file).sum();
    wait_until(
        "every row after the outage",
        Duration::from_secs(120),
        || count(&pg) == Some(all),
    );
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the query survived the outage"
    );
    signal(&child, "TERM");
    let out = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("retrying"), "the retries are logged: {log}");
    let rows = sorted(pg.query(&db, "SELECT event_time, action, user_id, value FROM clicks"));
    assert_eq!(
        rows,
        expected_append(pg_ts),
        "nothing lost, nothing doubled"
    );
}

#[test]
fn spark_options_column_types_table_options_isolation_truncate_and_explicit_keys() {
    // complete mode: TRUNCATE in the batch transaction, SERIALIZABLE, a typed column, table options
    let pg = Pg::shared();
    let db = pg.new_db("options");
    let w = workdir();
    stage_events(w.path());
    let p = pipeline_with(
        w.path(),
        "SELECT action, count(*) AS n FROM events GROUP BY action",
        "complete",
        &pg.jdbc_url(&db),
        "public.totals",
        r#", createTableColumnTypes = "action VARCHAR(16)", createTableOptions = "WITH (fillfactor = 70)", isolationLevel = "SERIALIZABLE", truncate = "true", batchsize = "2""#,
    );
    run_ok(&p);
    assert_eq!(
        pg.query(
            &db,
            "SELECT data_type || coalesce('(' || character_maximum_length || ')', '') FROM information_schema.columns \
             WHERE table_name = 'totals' AND column_name = 'action'"
        ),
        ["character varying(16)"]
    );
    assert_eq!(
        pg.query(
            &db,
            "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = 'totals'"
        ),
        ["fillfactor=70"]
    );
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for f in 0..FILES {
        for (_, a, _, _) in events_of_file(f) {
            *want.entry(a).or_default() += 1;
        }
    }
    let want: Vec<String> = want.into_iter().map(|(a, n)| format!("{a}|{n}")).collect();
    assert_eq!(sorted(pg.query(&db, "SELECT action, n FROM totals")), want);

    // a stateless stream upserted on explicit keys, several statements per batch (batchsize 3):
    // each user keeps the values of its last event
    let m = Maria::shared();
    let db = m.new_db("keys");
    let w = workdir();
    stage_events(w.path());
    let p = pipeline_with(
        w.path(),
        "SELECT user_id, action, value FROM events",
        "update",
        &m.jdbc_url(&db),
        "last_event",
        r#", keys = "user_id", batchsize = "3""#,
    );
    run_ok(&p);
    let mut last: BTreeMap<i64, (&str, f64)> = BTreeMap::new();
    for f in 0..FILES {
        for (_, a, u, v) in events_of_file(f) {
            last.insert(u, (a, v));
        }
    }
    let want: Vec<String> = last
        .into_iter()
        .map(|(u, (a, v))| format!("{u}|{a}|{v}"))
        .collect();
    assert_eq!(
        sorted(m.query(&db, "SELECT user_id, action, value FROM last_event")),
        sorted(want)
    );
    // an unknown option is refused by name
    let p = pipeline_with(
        w.path(),
        APPEND_SQL,
        "append",
        &m.jdbc_url(&db),
        "x",
        r#", batchsise = "3""#,
    );
    let o = run_pipeline(&p, &[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("batchsise"));
}

/// Spark allows a null group key; so does the table Sluice creates: two batches with events
/// that have no action upsert one row with a NULL key (PostgreSQL: UNIQUE NULLS NOT DISTINCT;
/// MariaDB: a generated key column), on both databases, across a restart.
#[test]
fn a_null_group_key_is_a_row_of_its_own_in_update_mode() {
    let pg = Pg::shared();
    let m = Maria::shared();
    let pg_db = pg.new_db("nullkey");
    let my_db = m.new_db("nullkey");
    for (url, is_pg) in [(pg.jdbc_url(&pg_db), true), (m.jdbc_url(&my_db), false)] {
        let w = workdir();
        let ev = |action: Option<&str>| {
            format!(
                "{{\"event_time\":\"2025-01-01T00:00:00Z\"{},\"user_id\":1,\"value\":1.0,\"country\":\"DE\"}}\n",
                action.map(|a| format!(",\"action\":\"{a}\"")).unwrap_or_default()
            )
        };
        put_file(
            &w.path().join("in"),
            "0.json",
            &(ev(None) + &ev(Some("click"))),
            0,
        );
        let p = pipeline(
            w.path(),
            "SELECT action, count(*) AS n FROM events GROUP BY action",
            "update",
            &url,
            "counts",
        );
        run_ok(&p);
        put_file(&w.path().join("in"), "1.json", &(ev(None) + &ev(None)), 1);
        run_ok(&p);
        let sql = "SELECT COALESCE(action, '<null>'), n FROM counts ORDER BY 1";
        let rows = if is_pg {
            pg.query(&pg_db, sql)
        } else {
            m.query(&my_db, sql)
        };
        let rows: Vec<String> = rows.iter().map(|r| r.replace('\t', "|")).collect();
        assert_eq!(rows, ["<null>|3", "click|1"], "{url}");
    }
}

/// A row the database refuses (a NOT NULL column, a value too long) fails the batch with an
/// error naming the batch and the row, and the query stops on the user's error.
#[test]
fn a_row_the_database_rejects_is_named_with_its_batch() {
    let pg = Pg::shared();
    let m = Maria::shared();
    let pg_db = pg.new_db("rejects");
    let my_db = m.new_db("rejects");
    pg.query(
        &pg_db,
        "CREATE TABLE refused (action TEXT NOT NULL, n BIGINT)",
    );
    m.query(&my_db, "CREATE TABLE refused (action VARCHAR(5), n BIGINT)");
    let cases = [
        (
            pg.jdbc_url(&pg_db),
            "line 2",
            "null value in column \"action\"",
        ),
        (m.jdbc_url(&my_db), "rows 1..=3 of the batch", "at row 2"),
    ];
    for (url, row, why) in cases {
        let w = workdir();
        let ev = |action: Option<&str>| {
            format!(
                "{{\"event_time\":\"2025-01-01T00:00:00Z\"{},\"user_id\":1,\"value\":1.0}}\n",
                action
                    .map(|a| format!(",\"action\":\"{a}\""))
                    .unwrap_or_default()
            )
        };
        let second = if url.contains("postgresql") {
            ev(None)
        } else {
            ev(Some("much-too-long"))
        };
        put_file(
            &w.path().join("in"),
            "0.json",
            &(ev(Some("a")) + &second + &ev(Some("c"))),
            0,
        );
        let p = pipeline(
            w.path(),
            "SELECT action, user_id AS n FROM events",
            "append",
            &url,
            "refused",
        );
        let o = run_pipeline(&p, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("batch 0"), "names the batch: {err}");
        assert!(err.contains(row), "names the row ({row}): {err}");
        assert!(err.contains(why), "{err}");
    }
}

/// SIGTERM while the sink hangs (a database that accepts the connection and never answers,
/// with a connection timeout of 5 minutes): the daemon exits within --stop-timeout, says that
/// the batch in flight runs again on restart, and commits nothing.
#[test]
fn sigterm_while_the_sink_hangs_exits_within_the_stop_timeout() {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = hole.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for c in hole.incoming().flatten() {
            keep.push(c);
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let w = workdir();
    stage_events(w.path());
    let url = format!("jdbc:postgresql://127.0.0.1:{port}/db?user=u&password=p");
    let p = pipeline_with(
        w.path(),
        APPEND_SQL,
        "append",
        &url,
        "out",
        ", connectTimeout = \"300 seconds\"",
    );
    let mut child = Command::new(sluice_bin())
        .arg("run")
        .arg(&p)
        .args(["--stop-timeout", "1"])
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_until("the sink to connect", Duration::from_secs(60), || {
        accepted.load(Ordering::SeqCst) > 0
    });
    signal(&child, "TERM");
    // the sink alone would hold the daemon for 300 s
    wait_until("the daemon to exit", Duration::from_secs(60), || {
        child.try_wait().expect("wait").is_some()
    });
    let o = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("query 'q' did not finish the batch in flight within 1s"),
        "{err}"
    );
    assert!(err.contains("that batch runs again on restart"), "{err}");
    assert!(
        !w.path().join("chk/commits/0").exists(),
        "nothing committed"
    );
}
