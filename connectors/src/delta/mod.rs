//! Delta Lake, through delta-rs (`deltalake`): an exactly-once streaming sink and a streaming
//! source. The Delta protocol is the crate's; Sluice only decides what each batch commits.
//!
//! Sink (`format("delta")`, option `path`): every commit carries the application transaction
//! `(app id = query id, version = batch id)`; a batch whose version is already recorded (a re-run
//! after a crash) is skipped, so the table always equals an uninterrupted run. One commit per
//! batch: append → `WRITE` (append), complete → `WRITE` (overwrite), update → `MERGE` on the keys
//! (default: the query's grouping columns); a batch with nothing to write commits only its
//! transaction. The table is created from the stream's schema (with `partitionBy`) if missing.
//! Small files: `targetFileSize` for writes, `optimizeEvery = N` compacts every N batches, and the
//! crate writes log checkpoints every `checkpointInterval` commits (default 100).
//!
//! Source: see [`source`].

pub mod source;

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use deltalake::datafusion::common::Column;
use deltalake::datafusion::functions::core::expr_ext::FieldAccessor;
use deltalake::datafusion::logical_expr::{binary_expr, Operator};
use deltalake::datafusion::prelude::{col, Expr, SessionContext};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::kernel::{StructType, Transaction};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};
use sluice_engine::{EngineError, OutputMode, Result, Sink, SinkContext, SinkFactory, SinkSpec};

/// Options of the Delta sink.
const SINK_OPTIONS: &[&str] = &[
    "path",
    "partitionBy",
    "keys",
    "mergeSchema",
    "targetFileSize",
    "optimizeEvery",
    "checkpointInterval",
];

/// A multi-threaded runtime for delta-rs (it needs one: the kernel uses blocking tasks).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| EngineError::external(format!("cannot start the Delta runtime: {e}")))
}

/// The table URL of a local directory (created if missing).
pub(crate) fn table_url(path: &str) -> Result<url::Url> {
    deltalake::ensure_table_uri(path)
        .map_err(|e| EngineError::user(format!("delta: bad table path '{path}': {e}")))
}

/// Who must act on a delta-rs error: storage and commit conflicts may pass on retry (external),
/// and so may any other error caused by a storage or I/O failure (a Parquet, Arrow or kernel
/// error wrapping one); the rest (schema, protocol, bad data) is the user's.
pub(crate) fn delta_err(what: &str, e: DeltaTableError) -> EngineError {
    let msg = format!("delta: {what}: {e}");
    let external = matches!(
        e,
        DeltaTableError::ObjectStore { .. }
            | DeltaTableError::Io { .. }
            | DeltaTableError::Transaction { .. }
            | DeltaTableError::VersionAlreadyExists(_)
    ) || caused_by_storage(&e);
    if external {
        EngineError::external(msg)
    } else {
        EngineError::user(msg)
    }
}

/// Whether `e` or one of its causes is an I/O or object-store error.
fn caused_by_storage(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() || c.is::<deltalake::ObjectStoreError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Creates Delta sinks.
#[derive(Debug, Default)]
pub struct DeltaSinkFactory;

/// The partition and MERGE key columns of a delta sink, checked against the rows it gets.
fn target_columns(spec: &SinkSpec, ctx: &SinkContext) -> Result<(Vec<String>, Vec<String>)> {
    let schema = &ctx.schema;
    let partition_by = list(spec.options.get("partitionBy"));
    for p in &partition_by {
        if schema.field_with_name(p).is_err() {
            return Err(EngineError::user(format!(
                "delta sink: partitionBy column '{p}' is not in the output ({})",
                names(schema).join(", ")
            )));
        }
    }
    let keys = match spec.options.get("keys") {
        Some(k) => list(Some(k)),
        None => ctx.key_columns.clone().unwrap_or_default(),
    };
    for k in &keys {
        if schema.field_with_name(k).is_err() {
            return Err(EngineError::user(format!(
                "delta sink: key column '{k}' is not in the output ({})",
                names(schema).join(", ")
            )));
        }
    }
    if spec.output_mode == OutputMode::Update && keys.is_empty() {
        return Err(EngineError::user(
            "delta sink in update mode needs keys to MERGE on: set option 'keys' or write an aggregation",
        ));
    }
    Ok((partition_by, keys))
}

/// The MERGE condition on `keys`: NULL-safe equality (a NULL group key is a row of its own, as
/// in Spark's result), and a struct key (a `window`) compared field by field — delta-rs cannot
/// write a struct comparison into its commit log, and the fields say the same.
fn merge_predicate(schema: &Schema, keys: &[String]) -> Result<Expr> {
    fn equal(target: Expr, source: Expr, dt: &DataType, out: &mut Vec<Expr>) {
        match dt {
            DataType::Struct(fields) => {
                for f in fields {
                    equal(
                        target.clone().field(f.name().as_str()),
                        source.clone().field(f.name().as_str()),
                        f.data_type(),
                        out,
                    );
                }
            }
            _ => out.push(binary_expr(target, Operator::IsNotDistinctFrom, source)),
        }
    }
    let mut parts = Vec::new();
    for k in keys {
        let f = schema.field_with_name(k).map_err(|_| {
            EngineError::bug(format!("merge key '{k}' is not in the sink's schema"))
        })?;
        equal(
            col(Column::new(Some("target"), k.as_str())),
            col(Column::new(Some("source"), k.as_str())),
            f.data_type(),
            &mut parts,
        );
    }
    parts
        .into_iter()
        .reduce(|a, b| a.and(b))
        .ok_or_else(|| EngineError::bug("merge without keys"))
}

fn list(v: Option<&str>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

impl SinkFactory for DeltaSinkFactory {
    fn formats(&self) -> Vec<&'static str> {
        vec!["delta"]
    }
    fn supported_modes(&self, _format: &str) -> Vec<OutputMode> {
        vec![OutputMode::Append, OutputMode::Update, OutputMode::Complete]
    }
    fn validate(&self, spec: &SinkSpec) -> Result<()> {
        spec.options
            .check_known("the delta sink", SINK_OPTIONS, &[])?;
        if spec.options.get("path").is_none() {
            return Err(EngineError::user(
                "the delta sink needs option 'path' (the table directory)",
            ));
        }
        spec.options.get_bool("mergeSchema", false)?;
        spec.options.get_bytes("targetFileSize")?;
        spec.options.get_u64("optimizeEvery")?;
        spec.options.get_u64("checkpointInterval")?;
        Ok(())
    }
    fn check(&self, spec: &SinkSpec, ctx: &SinkContext) -> Result<()> {
        target_columns(spec, ctx).map(|_| ())
    }
    fn exactly_once(&self, _spec: &SinkSpec) -> bool {
        true // every commit carries the application transaction (query id, batch id)
    }
    fn create(&self, spec: &SinkSpec, ctx: &SinkContext) -> Result<Box<dyn Sink>> {
        self.validate(spec)?;
        let path = spec.options.get("path").unwrap_or_default().to_string();
        let schema = Arc::clone(&ctx.schema);
        let (partition_by, keys) = target_columns(spec, ctx)?;
        let rt = runtime()?;
        let url = table_url(&path)?;
        Ok(Box::new(DeltaSink {
            rt,
            url,
            path: PathBuf::from(path),
            table: None,
            app_id: ctx.query_id.clone(),
            mode: spec.output_mode,
            schema,
            partition_by,
            keys,
            merge_schema: spec.options.get_bool("mergeSchema", false)?,
            target_file_size: spec
                .options
                .get_bytes("targetFileSize")?
                .and_then(NonZeroU64::new),
            optimize_every: spec.options.get_u64("optimizeEvery")?.filter(|n| *n > 0),
            checkpoint_interval: spec.options.get_u64("checkpointInterval")?,
            checked: false,
        }))
    }
}

/// A data type as Delta stores it (string/binary flavours, timestamp units and nullability
/// are the same column to Delta).
fn norm(dt: &arrow::datatypes::DataType) -> arrow::datatypes::DataType {
    use arrow::datatypes::{DataType as T, Field, TimeUnit};
    match dt {
        T::Utf8View | T::LargeUtf8 => T::Utf8,
        T::BinaryView | T::LargeBinary | T::FixedSizeBinary(_) => T::Binary,
        T::Timestamp(_, tz) => T::Timestamp(TimeUnit::Microsecond, tz.clone()),
        T::Date64 => T::Date32,
        T::Dictionary(_, v) => norm(v),
        T::Struct(fields) => T::Struct(
            fields
                .iter()
                .map(|f| Field::new(f.name(), norm(f.data_type()), true))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn names(schema: &Schema) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

/// Writes each batch as one Delta commit with its application transaction.
pub struct DeltaSink {
    rt: tokio::runtime::Runtime,
    url: url::Url,
    path: PathBuf,
    table: Option<DeltaTable>,
    app_id: String,
    mode: OutputMode,
    schema: SchemaRef,
    partition_by: Vec<String>,
    keys: Vec<String>,
    merge_schema: bool,
    target_file_size: Option<NonZeroU64>,
    optimize_every: Option<u64>,
    checkpoint_interval: Option<u64>,
    checked: bool,
}

impl DeltaSink {
    fn props(&self, batch_id: u64) -> CommitProperties {
        CommitProperties::default()
            .with_application_transaction(Transaction::new(&self.app_id, batch_id as i64))
    }

    /// The table, loaded at its latest version; created from the stream's schema if missing.
    async fn table(&mut self) -> Result<DeltaTable> {
        let mut t = match self.table.take() {
            Some(t) => t,
            None => DeltaTable::try_from_url(self.url.clone())
                .await
                .map_err(|e| delta_err("opening the table", e))?,
        };
        if t.version().is_some() {
            t.update_state()
                .await
                .map_err(|e| delta_err("reading the table's log", e))?;
            return Ok(t);
        }
        let st: StructType = self
            .schema
            .as_ref()
            .try_into_kernel()
            .map_err(|e| EngineError::user(format!("delta: the stream's schema: {e}")))?;
        let mut config: Vec<(String, Option<String>)> = Vec::new();
        if let Some(n) = self.checkpoint_interval {
            config.push(("delta.checkpointInterval".into(), Some(n.to_string())));
        }
        tracing::info!("delta: creating table {}", self.path.display());
        t.create()
            .with_columns(st.fields().cloned())
            .with_partition_columns(self.partition_by.clone())
            .with_configuration(config)
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(|e| delta_err("creating the table", e))
    }

    /// An existing table must have the stream's columns (unless `mergeSchema` adds them).
    fn check_schema(&self, t: &DeltaTable) -> Result<()> {
        let snap = t
            .snapshot()
            .map_err(|e| delta_err("reading the table's schema", e))?;
        let table_schema = snap.snapshot().arrow_schema();
        let missing: Vec<String> = self
            .schema
            .fields()
            .iter()
            .filter(|f| table_schema.field_with_name(f.name()).is_err())
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        if !missing.is_empty() && !self.merge_schema {
            return Err(EngineError::user(format!(
                "delta table {} has no column(s) {} that the stream writes; its columns are {}. \
                 Set option mergeSchema=true to add them",
                self.path.display(),
                missing.join(", "),
                names(&table_schema).join(", ")
            )));
        }
        let extra: Vec<&str> = table_schema
            .fields()
            .iter()
            .filter(|f| self.schema.field_with_name(f.name()).is_err())
            .map(|f| f.name().as_str())
            .collect();
        if !extra.is_empty() && !self.merge_schema {
            return Err(EngineError::user(format!(
                "delta table {} has column(s) {} that the stream does not write (the stream has {}); \
                 set mergeSchema=true to write NULL there",
                self.path.display(),
                extra.join(", "),
                names(&self.schema).join(", ")
            )));
        }
        for f in self.schema.fields() {
            if let Ok(tf) = table_schema.field_with_name(f.name()) {
                let (a, b) = (norm(tf.data_type()), norm(f.data_type()));
                let same = a == b || (a.is_integer() && b.is_integer());
                if !same {
                    return Err(EngineError::user(format!(
                        "delta table {}: column '{}' has type {} but the stream writes {}",
                        self.path.display(),
                        f.name(),
                        tf.data_type(),
                        f.data_type()
                    )));
                }
            }
        }
        Ok(())
    }

    async fn write_batch(&mut self, batch_id: u64, rows: Vec<RecordBatch>) -> Result<bool> {
        let t = self.table().await?;
        if !self.checked {
            self.check_schema(&t)?;
            self.checked = true;
        }
        let done = t
            .snapshot()
            .map_err(|e| delta_err("reading the table", e))?
            .transaction_version(t.log_store().as_ref(), &self.app_id)
            .await
            .map_err(|e| delta_err("reading the application transaction", e))?;
        if done.is_some_and(|v| v >= batch_id as i64) {
            self.table = Some(t);
            return Ok(false);
        }
        let before = t.version();
        let props = self.props(batch_id);
        let t = match self.mode {
            OutputMode::Append if rows.is_empty() => t,
            OutputMode::Append | OutputMode::Complete => {
                let save = if self.mode == OutputMode::Append {
                    SaveMode::Append
                } else {
                    SaveMode::Overwrite
                };
                let input = if rows.is_empty() {
                    vec![RecordBatch::new_empty(Arc::clone(&self.schema))]
                } else {
                    rows
                };
                let mut w = t
                    .write(input)
                    .with_save_mode(save)
                    .with_commit_properties(props.clone());
                if self.merge_schema {
                    w = w.with_schema_mode(SchemaMode::Merge);
                }
                if let Some(s) = self.target_file_size {
                    w = w.with_target_file_size(Some(s));
                }
                w.await.map_err(|e| delta_err("writing the batch", e))?
            }
            OutputMode::Update if rows.is_empty() => t,
            OutputMode::Update => {
                let source = crate::util::last_per_key(&self.schema, &rows, &self.keys)?;
                let ctx = SessionContext::new();
                let df = ctx
                    .read_batch(source)
                    .map_err(|e| EngineError::bug(format!("delta merge source: {e}")))?;
                let cols = names(&self.schema);
                let pred = merge_predicate(&self.schema, &self.keys)?;
                let (t, _metrics) = t
                    .merge(df, pred)
                    .with_source_alias("source")
                    .with_target_alias("target")
                    .with_merge_schema(self.merge_schema)
                    .when_matched_update(|mut u| {
                        for c in &cols {
                            u = u.update(c.as_str(), col(Column::new(Some("source"), c.as_str())));
                        }
                        u
                    })
                    .map_err(|e| delta_err("planning the merge", e))?
                    .when_not_matched_insert(|mut i| {
                        for c in &cols {
                            i = i.set(c.as_str(), col(Column::new(Some("source"), c.as_str())));
                        }
                        i
                    })
                    .map_err(|e| delta_err("planning the merge", e))?
                    .with_commit_properties(props.clone())
                    .await
                    .map_err(|e| delta_err("merging the batch", e))?;
                t
            }
        };
        let mut t = t;
        if t.version() == before {
            // nothing to write (or a merge that changed nothing): commit the transaction alone,
            // so that the batch is recorded and a re-run skipped
            let op = DeltaOperation::StreamingUpdate {
                output_mode: match self.mode {
                    OutputMode::Append => deltalake::protocol::OutputMode::Append,
                    OutputMode::Update => deltalake::protocol::OutputMode::Update,
                    OutputMode::Complete => deltalake::protocol::OutputMode::Complete,
                },
                query_id: self.app_id.clone(),
                epoch_id: batch_id as i64,
            };
            let snap = t
                .snapshot()
                .map_err(|e| delta_err("reading the table", e))?;
            CommitBuilder::from(props)
                .with_actions(vec![])
                .build(Some(snap as &dyn TableReference), t.log_store(), op)
                .await
                .map_err(|e| delta_err("committing the batch's transaction", e))?;
            t.update_state()
                .await
                .map_err(|e| delta_err("reading the table's log", e))?;
        }
        if let Some(n) = self.optimize_every {
            if (batch_id + 1).is_multiple_of(n) {
                let mut o = t.clone().optimize().with_max_concurrent_tasks(1);
                if let Some(s) = self.target_file_size {
                    o = o.with_target_size(s);
                }
                match o.await {
                    Ok((nt, m)) => {
                        tracing::info!(
                            batch_id,
                            "delta: compacted {} files into {}",
                            m.num_files_removed,
                            m.num_files_added
                        );
                        t = nt;
                    }
                    // compaction is an optimisation: a failure is logged, the next one retries
                    Err(e) => {
                        tracing::warn!("delta: compaction of {} failed: {e}", self.path.display())
                    }
                }
            }
        }
        self.table = Some(t);
        Ok(true)
    }
}

impl Sink for DeltaSink {
    fn description(&self) -> String {
        format!("DeltaSink[{}]", self.path.display())
    }

    fn add_batch(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        let rows: Vec<RecordBatch> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .cloned()
            .collect();
        let rt = runtime_handle(&self.rt);
        let written = rt.block_on(self.write_batch(batch_id, rows));
        if written.is_err() {
            self.table = None; // reload from the log on the retry
        }
        if !written? {
            tracing::info!(
                batch_id,
                "{}: batch already in the table (txn {}), skipped",
                self.description(),
                self.app_id
            );
        }
        Ok(())
    }
}

fn runtime_handle(rt: &tokio::runtime::Runtime) -> tokio::runtime::Handle {
    rt.handle().clone()
}

/// The rows of the Delta table at `path` (its latest version), read by delta-rs's own table
/// provider: for examples, tests and debugging. Strings come back as plain `Utf8`.
pub fn read_table(path: &str) -> Result<Vec<RecordBatch>> {
    read_table_at(path, None)
}

/// The latest version of the Delta table at `path`.
pub fn table_version(path: &str) -> Result<u64> {
    let rt = runtime()?;
    let url = table_url(path)?;
    rt.block_on(async move {
        let t = deltalake::open_table(url)
            .await
            .map_err(|e| delta_err(&format!("opening {path}"), e))?;
        t.version()
            .ok_or_else(|| EngineError::external(format!("delta: {path} has no version")))
    })
}

/// As [`read_table`], at `version` (time travel) or the latest one with `None`.
pub fn read_table_at(path: &str, version: Option<u64>) -> Result<Vec<RecordBatch>> {
    let rt = runtime()?;
    let url = table_url(path)?;
    rt.block_on(async move {
        let t = match version {
            None => deltalake::open_table(url).await,
            Some(v) => deltalake::open_table_with_version(url, v).await,
        }
        .map_err(|e| delta_err(&format!("opening {path}"), e))?;
        let cfg = deltalake::datafusion::prelude::SessionConfig::new()
            .with_target_partitions(1)
            .set_bool(
                "datafusion.execution.parquet.schema_force_view_types",
                false,
            );
        let ctx = SessionContext::new_with_config(cfg);
        t.update_datafusion_session(&ctx.state())
            .map_err(|e| delta_err("registering the table's store", e))?;
        let provider = t
            .table_provider()
            .await
            .map_err(|e| EngineError::external(format!("delta: scanning {path}: {e}")))?;
        let batches = ctx
            .read_table(provider)
            .map_err(|e| EngineError::external(format!("delta: reading {path}: {e}")))?
            .collect()
            .await
            .map_err(|e| EngineError::external(format!("delta: reading {path}: {e}")))?;
        // plain types (dictionary-encoded partition columns, string views)
        batches
            .into_iter()
            .map(|b| {
                let fields: Vec<arrow::datatypes::Field> = b
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| arrow::datatypes::Field::new(f.name(), norm(f.data_type()), true))
                    .collect();
                let schema = Arc::new(Schema::new(fields));
                let cols = b
                    .columns()
                    .iter()
                    .zip(schema.fields())
                    .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(RecordBatch::try_new(schema, cols)?)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::ErrorKind;

    #[test]
    fn storage_failures_retry_the_rest_is_the_users() {
        let kind = |e: DeltaTableError| delta_err("write", e).kind();
        let io = || std::io::Error::other("disk went away");
        assert_eq!(
            kind(DeltaTableError::Io { source: io() }),
            ErrorKind::External
        );
        assert_eq!(
            kind(DeltaTableError::VersionAlreadyExists(7)),
            ErrorKind::External
        );
        // an I/O failure wrapped in another variant
        assert_eq!(
            kind(DeltaTableError::GenericError {
                source: Box::new(io())
            }),
            ErrorKind::External
        );
        assert_eq!(
            kind(DeltaTableError::Generic(
                "unsupported writer feature".into()
            )),
            ErrorKind::User
        );
        assert_eq!(
            kind(DeltaTableError::GenericError {
                source: "bad partition value".into()
            }),
            ErrorKind::User
        );
        assert_eq!(kind(DeltaTableError::NoSchema), ErrorKind::User);
    }
}
