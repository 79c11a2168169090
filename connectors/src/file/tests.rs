//! Tests of the file source.

use super::*;
use sluice_engine::{SourceContext, SourceFactory, SourceSpec};
use std::time::SystemTime;

fn put(dir: &Path, name: &str, body: &str, secs: u64) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    let f = std::fs::File::options().write(true).open(&p).expect("open");
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs))
        .expect("mtime");
}

fn source(dir: &Path, path: &str, opts: &[(&str, &str)]) -> Box<dyn Source> {
    let spec = SourceSpec {
        format: "text".into(),
        path: Some(path.to_string()),
        schema: None,
        options: opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        validate_only: false,
    };
    let f = FileSourceFactory;
    let schema = f.resolve_schema(&spec).expect("schema");
    let ctx = SourceContext {
        query_id: "q".into(),
        index: 0,
        checkpoint_dir: dir.join("chk"),
    };
    f.create(&spec, schema, &ctx).expect("create")
}

fn batch_names(s: &mut Box<dyn Source>, dir: &Path) -> Vec<Vec<String>> {
    let log: VersionedLog<Vec<FileEntry>> = VersionedLog::open(dir.join("chk")).expect("log");
    let mut out = Vec::new();
    let mut start: Option<Offset> = None;
    while let Some(end) = s
        .latest_offset(start.as_ref(), ReadLimit::Configured)
        .expect("offset")
    {
        let id = end["logOffset"].as_u64().expect("id");
        let names = log
            .get(id)
            .expect("get")
            .expect("entry")
            .into_iter()
            .map(|f| {
                Path::new(&f.path)
                    .file_name()
                    .expect("n")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        out.push(names);
        start = Some(end);
    }
    out
}

#[test]
fn files_in_mtime_then_path_order_with_limits_and_hidden_names_ignored() {
    let t = tempfile::tempdir().expect("tmp");
    let d = t.path().join("in");
    put(&d, "b", "x", 1);
    put(&d, "a", "x", 1);
    put(&d, "c", "x", 0);
    put(&d, "_SUCCESS", "", 5);
    put(&d, ".hidden", "x", 5);
    put(&d, "d", "xxxxxxxx", 2);
    let mut s = source(
        t.path(),
        d.to_str().expect("p"),
        &[("maxFilesPerTrigger", "2")],
    );
    assert_eq!(
        batch_names(&mut s, t.path()),
        vec![vec!["c", "a"], vec!["b", "d"]]
    );
}

#[test]
fn max_bytes_latest_first_and_max_file_age() {
    let t = tempfile::tempdir().expect("tmp");
    let d = t.path().join("in");
    put(&d, "old", "1234", 0);
    put(&d, "mid", "1234", 100);
    put(&d, "new", "1234", 200);
    let p = d.to_str().expect("p");
    let mut s = source(
        t.path(),
        p,
        &[("maxBytesPerTrigger", "8"), ("latestFirst", "true")],
    );
    assert_eq!(
        batch_names(&mut s, t.path()),
        vec![vec!["new", "mid"], vec!["old"]]
    );
    let t2 = tempfile::tempdir().expect("tmp");
    let mut s = source(t2.path(), p, &[("maxFileAge", "150 seconds")]);
    assert_eq!(batch_names(&mut s, t2.path()), vec![vec!["mid", "new"]]);
}

#[test]
fn glob_paths_and_planned_but_unused_entries_are_offered_again() {
    let t = tempfile::tempdir().expect("tmp");
    let d = t.path().join("in");
    put(&d.join("day=1"), "x.txt", "a", 0);
    put(&d.join("day=2"), "y.txt", "b", 1);
    put(&d.join("day=2"), "z.csv", "c", 2);
    let pattern = format!("{}/day=*/*.txt", d.display());
    let mut s = source(t.path(), &pattern, &[("maxFilesPerTrigger", "1")]);
    let first = s
        .latest_offset(None, ReadLimit::Configured)
        .expect("o")
        .expect("some");
    // the process dies before `first` reaches the offsets log; a new source on the same
    // checkpoint must offer exactly the same entry, not a bigger or different one
    drop(s);
    put(&d.join("day=3"), "w.txt", "d", 3);
    let mut s = source(t.path(), &pattern, &[("maxFilesPerTrigger", "1")]);
    assert_eq!(
        s.latest_offset(None, ReadLimit::Configured).expect("o"),
        Some(first.clone())
    );
    let rows = s.get_batch(None, &first).expect("batch");
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert_eq!(
        batch_names(&mut s, t.path()),
        vec![vec!["x.txt"], vec!["y.txt"], vec!["w.txt"]]
    );
}
