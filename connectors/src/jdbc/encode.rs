//! Arrow values as the databases take them: CSV text for PostgreSQL's COPY, typed bind values
//! for MySQL/MariaDB's multi-row INSERT.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice_engine::Result;

use super::config::Dialect;

/// One value to bind.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// SQL NULL.
    Null,
    /// Booleans.
    Bool(bool),
    /// Integers that fit i64.
    Int(i64),
    /// Floating point.
    Float(f64),
    /// Binary.
    Bytes(Vec<u8>),
    /// Everything else as text the database parses (decimals, dates, timestamps, strings).
    Text(String),
}

enum Col {
    Bool(ArrayRef),
    Int(ArrayRef),
    Float(ArrayRef),
    Bytes(ArrayRef),
    Text(ArrayRef),
}

/// The columns of one (flattened) batch, ready to encode row by row.
pub struct Encoder<'a> {
    cols: Vec<Col>,
    formatters: Vec<Option<ArrayFormatter<'a>>>,
    rows: usize,
}

/// Timestamps in UTC, microseconds; PostgreSQL reads the offset, MySQL/MariaDB `DATETIME(6)`
/// takes none (values are UTC).
fn format_options(d: Dialect) -> FormatOptions<'static> {
    let tz = match d {
        Dialect::Postgres => "%Y-%m-%d %H:%M:%S%.6f%:z",
        Dialect::MySql => "%Y-%m-%d %H:%M:%S%.6f",
    };
    FormatOptions::new()
        .with_null("")
        .with_timestamp_tz_format(Some(tz))
        .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.6f"))
        .with_date_format(Some("%Y-%m-%d"))
}

impl<'a> Encoder<'a> {
    /// Prepares `batch` (flattened: no struct columns) for `d`.
    pub fn new(batch: &'a RecordBatch, opts: &'a FormatOptions<'a>) -> Result<Self> {
        let mut cols = Vec::new();
        for c in batch.columns() {
            use DataType as T;
            let col = match c.data_type() {
                T::Boolean => Col::Bool(c.clone()),
                T::Int8 | T::Int16 | T::Int32 | T::Int64 | T::UInt8 | T::UInt16 | T::UInt32 => {
                    Col::Int(cast(c, &T::Int64)?)
                }
                T::Float16 | T::Float32 | T::Float64 => Col::Float(cast(c, &T::Float64)?),
                T::Binary | T::LargeBinary | T::BinaryView | T::FixedSizeBinary(_) => {
                    Col::Bytes(cast(c, &T::LargeBinary)?)
                }
                _ => Col::Text(c.clone()),
            };
            cols.push(col);
        }
        let mut formatters = Vec::new();
        for (c, col) in batch.columns().iter().zip(&cols) {
            formatters.push(match col {
                Col::Text(_) => Some(ArrayFormatter::try_new(c.as_ref(), opts)?),
                _ => None,
            });
        }
        Ok(Self {
            cols,
            formatters,
            rows: batch.num_rows(),
        })
    }

    /// Format options to build an [`Encoder`] with.
    pub fn options(d: Dialect) -> FormatOptions<'static> {
        format_options(d)
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The value at (`col`, `row`).
    pub fn value(&self, col: usize, row: usize) -> Val {
        let arr: &ArrayRef = match &self.cols[col] {
            Col::Bool(a) | Col::Int(a) | Col::Float(a) | Col::Bytes(a) | Col::Text(a) => a,
        };
        if arr.is_null(row) {
            return Val::Null;
        }
        match &self.cols[col] {
            Col::Bool(a) => Val::Bool(a.as_boolean().value(row)),
            Col::Int(a) => Val::Int(a.as_primitive::<Int64Type>().value(row)),
            Col::Float(a) => Val::Float(a.as_primitive::<Float64Type>().value(row)),
            Col::Bytes(a) => Val::Bytes(a.as_binary::<i64>().value(row).to_vec()),
            Col::Text(_) => Val::Text(
                self.formatters[col]
                    .as_ref()
                    .map(|f| f.value(row).to_string())
                    .unwrap_or_default(),
            ),
        }
    }

    /// Appends row `row` as one line of PostgreSQL `COPY ... (FORMAT csv)`: NULL is an empty
    /// unquoted field, every other value is quoted (so an empty string stays an empty string).
    pub fn write_csv_row(&self, row: usize, out: &mut Vec<u8>) {
        use std::io::Write;
        for (c, col) in self.cols.iter().enumerate() {
            if c > 0 {
                out.push(b',');
            }
            let arr = match col {
                Col::Bool(a) | Col::Int(a) | Col::Float(a) | Col::Bytes(a) | Col::Text(a) => a,
            };
            if arr.is_null(row) {
                continue;
            }
            // written straight into the buffer: no allocation per cell on the COPY path
            match col {
                Col::Bool(a) => out.extend_from_slice(if a.as_boolean().value(row) {
                    b"t"
                } else {
                    b"f"
                }),
                Col::Int(a) => {
                    let _ = write!(out, "{}", a.as_primitive::<Int64Type>().value(row));
                }
                Col::Float(a) => {
                    let f = a.as_primitive::<Float64Type>().value(row);
                    if f.is_nan() {
                        out.extend_from_slice(b"NaN");
                    } else if f.is_infinite() {
                        out.extend_from_slice(if f > 0.0 { b"Infinity" } else { b"-Infinity" });
                    } else {
                        let _ = write!(out, "{f}");
                    }
                }
                Col::Bytes(a) => {
                    out.extend_from_slice(b"\\x");
                    for byte in a.as_binary::<i64>().value(row) {
                        let _ = write!(out, "{byte:02x}");
                    }
                }
                Col::Text(_) => {
                    let start = out.len();
                    out.push(b'"');
                    if let Some(f) = &self.formatters[c] {
                        let _ = write!(out, "{}", f.value(row));
                    }
                    // double the quotes inside the value
                    if out[start + 1..].contains(&b'"') {
                        let value: Vec<u8> = out.split_off(start + 1);
                        for ch in value {
                            if ch == b'"' {
                                out.push(b'"');
                            }
                            out.push(ch);
                        }
                    }
                    out.push(b'"');
                }
            }
        }
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        BinaryArray, BooleanArray, Int32Array, StringArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn csv_rows_keep_nulls_empty_strings_and_quotes() {
        let ts = TimestampMicrosecondArray::from(vec![Some(1_500_000), None]).with_timezone("UTC");
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("i", DataType::Int32, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("t", ts.data_type().clone(), true),
            Field::new("x", DataType::Binary, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec![Some("a\"b,c\nd"), Some("")])),
                Arc::new(Int32Array::from(vec![Some(7), None])),
                Arc::new(BooleanArray::from(vec![Some(true), None])),
                Arc::new(ts),
                Arc::new(BinaryArray::from_opt_vec(vec![Some(b"\x01\xff"), None])),
            ],
        )
        .expect("ok");
        let opts = Encoder::options(Dialect::Postgres);
        let e = Encoder::new(&batch, &opts).expect("ok");
        let mut out = Vec::new();
        e.write_csv_row(0, &mut out);
        e.write_csv_row(1, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("ok"),
            "\"a\"\"b,c\nd\",7,t,\"1970-01-01 00:00:01.500000+00:00\",\\x01ff\n\"\",,,,\n"
        );
        let opts = Encoder::options(Dialect::MySql);
        let e = Encoder::new(&batch, &opts).expect("ok");
        assert_eq!(
            e.value(3, 0),
            Val::Text("1970-01-01 00:00:01.500000".into())
        );
        assert_eq!(e.value(1, 0), Val::Int(7));
        assert_eq!(e.value(1, 1), Val::Null);
        assert_eq!(e.value(4, 0), Val::Bytes(vec![1, 255]));
    }
}
