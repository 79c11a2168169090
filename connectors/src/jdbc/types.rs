//! Arrow types ↔ SQL column types, the flattening of struct columns (`window` →
//! `window_start`, `window_end`), and the check that an existing table fits the stream.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_engine::{EngineError, Result};

use super::config::Dialect;

/// Struct columns become one column per field, named `<column>_<field>` (so the window struct
/// becomes `window_start`, `window_end`), recursively.
pub fn flatten_schema(schema: &Schema) -> SchemaRef {
    fn walk(prefix: &str, f: &Field, out: &mut Vec<Field>) {
        let name = if prefix.is_empty() {
            f.name().clone()
        } else {
            format!("{prefix}_{}", f.name())
        };
        match f.data_type() {
            DataType::Struct(children) => {
                for c in children {
                    walk(&name, c, out);
                }
            }
            dt => out.push(Field::new(name, dt.clone(), true)),
        }
    }
    let mut out = Vec::new();
    for f in schema.fields() {
        walk("", f, &mut out);
    }
    Arc::new(Schema::new(out))
}

/// The columns of `batch` flattened as [`flatten_schema`] names them.
pub fn flatten_batch(batch: &RecordBatch, flat: &SchemaRef) -> Result<RecordBatch> {
    fn walk(a: &ArrayRef, out: &mut Vec<ArrayRef>) {
        match a.data_type() {
            DataType::Struct(_) => {
                let s = a.as_struct();
                for c in s.columns() {
                    // A null struct makes all its fields null.
                    let c = match s.nulls() {
                        Some(n) if n.null_count() > 0 => {
                            let merged = arrow::buffer::NullBuffer::union(Some(n), c.nulls());
                            arrow::array::make_array(
                                c.to_data()
                                    .into_builder()
                                    .nulls(merged)
                                    .build()
                                    .unwrap_or_else(|_| c.to_data()),
                            )
                        }
                        _ => Arc::clone(c),
                    };
                    walk(&c, out);
                }
            }
            _ => out.push(Arc::clone(a)),
        }
    }
    let mut cols = Vec::new();
    for c in batch.columns() {
        walk(c, &mut cols);
    }
    Ok(RecordBatch::try_new(Arc::clone(flat), cols)?)
}

/// The SQL type a new column of `dt` gets. `key` columns on MySQL/MariaDB get VARCHAR(n) for
/// strings (TEXT cannot be a key there without a prefix).
pub fn sql_type(d: Dialect, dt: &DataType, key: bool, string_key_len: u64) -> Result<String> {
    use DataType as T;
    let pg = d == Dialect::Postgres;
    Ok(match dt {
        T::Boolean => "BOOLEAN".into(),
        T::Int8 | T::Int16 => "SMALLINT".into(),
        T::UInt8 => "SMALLINT".into(),
        T::Int32 => "INTEGER".into(),
        T::UInt16 => "INTEGER".into(),
        T::Int64 | T::UInt32 => "BIGINT".into(),
        T::UInt64 => "NUMERIC(20, 0)".into(),
        T::Float16 | T::Float32 => {
            if pg {
                "REAL".into()
            } else {
                "FLOAT".into()
            }
        }
        T::Float64 => {
            if pg {
                "DOUBLE PRECISION".into()
            } else {
                "DOUBLE".into()
            }
        }
        T::Decimal32(p, s) | T::Decimal64(p, s) | T::Decimal128(p, s) | T::Decimal256(p, s) => {
            format!("NUMERIC({p}, {s})")
        }
        T::Utf8 | T::LargeUtf8 | T::Utf8View => {
            if pg {
                "TEXT".into()
            } else if key {
                format!("VARCHAR({string_key_len})")
            } else {
                "LONGTEXT".into()
            }
        }
        T::Binary | T::LargeBinary | T::BinaryView | T::FixedSizeBinary(_) => {
            if pg {
                "BYTEA".into()
            } else if key {
                format!("VARBINARY({string_key_len})")
            } else {
                "LONGBLOB".into()
            }
        }
        T::Date32 | T::Date64 => "DATE".into(),
        T::Timestamp(_, _) => {
            if pg {
                "TIMESTAMPTZ".into()
            } else {
                "DATETIME(6)".into()
            }
        }
        other => {
            return Err(EngineError::user(format!(
                "the jdbc sink cannot store columns of type {other}; convert it first (e.g. to_json or CAST ... AS STRING)"
            )))
        }
    })
}

/// Broad type families, to tell whether an existing column can take the stream's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Bool,
    Int,
    Float,
    Decimal,
    Text,
    Binary,
    Date,
    Timestamp,
    Other,
}

fn family_of_arrow(dt: &DataType) -> Family {
    use DataType as T;
    match dt {
        T::Boolean => Family::Bool,
        T::Int8 | T::Int16 | T::Int32 | T::Int64 | T::UInt8 | T::UInt16 | T::UInt32 | T::UInt64 => {
            Family::Int
        }
        T::Float16 | T::Float32 | T::Float64 => Family::Float,
        T::Decimal32(..) | T::Decimal64(..) | T::Decimal128(..) | T::Decimal256(..) => {
            Family::Decimal
        }
        T::Utf8 | T::LargeUtf8 | T::Utf8View => Family::Text,
        T::Binary | T::LargeBinary | T::BinaryView | T::FixedSizeBinary(_) => Family::Binary,
        T::Date32 | T::Date64 => Family::Date,
        T::Timestamp(..) => Family::Timestamp,
        _ => Family::Other,
    }
}

fn family_of_sql(data_type: &str) -> Family {
    let t = data_type.to_ascii_lowercase();
    let t = t.as_str();
    if t == "boolean" || t == "bool" {
        Family::Bool
    } else if t.contains("int") || t == "bit" {
        Family::Int
    } else if t == "real" || t.starts_with("double") || t == "float" {
        Family::Float
    } else if t == "numeric" || t == "decimal" {
        Family::Decimal
    } else if t.contains("char") || t.contains("text") || t == "json" || t == "jsonb" || t == "enum"
    {
        Family::Text
    } else if t == "bytea" || t.contains("blob") || t.contains("binary") {
        Family::Binary
    } else if t == "date" {
        Family::Date
    } else if t.starts_with("timestamp") || t == "datetime" {
        Family::Timestamp
    } else {
        Family::Other
    }
}

/// Whether a column declared as `sql` (information_schema `data_type`) takes values of `dt`.
pub fn fits(dt: &DataType, sql: &str) -> bool {
    use Family as F;
    let to = family_of_sql(sql);
    match (family_of_arrow(dt), to) {
        (a, b) if a == b && a != F::Other => true,
        // tinyint(1) is MySQL's boolean.
        (F::Bool, F::Int) => true,
        (F::Int, F::Decimal | F::Float) => true,
        (F::Float, F::Decimal) => true,
        (F::Decimal, F::Float) => true,
        (F::Date, F::Timestamp) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StructArray, TimestampMicrosecondArray};
    use arrow::datatypes::TimeUnit;

    #[test]
    fn window_struct_is_flattened() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let window = DataType::Struct(
            vec![
                Field::new("start", ts.clone(), true),
                Field::new("end", ts.clone(), true),
            ]
            .into(),
        );
        let schema = Schema::new(vec![
            Field::new("window", window, true),
            Field::new("count", DataType::Int64, false),
        ]);
        let flat = flatten_schema(&schema);
        let names: Vec<_> = flat.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["window_start", "window_end", "count"]);

        let start = TimestampMicrosecondArray::from(vec![0, 60]).with_timezone("UTC");
        let end = TimestampMicrosecondArray::from(vec![60, 120]).with_timezone("UTC");
        let s = StructArray::from(vec![
            (
                Arc::new(Field::new("start", ts.clone(), true)),
                Arc::new(start) as ArrayRef,
            ),
            (
                Arc::new(Field::new("end", ts, true)),
                Arc::new(end) as ArrayRef,
            ),
        ]);
        let b = RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(s), Arc::new(Int64Array::from(vec![3, 4]))],
        )
        .expect("ok");
        let fb = flatten_batch(&b, &flat).expect("ok");
        assert_eq!(fb.num_columns(), 3);
        assert_eq!(
            fb.column(1)
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(1),
            120
        );
    }

    #[test]
    fn type_mapping_and_fit() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        assert_eq!(
            sql_type(Dialect::Postgres, &ts, false, 255).expect("ok"),
            "TIMESTAMPTZ"
        );
        assert_eq!(
            sql_type(Dialect::MySql, &DataType::Utf8, true, 100).expect("ok"),
            "VARCHAR(100)"
        );
        assert_eq!(
            sql_type(Dialect::MySql, &DataType::Utf8, false, 100).expect("ok"),
            "LONGTEXT"
        );
        assert_eq!(
            sql_type(Dialect::Postgres, &DataType::Decimal128(10, 2), false, 1).expect("ok"),
            "NUMERIC(10, 2)"
        );
        assert!(sql_type(
            Dialect::Postgres,
            &DataType::new_list(DataType::Int8, true),
            false,
            1
        )
        .is_err());
        assert!(fits(&DataType::Int64, "bigint"));
        assert!(fits(&DataType::Int64, "numeric"));
        assert!(fits(&DataType::Boolean, "tinyint"));
        assert!(fits(&ts, "timestamp with time zone"));
        assert!(fits(&ts, "datetime"));
        assert!(fits(&DataType::Utf8, "character varying"));
        assert!(!fits(&DataType::Utf8, "integer"));
        assert!(!fits(&DataType::Float64, "bigint"));
        assert!(!fits(&ts, "text"));
    }
}
