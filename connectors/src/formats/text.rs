//! Text: one row per line, in a `value` STRING column.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_engine::Result;

/// The schema of the text format.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]))
}

/// Reads one text file (lines end with `\n` or `\r\n`; a final newline adds no empty row).
pub fn read(bytes: &[u8], schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let text = String::from_utf8_lossy(super::strip_bom(bytes));
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let col: ArrayRef = Arc::new(StringArray::from(lines));
    Ok(vec![RecordBatch::try_new(schema.clone(), vec![col])?])
}
