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
//! crate writes log checkpoints every `checkpointInterval` commits (default 100). Every data
//! file is journaled before it is written (`journal.rs`), so the files of a batch killed before
//! its commit are removed when it runs again (`sink.rs`).
//!
//! Source: see [`source`].

mod journal;
mod sink;
pub mod source;
mod stores;

pub(crate) use sink::norm;
pub use sink::{DeltaSink, DeltaSinkFactory};

use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::DeltaTableError;
use sluice_engine::{EngineError, Result};

/// A multi-threaded runtime for delta-rs (it needs one: the kernel uses blocking tasks).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| EngineError::external(format!("cannot start the Delta runtime: {e}")))
}

/// The table URL of a local directory (created if missing) or of a bucket prefix
/// (`s3://bucket/table`).
pub(crate) fn table_url(path: &str) -> Result<url::Url> {
    stores::register();
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

pub(crate) fn runtime_handle(rt: &tokio::runtime::Runtime) -> tokio::runtime::Handle {
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
