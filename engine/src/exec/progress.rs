//! Progress of a streaming query, with the field names of Spark's `StreamingQueryProgress`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Durations of the phases of one batch, in ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DurationMs {
    /// Asking sources for their latest offsets.
    pub latest_offset: u64,
    /// Reading the batch's rows from the sources.
    pub get_batch: u64,
    /// Running the plan and writing to the sink.
    pub add_batch: u64,
    /// Writing the offsets log entry.
    pub wal_commit: u64,
    /// Writing the commit log entry.
    pub commit_offsets: u64,
    /// The whole trigger.
    pub trigger_execution: u64,
}

/// Progress of one source in one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    /// Source description.
    pub description: String,
    /// Offset before the batch (`null` for the first).
    pub start_offset: Option<serde_json::Value>,
    /// Offset at the end of the batch.
    pub end_offset: serde_json::Value,
    /// Rows read.
    pub num_input_rows: u64,
    /// Rows per second arriving since the previous batch.
    pub input_rows_per_second: f64,
    /// Rows per second processed in this batch.
    pub processed_rows_per_second: f64,
    /// Source metrics (Spark's `metrics` map): `backlog` = offsets or files still waiting.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub metrics: BTreeMap<String, String>,
}

/// Progress of the sink in one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkProgress {
    /// Sink description.
    pub description: String,
    /// Rows written.
    pub num_output_rows: u64,
}

/// Progress of one micro-batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryProgress {
    /// Stable query id.
    pub id: String,
    /// Id of this run.
    pub run_id: String,
    /// Query name.
    pub name: Option<String>,
    /// Trigger start, ISO-8601 UTC.
    pub timestamp: String,
    /// The batch id.
    pub batch_id: u64,
    /// Rows read by all sources.
    pub num_input_rows: u64,
    /// Input rate since the previous batch.
    pub input_rows_per_second: f64,
    /// Processing rate of this batch.
    pub processed_rows_per_second: f64,
    /// Phase durations.
    pub duration_ms: DurationMs,
    /// Event-time statistics (from the stateful streaming work on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub event_time: BTreeMap<String, String>,
    /// Stateful operators (Spark's `stateOperators`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_operators: Vec<StateOperatorProgress>,
    /// Per source.
    pub sources: Vec<SourceProgress>,
    /// The sink.
    pub sink: SinkProgress,
    /// Expectation counts and rows dropped (Databricks' `flow_progress.data_quality`), when
    /// the query has expectations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_quality: Option<crate::exec::expectations::DataQuality>,
}

impl QueryProgress {
    /// The progress as one line of JSON.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// What a query is doing right now (Spark's `StreamingQueryStatus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryStatus {
    /// Human-readable state, e.g. "Waiting for data to arrive".
    pub message: String,
    /// Whether new data is available.
    pub is_data_available: bool,
    /// Whether a trigger is running.
    pub is_trigger_active: bool,
}

/// Spark's rates of a batch of `rows`: input rows per second over the time since the previous
/// trigger with data started (`input_ms`; none before the first batch: 0 rows/s), processed
/// rows per second over the batch's own duration (at least 1 ms). Pure; table-tested.
pub(crate) fn rates(rows: u64, processing_ms: u64, input_ms: Option<u64>) -> (f64, f64) {
    let input = match input_ms {
        Some(ms) if ms > 0 => rows as f64 * 1000.0 / ms as f64,
        Some(_) => rows as f64 * 1000.0,
        None => 0.0,
    };
    let processed = rows as f64 * 1000.0 / processing_ms.max(1) as f64;
    (input, processed)
}

/// Spark's `eventTime` progress map: `min`, `max`, `avg` of the event times the first watermark
/// operator with rows saw in the batch (Spark's `headOption`) and the `watermark` the batch ran
/// with, as ISO-8601.
pub(crate) fn event_time_progress(
    watermarked: bool,
    watermark_ms: i64,
    stats: &[Option<crate::plan::EventTimeStats>],
) -> std::collections::BTreeMap<String, String> {
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let mut out = std::collections::BTreeMap::new();
    if let Some(all) = stats.iter().flatten().next() {
        out.insert("min".to_string(), iso(all.min.div_euclid(1000)));
        out.insert("max".to_string(), iso(all.max.div_euclid(1000)));
        out.insert("avg".to_string(), iso(all.avg().div_euclid(1000)));
    }
    if watermarked {
        out.insert("watermark".to_string(), iso(watermark_ms));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::rates;

    #[test]
    fn input_and_processing_rates_as_spark() {
        // (rows, processing ms, ms since the previous trigger started) -> (input/s, processed/s)
        let table = [
            (100, 50, None, (0.0, 2000.0)),
            (100, 50, Some(1000), (100.0, 2000.0)),
            (100, 0, Some(500), (200.0, 100_000.0)),
            (0, 10, Some(1000), (0.0, 0.0)),
        ];
        for (rows, p, i, want) in table {
            assert_eq!(rates(rows, p, i), want, "{rows} {p} {i:?}");
        }
    }
}

/// Progress of one stateful operator in one batch (Spark's `stateOperators[i]`), summed over
/// its partitions.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateOperatorProgress {
    /// Operator name.
    pub operator_name: String,
    /// Keys in state after the batch.
    pub num_rows_total: u64,
    /// Keys written.
    pub num_rows_updated: u64,
    /// Keys removed.
    pub num_rows_removed: u64,
    /// Rows dropped as late, counted as Spark does: for an aggregation, the partially
    /// aggregated rows (one per late group of the batch), not the input rows; for
    /// deduplication and session windows, the input rows.
    pub num_rows_dropped_by_watermark: u64,
    /// Memory used by the store.
    pub memory_used_bytes: u64,
    /// Time of the state commit, ms.
    pub commit_time_ms: u64,
    /// Spark's `customMetrics`; Sluice adds `numLateInputRows`, the input rows the batch
    /// dropped as late (what a late-data sink receives).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub custom_metrics: std::collections::BTreeMap<String, u64>,
}

/// The `customMetrics` key of the late input rows of a batch.
pub const NUM_LATE_INPUT_ROWS: &str = "numLateInputRows";
