//! CSV, decoded by arrow-csv as text, then converted to the user's schema column by column
//! (vectorised casts; a value that does not convert makes its record malformed).

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray};
use arrow::compute::{cast_with_options, concat_batches, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::FormatOptions;
use sluice_engine::{EngineError, Options, Result};

use super::{decode_lines, split_lines, with_corrupt_column, ParseSettings};

/// CSV options (Spark's names).
#[derive(Debug, Clone)]
pub struct CsvOptions {
    /// First line is a header (`header`, default false).
    pub header: bool,
    /// Field separator (`sep` or `delimiter`, default `,`).
    pub delimiter: u8,
    /// Quote character (`quote`, default `"`).
    pub quote: u8,
    /// Escape character (`escape`, default `\`).
    pub escape: u8,
    /// Text that means null (`nullValue`, default: the empty string).
    pub null_value: Option<String>,
    /// chrono format for TIMESTAMP columns (`timestampFormat`), else ISO-8601 forms.
    pub timestamp_format: Option<String>,
}

fn single_byte(o: &Options, key: &str, default: u8) -> Result<u8> {
    match o.get(key) {
        None => Ok(default),
        Some(v) if v.len() == 1 => Ok(v.as_bytes()[0]),
        Some("\\t") => Ok(b'\t'),
        Some(v) => Err(EngineError::user(format!(
            "option '{key}' must be a single character, got '{v}'"
        ))),
    }
}

impl CsvOptions {
    /// Reads the CSV options.
    pub fn from_options(o: &Options) -> Result<Self> {
        let delimiter = match o.get("sep") {
            Some(_) => single_byte(o, "sep", b',')?,
            None => single_byte(o, "delimiter", b',')?,
        };
        Ok(Self {
            header: o.get_bool("header", false)?,
            delimiter,
            quote: single_byte(o, "quote", b'"')?,
            escape: single_byte(o, "escape", b'\\')?,
            null_value: o.get("nullValue").map(str::to_string),
            timestamp_format: o.get("timestampFormat").map(spark_to_chrono_format),
        })
    }

    /// arrow-csv's view of the file's dialect, for schema inference.
    fn format(&self) -> arrow::csv::reader::Format {
        arrow::csv::reader::Format::default()
            .with_header(self.header)
            .with_delimiter(self.delimiter)
            .with_quote(self.quote)
            .with_escape(self.escape)
    }

    fn reader(&self, schema: SchemaRef, header: bool) -> Result<arrow::csv::ReaderBuilder> {
        let mut b = arrow::csv::ReaderBuilder::new(schema)
            .with_header(header)
            .with_delimiter(self.delimiter)
            .with_quote(self.quote)
            .with_escape(self.escape)
            .with_truncated_rows(true)
            .with_batch_size(8192);
        if let Some(nv) = &self.null_value {
            let re = regex::Regex::new(&format!("^{}$", regex::escape(nv)))
                .map_err(|e| EngineError::user(format!("option 'nullValue': {e}")))?;
            b = b.with_null_regex(re);
        }
        Ok(b)
    }
}

/// Translates the common Spark datetime pattern letters to chrono's (`yyyy-MM-dd HH:mm:ss`).
fn spark_to_chrono_format(f: &str) -> String {
    if f.contains('%') {
        return f.to_string();
    }
    f.replace("yyyy", "%Y")
        .replace("MM", "%m")
        .replace("dd", "%d")
        .replace("HH", "%H")
        .replace("mm", "%M")
        .replace("ss", "%S")
        .replace(".SSS", "%.3f")
        .replace("XXX", "%:z")
        .replace('X', "%#z")
        .replace('\'', "")
}

fn text_schema(data: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        data.fields()
            .iter()
            .map(|f| Field::new(f.name(), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

/// Converts a batch of text columns to the data schema; an error names the first bad value.
fn convert(
    text: &RecordBatch,
    data: &SchemaRef,
    opts: &CsvOptions,
) -> std::result::Result<RecordBatch, String> {
    let cast_opts = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(data.fields().len());
    for (i, f) in data.fields().iter().enumerate() {
        let col = text.column(i);
        let converted = match (f.data_type(), &opts.timestamp_format) {
            (DataType::Utf8, _) => Arc::clone(col),
            (DataType::Timestamp(TimeUnit::Microsecond, tz), Some(fmt)) => {
                let strings = col.as_string::<i32>();
                let mut values = Vec::with_capacity(strings.len());
                for s in strings.iter() {
                    values.push(match s {
                        None => None,
                        Some(s) => Some(parse_timestamp(s, fmt).ok_or_else(|| {
                            format!("cannot parse '{s}' as a timestamp with format '{fmt}' (column '{}')", f.name())
                        })?),
                    });
                }
                Arc::new(TimestampMicrosecondArray::from(values).with_timezone_opt(tz.clone()))
            }
            (dt, _) => cast_with_options(col, dt, &cast_opts)
                .map_err(|e| format!("{e} (column '{}')", f.name()))?,
        };
        cols.push(converted);
    }
    RecordBatch::try_new(Arc::clone(data), cols).map_err(|e| e.to_string())
}

fn parse_timestamp(s: &str, fmt: &str) -> Option<i64> {
    if let Ok(dt) = chrono::DateTime::parse_from_str(s, fmt) {
        return Some(dt.timestamp_micros());
    }
    chrono::NaiveDateTime::parse_from_str(s, fmt)
        .ok()
        .map(|dt| dt.and_utc().timestamp_micros())
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, fmt)
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|dt| dt.and_utc().timestamp_micros())
        })
}

fn decode_text(
    bytes: &[u8],
    text_schema: &SchemaRef,
    opts: &CsvOptions,
    header: bool,
) -> std::result::Result<RecordBatch, String> {
    let reader = opts
        .reader(Arc::clone(text_schema), header)
        .map_err(|e| e.to_string())?
        .build(Cursor::new(bytes))
        .map_err(|e| e.to_string())?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    concat_batches(text_schema, &batches).map_err(|e| e.to_string())
}

/// Reads one CSV file.
pub fn read(
    path: &Path,
    bytes: &[u8],
    settings: &ParseSettings,
    opts: &CsvOptions,
) -> Result<Vec<RecordBatch>> {
    let bytes = super::strip_bom(bytes);
    let data = &settings.data_schema;
    let texts = text_schema(data);
    if let Ok(b) =
        decode_text(bytes, &texts, opts, opts.header).and_then(|t| convert(&t, data, opts))
    {
        return Ok(vec![with_corrupt_column(b, settings, None)?]);
    }
    // Slow path: one record per line (quoted newlines need the fast path to succeed).
    let lines = split_lines(bytes, opts.header);
    let decode = |lines: &[&[u8]]| {
        let joined = lines.join(&b'\n');
        let t = decode_text(&joined, &texts, opts, false)?;
        if t.num_rows() != lines.len() {
            return Err(format!(
                "expected {} records, decoded {}",
                lines.len(),
                t.num_rows()
            ));
        }
        convert(&t, data, opts)
    };
    decode_lines(path, &lines, settings, &decode)
}

/// The name of column `i` of a CSV file without a header (Spark's `_c0`, `_c1`, ...).
pub fn column_name(i: usize) -> String {
    format!("_c{i}")
}

/// Reads a CSV file's columns as text, named by its header (`_c0`, `_c1`, ... without one, as
/// Spark names them): Auto Loader matches columns by name, file by file.
pub fn read_as_text(path: &Path, bytes: &[u8], opts: &CsvOptions) -> Result<RecordBatch> {
    let bytes = super::strip_bom(bytes);
    let (found, _) = opts.format().infer_schema(Cursor::new(bytes), Some(1))?;
    let texts = Arc::new(Schema::new(
        found
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let name = if opts.header {
                    f.name().clone()
                } else {
                    column_name(i)
                };
                Field::new(name, DataType::Utf8, true)
            })
            .collect::<Vec<_>>(),
    ));
    decode_text(bytes, &texts, opts, opts.header)
        .map_err(|e| EngineError::user(format!("cannot read CSV file {}: {e}", path.display())))
}

/// Infers a schema from the first records of `bytes` (`inferSchema`).
pub fn infer(bytes: &[u8], opts: &CsvOptions) -> Result<Schema> {
    let (schema, _) = opts.format().infer_schema(Cursor::new(bytes), Some(1000))?;
    Ok(super::json::normalize_inferred(schema))
}
