//! File formats, kept apart from transports: bytes of one file in, Arrow batches out.
//!
//! Malformed records (a line arrow-json or arrow-csv rejects, a value that does not fit its
//! column) are handled per the `mode` option: PERMISSIVE keeps the row with nulls and the raw
//! text in the corrupt-record column (if the schema has one), DROPMALFORMED drops it, FAILFAST
//! fails naming the file and line. The fast path decodes a whole file at once; only a file
//! with bad records is bisected to find them, so clean input pays nothing. Every malformed
//! record is counted ([`take_malformed`], reported in progress as the source's
//! `numMalformedRecords`), and the first of each file (or Kafka partition read) is logged with
//! its line (or offset) and what became of it: nothing disappears without a trace.

pub mod csv;
pub mod json;
pub mod parquet;
pub mod shortcut;
pub mod text;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use sluice_engine::{EngineError, Options, Result};

thread_local! {
    /// Malformed records this thread decoded since [`take_malformed`] was last called (a file
    /// is parsed on one thread, so its reader takes the count after parsing it).
    static MALFORMED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The malformed records this thread decoded since the last call.
pub fn take_malformed() -> u64 {
    MALFORMED.with(|c| c.replace(0))
}

/// Removes a UTF-8 byte order mark from the start of a file (Spark ignores it too).
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// What to do with a malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Keep the row: nulls, and the raw record in the corrupt-record column if present.
    Permissive,
    /// Drop the row.
    DropMalformed,
    /// Fail the query, naming file and line.
    FailFast,
}

impl Mode {
    /// From the `mode` option.
    pub fn from_options(o: &Options) -> Result<Self> {
        match o.get("mode").map(|m| m.to_ascii_uppercase()) {
            None => Ok(Mode::Permissive),
            Some(m) if m == "PERMISSIVE" => Ok(Mode::Permissive),
            Some(m) if m == "DROPMALFORMED" => Ok(Mode::DropMalformed),
            Some(m) if m == "FAILFAST" => Ok(Mode::FailFast),
            Some(m) => Err(EngineError::user(format!(
                "option 'mode' must be PERMISSIVE, DROPMALFORMED or FAILFAST, got '{m}'"
            ))),
        }
    }
}

/// Settings shared by the line-based formats.
#[derive(Debug, Clone)]
pub struct ParseSettings {
    /// The malformed-record mode.
    pub mode: Mode,
    /// Schema of the rows produced (the corrupt-record column included if the user asked).
    pub schema: SchemaRef,
    /// Index of the corrupt-record column in `schema`.
    pub corrupt_index: Option<usize>,
    /// `schema` without the corrupt-record column: what the parser decodes.
    pub data_schema: SchemaRef,
}

impl ParseSettings {
    /// Splits off the corrupt-record column (`columnNameOfCorruptRecord`, default
    /// `_corrupt_record`), which must be a STRING.
    pub fn new(schema: SchemaRef, options: &Options) -> Result<Self> {
        let corrupt_name = options
            .get("columnNameOfCorruptRecord")
            .unwrap_or("_corrupt_record");
        let corrupt_index = schema.index_of(corrupt_name).ok();
        if let Some(i) = corrupt_index {
            if schema.field(i).data_type() != &DataType::Utf8 {
                return Err(EngineError::user(format!(
                    "the corrupt record column '{corrupt_name}' must be a STRING, not {}",
                    schema.field(i).data_type()
                )));
            }
        }
        let data_schema = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != corrupt_index)
                .map(|(_, f)| f.as_ref().clone())
                .collect::<Vec<_>>(),
        ));
        Ok(Self {
            mode: Mode::from_options(options)?,
            schema,
            corrupt_index,
            data_schema,
        })
    }
}

/// A decoder of a set of complete lines into one batch of `data_schema` rows (one per line), or
/// an error if any of them is malformed.
pub type LineDecoder<'a> = dyn Fn(&[&[u8]]) -> std::result::Result<RecordBatch, String> + 'a;

/// Decodes `lines` (with their 1-based line numbers) and applies the malformed-record mode.
/// `whole` is the result of decoding all lines at once (the fast path), if already tried.
pub fn decode_lines(
    path: &Path,
    lines: &[(usize, &[u8])],
    settings: &ParseSettings,
    decode: &LineDecoder<'_>,
) -> Result<Vec<RecordBatch>> {
    decode_records(&path.display().to_string(), "line", lines, settings, decode)
}

/// Like [`decode_lines`] for records that are not lines of a file: `what` names where they come
/// from (`kafka topic t partition 0`) and `unit` what their numbers are (`offset`).
pub fn decode_records(
    what: &str,
    unit: &str,
    lines: &[(usize, &[u8])],
    settings: &ParseSettings,
    decode: &LineDecoder<'_>,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    let logged = std::cell::Cell::new(false);
    bisect((what, unit), lines, settings, decode, &mut out, &logged)?;
    Ok(out)
}

fn bisect(
    path: (&str, &str),
    lines: &[(usize, &[u8])],
    settings: &ParseSettings,
    decode: &LineDecoder<'_>,
    out: &mut Vec<RecordBatch>,
    logged: &std::cell::Cell<bool>,
) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let raw: Vec<&[u8]> = lines.iter().map(|(_, l)| *l).collect();
    match decode(&raw) {
        Ok(batch) => {
            out.push(with_corrupt_column(batch, settings, None)?);
            Ok(())
        }
        Err(reason) if lines.len() == 1 => {
            let (line_no, text) = lines[0];
            if settings.mode != Mode::FailFast {
                MALFORMED.with(|c| c.set(c.get() + 1));
                if !logged.replace(true) {
                    let fate = match (settings.mode, settings.corrupt_index) {
                        (Mode::DropMalformed, _) => "dropped (mode DROPMALFORMED)".to_string(),
                        (_, Some(i)) => format!(
                            "kept with nulls, its text in column '{}'",
                            settings.schema.field(i).name()
                        ),
                        (_, None) => "kept with nulls (add a _corrupt_record STRING column to \
                                      the schema to keep its text)"
                            .to_string(),
                    };
                    tracing::warn!(
                        "malformed record in {} {} {line_no}: {reason}; {fate}; record: {} \
                         (the first of this input; all are counted in progress as \
                         numMalformedRecords)",
                        path.0,
                        path.1,
                        preview(text)
                    );
                }
            }
            match settings.mode {
                Mode::FailFast => Err(EngineError::user(format!(
                    "malformed record in {} {} {line_no}: {reason}; record: {}",
                    path.0,
                    path.1,
                    preview(text)
                ))),
                Mode::DropMalformed => {
                    tracing::debug!(file = %path.0, line_no, "dropping malformed record: {reason}");
                    Ok(())
                }
                Mode::Permissive => {
                    let nulls = RecordBatch::new_empty(Arc::clone(&settings.data_schema));
                    let cols: Vec<ArrayRef> = nulls
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| new_null_array(f.data_type(), 1))
                        .collect();
                    let row = RecordBatch::try_new(Arc::clone(&settings.data_schema), cols)?;
                    out.push(with_corrupt_column(
                        row,
                        settings,
                        Some(String::from_utf8_lossy(text).into_owned()),
                    )?);
                    Ok(())
                }
            }
        }
        Err(_) => {
            let mid = lines.len() / 2;
            bisect(path, &lines[..mid], settings, decode, out, logged)?;
            bisect(path, &lines[mid..], settings, decode, out, logged)
        }
    }
}

/// Adds the corrupt-record column (null, or `raw` for a single malformed row).
pub fn with_corrupt_column(
    batch: RecordBatch,
    settings: &ParseSettings,
    raw: Option<String>,
) -> Result<RecordBatch> {
    let Some(idx) = settings.corrupt_index else {
        return Ok(RecordBatch::try_new(
            Arc::clone(&settings.schema),
            batch.columns().to_vec(),
        )?);
    };
    let n = batch.num_rows();
    let corrupt: ArrayRef = match raw {
        Some(r) => Arc::new(StringArray::from(vec![Some(r); n])),
        None => new_null_array(&DataType::Utf8, n),
    };
    let mut cols = batch.columns().to_vec();
    cols.insert(idx, corrupt);
    Ok(RecordBatch::try_new(Arc::clone(&settings.schema), cols)?)
}

fn preview(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.chars().count() > 200 {
        format!("{}...", s.chars().take(200).collect::<String>())
    } else {
        s.into_owned()
    }
}

/// Splits a file into non-blank lines with 1-based line numbers (`\n` or `\r\n`).
pub fn split_lines(bytes: &[u8], skip_first: bool) -> Vec<(usize, &[u8])> {
    let mut out = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if skip_first && i == 0 {
            continue;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        out.push((i + 1, line));
    }
    out
}
