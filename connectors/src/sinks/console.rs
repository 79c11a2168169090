//! The console sink: Spark's layout (`Batch: N` between dashes, then a table).

use std::io::Write;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
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
    fn create(&self, spec: &SinkSpec, _ctx: &SinkContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(ConsoleSink {
            num_rows: spec.options.get_u64("numRows")?.unwrap_or(20) as usize,
            truncate: spec.options.get_bool("truncate", true)?,
        }))
    }
}

/// Prints each batch.
pub struct ConsoleSink {
    num_rows: usize,
    truncate: bool,
}

/// Renders a batch as Spark's console sink does.
pub fn render(
    batch_id: u64,
    batches: &[RecordBatch],
    num_rows: usize,
    truncate: bool,
) -> Result<String> {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut shown = Vec::new();
    let mut left = num_rows;
    for b in batches {
        if left == 0 {
            break;
        }
        let b = b.slice(0, left.min(b.num_rows()));
        left -= b.num_rows();
        shown.push(if truncate { truncate_strings(&b)? } else { b });
    }
    let mut out = format!(
        "-------------------------------------------\nBatch: {batch_id}\n-------------------------------------------\n"
    );
    if shown.is_empty() {
        out.push_str("(no rows)\n");
    } else {
        out.push_str(&arrow::util::pretty::pretty_format_batches(&shown)?.to_string());
        out.push('\n');
    }
    if total > num_rows {
        out.push_str(&format!("only showing top {num_rows} rows\n"));
    }
    out.push('\n');
    Ok(out)
}

fn truncate_strings(b: &RecordBatch) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = b
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8 => {
                let s = c.as_string::<i32>();
                let t: StringArray = s
                    .iter()
                    .map(|v| {
                        v.map(|v| {
                            if v.chars().count() > 20 {
                                format!("{}...", v.chars().take(17).collect::<String>())
                            } else {
                                v.to_string()
                            }
                        })
                    })
                    .collect();
                std::sync::Arc::new(t) as ArrayRef
            }
            _ => c.clone(),
        })
        .collect();
    Ok(RecordBatch::try_new(b.schema(), cols)?)
}

impl Sink for ConsoleSink {
    fn description(&self) -> String {
        "ConsoleSink".into()
    }
    fn add_batch(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        let text = render(batch_id, batches, self.num_rows, self.truncate)?;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renders_spark_layout_with_truncation_and_row_limit() {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("s", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![
                "short",
                "a very long string of many chars",
                "x",
            ]))],
        )
        .expect("batch");
        let text = render(3, &[b], 2, true).expect("render");
        assert!(
            text.starts_with("-------------------------------------------\nBatch: 3\n"),
            "{text}"
        );
        assert!(text.contains("| a very long strin... |"), "{text}");
        assert!(!text.contains("| x "), "{text}");
        assert!(text.contains("only showing top 2 rows"), "{text}");
    }
}
