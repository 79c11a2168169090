//! `df.write...save()` for static DataFrames (a `foreachBatch` batch among them): the rows
//! written once through the same sinks a stream uses (parquet, csv, json, delta, jdbc, ...),
//! with Spark's save modes `append` and `overwrite` (the sink's complete mode).
//!
//! Each write has an id and a batch id. Inside `foreachBatch` they are the query's checkpoint
//! and the batch id, so a batch re-run after a crash writes nothing twice to a sink that keeps
//! batch ids (JDBC's marker table, Delta's transaction ids): Spark's idempotent-writes recipe,
//! built in.

use std::path::PathBuf;

use sluice::engine::connector::{SinkContext, SinkSpec};
use sluice::{DataFrame, EngineError, OutputMode};

/// Writes `df`'s rows once.
pub(crate) fn write(
    df: DataFrame,
    format: &str,
    options: Vec<(String, String)>,
    mode: &str,
    write_id: &str,
    batch_id: u64,
    checkpoint_dir: Option<PathBuf>,
) -> sluice::Result<()> {
    let output_mode = match mode.to_ascii_lowercase().as_str() {
        "append" | "" => OutputMode::Append,
        "overwrite" | "complete" => OutputMode::Complete,
        other => {
            return Err(EngineError::user(format!(
                "write: save mode '{other}' is not supported; use append or overwrite"
            )))
        }
    };
    let session = df.session().clone();
    let schema = df.schema();
    let batches = df.collect()?;
    let factory = session.registry().sink(format)?;
    let mut opts = sluice::engine::Options::new();
    for (k, v) in options {
        opts.set(k, v);
    }
    let spec = SinkSpec {
        format: format.to_ascii_lowercase(),
        options: opts,
        output_mode,
    };
    factory.validate(&spec)?;
    // a one-off write keeps its sink's journal in a directory removed afterwards
    let scratch = match checkpoint_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(|e| {
            EngineError::external(format!("write: cannot create a temporary directory: {e}"))
        })?),
    };
    let checkpoint_dir = match (checkpoint_dir, &scratch) {
        (Some(d), _) => d,
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => return Err(EngineError::bug("no directory for a batch write")),
    };
    std::fs::create_dir_all(&checkpoint_dir).map_err(|e| {
        EngineError::user(format!(
            "write: cannot create {}: {e}",
            checkpoint_dir.display()
        ))
    })?;
    let ctx = SinkContext {
        query_id: write_id.to_string(),
        query_name: None,
        schema,
        key_columns: None,
        checkpoint_dir,
        session: session.context().clone(),
        task: None,
    };
    let mut sink = factory.create(&spec, &ctx)?;
    let written = sink.add_batch(batch_id, &batches);
    let closed = sink.close();
    written.and(closed)
}
