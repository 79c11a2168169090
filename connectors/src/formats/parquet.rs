//! Parquet, read by the parquet crate's Arrow reader and aligned to the user's schema by
//! column name (a column missing from a file reads as nulls).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_engine::{EngineError, Result};

/// Reads one Parquet file.
pub fn read(path: &Path, bytes: Vec<u8>, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for b in read_own(path, bytes)? {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            let col = match b.column_by_name(f.name()) {
                None => new_null_array(f.data_type(), b.num_rows()),
                Some(c) if c.data_type() == f.data_type() => Arc::clone(c),
                Some(c) => cast(c, f.data_type()).map_err(|e| {
                    EngineError::user(format!(
                        "Parquet file {}: column '{}' is {} and cannot be read as {}: {e}",
                        path.display(),
                        f.name(),
                        c.data_type(),
                        f.data_type()
                    ))
                })?,
            };
            cols.push(col);
        }
        out.push(RecordBatch::try_new(Arc::clone(schema), cols)?);
    }
    Ok(out)
}

/// Reads a Parquet file with its own columns and types.
pub fn read_own(path: &Path, bytes: Vec<u8>) -> Result<Vec<RecordBatch>> {
    let corrupt = |e: &dyn std::fmt::Display| {
        EngineError::user(format!("cannot read Parquet file {}: {e}", path.display()))
    };
    ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
        .map_err(|e| corrupt(&e))?
        .with_batch_size(8192)
        .build()
        .map_err(|e| corrupt(&e))?
        .map(|b| b.map_err(|e| corrupt(&e)))
        .collect()
}

/// The schema of a Parquet file (`inferSchema` is implicit for Parquet in Spark).
pub fn infer(bytes: Vec<u8>) -> Result<arrow::datatypes::Schema> {
    let b = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
        .map_err(|e| EngineError::user(format!("cannot read Parquet footer: {e}")))?;
    Ok(b.schema().as_ref().clone())
}
