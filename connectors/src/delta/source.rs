//! The Delta streaming source: new commits of a Delta table become micro-batches.
//!
//! The offset is a position in the table's log, `{"reservoirVersion": v, "index": i}`: every
//! data file added (with `dataChange`) by versions before `v`, plus the first `i` files added by
//! version `v`. A batch takes files in log order, at most `maxFilesPerTrigger` (default 1000) /
//! `maxBytesPerTrigger` (at least one file), so a re-run batch reads exactly the same files.
//! Commits that only rearrange files (`OPTIMIZE`: no `dataChange`) are passed over. Commits that
//! remove data (overwrite, delete, merge) fail the query with the version and operation, unless
//! `ignoreDeletes=true` (commits that only remove files are passed over),
//! `ignoreChanges=true` (Spark's meaning: the files a rewriting commit adds are read — rows it
//! did not change are read again — and its removes are passed over), or
//! `skipChangeCommits=true` (any commit removing data is passed over, its added files too).
//! `startingVersion` = a version or `latest`; by default the table is read from version 0 (the
//! whole history of appends; Spark starts from a snapshot of the latest version, which for an
//! append-only table is the same rows).
//!
//! Files are read with the Parquet reader straight from the table directory (partition values
//! from the log); tables with deletion vectors are refused. The log directory is watched
//! (inotify), so a commit starts a batch within milliseconds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::kernel::Action;
use deltalake::logstore::{get_actions, LogStore, LogStoreRef};
use deltalake::DeltaTableBuilder;
use notify::Watcher;
use serde::{Deserialize, Serialize};
use sluice_engine::{
    EngineError, Notifier, Offset, ReadLimit, Result, Source, SourceContext, SourceFactory,
    SourceSpec,
};

use super::{delta_err, runtime, table_url};

const OPTIONS: &[&str] = &[
    "path",
    "startingVersion",
    "maxFilesPerTrigger",
    "maxBytesPerTrigger",
    "ignoreDeletes",
    "ignoreChanges",
    "skipChangeCommits",
];

/// A position in the table's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeltaOffset {
    /// The version whose files are being taken.
    #[serde(rename = "reservoirVersion")]
    pub version: u64,
    /// How many of its data files are taken already.
    pub index: u64,
}

/// One added data file.
#[derive(Debug, Clone)]
struct DataFile {
    path: String,
    size: u64,
    partition_values: BTreeMap<String, Option<String>>,
}

/// What a commit means to the source.
#[derive(Debug, Clone)]
struct Commit {
    files: Vec<DataFile>,
}

/// Creates Delta sources.
#[derive(Debug, Default)]
pub struct DeltaSourceFactory;

fn path_of(spec: &SourceSpec) -> Result<String> {
    spec.path
        .clone()
        .or_else(|| spec.options.get("path").map(str::to_string))
        .ok_or_else(|| EngineError::user("the delta source needs a path: load(\"table dir\")"))
}

impl SourceFactory for DeltaSourceFactory {
    fn formats(&self) -> Vec<&'static str> {
        vec!["delta"]
    }

    fn replayable(&self, _spec: &SourceSpec) -> bool {
        true // table versions and file indices in the offsets log
    }
    fn resolve_schema(&self, spec: &SourceSpec) -> Result<SchemaRef> {
        spec.options.check_known("the delta source", OPTIONS, &[])?;
        spec.options.get_u64("maxFilesPerTrigger")?;
        spec.options.get_bytes("maxBytesPerTrigger")?;
        spec.options.get_bool("ignoreDeletes", false)?;
        spec.options.get_bool("skipChangeCommits", false)?;
        spec.options.get_bool("ignoreChanges", false)?;
        if let Some(v) = spec.options.get("startingVersion") {
            if v != "latest" && v.parse::<u64>().is_err() {
                return Err(EngineError::user(format!(
                    "option 'startingVersion' must be a version number or 'latest', got '{v}'"
                )));
            }
        }
        let path = path_of(spec)?;
        if let Some(s) = &spec.schema {
            return Ok(Arc::clone(s));
        }
        let rt = runtime()?;
        let url = table_url(&path)?;
        let storage: std::collections::HashMap<String, String> =
            spec.options.storage().into_iter().collect();
        let t = rt
            .block_on(async move {
                DeltaTableBuilder::from_url(url)?
                    .with_storage_options(storage)
                    .load()
                    .await
            })
            .map_err(|e| delta_err(&format!("opening {path}"), e))?;
        if t.version().is_none() {
            return Err(EngineError::user(format!(
                "{path} is not a Delta table (yet): create it first, or give the source a schema to wait for it"
            )));
        }
        let snap = t
            .snapshot()
            .map_err(|e| delta_err("reading the table's schema", e))?;
        let schema = snap.snapshot().arrow_schema();
        // plain types: a stream's strings are Utf8
        Ok(Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), super::norm(f.data_type()), true))
                .collect::<Vec<_>>(),
        )))
    }

    fn create(
        &self,
        spec: &SourceSpec,
        schema: SchemaRef,
        ctx: &SourceContext,
    ) -> Result<Box<dyn Source>> {
        let path = path_of(spec)?;
        let rt = runtime()?;
        let url = table_url(&path)?;
        let storage: std::collections::HashMap<String, String> =
            spec.options.storage().into_iter().collect();
        let log = DeltaTableBuilder::from_url(url.clone())
            .and_then(|b| b.with_storage_options(storage).build_storage())
            .map_err(|e| delta_err("opening the table's log", e))?;
        let starting = match spec.options.get("startingVersion") {
            None => Starting::Version(0),
            Some("latest") => Starting::Latest,
            Some(v) => Starting::Version(v.parse().unwrap_or(0)),
        };
        Ok(Box::new(DeltaSource {
            rt,
            dir: PathBuf::from(&path),
            url,
            log,
            schema,
            starting,
            max_files: spec
                .options
                .get_u64("maxFilesPerTrigger")?
                .unwrap_or(1000)
                .max(1),
            max_bytes: spec.options.get_bytes("maxBytesPerTrigger")?,
            ignore_deletes: spec.options.get_bool("ignoreDeletes", false)?,
            skip_changes: spec.options.get_bool("skipChangeCommits", false)?,
            ignore_changes: spec.options.get_bool("ignoreChanges", false)?,
            commits: BTreeMap::new(),
            latest_seen: None,
            watcher: None,
            ticker: None,
            available_now: None,
            initial: None,
            initial_path: ctx.file("initial-offset.json"),
        }))
    }
}

#[derive(Debug, Clone, Copy)]
enum Starting {
    Version(u64),
    Latest,
}

/// Reads new commits of one Delta table.
pub struct DeltaSource {
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    url: url::Url,
    log: LogStoreRef,
    schema: SchemaRef,
    starting: Starting,
    max_files: u64,
    max_bytes: Option<u64>,
    ignore_deletes: bool,
    skip_changes: bool,
    ignore_changes: bool,
    /// Commits read so far, by version (`None`: not committed yet).
    commits: BTreeMap<u64, Commit>,
    latest_seen: Option<u64>,
    watcher: Option<Box<dyn Watcher + Send>>,
    /// A table in a bucket: the timer that reads its log again.
    ticker: Option<crate::util::Ticker>,
    /// `Trigger::AvailableNow`: the last version to read, fixed when the query started
    /// (`Some(None)`: the table did not exist then, so there is nothing to read).
    available_now: Option<Option<u64>>,
    /// Where `startingVersion = latest` resolved to, once known (kept in the checkpoint so that
    /// a re-run or replay of batch 0 reads the same files).
    initial: Option<DeltaOffset>,
    initial_path: PathBuf,
}

fn parse_offset(o: &Offset) -> Result<DeltaOffset> {
    serde_json::from_value(o.clone())
        .map_err(|e| EngineError::user(format!("delta source: bad offset {o}: {e}")))
}

impl DeltaSource {
    /// The latest version of the table, `None` while it does not exist.
    fn latest_version(&mut self) -> Result<Option<u64>> {
        let log = Arc::clone(&self.log);
        let start = self.latest_seen.unwrap_or(0);
        let v = self.rt.block_on(async move {
            match log.get_latest_version(start).await {
                Ok(v) => Ok(Some(v)),
                Err(deltalake::DeltaTableError::InvalidVersion(_))
                | Err(deltalake::DeltaTableError::NotATable(_)) => Ok(None),
                Err(e) => {
                    // an empty or missing log directory: no table yet
                    let s = e.to_string();
                    if s.contains("No files in log segment") || s.contains("not found") {
                        Ok(None)
                    } else {
                        Err(e)
                    }
                }
            }
        });
        let v = v.map_err(|e| delta_err("listing the table's log", e))?;
        self.latest_seen = v;
        Ok(v)
    }

    /// The data files of commit `v` for this source (empty for a commit to pass over).
    fn commit(&mut self, v: u64) -> Result<&Commit> {
        if !self.commits.contains_key(&v) {
            let log = Arc::clone(&self.log);
            let bytes = self
                .rt
                .block_on(async move { log.read_commit_entry(v).await })
                .map_err(|e| delta_err(&format!("reading commit {v}"), e))?
                .ok_or_else(|| {
                    EngineError::user(format!(
                        "delta source: commit {v} of {} is missing (log files cleaned up by delta.logRetentionDuration?)",
                        self.dir.display()
                    ))
                })?;
            let actions =
                get_actions(v, &bytes).map_err(|e| delta_err(&format!("parsing commit {v}"), e))?;
            let mut files = Vec::new();
            let mut removes = false;
            let mut op = String::new();
            for a in actions {
                match a {
                    Action::Add(add) if add.data_change => {
                        if add.deletion_vector.is_some() {
                            return Err(EngineError::user(format!(
                                "delta source: version {v} of {} uses deletion vectors, which the source does not read",
                                self.dir.display()
                            )));
                        }
                        files.push(DataFile {
                            path: add.path,
                            size: add.size.max(0) as u64,
                            partition_values: add.partition_values.into_iter().collect(),
                        })
                    }
                    Action::Remove(r) if r.data_change => removes = true,
                    Action::CommitInfo(ci) => op = ci.operation.unwrap_or_default(),
                    _ => {}
                }
            }
            let commit = match decide(
                removes,
                files.is_empty(),
                self.ignore_deletes,
                self.skip_changes,
                self.ignore_changes,
            ) {
                CommitUse::Take => Commit { files },
                CommitUse::Skip => {
                    tracing::info!(version = v, "delta source: passing over {op} commit");
                    Commit { files: Vec::new() }
                }
                CommitUse::Fail => {
                    return Err(EngineError::user(format!(
                        "delta source: version {v} of {} ({op}) removes or rewrites data; the source reads \
                         append-only tables. Set skipChangeCommits=true to pass over such commits, or \
                         ignoreDeletes=true if they only delete",
                        self.dir.display()
                    )))
                }
            };
            self.commits.insert(v, commit);
        }
        self.commits
            .get(&v)
            .ok_or_else(|| EngineError::bug("delta commit cache"))
    }

    fn start_of(&mut self, start: Option<&Offset>) -> Result<Option<DeltaOffset>> {
        if let Some(s) = start {
            return parse_offset(s).map(Some);
        }
        match self.starting {
            Starting::Version(v) => Ok(Some(DeltaOffset {
                version: v,
                index: 0,
            })),
            Starting::Latest => self.resolved_latest_start(),
        }
    }

    /// `startingVersion = latest`: the version after the latest one when the query first
    /// looked, recorded in `sources/<i>/initial-offset.json` the first time.
    fn resolved_latest_start(&mut self) -> Result<Option<DeltaOffset>> {
        if let Some(o) = self.initial {
            return Ok(Some(o));
        }
        if self.initial_path.exists() {
            let text = std::fs::read_to_string(&self.initial_path)
                .map_err(|e| EngineError::io(&self.initial_path, e))?;
            let o: DeltaOffset = serde_json::from_str(&text).map_err(|e| {
                EngineError::user(format!(
                    "delta source: {} is damaged: {e}",
                    self.initial_path.display()
                ))
            })?;
            self.initial = Some(o);
            return Ok(Some(o));
        }
        let Some(v) = self.latest_version()? else {
            return Ok(None);
        };
        let o = DeltaOffset {
            version: v + 1,
            index: 0,
        };
        let text = serde_json::to_string(&o).map_err(|e| EngineError::bug(e.to_string()))?;
        sluice_engine::connector::storage::write_atomic(&self.initial_path, text.as_bytes())?;
        self.initial = Some(o);
        Ok(Some(o))
    }

    /// Files from `from` up to `to` (exclusive), grouped by version.
    fn files_between(&mut self, from: DeltaOffset, to: DeltaOffset) -> Result<Vec<DataFile>> {
        let mut out = Vec::new();
        let mut v = from.version;
        while v <= to.version {
            if v == to.version && to.index == 0 {
                break;
            }
            let c = self.commit(v)?.clone();
            let lo = if v == from.version { from.index } else { 0 } as usize;
            let hi = if v == to.version {
                to.index as usize
            } else {
                c.files.len()
            };
            out.extend(c.files.into_iter().take(hi).skip(lo));
            v += 1;
        }
        Ok(out)
    }

    fn read_file(&self, f: &DataFile) -> Result<RecordBatch> {
        let path = self.dir.join(&f.path);
        let file = std::fs::File::open(&path).map_err(|e| EngineError::io(&path, e))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| EngineError::external(format!("{}: {e}", path.display())))?
            .build()
            .map_err(|e| EngineError::external(format!("{}: {e}", path.display())))?;
        let mut parts = Vec::new();
        for b in reader {
            parts.push(b.map_err(|e| EngineError::external(format!("{}: {e}", path.display())))?);
        }
        let rows: usize = parts.iter().map(|b| b.num_rows()).sum();
        let mut cols: Vec<ArrayRef> = Vec::new();
        for field in self.schema.fields() {
            let col = if let Some(pv) = f.partition_values.get(field.name()) {
                let s: ArrayRef = Arc::new(StringArray::from(vec![pv.clone(); rows]));
                cast(&s, field.data_type()).map_err(|e| {
                    EngineError::user(format!(
                        "delta source: partition value {pv:?} of {} in {}: {e}",
                        field.name(),
                        path.display()
                    ))
                })?
            } else {
                let mut pieces = Vec::new();
                for b in &parts {
                    match b.column_by_name(field.name()) {
                        Some(c) => pieces.push(cast(c, field.data_type())?),
                        None => pieces.push(new_null_array(field.data_type(), b.num_rows())),
                    }
                }
                if pieces.is_empty() {
                    new_null_array(field.data_type(), 0)
                } else {
                    let refs: Vec<&dyn arrow::array::Array> =
                        pieces.iter().map(|a| a.as_ref()).collect();
                    arrow::compute::concat(&refs)?
                }
            };
            cols.push(col);
        }
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            cols,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }
}

/// What to do with a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitUse {
    /// Read its added files.
    Take,
    /// Pass over it.
    Skip,
    /// Fail the query: it changes data the stream already delivered.
    Fail,
}

/// The source's rule for one commit (pure; table-tested): `removes` = it removes files with
/// `dataChange`, `no_adds` = it adds no data file.
pub fn decide(
    removes: bool,
    no_adds: bool,
    ignore_deletes: bool,
    skip_changes: bool,
    ignore_changes: bool,
) -> CommitUse {
    match (removes, no_adds) {
        (false, _) => CommitUse::Take,
        (true, _) if skip_changes => CommitUse::Skip,
        // the rewritten files are read again (their unchanged rows too), as Spark does
        (true, _) if ignore_changes => CommitUse::Take,
        (true, true) if ignore_deletes => CommitUse::Skip,
        (true, _) => CommitUse::Fail,
    }
}

impl Source for DeltaSource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn description(&self) -> String {
        format!("DeltaSource[{}]", self.url)
    }

    fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> Result<Option<Offset>> {
        let Some(from) = self.start_of(start)? else {
            return Ok(None);
        };
        let Some(mut latest) = self.latest_version()? else {
            return Ok(None);
        };
        // available-now: never past the version the query started with
        match self.available_now {
            Some(None) => return Ok(None),
            Some(Some(end)) => latest = latest.min(end),
            None => {}
        }
        let (max_files, max_bytes) = match limit {
            ReadLimit::All => (u64::MAX, None),
            ReadLimit::Configured => (self.max_files, self.max_bytes),
        };
        let mut pos = from;
        let mut taken = 0u64;
        let mut bytes = 0u64;
        while pos.version <= latest {
            let files = self.commit(pos.version)?.files.clone();
            while (pos.index as usize) < files.len() {
                let f = &files[pos.index as usize];
                let over_bytes = max_bytes.is_some_and(|m| bytes + f.size > m);
                if taken >= max_files || (taken > 0 && over_bytes) {
                    return Ok(Some(
                        serde_json::to_value(pos).map_err(|e| EngineError::bug(e.to_string()))?,
                    ));
                }
                taken += 1;
                bytes += f.size;
                pos.index += 1;
            }
            pos = DeltaOffset {
                version: pos.version + 1,
                index: 0,
            };
        }
        if taken == 0 {
            return Ok(None);
        }
        Ok(Some(
            serde_json::to_value(pos).map_err(|e| EngineError::bug(e.to_string()))?,
        ))
    }

    fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        let from = match self.start_of(start)? {
            Some(f) => f,
            None => DeltaOffset {
                version: 0,
                index: 0,
            },
        };
        let to = parse_offset(end)?;
        let files = self.files_between(from, to)?;
        files.iter().map(|f| self.read_file(f)).collect()
    }

    fn commit(&mut self, end: &Offset) -> Result<()> {
        // forget commits before the committed position
        let to = parse_offset(end)?;
        self.commits = self.commits.split_off(&to.version);
        Ok(())
    }

    fn prepare_for_available_now(&mut self) -> Result<()> {
        self.available_now = Some(self.latest_version()?);
        Ok(())
    }

    fn watch(&mut self, notifier: Notifier) -> Result<bool> {
        if sluice_engine::connector::storage::is_remote(&self.dir.to_string_lossy()) {
            // a table in a bucket: its log is listed again every second
            self.ticker = Some(crate::util::Ticker::start(
                std::time::Duration::from_secs(1),
                notifier,
            ));
            return Ok(true);
        }
        let log_dir = self.dir.join("_delta_log");
        std::fs::create_dir_all(&log_dir).map_err(|e| EngineError::io(&log_dir, e))?;
        let mut w = notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
            if r.is_ok_and(|e| crate::util::may_mean_new_file(&e.kind)) {
                notifier.notify();
            }
        })
        .map_err(|e| EngineError::external(format!("cannot watch {}: {e}", log_dir.display())))?;
        w.watch(&log_dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| {
                EngineError::external(format!("cannot watch {}: {e}", log_dir.display()))
            })?;
        self.watcher = Some(Box::new(w));
        Ok(true)
    }

    fn backlog(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_commits_the_source_reads() {
        use CommitUse::*;
        // (removes, no adds, ignoreDeletes, skipChangeCommits, ignoreChanges) -> use
        let table = [
            ((false, false, false, false, false), Take), // append
            ((false, true, false, false, false), Take),  // txn-only / optimize (no data change)
            ((true, true, false, false, false), Fail),   // delete
            ((true, true, true, false, false), Skip),    // delete, ignoreDeletes
            ((true, false, true, false, false), Fail), // merge/overwrite: ignoreDeletes is not enough
            ((true, false, false, true, false), Skip), // merge/overwrite, skipChangeCommits
            ((true, true, false, true, false), Skip),
            ((true, false, false, false, true), Take), // merge/overwrite, ignoreChanges: re-read
            ((true, true, false, false, true), Take),  // delete, ignoreChanges: nothing added
            ((true, false, false, true, true), Skip),  // skipChangeCommits wins
        ];
        for ((r, n, i, s, c), want) in table {
            assert_eq!(decide(r, n, i, s, c), want, "{r} {n} {i} {s} {c}");
        }
    }

    #[test]
    fn offsets_round_trip_as_spark_names_them() {
        let o = DeltaOffset {
            version: 3,
            index: 2,
        };
        let v = serde_json::to_value(o).expect("json");
        assert_eq!(v, serde_json::json!({"reservoirVersion": 3, "index": 2}));
        assert_eq!(parse_offset(&v).expect("parse"), o);
    }
}
