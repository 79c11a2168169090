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
    pub state_operators: Vec<crate::aggregate::StateOperatorProgress>,
    /// Per source.
    pub sources: Vec<SourceProgress>,
    /// The sink.
    pub sink: SinkProgress,
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
