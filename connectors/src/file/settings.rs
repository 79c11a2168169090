//! What a file source is told: its options (Spark's names), the formats, `cleanSource`, and
//! the factory that checks them and creates sources.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use sluice_engine::connector::storage::VersionedLog;
use sluice_engine::{
    EngineError, Options, Result, Source, SourceContext, SourceFactory, SourceSpec,
};

use crate::formats::{self, csv::CsvOptions, ParseSettings};

use super::listing::*;
use super::*;

/// Options every file source accepts.
pub(super) const COMMON_OPTIONS: &[&str] = &[
    "maxFilesPerTrigger",
    "maxBytesPerTrigger",
    "latestFirst",
    "maxFileAge",
    "fileNameOnly",
    "cleanSource",
    "sourceArchiveDir",
    "watchMode",
    "pollInterval",
    "minFileAge",
    "ignoreMissingFiles",
];
pub(super) const LINE_OPTIONS: &[&str] = &["mode", "columnNameOfCorruptRecord", "inferSchema"];
pub(super) const CSV_OPTIONS: &[&str] = &[
    "header",
    "sep",
    "delimiter",
    "quote",
    "escape",
    "nullValue",
    "timestampFormat",
];

/// The file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// JSON lines.
    Json,
    /// CSV.
    Csv,
    /// Parquet.
    Parquet,
    /// Lines of text.
    Text,
}

impl FileFormat {
    pub(super) fn parse(name: &str) -> Result<Self> {
        match name {
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            "parquet" => Ok(Self::Parquet),
            "text" => Ok(Self::Text),
            other => Err(EngineError::user(format!("unknown file format '{other}'"))),
        }
    }

    pub(super) fn known_options(self) -> Vec<&'static str> {
        let mut k = COMMON_OPTIONS.to_vec();
        match self {
            Self::Json => k.extend(LINE_OPTIONS),
            Self::Csv => {
                k.extend(LINE_OPTIONS);
                k.extend(CSV_OPTIONS);
            }
            Self::Parquet => k.push("mergeSchema"),
            Self::Text => {}
        }
        k
    }
}

/// What `cleanSource` does with the files of committed batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CleanSource {
    Off,
    Delete,
    Archive(PathBuf),
}

/// Creates file sources for json, csv, parquet and text.
#[derive(Debug, Default)]
pub struct FileSourceFactory;

impl FileSourceFactory {
    pub(super) fn first_file(loc: &Location) -> Result<Option<FileEntry>> {
        let mut files = loc.list()?;
        files.sort_by(|a, b| (a.mtime_ms, &a.path).cmp(&(b.mtime_ms, &b.path)));
        Ok(files.into_iter().next())
    }
}

impl SourceFactory for FileSourceFactory {
    fn formats(&self) -> Vec<&'static str> {
        vec!["json", "csv", "parquet", "text"]
    }

    fn replayable(&self, _spec: &SourceSpec) -> bool {
        true // a batch's files are in the source's log
    }

    fn check_reachable(&self, spec: &SourceSpec) -> Result<()> {
        check_bucket(spec)
    }
    fn resolve_schema(&self, spec: &SourceSpec) -> Result<SchemaRef> {
        let format = FileFormat::parse(&spec.format)?;
        let what = format!("the {} source", spec.format);
        spec.options
            .check_known(&what, &format.known_options(), &[])?;
        let path = spec.path.as_deref().ok_or_else(|| {
            EngineError::user(format!(
                "{what} needs a path: load(\"dir\") or load(\"dir/*.json\")"
            ))
        })?;
        let loc = Location::new(path, &spec.options)?;
        validate_options(&spec.options)?;
        if format == FileFormat::Text {
            if let Some(s) = &spec.schema {
                if s.fields().len() != 1
                    || s.field(0).data_type() != &arrow::datatypes::DataType::Utf8
                {
                    return Err(EngineError::user(
                        "the text source has one STRING column ('value')",
                    ));
                }
            }
            return Ok(spec.schema.clone().unwrap_or_else(formats::text::schema));
        }
        if let Some(s) = &spec.schema {
            if format != FileFormat::Parquet {
                ParseSettings::new(Arc::clone(s), &spec.options)?;
            }
            return Ok(Arc::clone(s));
        }
        let infer = spec.options.get_bool("inferSchema", false)? || format == FileFormat::Parquet;
        if !infer {
            return Err(EngineError::MissingSchema {
                what: format!("{what} at '{path}'"),
            });
        }
        // Parquet's mergeSchema (Spark's meaning): the union of the columns of every file
        // present now, instead of the first file's
        if format == FileFormat::Parquet && spec.options.get_bool("mergeSchema", false)? {
            let files = loc.list()?;
            if files.is_empty() {
                return Err(EngineError::user(format!(
                    "cannot infer a schema for {what}: no file in '{path}' yet; give a schema"
                )));
            }
            let mut schemas = Vec::with_capacity(files.len());
            for f in &files {
                let bytes = read_whole(&loc, f)?;
                schemas.push(formats::parquet::infer(bytes).map_err(|e| {
                    EngineError::user(format!("cannot infer a schema from {}: {e}", f.path))
                })?);
            }
            let merged = arrow::datatypes::Schema::try_merge(schemas).map_err(|e| {
                EngineError::user(format!(
                    "mergeSchema: the Parquet files in '{path}' have incompatible columns: {e}"
                ))
            })?;
            return Ok(Arc::new(merged));
        }
        let Some(first) = Self::first_file(&loc)? else {
            return Err(EngineError::user(format!(
                "cannot infer a schema for {what}: no file in '{path}' yet; give a schema"
            )));
        };
        let bytes = read_whole(&loc, &first)?;
        let schema = match format {
            FileFormat::Json => formats::json::infer(&bytes),
            FileFormat::Csv => {
                formats::csv::infer(&bytes, &CsvOptions::from_options(&spec.options)?)
            }
            FileFormat::Parquet => formats::parquet::infer(bytes),
            FileFormat::Text => unreachable_text(),
        }
        .map_err(|e| {
            EngineError::user(format!("cannot infer a schema from {}: {e}", first.path))
        })?;
        Ok(Arc::new(schema))
    }

    fn create(
        &self,
        spec: &SourceSpec,
        schema: SchemaRef,
        ctx: &SourceContext,
    ) -> Result<Box<dyn Source>> {
        Ok(Box::new(Self::create_file_source(spec, schema, ctx)?))
    }
}

impl FileSourceFactory {
    /// The source [`SourceFactory::create`] boxes (Auto Loader builds on it).
    pub(super) fn create_file_source(
        spec: &SourceSpec,
        schema: SchemaRef,
        ctx: &SourceContext,
    ) -> Result<FileSource> {
        let format = FileFormat::parse(&spec.format)?;
        let path = spec.path.clone().unwrap_or_default();
        let loc = Location::new(&path, &spec.options)?;
        let o = &spec.options;
        let clean = clean_source(o)?;
        if loc.bucket.is_some() && matches!(clean, CleanSource::Archive(_)) {
            return Err(EngineError::user(format!(
                "cleanSource=archive is not supported for object storage ({path}); use delete or off"
            )));
        }
        let log: VersionedLog<Vec<FileEntry>> = ctx.log()?;
        let mut seen = HashSet::new();
        let mut max_mtime = i64::MIN;
        let file_name_only = o.get_bool("fileNameOnly", false)?;
        let ids = log.ids()?;
        for id in &ids {
            for f in log.get(*id)?.unwrap_or_default() {
                max_mtime = max_mtime.max(f.mtime_ms);
                seen.insert(key(&f.path, file_name_only));
            }
        }
        let parse = match format {
            FileFormat::Json | FileFormat::Csv => Some(ParseSettings::new(Arc::clone(&schema), o)?),
            _ => None,
        };
        let csv = match format {
            FileFormat::Csv => Some(CsvOptions::from_options(o)?),
            _ => None,
        };
        Ok(FileSource {
            description: format!("FileStreamSource[{path}]"),
            reader: Arc::new(FileReader {
                format,
                schema: Arc::clone(&schema),
                parse,
                csv,
                options: o.clone(),
                ignore_missing: o.get_bool("ignoreMissingFiles", false)?,
                auto: None,
                bucket: loc.bucket.clone(),
            }),
            pool: None,
            next_files: Vec::new(),
            schema,
            loc,
            log,
            latest_log: ids.last().copied(),
            seen,
            max_mtime,
            max_files: o.get_u64("maxFilesPerTrigger")?.map(|n| n.max(1) as usize),
            max_bytes: o.get_bytes("maxBytesPerTrigger")?,
            latest_first: o.get_bool("latestFirst", false)?,
            max_file_age: o.get_duration("maxFileAge")?,
            file_name_only,
            clean,
            cleaned_upto: None,
            available_now: None,
            watch_poll: match o.get("watchMode").map(|s| s.to_ascii_lowercase()) {
                None => None,
                Some(m) if m == "notify" || m == "inotify" => None,
                Some(m) if m == "poll" => Some(
                    o.get_duration("pollInterval")?
                        .unwrap_or(Duration::from_secs(1)),
                ),
                Some(m) => {
                    return Err(EngineError::user(format!(
                        "option 'watchMode' must be notify or poll, got '{m}'"
                    )))
                }
            },
            watcher: None,
            watch_kind: None,
            backlog: 0,
            min_file_age: o.get_duration(arrival::MIN_FILE_AGE)?,
            completed: arrival::Completed::default(),
            warned_modified: HashSet::new(),
            settling: std::sync::atomic::AtomicBool::new(false),
            wakeup: arrival::Wakeup::default(),
            notifier: None,
            malformed: 0,
            lister: None,
            notifications: None,
            listed_once: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// `sluice validate`: a source reading a bucket asks it once (a listing of its prefix).
pub(super) fn check_bucket(spec: &SourceSpec) -> Result<()> {
    let path = spec.path.as_deref().unwrap_or_default();
    if !sluice_engine::connector::storage::is_remote(path) {
        return Ok(());
    }
    let base = match path.find(['*', '?', '[', '{']) {
        Some(i) => path[..i].rsplit_once('/').map_or(path, |(b, _)| b),
        None => path,
    };
    let b = sluice_engine::connector::storage::Location::parse(base, &spec.options.storage())?;
    Ok(b.check_reachable()?)
}

pub(super) fn unreachable_text() -> Result<arrow::datatypes::Schema> {
    Ok(formats::text::schema().as_ref().clone())
}

/// `cleanSource` (with `sourceArchiveDir` for archive).
pub(super) fn clean_source(o: &Options) -> Result<CleanSource> {
    Ok(match o.get("cleanSource").map(|s| s.to_ascii_lowercase()) {
        None => CleanSource::Off,
        Some(s) if s == "off" => CleanSource::Off,
        Some(s) if s == "delete" => CleanSource::Delete,
        Some(s) if s == "archive" => {
            let dir = o.get("sourceArchiveDir").ok_or_else(|| {
                EngineError::user("cleanSource=archive needs option sourceArchiveDir")
            })?;
            CleanSource::Archive(PathBuf::from(dir))
        }
        Some(s) => {
            return Err(EngineError::user(format!(
                "option 'cleanSource' must be off, archive or delete, got '{s}'"
            )))
        }
    })
}

pub(super) fn validate_options(o: &Options) -> Result<()> {
    clean_source(o)?;
    o.get_u64("maxFilesPerTrigger")?;
    o.get_bytes("maxBytesPerTrigger")?;
    o.get_bool("latestFirst", false)?;
    o.get_duration("maxFileAge")?;
    o.get_bool("fileNameOnly", false)?;
    o.get_duration("pollInterval")?;
    o.get_duration(arrival::MIN_FILE_AGE)?;
    o.get_bool("ignoreMissingFiles", false)?;
    o.get_bool("mergeSchema", false)?;
    o.get_bool("inferSchema", false)?;
    formats::Mode::from_options(o)?;
    Ok(())
}
