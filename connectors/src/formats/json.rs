//! JSON lines, decoded by arrow-json straight into the user's schema.

use std::path::Path;

use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use sluice_engine::Result;

use super::{decode_lines, split_lines, with_corrupt_column, ParseSettings};

const BATCH_ROWS: usize = 8192;

/// Decodes JSON text (one object per line) into `schema` rows.
fn decode(schema: &SchemaRef, bytes: &[u8]) -> std::result::Result<Vec<RecordBatch>, String> {
    sluice_engine::json_fn::decode_json(schema, bytes, BATCH_ROWS)
}

/// A [`super::LineDecoder`] for JSON: the lines decoded together, one row per line or an error.
pub fn line_decoder(
    schema: SchemaRef,
) -> impl Fn(&[&[u8]]) -> std::result::Result<RecordBatch, String> {
    move |lines: &[&[u8]]| {
        let joined = lines.join(&b'\n');
        let batches = decode(&schema, &joined)?;
        let b = concat_batches(&schema, &batches).map_err(|e| e.to_string())?;
        if b.num_rows() != lines.len() {
            return Err(format!(
                "expected {} records, decoded {}",
                lines.len(),
                b.num_rows()
            ));
        }
        Ok(b)
    }
}

/// Reads one JSON-lines file.
pub fn read(path: &Path, bytes: &[u8], settings: &ParseSettings) -> Result<Vec<RecordBatch>> {
    let bytes = super::strip_bom(bytes);
    if let Ok(batches) = decode(&settings.data_schema, bytes) {
        return batches
            .into_iter()
            .map(|b| with_corrupt_column(b, settings, None))
            .collect();
    }
    let lines = split_lines(bytes, false);
    let decode_set = line_decoder(settings.data_schema.clone());
    decode_lines(path, &lines, settings, &decode_set)
}

/// Infers a schema from the first records of `bytes` (`inferSchema`).
pub fn infer(bytes: &[u8]) -> Result<arrow::datatypes::Schema> {
    infer_records(bytes, Some(1000))
}

/// Infers a schema from every record of `bytes` (Auto Loader's sample: whole files).
pub fn infer_all(bytes: &[u8]) -> Result<arrow::datatypes::Schema> {
    infer_records(bytes, None)
}

fn infer_records(bytes: &[u8], max: Option<usize>) -> Result<arrow::datatypes::Schema> {
    let (schema, _) = arrow::json::reader::infer_json_schema(std::io::Cursor::new(bytes), max)?;
    Ok(normalize_inferred(schema))
}

/// Maps inferred types to Sluice's (timestamps in microseconds, UTC).
pub fn normalize_inferred(schema: arrow::datatypes::Schema) -> arrow::datatypes::Schema {
    use arrow::datatypes::{DataType, Field};
    arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Timestamp(_, _) => {
                    Field::new(f.name(), sluice_engine::timestamp_type(), true)
                }
                _ => f.as_ref().clone().with_nullable(true),
            })
            .collect::<Vec<_>>(),
    )
}
