//! Auto Loader end to end over real files: inference kept, evolution modes, rescued data.

use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use sluice_engine::{Offset, ReadLimit, Source, SourceContext, SourceFactory, SourceSpec};

use super::CloudFilesFactory;

fn put(dir: &Path, name: &str, body: &str, secs: u64) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().expect("ok")).expect("ok");
    std::fs::write(&p, body).expect("ok");
    let f = std::fs::File::options().write(true).open(&p).expect("ok");
    f.set_modified(
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + secs),
    )
    .expect("ok");
}

struct Stream {
    root: tempfile::TempDir,
    opts: Vec<(String, String)>,
}

impl Stream {
    fn new(format: &str, opts: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().expect("ok");
        let mut all = vec![
            ("cloudFiles.format".to_string(), format.to_string()),
            (
                "cloudFiles.schemaLocation".to_string(),
                root.path().join("schema").display().to_string(),
            ),
        ];
        all.extend(opts.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Self { root, opts: all }
    }
    fn input(&self) -> std::path::PathBuf {
        self.root.path().join("in")
    }
    fn spec(&self) -> SourceSpec {
        SourceSpec {
            format: "cloudFiles".into(),
            path: Some(self.input().display().to_string()),
            schema: None,
            options: self.opts.iter().cloned().collect(),
            validate_only: false,
        }
    }
    fn start(&self) -> sluice_engine::Result<Box<dyn Source>> {
        let spec = self.spec();
        let schema = CloudFilesFactory.resolve_schema(&spec)?;
        let ctx = SourceContext {
            query_id: "q".into(),
            index: 0,
            checkpoint_dir: self.root.path().join("chk"),
        };
        CloudFilesFactory.create(&spec, schema, &ctx)
    }
}

/// Reads the next batch (all available), or re-reads batch `rerun` (its end offset).
fn next(
    s: &mut Box<dyn Source>,
    start: Option<&Offset>,
) -> (Offset, sluice_engine::Result<RecordBatch>) {
    let end = s
        .latest_offset(start, ReadLimit::All)
        .expect("ok")
        .expect("a batch");
    let schema = s.schema();
    let rows = s
        .get_batch(start, &end)
        .and_then(|b| Ok(concat_batches(&schema, &b)?));
    (end, rows)
}

fn strings(b: &RecordBatch, col: &str) -> Vec<Option<String>> {
    let c = b
        .column_by_name(col)
        .unwrap_or_else(|| panic!("no column {col}"));
    let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).expect("ok");
    let c = c.as_string::<i32>();
    (0..c.len())
        .map(|i| c.is_valid(i).then(|| c.value(i).to_string()))
        .collect()
}

fn names(s: &dyn Source) -> Vec<String> {
    s.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

#[test]
fn inferred_once_as_strings_then_new_columns_evolve_the_schema_and_the_batch_reruns() {
    let st = Stream::new("json", &[]);
    put(
        &st.input(),
        "a.json",
        "{\"user_id\":1,\"ts\":\"2026-01-01T00:00:00Z\"}\n",
        1,
    );
    let mut s = st.start().expect("ok");
    assert_eq!(names(s.as_ref()), ["ts", "user_id", "_rescued_data"]);
    assert!(s
        .schema()
        .fields()
        .iter()
        .all(|f| f.data_type() == &arrow::datatypes::DataType::Utf8));
    let (end0, rows) = next(&mut s, None);
    let rows = rows.expect("ok");
    assert_eq!(strings(&rows, "user_id"), [Some("1".into())]);
    assert_eq!(strings(&rows, "_rescued_data"), [None]);
    // a file with a new column, and one whose field differs only in case
    put(
        &st.input(),
        "b.json",
        "{\"user_id\":2,\"country\":\"NL\"}\n{\"USER_ID\":3}\n",
        2,
    );
    let (end1, rows) = next(&mut s, Some(&end0));
    let err = rows.expect_err("an error");
    assert!(err.is_schema_change(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("country") && msg.contains("b.json") && msg.contains("schema version 1"),
        "{msg}"
    );
    drop(s);
    // the restart reads version 1 and the same batch again, now with the column
    let mut s = st.start().expect("ok");
    assert_eq!(
        names(s.as_ref()),
        ["ts", "user_id", "country", "_rescued_data"]
    );
    let schema = s.schema();
    let rows = concat_batches(&schema, &s.get_batch(Some(&end0), &end1).expect("ok")).expect("ok");
    assert_eq!(strings(&rows, "user_id"), [Some("2".into()), None]);
    assert_eq!(strings(&rows, "country"), [Some("NL".into()), None]);
    let rescued = strings(&rows, "_rescued_data");
    assert_eq!(rescued[0], None);
    let r: serde_json::Value =
        serde_json::from_str(rescued[1].as_deref().expect("ok")).expect("ok");
    assert_eq!(r["USER_ID"], 3);
    assert!(r["_file_path"].as_str().expect("ok").ends_with("in/b.json"));
    // files of another shape added later do not change what a restart reads
    put(&st.input(), "c.json", "{\"other\":1}\n", 3);
    drop(s);
    let s = st.start().expect("ok");
    assert_eq!(
        names(s.as_ref()),
        ["ts", "user_id", "country", "_rescued_data"]
    );
}

#[test]
fn typed_columns_rescue_values_of_another_type_and_hints_win() {
    let st = Stream::new(
        "json",
        &[
            ("cloudFiles.inferColumnTypes", "true"),
            ("cloudFiles.schemaHints", "score DOUBLE"),
        ],
    );
    put(
        &st.input(),
        "a.json",
        "{\"n\":1,\"score\":2,\"s\":\"x\"}\n",
        1,
    );
    let mut s = st.start().expect("ok");
    let schema = s.schema();
    assert_eq!(
        schema.field_with_name("n").expect("ok").data_type(),
        &arrow::datatypes::DataType::Int64
    );
    assert_eq!(
        schema.field_with_name("score").expect("ok").data_type(),
        &arrow::datatypes::DataType::Float64
    );
    let (end0, _) = next(&mut s, None);
    put(
        &st.input(),
        "b.json",
        "{\"n\":\"seven\",\"score\":1.5,\"s\":\"y\"}\n{\"n\":8}\n",
        2,
    );
    let (_, rows) = next(&mut s, Some(&end0));
    let rows = rows.expect("ok");
    assert_eq!(strings(&rows, "n"), [None, Some("8".into())]);
    assert_eq!(strings(&rows, "s"), [Some("y".into()), None]);
    let r: serde_json::Value =
        serde_json::from_str(strings(&rows, "_rescued_data")[0].as_deref().expect("ok"))
            .expect("ok");
    assert_eq!(r["n"], "seven");
    assert_eq!(strings(&rows, "_rescued_data")[1], None);
}

#[test]
fn rescue_mode_keeps_the_schema_and_fail_mode_stays_stopped() {
    let st = Stream::new("json", &[("cloudFiles.schemaEvolutionMode", "rescue")]);
    put(&st.input(), "a.json", "{\"a\":\"1\"}\n", 1);
    let mut s = st.start().expect("ok");
    let (end0, _) = next(&mut s, None);
    put(
        &st.input(),
        "b.json",
        "{\"a\":\"2\",\"b\":{\"x\":[1]}}\n",
        2,
    );
    let (_, rows) = next(&mut s, Some(&end0));
    let rows = rows.expect("ok");
    assert_eq!(names(s.as_ref()), ["a", "_rescued_data"]);
    let r: serde_json::Value =
        serde_json::from_str(strings(&rows, "_rescued_data")[0].as_deref().expect("ok"))
            .expect("ok");
    assert_eq!(r["b"], serde_json::json!({"x": [1]}));

    let st = Stream::new(
        "json",
        &[("cloudFiles.schemaEvolutionMode", "failOnNewColumns")],
    );
    put(&st.input(), "a.json", "{\"a\":\"1\"}\n", 1);
    let mut s = st.start().expect("ok");
    let (end0, _) = next(&mut s, None);
    put(&st.input(), "b.json", "{\"a\":\"2\",\"b\":1}\n", 2);
    let (end1, rows) = next(&mut s, Some(&end0));
    let err = rows.expect_err("an error");
    assert!(
        !err.is_schema_change() && err.to_string().contains("failOnNewColumns"),
        "{err}"
    );
    drop(s);
    // stays stopped: the same batch fails again after a restart
    let mut s = st.start().expect("ok");
    assert!(s.get_batch(Some(&end0), &end1).is_err());
}

#[test]
fn csv_by_header_with_partition_directories() {
    let st = Stream::new("csv", &[("header", "true")]);
    put(&st.input(), "day=2026-01-01/a.csv", "id,name\n1,x\n", 1);
    let mut s = st.start().expect("ok");
    assert_eq!(names(s.as_ref()), ["id", "name", "day", "_rescued_data"]);
    let (end0, rows) = next(&mut s, None);
    assert_eq!(
        strings(&rows.expect("ok"), "day"),
        [Some("2026-01-01".into())]
    );
    // columns in another order, and an extra one: matched by name, the extra evolves
    put(
        &st.input(),
        "day=2026-01-02/b.csv",
        "name,id,extra\ny,2,e\n",
        2,
    );
    let (_, rows) = next(&mut s, Some(&end0));
    assert!(rows.expect_err("an error").to_string().contains("extra"));
}

#[test]
fn options_are_checked_by_name() {
    let st = Stream::new("json", &[("cloudFiles.shemaHints", "a INT")]);
    put(&st.input(), "a.json", "{\"a\":1}\n", 1);
    let err = CloudFilesFactory
        .resolve_schema(&st.spec())
        .expect_err("an error")
        .to_string();
    assert!(err.contains("cloudFiles.shemaHints"), "{err}");
    let mut spec = st.spec();
    spec.options.remove("cloudFiles.shemaHints");
    spec.options.remove("cloudFiles.schemaLocation");
    let err = CloudFilesFactory
        .resolve_schema(&spec)
        .expect_err("an error")
        .to_string();
    assert!(err.contains("cloudFiles.schemaLocation"), "{err}");
    spec.options
        .set("cloudFiles.schemaLocation", "/nonexistent-x");
    spec.options
        .set("cloudFiles.schemaEvolutionMode", "sometimes");
    let err = CloudFilesFactory
        .resolve_schema(&spec)
        .expect_err("an error")
        .to_string();
    assert!(err.contains("schemaEvolutionMode"), "{err}");
}

#[test]
fn include_existing_files_false_skips_what_was_there_at_first_start() {
    let st = Stream::new("json", &[("cloudFiles.includeExistingFiles", "false")]);
    put(&st.input(), "old.json", "{\"a\":\"old\"}\n", 1);
    let mut s = st.start().expect("ok");
    assert!(s.latest_offset(None, ReadLimit::All).expect("ok").is_none());
    drop(s);
    put(&st.input(), "new.json", "{\"a\":\"new\"}\n", 2);
    let mut s = st.start().expect("ok");
    let (_, rows) = next(&mut s, None);
    assert_eq!(strings(&rows.expect("ok"), "a"), [Some("new".into())]);
}

#[test]
fn rate_limits_sampling_and_notifications_options() {
    let st = Stream::new(
        "json",
        &[
            ("cloudFiles.maxFilesPerTrigger", "2"),
            ("cloudFiles.maxFileAge", "3650 days"),
            ("cloudFiles.schemaInference.sampleSize.numFiles", "1"),
            ("cloudFiles.schemaInference.sampleSize.numBytes", "1mb"),
            ("cloudFiles.useNotifications", "false"),
        ],
    );
    for i in 0..5 {
        put(
            &st.input(),
            &format!("{i}.json"),
            &format!("{{\"a\":\"{i}\",\"c{i}\":1}}\n"),
            i,
        );
    }
    let mut s = st.start().expect("ok");
    // inferred from the first file only
    assert_eq!(names(s.as_ref()), ["a", "c0", "_rescued_data"]);
    let end = s
        .latest_offset(None, ReadLimit::Configured)
        .expect("ok")
        .expect("ok");
    // the second file has a new column: addNewColumns stops the batch of two files
    let err = s.get_batch(None, &end).expect_err("a schema change");
    assert!(
        err.is_schema_change() && err.to_string().contains("c1"),
        "{err}"
    );
    assert!(
        s.backlog().is_some_and(|b| b == 3),
        "two files taken, three left"
    );

    // maxBytesPerTrigger: files of 10 bytes, 15 bytes per batch: one file each
    let st = Stream::new(
        "json",
        &[
            ("cloudFiles.maxBytesPerTrigger", "15b"),
            ("cloudFiles.schemaEvolutionMode", "rescue"),
        ],
    );
    for i in 0..3 {
        put(
            &st.input(),
            &format!("{i}.json"),
            &format!("{{\"a\":\"{i}\"}}\n"),
            i,
        );
    }
    let mut s = st.start().expect("ok");
    let mut start = None;
    let mut batches = 0;
    while let Some(end) = s
        .latest_offset(start.as_ref(), ReadLimit::Configured)
        .expect("ok")
    {
        assert_eq!(
            s.get_batch(start.as_ref(), &end)
                .expect("ok")
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>(),
            1
        );
        start = Some(end);
        batches += 1;
    }
    assert_eq!(batches, 3);

    let st = Stream::new("json", &[("cloudFiles.useNotifications", "true")]);
    put(&st.input(), "a.json", "{\"a\":1}\n", 1);
    let err = CloudFilesFactory
        .resolve_schema(&st.spec())
        .expect_err("an error")
        .to_string();
    assert!(err.contains("cloudFiles.useNotifications"), "{err}");
}

#[test]
fn csv_without_a_header_and_by_name_after_evolution() {
    let st = Stream::new("csv", &[]);
    put(&st.input(), "a.csv", "1,x\n2,y\n", 1);
    let mut s = st.start().expect("ok");
    assert_eq!(names(s.as_ref()), ["_c0", "_c1", "_rescued_data"]);
    let (_, rows) = next(&mut s, None);
    let rows = rows.expect("ok");
    assert_eq!(strings(&rows, "_c0"), [Some("1".into()), Some("2".into())]);
    assert_eq!(strings(&rows, "_rescued_data"), [None, None]);

    // with a header: columns in another order and a new one, read by name after the restart
    let st = Stream::new("csv", &[("header", "true")]);
    put(&st.input(), "a.csv", "id,name\n1,x\n", 1);
    let mut s = st.start().expect("ok");
    let (end0, _) = next(&mut s, None);
    put(&st.input(), "b.csv", "name,extra,id\ny,e,2\n", 2);
    let (end1, rows) = next(&mut s, Some(&end0));
    assert!(rows.expect_err("new column").is_schema_change());
    drop(s);
    let mut s = st.start().expect("ok");
    assert_eq!(names(s.as_ref()), ["id", "name", "extra", "_rescued_data"]);
    let schema = s.schema();
    let rows = concat_batches(&schema, &s.get_batch(Some(&end0), &end1).expect("ok")).expect("ok");
    assert_eq!(strings(&rows, "id"), [Some("2".into())]);
    assert_eq!(strings(&rows, "name"), [Some("y".into())]);
    assert_eq!(strings(&rows, "extra"), [Some("e".into())]);
}

#[test]
fn json_values_are_never_truncated_whichever_path_reads_them() {
    let st = Stream::new(
        "json",
        &[
            ("cloudFiles.schemaHints", "n BIGINT, ok BOOLEAN"),
            ("cloudFiles.schemaEvolutionMode", "rescue"),
        ],
    );
    put(&st.input(), "a.json", "{\"n\":1,\"ok\":true}\n", 1);
    let mut s = st.start().expect("ok");
    let (end0, _) = next(&mut s, None);
    // a file clean but for one value that would be truncated to 12 by a lenient decoder
    put(
        &st.input(),
        "b.json",
        "{\"n\":2,\"ok\":false}\n{\"n\":12.5,\"ok\":true}\n{\"n\":\"7\"}\n",
        2,
    );
    let (_, rows) = next(&mut s, Some(&end0));
    let rows = rows.expect("ok");
    assert_eq!(
        strings(&rows, "n"),
        [Some("2".into()), None, Some("7".into())]
    );
    let r: serde_json::Value = serde_json::from_str(
        strings(&rows, "_rescued_data")[1]
            .as_deref()
            .expect("rescued"),
    )
    .expect("ok");
    assert_eq!(r["n"], serde_json::json!(12.5), "kept as the number it was");
    assert_eq!(strings(&rows, "_rescued_data")[0], None);
}

#[test]
fn a_given_schema_takes_its_partition_columns_from_the_directories() {
    let root = tempfile::tempdir().expect("ok");
    let input = root.path().join("in");
    put(
        &input,
        "day=2026-01-02/a.json",
        "{\"v\":\"x\",\"extra\":1}\n",
        1,
    );
    let spec = SourceSpec {
        format: "cloudFiles".into(),
        path: Some(input.display().to_string()),
        schema: Some(std::sync::Arc::new(
            sluice_engine::parse_ddl_schema("v STRING, day DATE").expect("ok"),
        )),
        options: [("cloudFiles.format", "json")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        validate_only: false,
    };
    let schema = CloudFilesFactory.resolve_schema(&spec).expect("ok");
    let ctx = SourceContext {
        query_id: "q".into(),
        index: 0,
        checkpoint_dir: root.path().join("chk"),
    };
    let mut s = CloudFilesFactory.create(&spec, schema, &ctx).expect("ok");
    // none mode: no rescued column unless asked, the unknown field ignored
    assert_eq!(names(s.as_ref()), ["v", "day"]);
    let (_, rows) = next(&mut s, None);
    let rows = rows.expect("ok");
    assert_eq!(strings(&rows, "day"), [Some("2026-01-02".into())]);
    assert_eq!(strings(&rows, "v"), [Some("x".into())]);
}
