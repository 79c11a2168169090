//! The console sink: Spark's layout (`Batch: N` between dashes, then a table).

use std::io::Write;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use sluice_engine::{OutputMode, Result, Sink, SinkContext, SinkFactory, SinkSpec};

/// Creates console sinks.
#[derive(Debug, Default)]
pub struct ConsoleSinkFactory;

impl SinkFactory for ConsoleSinkFactory {
    fn formats(&self) -> Vec<&'static str> {
        vec!["console"]
    }
    fn supported_modes(&self, _format: &str) -> Vec<OutputMode> {
        vec![OutputMode::Append, OutputMode::Update, OutputMode::Complete]
    }
    fn requires_checkpoint(&self, _format: &str) -> bool {
        false
    }
    fn validate(&self, spec: &SinkSpec) -> Result<()> {
        spec.options
            .check_known("the console sink", &["numRows", "truncate"], &[])?;
        spec.options.get_u64("numRows")?;
        spec.options.get_bool("truncate", true)?;
        Ok(())
    }
    fn create(&self, spec: &SinkSpec, ctx: &SinkContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(ConsoleSink {
            num_rows: spec.options.get_u64("numRows")?.unwrap_or(20) as usize,
            truncate: spec.options.get_bool("truncate", true)?,
            schema: std::sync::Arc::clone(&ctx.schema),
        }))
    }
}

/// Prints each batch.
pub struct ConsoleSink {
    num_rows: usize,
    truncate: bool,
    schema: arrow::datatypes::SchemaRef,
}

/// Renders a batch as Spark's console sink does (`Dataset.show`): the first `num_rows` rows,
/// cells as Spark shows values (`NULL`, timestamps as `2024-05-01 12:15:00`, structs as
/// `{a, b}`, arrays as `[a, b]`), cut to 20 characters and right-aligned when `truncate`, left-
/// aligned otherwise; an empty batch shows its header. Only the shown rows are formatted.
pub fn render(
    batch_id: u64,
    schema: &arrow::datatypes::Schema,
    batches: &[RecordBatch],
    num_rows: usize,
    truncate: bool,
) -> Result<String> {
    Ok(format!(
        "-------------------------------------------\nBatch: {batch_id}\n-------------------------------------------\n{}",
        show(schema, batches, num_rows, truncate)
    ))
}

/// Spark's `Dataset.show(num_rows, truncate)` of rows: the table [`render`] prints under a
/// batch's header (also Python's `df.show()`).
pub fn show(
    schema: &arrow::datatypes::Schema,
    batches: &[RecordBatch],
    num_rows: usize,
    truncate: bool,
) -> String {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut table: Vec<Vec<String>> =
        vec![schema.fields().iter().map(|f| f.name().clone()).collect()];
    'outer: for b in batches {
        for row in 0..b.num_rows() {
            if table.len() > num_rows {
                break 'outer;
            }
            table.push(b.columns().iter().map(|c| cell(c.as_ref(), row)).collect());
        }
    }
    if truncate {
        for r in &mut table {
            for v in r.iter_mut() {
                if v.chars().count() > 20 {
                    *v = format!("{}...", v.chars().take(17).collect::<String>());
                }
            }
        }
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(3)
        })
        .collect();
    let line: String = widths.iter().fold("+".to_string(), |mut s, w| {
        s.push_str(&"-".repeat(*w));
        s.push('+');
        s
    });
    let mut out = format!("{line}\n");
    for (i, r) in table.iter().enumerate() {
        out.push('|');
        for (v, w) in r.iter().zip(&widths) {
            let pad = " ".repeat(w - v.chars().count());
            if truncate {
                out.push_str(&pad);
                out.push_str(v);
            } else {
                out.push_str(v);
                out.push_str(&pad);
            }
            out.push('|');
        }
        out.push('\n');
        if i == 0 {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str(&line);
    out.push('\n');
    if total > num_rows {
        let word = if num_rows == 1 { "row" } else { "rows" };
        out.push_str(&format!("only showing top {num_rows} {word}\n"));
    }
    out.push('\n');
    out
}

/// One value as Spark's `show` prints it.
fn cell(a: &dyn Array, row: usize) -> String {
    if a.is_null(row) {
        return "NULL".into();
    }
    match a.data_type() {
        DataType::Struct(_) => {
            let s = a.as_struct();
            let parts: Vec<String> = s.columns().iter().map(|c| cell(c.as_ref(), row)).collect();
            format!("{{{}}}", parts.join(", "))
        }
        DataType::List(_) => list_cell(a.as_list::<i32>().value(row).as_ref()),
        DataType::LargeList(_) => list_cell(a.as_list::<i64>().value(row).as_ref()),
        DataType::Timestamp(_, _) => {
            let micros = arrow::compute::cast(
                &a.slice(row, 1),
                &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            )
            .ok()
            .and_then(|c| {
                c.as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>()
                    .map(|p| p.value(0))
            });
            match micros.and_then(chrono::DateTime::from_timestamp_micros) {
                Some(t) => {
                    let base = t.format("%Y-%m-%d %H:%M:%S").to_string();
                    let frac = t.timestamp_subsec_micros();
                    if frac == 0 {
                        base
                    } else {
                        format!("{base}.{}", format!("{frac:06}").trim_end_matches('0'))
                    }
                }
                None => "?".into(),
            }
        }
        _ => arrow::util::display::ArrayFormatter::try_new(a, &Default::default())
            .map(|f| f.value(row).to_string())
            .unwrap_or_else(|e| format!("<{e}>")),
    }
}

fn list_cell(values: &dyn Array) -> String {
    let parts: Vec<String> = (0..values.len()).map(|i| cell(values, i)).collect();
    format!("[{}]", parts.join(", "))
}

impl Sink for ConsoleSink {
    fn description(&self) -> String {
        "ConsoleSink".into()
    }
    fn add_batch(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        let text = render(
            batch_id,
            &self.schema,
            batches,
            self.num_rows,
            self.truncate,
        )?;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Int64Array, ListArray, StringArray, StructArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, Int32Type, Schema};
    use std::sync::Arc;

    /// Cells as PySpark 4.3's console sink printed them (python/tests/pyspark_programs/expected).
    #[test]
    fn cells_as_spark_shows_them() {
        let ts = |v: i64| Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC"));
        let window = StructArray::from(vec![
            (
                Arc::new(Field::new("start", ts(0).data_type().clone(), true)),
                ts(1_714_565_700_000_000) as arrow::array::ArrayRef,
            ),
            (
                Arc::new(Field::new("end", ts(0).data_type().clone(), true)),
                ts(1_714_566_300_500_000) as arrow::array::ArrayRef,
            ),
        ]);
        let list =
            ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1), None])]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("window", window.data_type().clone(), true),
            Field::new("xs", list.data_type().clone(), true),
            Field::new("n", DataType::Int64, true),
        ]));
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(window),
                Arc::new(list),
                Arc::new(Int64Array::from(vec![None::<i64>])),
            ],
        )
        .expect("batch");
        let text = render(0, &schema, &[b], 20, false).expect("render");
        assert!(
            text.contains("|{2024-05-01 12:15:00, 2024-05-01 12:25:00.5}|[1, NULL]|NULL|"),
            "{text}"
        );
        let empty = render(1, &schema, &[], 20, true).expect("render");
        assert!(
            empty.ends_with(
                "+------+---+---+\n|window| xs|  n|\n+------+---+---+\n+------+---+---+\n\n"
            ),
            "{empty}"
        );
    }

    #[test]
    fn renders_spark_layout_with_truncation_and_row_limit() {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("s", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from(vec![
                "short",
                "a very long string of many chars",
                "x",
            ]))],
        )
        .expect("batch");
        let text = render(3, &schema, &[b], 2, true).expect("render");
        assert!(
            text.starts_with("-------------------------------------------\nBatch: 3\n"),
            "{text}"
        );
        // Spark's show(): right-aligned cells cut to 20 characters
        assert!(text.contains("\n|                   s|\n"), "{text}");
        assert!(text.contains("\n|a very long strin...|\n"), "{text}");
        assert!(!text.contains("|x"), "{text}");
        assert!(text.contains("only showing top 2 rows"), "{text}");
    }
}
