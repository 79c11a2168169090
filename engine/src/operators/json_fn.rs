//! `from_json(value, 'ddl schema' [, 'mode'])` and `to_json(struct)`, as in Spark, for the
//! DataFrame API ([`from_json`], [`to_json`]) and SQL (registered in every session). Built on
//! arrow-json.
//!
//! `from_json` parses each string (or UTF-8 binary, e.g. a Kafka value) into a struct of the
//! schema. Mode `PERMISSIVE` (default) gives NULL for a malformed value (Spark 3 gives a struct
//! of NULLs; NULL is easier to test for); `FAILFAST` fails the query naming the row and the
//! value. A whole batch is decoded at once; only a batch with a bad value is decoded row by row.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, StructArray};
use arrow::buffer::NullBuffer;
use arrow::compute::{concat_batches, interleave};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, SchemaRef};
use arrow::json::ReaderBuilder;
use datafusion::common::{exec_err, plan_err, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::ddl::parse_ddl_schema;

/// `from_json(col, schema)` in the DataFrame API (schema as a DDL string: `"a INT, b STRING"`).
pub fn from_json(value: Expr, schema: &str) -> Expr {
    ScalarUDF::new_from_impl(FromJson::new()).call(vec![
        value,
        Expr::Literal(ScalarValue::Utf8(Some(schema.to_string())), None),
    ])
}

/// `to_json(struct)` in the DataFrame API.
pub fn to_json(value: Expr) -> Expr {
    ScalarUDF::new_from_impl(ToJson::new()).call(vec![value])
}

fn literal_text(s: Option<&ScalarValue>) -> Option<String> {
    match s {
        Some(ScalarValue::Utf8(Some(t)))
        | Some(ScalarValue::LargeUtf8(Some(t)))
        | Some(ScalarValue::Utf8View(Some(t))) => Some(t.clone()),
        _ => None,
    }
}

/// The `from_json` UDF.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FromJson {
    signature: Signature,
}

impl Default for FromJson {
    fn default() -> Self {
        Self::new()
    }
}

impl FromJson {
    /// A new instance.
    pub fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

fn schema_fields(ddl: &str) -> DfResult<Fields> {
    let s = parse_ddl_schema(ddl)
        .map_err(|e| datafusion::error::DataFusionError::Plan(format!("from_json schema: {e}")))?;
    Ok(s.fields().clone())
}

impl ScalarUDFImpl for FromJson {
    fn name(&self) -> &str {
        "from_json"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        plan_err!("from_json: the schema must be a string literal")
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        if !(2..=3).contains(&args.arg_fields.len()) {
            return plan_err!("from_json(value, 'schema' [, 'mode']) takes 2 or 3 arguments");
        }
        let Some(ddl) = literal_text(args.scalar_arguments.get(1).copied().flatten()) else {
            return plan_err!(
                "from_json: the schema must be a string literal such as 'a INT, b STRING'"
            );
        };
        if let Some(m) = args.scalar_arguments.get(2).copied().flatten() {
            mode_of(literal_text(Some(m)).as_deref())?;
        }
        Ok(Arc::new(Field::new(
            "from_json",
            DataType::Struct(schema_fields(&ddl)?),
            true,
        )))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let DataType::Struct(fields) = args.return_field.data_type().clone() else {
            return exec_err!("from_json: bad return type");
        };
        let fail_fast = match args.args.get(2) {
            Some(ColumnarValue::Scalar(s)) => mode_of(literal_text(Some(s)).as_deref())?,
            _ => false,
        };
        let value = args.args[0].to_array(args.number_rows)?;
        let strings = arrow::compute::cast(&value, &DataType::Utf8)?;
        let strings = strings.as_string::<i32>();
        Ok(ColumnarValue::Array(parse_json_column(
            strings, &fields, fail_fast,
        )?))
    }
}

fn mode_of(m: Option<&str>) -> DfResult<bool> {
    match m.map(|m| m.to_ascii_uppercase()) {
        None => Ok(false),
        Some(m) if m == "PERMISSIVE" => Ok(false),
        Some(m) if m == "FAILFAST" => Ok(true),
        Some(m) => plan_err!("from_json: mode must be PERMISSIVE or FAILFAST, got '{m}'"),
    }
}

/// Decodes JSON text (objects separated by whitespace) into `schema` rows, in batches of at most
/// `batch_rows`: the one arrow-json decoding loop of Sluice (files, Kafka values, `from_json`).
pub fn decode_json(
    schema: &SchemaRef,
    text: &[u8],
    batch_rows: usize,
) -> Result<Vec<RecordBatch>, String> {
    decode_json_with(schema, text, batch_rows, false)
}

/// [`decode_json`]; `strict`: a field the schema does not have is an error too (Auto Loader
/// decodes strictly first, so that only text with something to rescue takes its slow path).
pub fn decode_json_with(
    schema: &SchemaRef,
    text: &[u8],
    batch_rows: usize,
    strict: bool,
) -> Result<Vec<RecordBatch>, String> {
    // JSON numbers in timestamp columns are epoch seconds (Spark): only text that has one
    // takes the slower path
    let ts_cols = crate::operators::json_epoch::timestamp_columns(schema);
    if !ts_cols.is_empty() {
        let names: Vec<&str> = ts_cols
            .iter()
            .map(|i| schema.field(*i).name().as_str())
            .collect();
        if crate::operators::json_epoch::has_bare_number(text, &names) {
            if crate::operators::json_epoch::has_quoted_number(text, &names) {
                // as text, "1469501107" and 1469501107 look alike: the caller decodes these
                // records one by one, where the quoted one is malformed (as in Spark)
                return Err(format!(
                    "a quoted number in timestamp column(s) {} is not a timestamp (only a bare \
                     JSON number is read as seconds, as in Spark)",
                    names.join(", ")
                ));
            }
            let as_text = crate::operators::json_epoch::as_text(schema, &ts_cols);
            return decode_json_as(&as_text, text, batch_rows, strict)?
                .into_iter()
                .map(|b| crate::operators::json_epoch::convert(b, schema, &ts_cols))
                .collect();
        }
    }
    // UTC timestamps are decoded as timestamps without a zone (arrow-json then parses them
    // with chrono's `Utc`, not with a time-zone database lookup per value: same instants, as
    // an offset in the text is honoured either way), and tagged UTC again without a copy
    let utc_cols: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            matches!(f.data_type(), arrow::datatypes::DataType::Timestamp(_, Some(tz))
                if matches!(tz.as_ref(), "UTC" | "+00:00" | "Z" | "Etc/UTC"))
        })
        .map(|(i, _)| i)
        .collect();
    if !utc_cols.is_empty() {
        let plain = Arc::new(arrow::datatypes::Schema::new_with_metadata(
            schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| match f.data_type() {
                    arrow::datatypes::DataType::Timestamp(unit, Some(_))
                        if utc_cols.contains(&i) =>
                    {
                        f.as_ref()
                            .clone()
                            .with_data_type(arrow::datatypes::DataType::Timestamp(*unit, None))
                    }
                    _ => f.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
            schema.metadata().clone(),
        ));
        return decode_json_as(&plain, text, batch_rows, strict)?
            .into_iter()
            .map(|b| {
                let mut cols = b.columns().to_vec();
                for i in &utc_cols {
                    let data = cols[*i]
                        .to_data()
                        .into_builder()
                        .data_type(schema.field(*i).data_type().clone())
                        .build()
                        .map_err(|e| e.to_string())?;
                    cols[*i] = arrow::array::make_array(data);
                }
                RecordBatch::try_new_with_options(
                    Arc::clone(schema),
                    cols,
                    &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
                )
                .map_err(|e| e.to_string())
            })
            .collect();
    }
    decode_json_as(schema, text, batch_rows, strict)
}

fn decode_json_as(
    schema: &SchemaRef,
    text: &[u8],
    batch_rows: usize,
    strict: bool,
) -> Result<Vec<RecordBatch>, String> {
    let mut decoder = ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(batch_rows)
        .with_strict_mode(strict)
        // a number or boolean into a STRING column is kept as its text, as Spark does
        .with_coerce_primitive(true)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let n = decoder.decode(rest).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        rest = &rest[n..];
        if let Some(b) = decoder.flush().map_err(|e| e.to_string())? {
            batches.push(b);
        }
    }
    if let Some(b) = decoder.flush().map_err(|e| e.to_string())? {
        batches.push(b);
    }
    Ok(batches)
}

fn decode_all(schema: &SchemaRef, text: &[u8]) -> Result<RecordBatch, String> {
    let batches = decode_json(schema, text, 8192)?;
    concat_batches(schema, &batches).map_err(|e| e.to_string())
}

/// Parses each value of `strings` (one JSON object each) into a struct of `fields`; NULL for a
/// NULL or (unless `fail_fast`) malformed value.
pub fn parse_json_column(
    strings: &StringArray,
    fields: &Fields,
    fail_fast: bool,
) -> DfResult<ArrayRef> {
    let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(fields.clone()));
    let present: Vec<usize> = (0..strings.len())
        .filter(|i| strings.is_valid(*i))
        .collect();
    let mut text = Vec::new();
    for &i in &present {
        text.extend_from_slice(strings.value(i).as_bytes());
        text.push(b'\n');
    }
    // fast path: every present value is one object
    let parsed: Vec<Option<(usize, usize)>>;
    let mut sources: Vec<RecordBatch> = Vec::new();
    match decode_all(&schema, &text) {
        Ok(b) if b.num_rows() == present.len() => {
            sources.push(b);
            let mut map = vec![None; strings.len()];
            for (k, &i) in present.iter().enumerate() {
                map[i] = Some((0, k));
            }
            parsed = map;
        }
        _ => {
            let mut map = vec![None; strings.len()];
            for &i in &present {
                let v = strings.value(i);
                match decode_all(&schema, v.as_bytes()) {
                    Ok(b) if b.num_rows() == 1 => {
                        sources.push(b);
                        map[i] = Some((sources.len() - 1, 0));
                    }
                    other => {
                        if fail_fast {
                            let why = match other {
                                Err(e) => e,
                                Ok(b) => format!("{} values, expected one object", b.num_rows()),
                            };
                            let preview: String = v.chars().take(200).collect();
                            return exec_err!(
                                "from_json: malformed record at row {i} of the batch: {why}; record: {preview}"
                            );
                        }
                    }
                }
            }
            parsed = map;
        }
    }
    // assemble: rows from the decoded batches, NULL struct where nothing parsed
    let empty = RecordBatch::new_empty(Arc::clone(&schema));
    let null_row = RecordBatch::try_new(
        Arc::clone(&schema),
        schema
            .fields()
            .iter()
            .map(|f| arrow::array::new_null_array(f.data_type(), 1))
            .collect(),
    )?;
    let _ = empty;
    let mut all = sources;
    all.push(null_row);
    let null_idx = all.len() - 1;
    let picks: Vec<(usize, usize)> = parsed.iter().map(|p| p.unwrap_or((null_idx, 0))).collect();
    let mut columns = Vec::with_capacity(fields.len());
    for c in 0..fields.len() {
        let arrays: Vec<&dyn Array> = all.iter().map(|b| b.column(c).as_ref()).collect();
        columns.push(interleave(&arrays, &picks)?);
    }
    let nulls = NullBuffer::from(parsed.iter().map(Option::is_some).collect::<Vec<bool>>());
    Ok(Arc::new(StructArray::try_new(
        fields.clone(),
        columns,
        Some(nulls),
    )?))
}

/// The `to_json` UDF.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ToJson {
    signature: Signature,
}

impl Default for ToJson {
    fn default() -> Self {
        Self::new()
    }
}

impl ToJson {
    /// A new instance.
    pub fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

/// Each row of `batch` as a JSON object (NULL fields left out, as Spark does).
pub fn rows_to_json(batch: &RecordBatch) -> DfResult<Vec<String>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    let text = String::from_utf8(buf)
        .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // the writer leaves out rows with no non-null field as "{}"; keep one line per row
    lines.resize(batch.num_rows(), "{}".to_string());
    Ok(lines)
}

impl ScalarUDFImpl for ToJson {
    fn name(&self) -> &str {
        "to_json"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types.first() {
            Some(DataType::Struct(_)) => Ok(DataType::Utf8),
            Some(other) => {
                plan_err!("to_json needs a struct (e.g. named_struct(...)), got {other}")
            }
            None => plan_err!("to_json needs an argument"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let v = args.args[0].to_array(args.number_rows)?;
        let s = v.as_struct();
        let batch = RecordBatch::from(s.clone());
        let lines = rows_to_json(&batch)?;
        let out: StringArray = lines
            .into_iter()
            .enumerate()
            .map(|(i, l)| s.is_valid(i).then_some(l))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Int64Type;

    /// The JSON timestamp forms the README documents, each read as the instant it names.
    #[test]
    fn timestamp_forms() {
        use arrow::datatypes::TimestampMicrosecondType;
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("t", crate::ddl::timestamp_type(), true),
        ]));
        let midnight = 1_735_689_600_000_000i64; // 2025-01-01T00:00:00Z in µs
        let table = [
            (r#""2025-01-01T00:00:00Z""#, midnight),
            (r#""2025-01-01T00:00:00.123456Z""#, midnight + 123_456),
            (r#""2025-01-01T00:00:00.123456789Z""#, midnight + 123_456),
            (r#""2025-01-01T02:00:00+02:00""#, midnight),
            (r#""2024-12-31T19:00:00-05:00""#, midnight),
            (r#""2025-01-01 00:00:00""#, midnight),
            (r#""2025-01-01T00:00:00""#, midnight),
            (r#""2025-01-01""#, midnight),
            // a number: seconds since the epoch (Spark), fractions allowed
            ("1735689600", midnight),
            ("1735689600.25", midnight + 250_000),
        ];
        for (text, want) in table {
            let line = format!("{{\"t\": {text}}}");
            let b = decode_json(&schema, line.as_bytes(), 16).expect(text);
            let got = b[0]
                .column(0)
                .as_primitive::<TimestampMicrosecondType>()
                .value(0);
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn parses_good_values_and_nulls_bad_ones() {
        let fields = schema_fields("a BIGINT, b STRING").expect("ddl");
        let input = StringArray::from(vec![
            Some(r#"{"a": 1, "b": "x"}"#),
            None,
            Some("not json"),
            Some(r#"{"a": 3}"#),
        ]);
        let out = parse_json_column(&input, &fields, false).expect("parse");
        let s = out.as_struct();
        assert_eq!(
            (0..4).map(|i| s.is_valid(i)).collect::<Vec<_>>(),
            [true, false, false, true]
        );
        let a = s.column(0).as_primitive::<Int64Type>();
        assert_eq!((a.value(0), a.value(3)), (1, 3));
        let err = parse_json_column(&input, &fields, true).expect_err("failfast");
        assert!(err.to_string().contains("row 2"), "{err}");
        assert!(err.to_string().contains("not json"), "{err}");
    }

    #[test]
    fn rows_to_json_one_line_per_row() {
        let fields = schema_fields("a BIGINT, b STRING").expect("ddl");
        let input = StringArray::from(vec![Some(r#"{"a": 1, "b": "x"}"#), Some(r#"{"a": 2}"#)]);
        let out = parse_json_column(&input, &fields, false).expect("parse");
        let batch = RecordBatch::from(out.as_struct().clone());
        assert_eq!(
            rows_to_json(&batch).expect("json"),
            [r#"{"a":1,"b":"x"}"#, r#"{"a":2}"#]
        );
    }

    #[test]
    fn utc_and_other_zones_in_one_schema_each_keep_their_zone() {
        use arrow::datatypes::{DataType, Field, Schema, TimeUnit, TimestampMicrosecondType};
        let ts = |tz: Option<&str>| DataType::Timestamp(TimeUnit::Microsecond, tz.map(Into::into));
        let schema = Arc::new(Schema::new(vec![
            Field::new("u", ts(Some("UTC")), true),
            Field::new("p", ts(Some("+02:00")), true),
            Field::new("n", ts(None), true),
        ]));
        let text =
            br#"{"u":"2025-01-01T02:00:00","p":"2025-01-01T02:00:00","n":"2025-01-01T02:00:00"}
{"u":"2025-01-01T02:00:00+02:00","p":"2025-01-01T02:00:00Z","n":"2025-01-01T02:00:00Z"}"#;
        let batches = decode_json(&schema, text, 16).expect("decode");
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.schema(), schema);
        let col = |i: usize| {
            let a = b.column(i).as_primitive::<TimestampMicrosecondType>();
            (a.value(0), a.value(1))
        };
        let two_am_utc = 1_735_696_800_000_000_i64;
        let hour = 3_600_000_000_i64;
        // text without an offset is a time in the column's zone; an offset in the text wins
        assert_eq!(col(0), (two_am_utc, two_am_utc - 2 * hour));
        assert_eq!(col(1), (two_am_utc - 2 * hour, two_am_utc));
        assert_eq!(col(2), (two_am_utc, two_am_utc));
    }
}
