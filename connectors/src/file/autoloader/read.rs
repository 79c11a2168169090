//! Reading one file the Auto Loader way: columns matched by name, and whatever does not fit the
//! schema — a field it lacks, a value of another type, a name differing only in case — kept in
//! the rescued-data column as JSON (with `_file_path`) instead of being lost.
//!
//! JSON: the whole file is first decoded strictly (an unknown field or a value of the wrong
//! type fails it); clean input ends there, with a NULL rescued column. Only a file with
//! something to rescue is read record by record. CSV and Parquet: the file's own columns are
//! read, then cast column by column to the schema (vectorised); values a cast turns into NULL
//! and columns the schema lacks are written as JSON by arrow's writer.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, StringArray,
};
use arrow::compute::{
    can_cast_types, cast_with_options, concat_batches, is_not_null, is_null, kernels::boolean,
    nullif, CastOptions,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::{Map, Value};
use sluice_engine::json_fn::decode_json_with;
use sluice_engine::{EngineError, Result};

use super::infer::{new_column_type, partition_values};
use super::{AutoRead, NewColumn};
use crate::formats::{self, with_corrupt_column, ParseSettings};

const BATCH_ROWS: usize = 8192;

/// Rows of one file in the stream's schema, and the columns it has that the schema lacks.
pub(in crate::file) struct Read {
    pub batches: Vec<RecordBatch>,
    pub new_columns: Vec<NewColumn>,
}

/// What reading a file compares its fields with, computed once per stream.
#[derive(Debug)]
pub(super) struct Lookup {
    /// The data columns (what the parser decodes; the corrupt-record column left out).
    data: SchemaRef,
    /// `data` with the scalar columns arrow-json would convert leniently (a JSON 12.5 into a
    /// BIGINT, truncated) read as text, then cast with a check: what does not convert is
    /// rescued, in the fast path and the slow path alike.
    text: SchemaRef,
    /// The columns read as text.
    cast: Vec<usize>,
    /// Column index and type by name.
    types: HashMap<String, (usize, DataType)>,
    /// The column names in lower case (a field differing only in case is rescued, not new).
    lower: HashSet<String>,
}

impl Lookup {
    pub(super) fn new(data: SchemaRef) -> Self {
        let mut cast = Vec::new();
        let text: Vec<Field> = data
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if read_as_text(f.data_type()) {
                    cast.push(i);
                    Field::new(f.name(), DataType::Utf8, true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        Self {
            text: Arc::new(Schema::new(text)),
            cast,
            types: data
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name().clone(), (i, f.data_type().clone())))
                .collect(),
            lower: data
                .fields()
                .iter()
                .map(|f| f.name().to_lowercase())
                .collect(),
            data,
        }
    }

    /// Casts the text columns of decoded rows to their types; per column, the rows whose value
    /// did not convert (non-null text, null after the cast).
    fn cast(&self, text: &RecordBatch) -> Result<(RecordBatch, Vec<(usize, BooleanArray)>)> {
        let mut cols = text.columns().to_vec();
        let mut lost = Vec::new();
        for &i in &self.cast {
            let dt = self.data.field(i).data_type();
            let typed = cast_with_options(&cols[i], dt, &CastOptions::default())?;
            // a cast only adds NULLs: the mask is built only when it did
            if typed.null_count() > cols[i].null_count() {
                lost.push((i, boolean::and(&is_not_null(&cols[i])?, &is_null(&typed)?)?));
            }
            cols[i] = typed;
        }
        let batch = RecordBatch::try_new_with_options(
            Arc::clone(&self.data),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(text.num_rows())),
        )?;
        Ok((batch, lost))
    }
}

/// Scalar types arrow-json would fill lossily (a JSON 12.5 into a BIGINT becomes 12): their
/// values are read as text and cast with a check. Floats, booleans, dates and timestamps are
/// decoded directly: a value that does not fit fails the decode (and the file is read record
/// by record), none is changed.
fn read_as_text(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Int8 | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Decimal128(..)
            | Decimal256(..)
    )
}

impl AutoRead {
    /// Appends the partition columns (from the file's `key=value` directories) and the rescued
    /// column (`rescued`, or NULL) to rows of the data columns.
    fn finish(
        &self,
        path: &Path,
        data: RecordBatch,
        rescued: Option<ArrayRef>,
    ) -> Result<RecordBatch> {
        let n = data.num_rows();
        let mut cols = data.columns().to_vec();
        let values = partition_values(&self.base, path);
        for (name, dt) in &self.partitions {
            let col = match values.iter().find(|(k, _)| k == name) {
                Some((_, v)) => {
                    let text: ArrayRef = Arc::new(StringArray::from(vec![v.as_str(); n]));
                    cast_with_options(&text, dt, &CastOptions::default())?
                }
                None => new_null_array(dt, n),
            };
            cols.push(col);
        }
        if self.rescued.is_some() {
            cols.push(rescued.unwrap_or_else(|| new_null_array(&DataType::Utf8, n)));
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.full), cols)?)
    }

    /// Whether a field of the input that the schema lacks is a new column (not a partition
    /// column, not the rescued column, not a schema column in another case).
    fn is_new(&self, name: &str) -> bool {
        let lower = name.to_lowercase();
        !self.lookup.lower.contains(&lower)
            && !self
                .partitions
                .iter()
                .any(|(p, _)| p.to_lowercase() == lower)
            && self.rescued.as_deref() != Some(name)
    }

    /// One JSON-lines file.
    pub(in crate::file) fn read_json(
        &self,
        path: &Path,
        bytes: &[u8],
        settings: &ParseSettings,
    ) -> Result<Read> {
        let bytes = formats::strip_bom(bytes);
        let lk = &self.lookup;
        // fast path: every field known, every value of its column's kind, every cast exact
        if let Ok(text) = decode_json_with(&lk.text, bytes, BATCH_ROWS, true) {
            let mut batches = Vec::with_capacity(text.len());
            for t in &text {
                let (b, lost) = lk.cast(t)?;
                if !lost.is_empty() {
                    batches.clear();
                    break;
                }
                batches.push(self.finish(path, with_corrupt_column(b, settings, None)?, None)?);
            }
            if batches.len() == text.len() {
                return Ok(Read {
                    batches,
                    new_columns: Vec::new(),
                });
            }
        }
        // something to rescue (or malformed): record by record
        let file = path.display().to_string();
        let mut new_columns: Vec<NewColumn> = Vec::new();
        let mut clean: Vec<Map<String, Value>> = Vec::new();
        let mut rescued: Vec<Map<String, Value>> = Vec::new();
        let mut malformed = Vec::new();
        for (no, line) in formats::split_lines(bytes, false) {
            let Ok(Value::Object(record)) = serde_json::from_slice::<Value>(line) else {
                malformed.push((no, line));
                continue;
            };
            let (mut keep, mut resc) = (Map::new(), Map::new());
            for (k, v) in record {
                match lk.types.get(&k) {
                    // text now, cast (and rescued if it does not convert) below
                    Some((i, _)) if lk.cast.contains(i) && !v.is_object() && !v.is_array() => {
                        keep.insert(k, v);
                    }
                    Some((i, dt)) if !lk.cast.contains(i) && fits(&v, dt) => {
                        keep.insert(k, as_column_value(v, dt));
                    }
                    Some(_) => {
                        resc.insert(k, v);
                    }
                    None => {
                        if self.is_new(&k) && !new_columns.iter().any(|c| c.name == k) {
                            new_columns.push(NewColumn {
                                data_type: new_column_type(&v, self.infer_types),
                                name: k.clone(),
                                file: file.clone(),
                            });
                        }
                        resc.insert(k, v);
                    }
                }
            }
            clean.push(keep);
            rescued.push(resc);
        }
        let text = decode_clean(&lk.text, &mut clean, &mut rescued)?;
        let (data_rows, lost) = lk.cast(&text)?;
        for (i, rows) in lost {
            let name = lk.data.field(i).name();
            for r in (0..rows.len()).filter(|r| rows.value(*r)) {
                if let Some(v) = clean[r].remove(name) {
                    rescued[r].insert(name.clone(), v);
                }
            }
        }
        let rescued_col = self.rescued_array(&file, rescued);
        let mut batches = vec![self.finish(
            path,
            with_corrupt_column(data_rows, settings, None)?,
            Some(rescued_col),
        )?];
        // records that are not JSON objects: the `mode` option decides (counted, logged)
        if !malformed.is_empty() {
            let decode = formats::json::line_decoder(Arc::clone(&lk.data));
            for b in formats::decode_lines(path, &malformed, settings, &decode)? {
                batches.push(self.finish(path, b, None)?);
            }
        }
        Ok(Read {
            batches,
            new_columns,
        })
    }

    /// The rescued column of the records' rescued fields: NULL where nothing was rescued.
    fn rescued_array(&self, file: &str, rescued: Vec<Map<String, Value>>) -> ArrayRef {
        let values: Vec<Option<String>> = rescued
            .into_iter()
            .map(|mut m| {
                if m.is_empty() {
                    return None;
                }
                m.insert("_file_path".into(), Value::String(file.to_string()));
                Some(Value::Object(m).to_string())
            })
            .collect();
        Arc::new(StringArray::from(values))
    }

    /// Rows of a file read with its own columns (CSV as text, Parquet typed), cast to the
    /// schema's data columns by name.
    pub(in crate::file) fn conform(
        &self,
        path: &Path,
        own: &[RecordBatch],
        settings: &ParseSettings,
    ) -> Result<Read> {
        let data = &settings.data_schema;
        let file = path.display().to_string();
        let mut new_columns = Vec::new();
        let mut batches = Vec::with_capacity(own.len());
        for fb in own {
            let n = fb.num_rows();
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(data.fields().len());
            // the columns whose values are rescued: (name, values; NULL where none)
            let mut resc: Vec<(String, ArrayRef)> = Vec::new();
            for f in data.fields() {
                let Some(orig) = fb.column_by_name(f.name()) else {
                    cols.push(new_null_array(f.data_type(), n));
                    continue;
                };
                if orig.data_type() == f.data_type() {
                    cols.push(Arc::clone(orig));
                    continue;
                }
                if !can_cast_types(orig.data_type(), f.data_type()) {
                    // e.g. a struct where the schema has a number: the whole column is rescued
                    resc.push((f.name().clone(), Arc::clone(orig)));
                    cols.push(new_null_array(f.data_type(), n));
                    continue;
                }
                let cast = cast_with_options(orig, f.data_type(), &CastOptions::default())?;
                // values the cast could not convert: non-null before, null after
                let lost = boolean::and(
                    &arrow::compute::is_not_null(orig)?,
                    &arrow::compute::is_null(&cast)?,
                )?;
                if lost.true_count() > 0 {
                    resc.push((f.name().clone(), nullif(orig, &boolean::not(&lost)?)?));
                }
                cols.push(cast);
            }
            for (field, col) in fb.schema().fields().iter().zip(fb.columns()) {
                if self.lookup.types.contains_key(field.name()) {
                    continue;
                }
                if self.is_new(field.name())
                    && !new_columns
                        .iter()
                        .any(|c: &NewColumn| &c.name == field.name())
                {
                    new_columns.push(NewColumn {
                        name: field.name().clone(),
                        data_type: if self.infer_types || col.data_type() != &DataType::Utf8 {
                            col.data_type().clone()
                        } else {
                            DataType::Utf8
                        },
                        file: file.clone(),
                    });
                }
                resc.push((field.name().clone(), Arc::clone(col)));
            }
            let rows = RecordBatch::try_new(Arc::clone(data), cols)?;
            let rescued = match (&self.rescued, resc.is_empty()) {
                (Some(_), false) => Some(rescued_json(&file, resc, n)?),
                _ => None,
            };
            batches.push(self.finish(path, with_corrupt_column(rows, settings, None)?, rescued)?);
        }
        Ok(Read {
            batches,
            new_columns,
        })
    }
}

/// Decodes the clean records into the data columns; a record arrow still refuses (a nested
/// value `fits` let through) has all its fields moved to its rescued ones.
fn decode_clean(
    data: &arrow::datatypes::SchemaRef,
    clean: &mut [Map<String, Value>],
    rescued: &mut [Map<String, Value>],
) -> Result<RecordBatch> {
    let text = |m: &Map<String, Value>| Value::Object(m.clone()).to_string();
    let joined: Vec<String> = clean.iter().map(text).collect();
    if let Ok(b) = decode_json_with(data, joined.join("\n").as_bytes(), BATCH_ROWS, false) {
        let b = concat_batches(data, &b)?;
        if b.num_rows() == clean.len() {
            return Ok(b);
        }
    }
    let mut rows = Vec::with_capacity(clean.len());
    for (i, line) in joined.iter().enumerate() {
        let row = match decode_json_with(data, line.as_bytes(), 1, false) {
            Ok(b) if b.iter().map(|b| b.num_rows()).sum::<usize>() == 1 => {
                concat_batches(data, &b)?
            }
            _ => {
                rescued[i].append(&mut clean[i]);
                concat_batches(
                    data,
                    &decode_json_with(data, b"{}", 1, false).map_err(EngineError::bug)?,
                )?
            }
        };
        rows.push(row);
    }
    Ok(concat_batches(data, &rows)?)
}

/// One JSON object per row of the rescued values (NULLs left out), with `_file_path`; NULL for
/// a row with nothing rescued.
fn rescued_json(file: &str, cols: Vec<(String, ArrayRef)>, n: usize) -> Result<ArrayRef> {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(name, c)| Field::new(name, c.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        cols.into_iter().map(|(_, c)| c).collect(),
    )?;
    let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
    w.write(&batch)?;
    w.finish()?;
    let text = w.into_inner();
    let path = Value::String(file.to_string()).to_string();
    let mut out: Vec<Option<String>> = Vec::with_capacity(n);
    for line in text.split(|b| *b == b'\n').take(n) {
        let line = String::from_utf8_lossy(line);
        out.push(match line.trim() {
            "{}" | "" => None,
            l => Some(format!("{},\"_file_path\":{path}}}", &l[..l.len() - 1])),
        });
    }
    out.resize(n, None);
    Ok(Arc::new(StringArray::from(out)))
}

/// Whether a JSON value can be read as `dt` without losing it.
fn fits(v: &Value, dt: &DataType) -> bool {
    use DataType::*;
    match (v, dt) {
        (Value::Null, _) => true,
        (_, Utf8 | LargeUtf8 | Utf8View) => true,
        (Value::Bool(_), Boolean) => true,
        (Value::Number(n), Int8 | Int16 | Int32 | Int64) => n.as_i64().is_some_and(|i| match dt {
            Int8 => i8::try_from(i).is_ok(),
            Int16 => i16::try_from(i).is_ok(),
            Int32 => i32::try_from(i).is_ok(),
            _ => true,
        }),
        (Value::Number(n), UInt8 | UInt16 | UInt32 | UInt64) => n.as_u64().is_some(),
        (Value::Number(_), Float16 | Float32 | Float64 | Decimal128(..) | Decimal256(..)) => true,
        // arrow-json reads a number in a string into a float column, as the fast path does
        (Value::String(s), Float16 | Float32 | Float64) => s.trim().parse::<f64>().is_ok(),
        (Value::Number(_), Timestamp(..)) => true,
        (Value::String(s), Timestamp(..)) => {
            arrow::compute::kernels::cast_utils::string_to_datetime(&chrono::Utc, s).is_ok()
        }
        (Value::String(s), Date32 | Date64) => {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
        }
        (Value::String(_), Binary | LargeBinary) => true,
        (Value::Array(items), List(f) | LargeList(f)) => {
            items.iter().all(|i| fits(i, f.data_type()))
        }
        (Value::Object(m), Struct(fields)) => m.iter().all(|(k, v)| {
            fields
                .iter()
                .find(|f| f.name() == k)
                .is_some_and(|f| fits(v, f.data_type()))
        }),
        (Value::Object(m), Map(entries, _)) => match entries.data_type() {
            Struct(kv) if kv.len() == 2 => m.values().all(|v| fits(v, kv[1].data_type())),
            _ => false,
        },
        _ => false,
    }
}

/// A nested value in a STRING column is kept as its JSON text (Databricks' STRING inference).
fn as_column_value(v: Value, dt: &DataType) -> Value {
    match (&v, dt) {
        (Value::Object(_) | Value::Array(_), DataType::Utf8 | DataType::LargeUtf8) => {
            Value::String(v.to_string())
        }
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::TimeUnit;

    #[test]
    fn what_fits_a_column() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let list = DataType::List(Arc::new(Field::new("element", DataType::Int64, true)));
        let cases: Vec<(Value, &DataType, bool)> = vec![
            (serde_json::json!(null), &DataType::Int64, true),
            (serde_json::json!("x"), &DataType::Utf8, true),
            (serde_json::json!({"a": 1}), &DataType::Utf8, true),
            (serde_json::json!(5), &DataType::Int64, true),
            (serde_json::json!(5.5), &DataType::Int64, false),
            (serde_json::json!("5"), &DataType::Int64, false),
            (serde_json::json!(300), &DataType::Int8, false),
            (serde_json::json!(5), &DataType::Float64, true),
            (serde_json::json!(true), &DataType::Boolean, true),
            (serde_json::json!("true"), &DataType::Boolean, false),
            (serde_json::json!("2026-01-01T00:00:00Z"), &ts, true),
            (serde_json::json!("yesterday"), &ts, false),
            (serde_json::json!([1, 2]), &list, true),
            (serde_json::json!([1, "x"]), &list, false),
        ];
        for (v, dt, want) in cases {
            assert_eq!(fits(&v, dt), want, "{v} as {dt}");
        }
        assert_eq!(
            as_column_value(serde_json::json!({"a": 1}), &DataType::Utf8),
            serde_json::json!("{\"a\":1}")
        );
    }

    #[test]
    fn rescued_json_leaves_out_nulls_and_adds_the_file() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some("x"), None, None]));
        let b: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![Some(1), None, Some(3)]));
        let out = rescued_json("/in/f.csv", vec![("a".into(), a), ("b".into(), b)], 3).expect("ok");
        let out = out.as_any().downcast_ref::<StringArray>().expect("ok");
        assert_eq!(out.value(0), r#"{"a":"x","b":1,"_file_path":"/in/f.csv"}"#);
        assert!(out.is_null(1));
        assert_eq!(out.value(2), r#"{"b":3,"_file_path":"/in/f.csv"}"#);
    }
}
