//! Auto Loader: `read_stream().format("cloudFiles").option("cloudFiles.format", "json")`, the
//! file source with Databricks' schema handling on top.
//!
//! - The schema is inferred once, from a sample of the files, and kept as version 0 under
//!   `cloudFiles.schemaLocation` (`schema_log.rs`); later starts read the latest version and
//!   never infer again (`infer.rs`).
//! - Each file is read by column name; what does not fit the schema is kept as JSON in the
//!   rescued-data column (`read.rs`).
//! - `cloudFiles.schemaEvolutionMode` decides what columns the schema lacks do
//!   ([`on_new_columns`], pure): `addNewColumns` writes the next schema version and stops the
//!   query before its batch commits (`EngineError::SchemaChanged`; a restart goes on with the
//!   new columns and re-runs that batch), `rescue` keeps them in the rescued column,
//!   `failOnNewColumns` stops until the schema location is updated, `none` ignores them.
//! - Listing, wake-ups, rate limits and the source log are the file source's.

mod infer;
mod read;
mod schema_log;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_engine::{
    schema_to_ddl, EngineError, Options, Result, Source, SourceContext, SourceFactory, SourceSpec,
};

use super::listing::{key, Location};
use super::settings::{validate_options, FileFormat, FileSourceFactory, CSV_OPTIONS, LINE_OPTIONS};
use crate::formats::{csv::CsvOptions, ParseSettings};
use schema_log::SchemaLog;
use sluice_engine::connector::storage::is_remote;

pub(super) use read::Read;

/// The `cloudFiles.*` options Sluice knows (Databricks' names and meanings).
const CLOUD_OPTIONS: &[&str] = &[
    "cloudFiles.format",
    "cloudFiles.schemaLocation",
    "cloudFiles.inferColumnTypes",
    "cloudFiles.schemaEvolutionMode",
    "cloudFiles.schemaHints",
    "cloudFiles.maxFilesPerTrigger",
    "cloudFiles.maxBytesPerTrigger",
    "cloudFiles.maxFileAge",
    "cloudFiles.includeExistingFiles",
    "cloudFiles.partitionColumns",
    "cloudFiles.useNotifications",
    "cloudFiles.queueUrl",
    "cloudFiles.region",
    "cloudFiles.endpoint",
    "cloudFiles.awsAccessKey",
    "cloudFiles.awsSecretKey",
    "cloudFiles.awsSessionToken",
    "cloudFiles.schemaInference.sampleSize.numFiles",
    "cloudFiles.schemaInference.sampleSize.numBytes",
];

/// Options of the underlying file source an Auto Loader stream also takes.
const PLAIN_OPTIONS: &[&str] = &[
    "rescuedDataColumn",
    "watchMode",
    "pollInterval",
    "minFileAge",
    "ignoreMissingFiles",
];

/// `cloudFiles.*` options that are the file source's own, under their Spark names.
const MAPPED: &[(&str, &str)] = &[
    ("cloudFiles.maxFilesPerTrigger", "maxFilesPerTrigger"),
    ("cloudFiles.maxBytesPerTrigger", "maxBytesPerTrigger"),
    ("cloudFiles.maxFileAge", "maxFileAge"),
];

/// Databricks' sample limits for inference.
const SAMPLE_FILES: u64 = 1000;
const SAMPLE_BYTES: u64 = 50 << 30;

/// `cloudFiles.schemaEvolutionMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EvolutionMode {
    AddNewColumns,
    Rescue,
    FailOnNewColumns,
    None,
}

/// The Auto Loader options of one stream.
#[derive(Debug, Clone)]
pub(super) struct AutoOptions {
    format: FileFormat,
    schema_location: Option<String>,
    infer_types: bool,
    mode: EvolutionMode,
    hints: Option<String>,
    include_existing: bool,
    /// `cloudFiles.useNotifications`: new objects from the bucket's event queue.
    notifications: bool,
    partition_columns: Option<Vec<String>>,
    sample_files: usize,
    sample_bytes: u64,
    rescued: Option<String>,
}

impl AutoOptions {
    fn parse(spec: &SourceSpec) -> Result<Self> {
        let o = &spec.options;
        let format_name = o.get("cloudFiles.format").ok_or_else(|| {
            EngineError::user(
                "the cloudFiles source needs option 'cloudFiles.format' (json, csv or parquet)",
            )
        })?;
        let format =
            match FileFormat::parse(&format_name.to_ascii_lowercase())? {
                FileFormat::Text => return Err(EngineError::user(
                    "option 'cloudFiles.format': text is read by format(\"text\"); Auto Loader \
                     reads json, csv or parquet",
                )),
                f => f,
            };
        let mut known: Vec<&str> = CLOUD_OPTIONS.to_vec();
        known.extend(PLAIN_OPTIONS);
        match format {
            FileFormat::Json => known.extend(LINE_OPTIONS),
            FileFormat::Csv => {
                known.extend(LINE_OPTIONS);
                known.extend(CSV_OPTIONS);
            }
            _ => {}
        }
        o.check_known(
            &format!("the cloudFiles source ({format_name})"),
            &known,
            &[],
        )?;
        let notifications = o.get_bool("cloudFiles.useNotifications", false)?;
        if notifications && !spec.path.as_deref().is_some_and(is_remote) {
            return Err(EngineError::user(
                "option 'cloudFiles.useNotifications' = true: file notification mode reads a \
                 bucket's event queue (an s3:// path with cloudFiles.queueUrl); a local \
                 directory is watched with inotify without it",
            ));
        }
        if notifications && !cfg!(feature = "aws") {
            return Err(EngineError::user(
                "option 'cloudFiles.useNotifications' = true needs Sluice built with feature \
                 'aws' (the SQS client)",
            ));
        }
        let given = spec.schema.is_some();
        let mode = match o.get("cloudFiles.schemaEvolutionMode") {
            None if given => EvolutionMode::None,
            None => EvolutionMode::AddNewColumns,
            Some(m) => match m.to_ascii_lowercase().as_str() {
                "addnewcolumns" => EvolutionMode::AddNewColumns,
                "rescue" => EvolutionMode::Rescue,
                "failonnewcolumns" => EvolutionMode::FailOnNewColumns,
                "none" => EvolutionMode::None,
                _ => {
                    return Err(EngineError::user(format!(
                        "option 'cloudFiles.schemaEvolutionMode' must be addNewColumns, rescue, \
                         failOnNewColumns or none, got '{m}'"
                    )))
                }
            },
        };
        if given && mode == EvolutionMode::AddNewColumns {
            return Err(EngineError::user(
                "cloudFiles.schemaEvolutionMode = addNewColumns evolves an inferred schema; with \
                 a schema given by .schema(..) use rescue, failOnNewColumns or none (as \
                 Databricks requires)",
            ));
        }
        let hints = o.get("cloudFiles.schemaHints").map(str::to_string);
        if given && hints.is_some() {
            return Err(EngineError::user(
                "option 'cloudFiles.schemaHints' adjusts an inferred schema; with a schema given \
                 by .schema(..), write the types there",
            ));
        }
        let rescued = match o.get("rescuedDataColumn") {
            Some(n) if n.trim().is_empty() => {
                return Err(EngineError::user("option 'rescuedDataColumn' is empty"))
            }
            Some(n) => Some(n.to_string()),
            // on by default when the schema is inferred, and needed by rescue mode
            None if !given || mode == EvolutionMode::Rescue => Some("_rescued_data".to_string()),
            None => None,
        };
        let partition_columns = o.get("cloudFiles.partitionColumns").map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        });
        Ok(Self {
            format,
            schema_location: o.get("cloudFiles.schemaLocation").map(str::to_string),
            infer_types: o.get_bool("cloudFiles.inferColumnTypes", false)?
                || format == FileFormat::Parquet,
            mode,
            hints,
            include_existing: o.get_bool("cloudFiles.includeExistingFiles", true)?,
            notifications,
            partition_columns,
            sample_files: o
                .get_u64("cloudFiles.schemaInference.sampleSize.numFiles")?
                .unwrap_or(SAMPLE_FILES)
                .max(1) as usize,
            sample_bytes: o
                .get_bytes("cloudFiles.schemaInference.sampleSize.numBytes")?
                .unwrap_or(SAMPLE_BYTES),
            rescued,
        })
    }

    /// The options of the file source underneath.
    fn file_options(&self, o: &Options) -> Result<Options> {
        let mut out = Options::new();
        for (k, v) in o.iter() {
            if let Some((_, plain)) = MAPPED.iter().find(|(c, _)| c.eq_ignore_ascii_case(k)) {
                out.set(*plain, v);
            } else if !k.to_ascii_lowercase().starts_with("cloudfiles.")
                && !k.eq_ignore_ascii_case("rescuedDataColumn")
            {
                out.set(k, v);
            }
        }
        validate_options(&out)?;
        Ok(out)
    }
}

/// A column a file has that the schema lacks.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NewColumn {
    pub name: String,
    pub data_type: DataType,
    /// The first file it was found in.
    pub file: String,
}

/// What to do when a batch's files have columns the schema lacks.
#[derive(Debug, PartialEq, Eq)]
enum OnNew {
    /// Nothing to do (rescued or ignored, as the mode says).
    Continue,
    /// Write the next schema version and stop.
    Evolve,
    /// Stop, schema unchanged.
    Fail,
}

/// Pure; table-tested.
fn on_new_columns(mode: EvolutionMode, any_new: bool) -> OnNew {
    match (mode, any_new) {
        (_, false) | (EvolutionMode::Rescue, _) | (EvolutionMode::None, _) => OnNew::Continue,
        (EvolutionMode::AddNewColumns, true) => OnNew::Evolve,
        (EvolutionMode::FailOnNewColumns, true) => OnNew::Fail,
    }
}

/// How a running Auto Loader stream reads its files (shared by the parser threads).
#[derive(Debug)]
pub(super) struct AutoRead {
    /// Partition columns (after the data columns) and their types.
    partitions: Vec<(String, DataType)>,
    /// The rescued-data column (last), if any.
    rescued: Option<String>,
    /// The directory partition directories are found under.
    base: PathBuf,
    /// The stream's schema: data columns, partition columns, rescued column.
    full: SchemaRef,
    infer_types: bool,
    mode: EvolutionMode,
    /// The schema location and the version read from it (inferred schemas only).
    log: Option<(SchemaLog, schema_log::SchemaVersion)>,
    /// The data columns by name, for reading files.
    lookup: read::Lookup,
}

impl AutoRead {
    /// Called with the new columns of a batch's files, before its rows go anywhere.
    pub(super) fn check_new_columns(&self, new: &[NewColumn]) -> Result<()> {
        let mut names: Vec<&NewColumn> = Vec::new();
        for c in new {
            if !names.iter().any(|n| n.name == c.name) {
                names.push(c);
            }
        }
        let list = |cs: &[&NewColumn]| {
            cs.iter()
                .map(|c| {
                    format!(
                        "{} ({} in {})",
                        c.name,
                        sluice_engine::ddl::type_to_ddl(&c.data_type),
                        c.file
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match on_new_columns(self.mode, !names.is_empty()) {
            OnNew::Continue => Ok(()),
            OnNew::Fail => Err(EngineError::user(format!(
                "Auto Loader: new columns {} are not in the schema, and \
                 cloudFiles.schemaEvolutionMode is failOnNewColumns: the query stays stopped \
                 until {}",
                list(&names),
                match &self.log {
                    Some((log, v)) => format!(
                        "the schema location has a version with them (e.g. {}/{} with them \
                         added to \"schema\")",
                        log.dir().display(),
                        v.version + 1
                    ),
                    None => "the schema given to the query has them".to_string(),
                }
            ))),
            OnNew::Evolve => {
                let (log, read_version) = self
                    .log
                    .as_ref()
                    .ok_or_else(|| EngineError::bug("addNewColumns without a schema location"))?;
                let latest = log.latest()?.unwrap_or_else(|| read_version.clone());
                let stored = latest.arrow_schema()?;
                let parts = &latest.partition_columns;
                let mut fields: Vec<Field> = stored
                    .fields()
                    .iter()
                    .filter(|f| !parts.contains(f.name()))
                    .map(|f| f.as_ref().clone())
                    .collect();
                for c in &names {
                    if !fields
                        .iter()
                        .any(|f| f.name().eq_ignore_ascii_case(&c.name))
                    {
                        fields.push(Field::new(&c.name, c.data_type.clone(), true));
                    }
                }
                fields.extend(
                    stored
                        .fields()
                        .iter()
                        .filter(|f| parts.contains(f.name()))
                        .map(|f| f.as_ref().clone()),
                );
                let next = latest.version + 1;
                let written = log.write(
                    next,
                    &Schema::new(fields),
                    parts,
                    format!("new columns: {}", list(&names)),
                )?;
                Err(EngineError::SchemaChanged(format!(
                    "Auto Loader (cloudFiles.schemaEvolutionMode = addNewColumns): new columns {}; \
                     schema version {} written to {} (schema now: {}). The query stops before \
                     this batch commits; started again, it reads the batch with the new columns \
                     (sluice run restarts it by itself)",
                    list(&names),
                    written.version,
                    log.dir().display(),
                    written.schema
                )))
            }
        }
    }
}

/// An Auto Loader stream resolved: its schema and how to read it.
struct Resolved {
    opts: AutoOptions,
    /// What the format parser decodes (data columns, the corrupt-record column if given).
    parse: SchemaRef,
    read: AutoRead,
    /// The file source's path (a recursive glob under the directory).
    glob: String,
}

fn resolve(spec: &SourceSpec) -> Result<Resolved> {
    let opts = AutoOptions::parse(spec)?;
    let dir = spec
        .path
        .as_deref()
        .ok_or_else(|| EngineError::user("the cloudFiles source needs a path: load(\"dir\")"))?;
    let remote = sluice_engine::connector::storage::is_remote(dir);
    let base = PathBuf::from(dir);
    let glob = if remote || base.is_dir() {
        // (a bucket has no directories: a prefix is read as one)
        format!("{}/**/*", glob::Pattern::escape(dir.trim_end_matches('/')))
    } else {
        dir.to_string()
    };
    let loc = Location::new(&glob, &spec.options)?;
    let base = if remote {
        PathBuf::from(dir.trim_end_matches('/'))
    } else {
        loc.base.clone()
    };
    let csv = match opts.format {
        FileFormat::Csv => Some(CsvOptions::from_options(&spec.options)?),
        _ => None,
    };
    let (stored, partitions, log) = match &spec.schema {
        Some(given) => {
            // the `key=value` directories that name a column of the schema (Spark's rule with
            // a user schema), unless cloudFiles.partitionColumns says which
            let parts = match &opts.partition_columns {
                Some(p) => p.clone(),
                None => {
                    let files = infer::sample(loc.list()?, opts.sample_files, opts.sample_bytes);
                    infer::partition_columns(&base, &files, &opts)
                        .into_iter()
                        .filter(|p| given.field_with_name(p).is_ok())
                        .collect()
                }
            };
            (given.as_ref().clone(), parts, None)
        }
        None => {
            let location = opts.schema_location.as_deref().ok_or_else(|| {
                EngineError::user(format!(
                    "the cloudFiles source at '{dir}' infers its schema, so it needs option \
                     'cloudFiles.schemaLocation' (a directory where the schema versions are kept; \
                     in a pipeline file it defaults to the query's checkpoint), or a schema"
                ))
            })?;
            let log = SchemaLog::new(location, &spec.options)?;
            let version = match log.latest()? {
                Some(v) => v,
                None => {
                    let files = infer::sample(loc.list()?, opts.sample_files, opts.sample_bytes);
                    if files.is_empty() {
                        return Err(EngineError::user(format!(
                            "the cloudFiles source cannot infer a schema: no file in '{dir}' yet; \
                             give a schema, or start it once files are there"
                        )));
                    }
                    let data =
                        infer::infer_data_schema(opts.format, &loc, &files, &opts, csv.as_ref())?;
                    let parts = infer::partition_columns(&base, &files, &opts);
                    let data = Schema::new(
                        data.fields()
                            .iter()
                            .filter(|f| !parts.contains(f.name()))
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                    let data = infer::apply_hints(data, opts.hints.as_deref())?;
                    let all = infer::with_partitions(data, &parts, opts.hints.as_deref())?;
                    let reason = format!(
                        "inferred from {} file(s), the first {}",
                        files.len(),
                        files[0].path
                    );
                    if spec.validate_only {
                        // checked, not kept: the first start infers it again and writes it
                        schema_log::SchemaVersion::new(0, &all, &parts, reason)
                    } else {
                        log.write(0, &all, &parts, reason)?
                    }
                }
            };
            let schema = version.arrow_schema()?;
            let parts = version.partition_columns.clone();
            (schema.as_ref().clone(), parts, Some((log, version)))
        }
    };
    let partition_fields: Vec<(String, DataType)> = partitions
        .iter()
        .map(|p| {
            let dt = stored
                .field_with_name(p)
                .map(|f| f.data_type().clone())
                .unwrap_or(DataType::Utf8);
            (p.clone(), dt)
        })
        .collect();
    let parse = Arc::new(Schema::new(
        stored
            .fields()
            .iter()
            .filter(|f| !partitions.contains(f.name()))
            .cloned()
            .collect::<Vec<_>>(),
    ));
    let mut full: Vec<Field> = parse.fields().iter().map(|f| f.as_ref().clone()).collect();
    full.extend(
        partition_fields
            .iter()
            .map(|(n, t)| Field::new(n, t.clone(), true)),
    );
    if let Some(r) = &opts.rescued {
        if full.iter().any(|f| f.name() == r) {
            return Err(EngineError::user(format!(
                "the rescued data column '{r}' is also a column of the schema ({}); name it \
                 otherwise with option rescuedDataColumn",
                schema_to_ddl(&stored)
            )));
        }
        full.push(Field::new(r, DataType::Utf8, true));
    }
    let data = ParseSettings::new(Arc::clone(&parse), &spec.options)?.data_schema;
    let read = AutoRead {
        lookup: read::Lookup::new(data),
        partitions: partition_fields,
        rescued: opts.rescued.clone(),
        base,
        full: Arc::new(Schema::new(full)),
        infer_types: opts.infer_types,
        mode: opts.mode,
        log,
    };
    Ok(Resolved {
        opts,
        parse,
        read,
        glob,
    })
}

/// Creates Auto Loader streams (`format("cloudFiles")`).
#[derive(Debug, Default)]
pub struct CloudFilesFactory;

impl SourceFactory for CloudFilesFactory {
    fn formats(&self) -> Vec<&'static str> {
        vec!["cloudfiles"]
    }

    fn replayable(&self, _spec: &SourceSpec) -> bool {
        true // a batch's files are in the source's log
    }

    fn check_reachable(&self, spec: &SourceSpec) -> Result<()> {
        super::settings::check_bucket(spec)
    }

    fn resolve_schema(&self, spec: &SourceSpec) -> Result<SchemaRef> {
        let r = resolve(spec)?;
        r.opts.file_options(&spec.options)?;
        Ok(Arc::clone(&r.read.full))
    }

    fn create(
        &self,
        spec: &SourceSpec,
        schema: SchemaRef,
        ctx: &SourceContext,
    ) -> Result<Box<dyn Source>> {
        let r = resolve(spec)?;
        if r.read.full != schema {
            return Err(EngineError::SchemaChanged(format!(
                "the schema at '{}' changed after the query was defined (now: {}); define the \
                 query again to read with it",
                r.opts.schema_location.as_deref().unwrap_or_default(),
                schema_to_ddl(&r.read.full)
            )));
        }
        let file_spec = SourceSpec {
            format: format!("{:?}", r.opts.format).to_ascii_lowercase(),
            path: Some(r.glob.clone()),
            schema: Some(Arc::clone(&r.parse)),
            options: r.opts.file_options(&spec.options)?,
            validate_only: false,
        };
        let mut src = FileSourceFactory::create_file_source(&file_spec, Arc::clone(&r.parse), ctx)?;
        src.description = format!(
            "CloudFilesSource[{}]",
            spec.path.as_deref().unwrap_or_default()
        );
        src.schema = Arc::clone(&r.read.full);
        if !r.opts.include_existing {
            skip_existing(&mut src, ctx)?;
        }
        #[cfg(feature = "aws")]
        if r.opts.notifications {
            src.notifications = Some(std::sync::Mutex::new(Box::new(
                crate::aws::notifications::SqsNotifications::open(&spec.options)?,
            )));
        }
        let reader = Arc::make_mut(&mut src.reader);
        if reader.parse.is_none() {
            // Parquet too: the corrupt-record column, and the data columns, once
            reader.parse = Some(ParseSettings::new(Arc::clone(&r.parse), &spec.options)?);
        }
        reader.auto = Some(Arc::new(r.read));
        Ok(Box::new(src))
    }
}

/// `cloudFiles.includeExistingFiles = false`: the files present at the stream's first start are
/// never read; which they were is recorded in the source's checkpoint directory (as a dot-file,
/// beside the source log's numbered entries), so a restart skips the same ones.
fn skip_existing(src: &mut super::FileSource, ctx: &SourceContext) -> Result<()> {
    let path = ctx.file(".cloudfiles-existing-files.json");
    let files: Vec<String> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::user(format!("{} is not a list of files: {e}", path.display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if src.latest_log.is_some() {
                Vec::new() // started before with includeExistingFiles = true
            } else {
                let now: Vec<String> = src.loc.list()?.into_iter().map(|f| f.path).collect();
                let bytes = serde_json::to_vec(&now)
                    .map_err(|e| EngineError::bug(format!("file list to JSON: {e}")))?;
                sluice_engine::connector::storage::write_atomic(&path, &bytes)?;
                now
            }
        }
        Err(e) => return Err(EngineError::io(&path, e)),
    };
    let skip: HashSet<String> = files.iter().map(|p| key(p, src.file_name_only)).collect();
    src.seen.extend(skip);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_new_columns_do_per_mode() {
        use EvolutionMode::*;
        let cases = [
            (AddNewColumns, false, OnNew::Continue),
            (AddNewColumns, true, OnNew::Evolve),
            (Rescue, true, OnNew::Continue),
            (FailOnNewColumns, false, OnNew::Continue),
            (FailOnNewColumns, true, OnNew::Fail),
            (None, true, OnNew::Continue),
        ];
        for (mode, any, want) in cases {
            assert_eq!(on_new_columns(mode, any), want, "{mode:?} {any}");
        }
    }
}

#[cfg(test)]
mod end_to_end;
