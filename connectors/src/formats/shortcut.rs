//! The JSON shortcut of the message sources (Kafka, Kinesis): a source given a schema decodes
//! each record's payload as one JSON document into the user's columns, keeps the record's
//! metadata columns beside them, and applies the malformed-record mode (`mode`,
//! `columnNameOfCorruptRecord`) per record, naming where a bad one came from.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_engine::{EngineError, Options, Result};

use super::{decode_records, Mode, ParseSettings};

/// How a source decodes payloads into the user's schema.
#[derive(Debug, Clone)]
pub struct Shortcut {
    /// Decodes permissively with a corrupt-record column (FAILFAST fails at once).
    pub settings: ParseSettings,
    /// The user's mode, applied after decoding.
    pub mode: Mode,
    /// Whether the user's schema has the corrupt-record column (else it is dropped).
    pub keep_corrupt: bool,
}

impl Shortcut {
    /// The shortcut for the user's schema `user` with the source's `options`.
    pub fn new(user: &SchemaRef, options: &Options) -> Result<Self> {
        // decode permissively with a corrupt column, then apply the user's mode: keeps each
        // parsed row beside its record's metadata
        let mode = Mode::from_options(options)?;
        let corrupt = options
            .get("columnNameOfCorruptRecord")
            .unwrap_or("_corrupt_record")
            .to_string();
        let keep_corrupt = user.field_with_name(&corrupt).is_ok();
        let mut fields: Vec<Field> = user.fields().iter().map(|f| f.as_ref().clone()).collect();
        if !keep_corrupt {
            fields.push(Field::new(&corrupt, DataType::Utf8, true));
        }
        let mut o = Options::new();
        o.set("columnNameOfCorruptRecord", &corrupt);
        let mut settings = ParseSettings::new(Arc::new(Schema::new(fields)), &o)?;
        settings.mode = if mode == Mode::FailFast {
            Mode::FailFast
        } else {
            Mode::Permissive
        };
        Ok(Self {
            settings,
            mode,
            keep_corrupt,
        })
    }

    /// The rows' schema: the user's columns, then the source's `meta` columns; a user column
    /// named like one of those is refused (`source` names the source in the message).
    pub fn output_schema(user: &SchemaRef, meta: Vec<Field>, source: &str) -> Result<SchemaRef> {
        if let Some(f) = meta.iter().find(|f| user.field_with_name(f.name()).is_ok()) {
            let names: Vec<&str> = meta.iter().map(|f| f.name().as_str()).collect();
            return Err(EngineError::user(format!(
                "{source} source: the schema has a column '{}', which the source adds itself \
                 ({}); rename it",
                f.name(),
                names.join(", ")
            )));
        }
        let mut fields: Vec<Field> = user.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(meta);
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Decodes the payloads of one group of records (`what` names it, `unit` the numbers given
    /// with each payload: `offset`, `sequence number`). A missing or blank payload is `null`.
    pub fn decode(
        &self,
        what: &str,
        unit: &str,
        payloads: &[(usize, Option<&[u8]>)],
    ) -> Result<Vec<RecordBatch>> {
        let cleaned: Vec<Vec<u8>> = payloads
            .iter()
            .map(|(_, v)| {
                let v: Vec<u8> = v
                    .unwrap_or(b"null")
                    .iter()
                    .map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b })
                    .collect();
                if v.iter().all(u8::is_ascii_whitespace) {
                    b"null".to_vec()
                } else {
                    v
                }
            })
            .collect();
        let lines: Vec<(usize, &[u8])> = payloads
            .iter()
            .zip(&cleaned)
            .map(|((n, _), v)| (*n, v.as_slice()))
            .collect();
        let decode = super::json::line_decoder(Arc::clone(&self.settings.data_schema));
        decode_records(what, unit, &lines, &self.settings, &decode)
    }

    /// The rows of `schema` (the user's columns, then `meta`'s): the decoded `parts` (one row
    /// per record, in record order) beside the metadata columns, the corrupt-record column
    /// dropped unless the user has it, and malformed rows dropped with DROPMALFORMED.
    pub fn assemble(
        &self,
        schema: &SchemaRef,
        parts: &[RecordBatch],
        meta: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let parsed = arrow::compute::concat_batches(&self.settings.schema, parts)?;
        let corrupt_idx = self
            .settings
            .corrupt_index
            .ok_or_else(|| EngineError::bug("shortcut without a corrupt-record column"))?;
        let keep: BooleanArray = match self.mode {
            Mode::DropMalformed => parsed
                .column(corrupt_idx)
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|c| c.iter().map(|v| Some(v.is_none())).collect())
                .ok_or_else(|| EngineError::bug("corrupt column type"))?,
            _ => BooleanArray::from(vec![true; parsed.num_rows()]),
        };
        let mut cols: Vec<ArrayRef> = Vec::new();
        for (k, c) in parsed.columns().iter().enumerate() {
            if k == corrupt_idx && !self.keep_corrupt {
                continue;
            }
            cols.push(Arc::clone(c));
        }
        cols.extend(meta);
        let batch = RecordBatch::try_new(Arc::clone(schema), cols)?;
        Ok(filter_record_batch(&batch, &keep)?)
    }
}
