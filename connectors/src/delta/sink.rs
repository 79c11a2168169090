//! The Delta sink: one commit per batch carrying the query's application transaction (see the
//! module above), the journal of data files for batches that never committed (`journal.rs`).

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

use super::journal;
#[path = "fence.rs"]
mod fence;
use super::{delta_err, runtime, runtime_handle, table_url};

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
    fn fences_tasks(&self, _spec: &SinkSpec) -> bool {
        true // every commit of a task carries its epoch transaction (fence.rs)
    }
    fn create(&self, spec: &SinkSpec, ctx: &SinkContext) -> Result<Box<dyn Sink>> {
        self.validate(spec)?;
        let path = spec.options.get("path").unwrap_or_default().to_string();
        let schema = Arc::clone(&ctx.schema);
        let (partition_by, keys) = target_columns(spec, ctx)?;
        let rt = runtime()?;
        let url = table_url(&path)?;
        let mut sink = Box::new(DeltaSink {
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
            journal: Arc::new(journal::Journal::new(
                ctx.checkpoint_dir
                    .join("sinks")
                    .join(format!("{}.delta-files", ctx.query_id)),
            )),
            storage: spec.options.storage(),
            task: ctx.task,
        });
        if let Some(task) = ctx.task {
            let rt = runtime_handle(&sink.rt);
            rt.block_on(sink.claim(task))?;
        }
        Ok(sink)
    }
}

/// A data type as Delta stores it (string/binary flavours, timestamp units and nullability
/// are the same column to Delta).
pub(crate) fn norm(dt: &arrow::datatypes::DataType) -> arrow::datatypes::DataType {
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
    /// The data files written since the last commit of this sink (see `journal.rs`).
    journal: Arc<journal::Journal>,
    /// Object-storage options (`fs.s3a.*`) for a table in a bucket.
    storage: sluice_engine::connector::storage::StorageOptions,
    /// The task and epoch, when the query runs as a task of a group (fence.rs).
    task: Option<sluice_engine::TaskInfo>,
}

impl DeltaSink {
    fn props(&self, batch_id: u64) -> CommitProperties {
        let p = CommitProperties::default()
            .with_application_transaction(Transaction::new(&self.app_id, batch_id as i64));
        match self.epoch_txn() {
            Some(e) => p.with_application_transaction(e),
            None => p,
        }
    }

    /// The store under the table: the one delta-rs would use, its data-file writes journaled.
    fn store(&self) -> Result<Arc<dyn object_store::ObjectStore>> {
        let base = super::stores::root_store(&self.url, &self.storage)?;
        Ok(Arc::new(journal::JournaledStore::new(
            base,
            Arc::clone(&self.journal),
        )))
    }

    /// Removes the data files an unfinished attempt of a batch wrote and never committed:
    /// those in the journal that the table does not reference. Called before a batch that
    /// is not in the table is written.
    async fn remove_uncommitted_files(&self, t: &DeltaTable, batch_id: u64) -> Result<()> {
        use object_store::ObjectStoreExt as _;
        let recorded = self.journal.recorded()?;
        if recorded.is_empty() {
            return Ok(());
        }
        // part files are named with a UUID: the name tells them apart
        let active: std::collections::HashSet<String> = match t.get_file_uris() {
            Ok(uris) => uris
                .map(|u| u.rsplit('/').next().unwrap_or_default().to_string())
                .collect(),
            Err(DeltaTableError::NotInitialized) => Default::default(),
            Err(e) => return Err(delta_err("listing the table's files", e)),
        };
        let base = super::stores::root_store(&self.url, &self.storage)?;
        let mut removed = 0;
        for p in recorded {
            if active.contains(p.filename().unwrap_or_default()) {
                continue;
            }
            match base.delete(&p).await {
                Ok(()) => removed += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(EngineError::external(format!(
                        "delta: removing {p}, written by an unfinished attempt of batch \
                         {batch_id}: {e}"
                    )))
                }
            }
        }
        if removed > 0 {
            tracing::info!(
                batch_id,
                "delta: removed {removed} data file(s) an unfinished attempt of this batch \
                 wrote and never committed"
            );
        }
        self.journal.clear()
    }

    /// The table, loaded at its latest version; created from the stream's schema if missing.
    async fn table(&mut self) -> Result<DeltaTable> {
        let mut t = match self.table.take() {
            Some(t) => t,
            None => {
                let mut t = deltalake::DeltaTableBuilder::from_url(self.url.clone())
                    .map_err(|e| delta_err("opening the table", e))?
                    .with_storage_backend(self.store()?, self.url.clone())
                    .build()
                    .map_err(|e| delta_err("opening the table", e))?;
                match t.load().await {
                    Ok(()) | Err(DeltaTableError::NotATable(_)) => {}
                    Err(e) => return Err(delta_err("opening the table", e)),
                }
                t
            }
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
        self.check_task_epoch(&t).await?;
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
            // committed by an earlier attempt (killed after its commit, perhaps inside the
            // compaction after it): remove what no commit references, then start afresh
            self.remove_uncommitted_files(&t, batch_id).await?;
            self.table = Some(t);
            return Ok(false);
        }
        self.remove_uncommitted_files(&t, batch_id).await?;
        self.journal.set_batch(batch_id);
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
        // the batch is in the table: its files are the table's. (A compaction's files are
        // journaled afresh: if it fails or is killed, the next batch removes them.)
        self.journal.clear()?;
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
                        self.journal.clear()?;
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
