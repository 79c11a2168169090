//! The file sink (csv, json, parquet): exactly-once through a manifest log.
//!
//! Batch N is written as `part-<N>-<attempt>.<ext>` (hidden `.part-...tmp` until complete, then
//! renamed; `<attempt>` is new for every attempt), then recorded in
//! `<path>/_sluice_metadata/<N>` (the manifest entry, atomic). A batch whose manifest entry
//! exists is not written again. Part files no manifest entry lists are removed: at open, those
//! of batches whose entry exists (a losing or dead attempt's); after a batch's entry is written,
//! that batch's others (the attempt that died before it). A part of a batch without an entry is
//! never removed at open — another writer may be about to list it. So a plain reader that skips
//! names starting with `_` or `.` sees exactly the committed rows once a batch is re-run; a
//! reader that honours the manifest ([`committed_files`]) sees each batch once at any time.
//!
//! In object storage (`path = "s3://bucket/out"`) a part file is put whole (an object appears
//! when its upload ends, so there is no temporary name) and the manifest entry is created with
//! a conditional put: a batch's entry is written once, by one writer.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_engine::connector::storage::{is_remote, Location as Bucket, VersionedLog};
use sluice_engine::fault::crash_point;
use sluice_engine::{EngineError, OutputMode, Result, Sink, SinkContext, SinkFactory, SinkSpec};

/// Name of the manifest directory inside the output directory.
pub const MANIFEST_DIR: &str = "_sluice_metadata";

/// Spark's timestamp text in a UTC session: `2025-01-01T00:00:00.027Z`.
const TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// One manifest entry: the files of one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The batch id.
    #[serde(rename = "batchId")]
    pub batch_id: u64,
    /// File names, relative to the output directory.
    pub files: Vec<String>,
    /// Rows written.
    pub rows: u64,
}

/// The files of all committed batches of the file sink at `dir`, in batch order.
pub fn committed_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let log: VersionedLog<ManifestEntry> = VersionedLog::open(dir.join(MANIFEST_DIR))?;
    let mut out = Vec::new();
    for id in log.ids()? {
        if let Some(e) = log.get(id)? {
            out.extend(e.files.iter().map(|f| dir.join(f)));
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Csv,
    Json,
    Parquet,
}

/// Creates file sinks.
#[derive(Debug, Default)]
pub struct FileSinkFactory;

impl SinkFactory for FileSinkFactory {
    fn formats(&self) -> Vec<&'static str> {
        vec!["csv", "json", "parquet"]
    }
    fn supported_modes(&self, _format: &str) -> Vec<OutputMode> {
        vec![OutputMode::Append]
    }
    fn exactly_once(&self, _spec: &SinkSpec) -> bool {
        true // a batch is published by its manifest entry; a re-run one is skipped
    }
    fn validate(&self, spec: &SinkSpec) -> Result<()> {
        let known: &[&str] = match spec.format.as_str() {
            "csv" => &["path", "header", "sep", "delimiter"],
            _ => &["path"],
        };
        spec.options
            .check_known(&format!("the {} sink", spec.format), known, &[])?;
        if spec.options.get("path").is_none() {
            return Err(EngineError::user(format!(
                "the {} sink needs option 'path' (the output directory)",
                spec.format
            )));
        }
        if spec.format == "csv" {
            crate::formats::csv::CsvOptions::from_options(&spec.options)?;
        }
        spec.options.get_bool("header", false)?;
        Ok(())
    }
    fn create(&self, spec: &SinkSpec, ctx: &SinkContext) -> Result<Box<dyn Sink>> {
        self.validate(spec)?;
        let kind = match spec.format.as_str() {
            "csv" => Kind::Csv,
            "json" => Kind::Json,
            "parquet" => Kind::Parquet,
            f => return Err(EngineError::user(format!("unknown file sink format '{f}'"))),
        };
        let path = spec.options.get("path").unwrap_or_default();
        let out = if is_remote(path) {
            Out::Bucket(Bucket::parse(path, &spec.options.storage())?)
        } else {
            let dir = PathBuf::from(path);
            fs::create_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
            let manifest = VersionedLog::open(dir.join(MANIFEST_DIR))?;
            Out::Local { dir, manifest }
        };
        let delimiter = crate::formats::csv::CsvOptions::from_options(&spec.options)?.delimiter;
        let mut sink = FileSink {
            out,
            kind,
            schema: Arc::clone(&ctx.schema),
            header: spec.options.get_bool("header", false)?,
            delimiter,
            unlisted: std::collections::BTreeSet::new(),
        };
        sink.remove_uncommitted()?;
        Ok(Box::new(sink))
    }
}

/// Where a file sink writes.
enum Out {
    /// A local directory and its manifest log.
    Local {
        dir: PathBuf,
        manifest: VersionedLog<ManifestEntry>,
    },
    /// A bucket prefix (the manifest entries are objects below it).
    Bucket(Bucket),
}

/// Writes each batch as files and records them in the manifest.
pub struct FileSink {
    out: Out,
    kind: Kind,
    schema: SchemaRef,
    header: bool,
    delimiter: u8,
    /// Batches without a manifest entry that had part files at open (a dead attempt's): they
    /// are removed once the batch's entry is written.
    unlisted: std::collections::BTreeSet<u64>,
}

impl FileSink {
    fn ext(&self) -> &'static str {
        match self.kind {
            Kind::Csv => "csv",
            Kind::Json => "json",
            Kind::Parquet => "parquet",
        }
    }

    /// Removes the part files of batches whose manifest entry does not list them, and the
    /// temporary files of local writes; remembers the batches without an entry that have parts.
    fn remove_uncommitted(&mut self) -> Result<()> {
        let ext = self.ext();
        let (entries, names) = self.listing()?;
        let listed: std::collections::HashSet<&String> =
            entries.values().flat_map(|e| &e.files).collect();
        for name in &names {
            if let Some(tmp) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
                if is_part_file(tmp, ext) {
                    self.remove(name)?;
                }
                continue;
            }
            let Some(batch) = part_batch(name, ext) else {
                continue;
            };
            if listed.contains(name) {
                continue;
            }
            if entries.contains_key(&batch) {
                self.remove(name)?;
            } else {
                self.unlisted.insert(batch);
            }
        }
        Ok(())
    }

    /// The manifest entries by batch, and the names of the files beside them.
    fn listing(&self) -> Result<(std::collections::BTreeMap<u64, ManifestEntry>, Vec<String>)> {
        let mut entries = std::collections::BTreeMap::new();
        let mut names = Vec::new();
        match &self.out {
            Out::Local { dir, manifest } => {
                for id in manifest.ids()? {
                    if let Some(e) = manifest.get(id)? {
                        entries.insert(id, e);
                    }
                }
                for entry in fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))? {
                    let entry = entry.map_err(|e| EngineError::io(dir, e))?;
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
            Out::Bucket(b) => {
                for m in b.list_below(None)? {
                    let Some(rel) = b.rel_of(&m.location) else {
                        continue;
                    };
                    match rel.strip_prefix(&format!("{MANIFEST_DIR}/")) {
                        Some(id) => {
                            if let (Ok(id), Some(bytes)) = (id.parse(), b.get_key(&m.location)?) {
                                entries.insert(id, manifest_entry(&b.url_of(&m.location), &bytes)?);
                            }
                        }
                        None if !rel.contains('/') => names.push(rel),
                        None => {}
                    }
                }
            }
        }
        Ok((entries, names))
    }

    /// Removes output file `name` (gone already is fine).
    fn remove(&self, name: &str) -> Result<()> {
        match &self.out {
            Out::Local { dir, .. } => {
                let p = dir.join(name);
                tracing::info!(file = %p.display(), "removing output of an uncommitted batch");
                match fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(EngineError::io(&p, e))
                    }
                    _ => Ok(()),
                }
            }
            Out::Bucket(b) => {
                tracing::info!(file = %format!("{}/{name}", b.url()), "removing output of an uncommitted batch");
                Ok(b.delete(name)?)
            }
        }
    }

    /// After batch `batch_id`'s entry listing `files`: the batch's other part files go (an
    /// earlier attempt's), when the sink found some at open.
    fn remove_earlier_attempts(&mut self, batch_id: u64, files: &[String]) -> Result<()> {
        if !self.unlisted.remove(&batch_id) {
            return Ok(());
        }
        let (_, names) = self.listing()?;
        for name in names {
            if part_batch(&name, self.ext()) == Some(batch_id) && !files.contains(&name) {
                self.remove(&name)?;
            }
        }
        Ok(())
    }

    /// Whether batch `batch_id` is in the manifest.
    fn committed(&self, batch_id: u64) -> Result<bool> {
        Ok(match &self.out {
            Out::Local { manifest, .. } => manifest.get(batch_id)?.is_some(),
            Out::Bucket(b) => b.get(&format!("{MANIFEST_DIR}/{batch_id}"))?.is_some(),
        })
    }

    fn write_file(&self, path: &Path, batches: &[RecordBatch]) -> Result<()> {
        let file = File::create(path).map_err(|e| EngineError::io(path, e))?;
        let mut w = BufWriter::new(file);
        self.encode(&mut w, batches, &path.display().to_string())?;
        let file = w
            .into_inner()
            .map_err(|e| EngineError::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| EngineError::io(path, e))
    }

    /// Encodes `batches` in the sink's format into `w` (`what` names the target in errors).
    fn encode(
        &self,
        mut w: impl std::io::Write + Send,
        batches: &[RecordBatch],
        what: &str,
    ) -> Result<()> {
        match self.kind {
            Kind::Csv => {
                let mut cw = arrow::csv::WriterBuilder::new()
                    .with_header(self.header)
                    .with_delimiter(self.delimiter)
                    .with_timestamp_format(TS_FORMAT.trim_end_matches('Z').to_string())
                    .with_timestamp_tz_format(TS_FORMAT.to_string())
                    .build(&mut w);
                if batches.is_empty() {
                    cw.write(&RecordBatch::new_empty(Arc::clone(&self.schema)))?;
                }
                for b in batches {
                    cw.write(b)?;
                }
            }
            Kind::Json => {
                let mut jw = arrow::json::LineDelimitedWriter::new(&mut w);
                for b in batches {
                    jw.write(&timestamps_as_text(b)?)?;
                }
                jw.finish()?;
            }
            Kind::Parquet => {
                let mut pw =
                    parquet::arrow::ArrowWriter::try_new(&mut w, Arc::clone(&self.schema), None)
                        .map_err(|e| EngineError::external(format!("parquet writer: {e}")))?;
                for b in batches {
                    pw.write(b)
                        .map_err(|e| EngineError::external(format!("writing {what}: {e}")))?;
                }
                pw.close()
                    .map_err(|e| EngineError::external(format!("writing {what}: {e}")))?;
            }
        }
        Ok(())
    }
}

fn manifest_entry(url: &str, bytes: &[u8]) -> Result<ManifestEntry> {
    Ok(sluice_engine::connector::storage::parse_entry(
        Path::new(url),
        bytes,
    )?)
}

/// The batch of one of this sink's part files: `part-<batch>-<attempt>.<ext>`.
fn part_batch(name: &str, ext: &str) -> Option<u64> {
    let rest = name.strip_prefix("part-")?;
    let rest = rest.strip_suffix(ext).and_then(|r| r.strip_suffix('.'))?;
    let mut parts = rest.split('-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(b), Some(n), None)
            if !b.is_empty()
                && !n.is_empty()
                && b.bytes().all(|c| c.is_ascii_digit())
                && n.bytes().all(|c| c.is_ascii_alphanumeric()) =>
        {
            b.parse().ok()
        }
        _ => None,
    }
}

/// Whether `name` is one of this sink's part files.
fn is_part_file(name: &str, ext: &str) -> bool {
    part_batch(name, ext).is_some()
}

/// Timestamps as Spark's JSON text (`2025-01-01T00:00:00.027Z`).
fn timestamps_as_text(b: &RecordBatch) -> Result<RecordBatch> {
    if !b
        .schema()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Timestamp(_, _)))
    {
        return Ok(b.clone());
    }
    let opts = FormatOptions::default()
        .with_timestamp_format(Some(TS_FORMAT.trim_end_matches('Z')))
        .with_timestamp_tz_format(Some(TS_FORMAT));
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        if matches!(f.data_type(), DataType::Timestamp(_, _)) {
            let fmt = ArrayFormatter::try_new(c.as_ref(), &opts)?;
            let s: StringArray = (0..c.len())
                .map(|i| c.is_valid(i).then(|| fmt.value(i).to_string()))
                .collect();
            fields.push(Field::new(f.name(), DataType::Utf8, true));
            cols.push(Arc::new(s));
        } else {
            fields.push(f.as_ref().clone());
            cols.push(c.clone());
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

impl Sink for FileSink {
    fn description(&self) -> String {
        match &self.out {
            Out::Local { dir, .. } => format!("FileSink[{}]", dir.display()),
            Out::Bucket(b) => format!("FileSink[{}]", b.url()),
        }
    }

    fn add_batch(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        if self.committed(batch_id)? {
            tracing::info!(
                batch_id,
                "batch already in the file sink's manifest; skipping"
            );
            return Ok(());
        }
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let mut files = Vec::new();
        // a name of this attempt's own: a concurrent or earlier attempt's file is never
        // overwritten, and is removed only once an entry says which one the batch is
        let attempt = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("part-{batch_id:05}-{}.{}", &attempt[..8], self.ext());
        let entry = |files| ManifestEntry {
            batch_id,
            files,
            rows,
        };
        match &self.out {
            Out::Local { dir, manifest } => {
                if rows > 0 {
                    let tmp = dir.join(format!(".{name}.tmp"));
                    self.write_file(&tmp, batches)?;
                    crash_point("mid-sink", batch_id);
                    let target = dir.join(&name);
                    fs::rename(&tmp, &target).map_err(|e| EngineError::io(&target, e))?;
                    files.push(name);
                }
                crash_point("mid-sink-renamed", batch_id);
                manifest.add(batch_id, &entry(files.clone()))?;
            }
            Out::Bucket(b) => {
                if rows > 0 {
                    let mut buf = Vec::new();
                    self.encode(&mut buf, batches, &b.url())?;
                    crash_point("mid-sink", batch_id);
                    b.put(&name, Bytes::from(buf))?;
                    files.push(name);
                }
                crash_point("mid-sink-renamed", batch_id);
                let json = serde_json::to_string(&entry(files.clone()))
                    .map_err(|e| EngineError::bug(format!("manifest entry: {e}")))?;
                let rel = format!("{MANIFEST_DIR}/{batch_id}");
                if !b.put_new(&rel, Bytes::from(format!("v1\n{json}")))? {
                    // the other writer's entry lists its own files: ours go
                    for f in &files {
                        self.remove(f)?;
                    }
                    return Err(EngineError::user(format!(
                        "{}/{rel} was written meanwhile by another writer: two queries write \
                         this output",
                        b.url()
                    )));
                }
            }
        }
        self.remove_earlier_attempts(batch_id, &files)
    }
}

#[cfg(test)]
mod tests {
    use super::{is_part_file, part_batch};

    #[test]
    fn only_our_part_files_are_ours() {
        assert!(is_part_file("part-00012-0.csv", "csv"));
        assert_eq!(part_batch("part-00012-9f3a0c1e.csv", "csv"), Some(12));
        assert!(!is_part_file("part-00012-9f3a.0c1e.csv", "csv"));
        assert!(!is_part_file("part-00012-0.json", "csv"));
        assert!(!is_part_file("part-of-my-data.csv", "csv"));
        assert!(!is_part_file("part-1.csv", "csv"));
        assert!(!is_part_file("notes.csv", "csv"));
    }
}
