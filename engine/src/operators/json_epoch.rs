//! JSON numbers in `TIMESTAMP` columns are seconds since the epoch, fractional allowed, as in
//! Spark (`{"time": 1469501107}` is 2016-07-26T02:45:07Z; arrow-json alone would read the
//! number in the column's unit, microseconds, and land in 1970).
//!
//! The common case stays on arrow-json's fast path: the text is searched (memchr's SIMD
//! search) for a timestamp field whose value starts like a number; only then are those
//! columns decoded as text and converted here, numbers as seconds and strings as arrow-json
//! would parse them. Top-level columns only: a timestamp nested in a struct keeps arrow-json's
//! reading.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The top-level timestamp (µs) columns of `schema`.
pub(crate) fn timestamp_columns(schema: &Schema) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f.data_type(), DataType::Timestamp(TimeUnit::Microsecond, _)))
        .map(|(i, _)| i)
        .collect()
}

/// Whether `pred` holds for the text after some `"name":` of `names` in `text` (whitespace
/// around the colon skipped): where a field's value starts. A key not followed by a colon (a
/// string value equal to a name) is skipped. One SIMD search per name, stopping at the first hit.
fn any_value(text: &[u8], names: &[&str], pred: impl Fn(&[u8]) -> bool) -> bool {
    let skip_ws = |r: &[u8]| r.iter().take_while(|b| b.is_ascii_whitespace()).count();
    names.iter().any(|name| {
        let key = format!("\"{name}\"");
        memchr::memmem::find_iter(text, key.as_bytes()).any(|at| {
            let rest = &text[at + key.len()..];
            let rest = &rest[skip_ws(rest)..];
            rest.strip_prefix(b":")
                .is_some_and(|v| pred(&v[skip_ws(v)..]))
        })
    })
}

/// Whether some `"name":` of `names` in `text` is followed by a value that starts like a JSON
/// number (a digit or `-`). A key followed by anything else (a string, null) does not count.
pub(crate) fn has_bare_number(text: &[u8], names: &[&str]) -> bool {
    any_value(text, names, |v| {
        v.first().is_some_and(|b| b.is_ascii_digit() || *b == b'-')
    })
}

/// Whether some `"name":` of `names` in `text` is followed by a string whose content is a
/// number (`"1469501107"`). Spark reads such a string as a timestamp text, which it is not, so
/// the record is malformed; decoded as text beside bare numbers it could not be told from one,
/// so a chunk with both is decoded record by record (see `decode_json`).
pub(crate) fn has_quoted_number(text: &[u8], names: &[&str]) -> bool {
    any_value(text, names, |v| {
        let Some(rest) = v.strip_prefix(b"\"") else {
            return false;
        };
        let content = &rest[..memchr::memchr(b'"', rest).unwrap_or(0)];
        content
            .first()
            .is_some_and(|b| b.is_ascii_digit() || *b == b'-')
            && std::str::from_utf8(content).is_ok_and(|c| c.trim().parse::<f64>().is_ok())
    })
}

/// `schema` with the columns `cols` as text (what arrow-json decodes them into first).
pub(crate) fn as_text(schema: &Schema, cols: &[usize]) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if cols.contains(&i) {
                    Field::new(f.name(), DataType::Utf8, true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// One JSON value of a timestamp column, as text (a number's digits, or a string's
/// content), in µs. Pure; table-tested.
pub(crate) fn micros_of(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let numeric = t
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'-')
        && t.bytes()
            .all(|b| b.is_ascii_digit() || b"-+.eE".contains(&b));
    if numeric {
        // Spark's timestamp range, 0001-01-01 to 9999-12-31: outside it the record is malformed
        // (a value in milliseconds read as seconds lands far beyond it)
        const MIN_S: f64 = -62_135_596_800.0;
        const MAX_S: f64 = 253_402_300_799.0;
        let out_of_range = || {
            format!(
                "{t} seconds since the epoch is outside 0001-01-01..9999-12-31 (JSON numbers are \
                 seconds, as in Spark; milliseconds need dividing by 1000)"
            )
        };
        if let Ok(secs) = t.parse::<i64>() {
            if (secs as f64) < MIN_S || (secs as f64) > MAX_S {
                return Err(out_of_range());
            }
            return secs.checked_mul(1_000_000).ok_or_else(out_of_range);
        }
        if let Ok(secs) = t.parse::<f64>() {
            if !secs.is_finite() || !(MIN_S..=MAX_S + 1.0).contains(&secs) {
                return Err(out_of_range());
            }
            // truncated toward zero, as Spark casts a double to a timestamp
            return Ok((secs * 1_000_000.0) as i64);
        }
    }
    arrow::compute::kernels::cast_utils::string_to_datetime(&chrono::Utc, t)
        .map(|d| d.timestamp_micros())
        .map_err(|e| format!("failed to parse \"{t}\" as a timestamp: {e}"))
}

/// Converts the text columns `cols` of `batch` (decoded as text) into the timestamp types of
/// `schema`; a value that is neither a number nor a timestamp is an error (the record is
/// malformed).
pub(crate) fn convert(
    batch: RecordBatch,
    schema: &SchemaRef,
    cols: &[usize],
) -> Result<RecordBatch, String> {
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for &i in cols {
        let text = columns[i].as_string::<i32>();
        let mut out = Vec::with_capacity(text.len());
        for v in text.iter() {
            out.push(v.map(micros_of).transpose()?);
        }
        let DataType::Timestamp(_, tz) = schema.field(i).data_type() else {
            return Err("not a timestamp column".into());
        };
        columns[i] = Arc::new(TimestampMicrosecondArray::from(out).with_timezone_opt(tz.clone()));
    }
    RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_seconds_strings_are_timestamps() {
        let s = 1_469_501_107_000_000i64; // 2016-07-26T02:45:07Z
                                          // (text, µs)
        let table: &[(&str, Result<i64, ()>)] = &[
            ("1469501107", Ok(s)),
            ("1469501107.5", Ok(s + 500_000)),
            ("-1", Ok(-1_000_000)),
            ("0", Ok(0)),
            ("2016-07-26T02:45:07Z", Ok(s)),
            ("2016-07-26 02:45:07", Ok(s)),
            ("99999999999999999999", Err(())),
            ("1e300", Err(())),
            ("300000000000", Err(())), // milliseconds read as seconds: the year 11476
            ("253402300799", Ok(253_402_300_799_000_000)), // 9999-12-31T23:59:59Z
            ("soon", Err(())),
        ];
        for (t, want) in table {
            assert_eq!(micros_of(t).map_err(|_| ()), *want, "{t}");
        }
    }

    #[test]
    fn bare_numbers_are_found_per_field() {
        let names = ["time"];
        assert!(has_bare_number(
            br#"{"time":1469501107,"action":"Open"}"#,
            &names
        ));
        assert!(has_bare_number(br#"{"a":1, "time" :  -5}"#, &names));
        assert!(!has_bare_number(
            br#"{"time":"2016-07-26T02:45:07Z","n":5}"#,
            &names
        ));
        assert!(!has_bare_number(
            br#"{"time":null,"x":{"time2":5}}"#,
            &names
        ));
        assert!(!has_bare_number(br#"{"other":1}"#, &names));
    }

    #[test]
    fn quoted_numbers_are_found_per_field() {
        let names = ["time"];
        // (text, has a quoted number in "time")
        let table: &[(&[u8], bool)] = &[
            (br#"{"time":"1469501107"}"#, true),
            (br#"{"time" : "-5.5","a":1}"#, true),
            (br#"{"time":"2016-07-26T02:45:07Z"}"#, false),
            (br#"{"time":"2016-07-26"}"#, false),
            (br#"{"time":1469501107}"#, false),
            (br#"{"time":"inf"}"#, false),
            (br#"{"other":"5"}"#, false),
            (br#"{"time":""}"#, false),
        ];
        for (text, want) in table {
            assert_eq!(
                has_quoted_number(text, &names),
                *want,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }
}
