//! The sinks beside a query's main sink: the late-data sink (rows a watermarked aggregation
//! drops as late) and the quarantine sink (rows `expect_or_drop` expectations remove). Each has
//! its own query id (`<id>-late`, `<id>-quarantine`), so an exactly-once sink keeps its
//! batches apart from the main sink's; each is written before the main sink, per batch.

use arrow::datatypes::SchemaRef;
use sluice_state::CheckpointDir;

use super::DataStreamWriter;
use crate::api::session::Session;
use crate::connector::{OutputMode, Sink, SinkContext, SinkSpec};
use crate::error::Result;
use crate::options::Options;

impl DataStreamWriter {
    /// The sinks beside the main one, by role: `late-data`, `quarantine`.
    pub(super) fn side_sinks(&self) -> Vec<(&'static str, &(String, Options))> {
        let mut v = Vec::new();
        if let Some(l) = &self.late_data {
            v.push(("late-data", l));
        }
        if let Some(q) = &self.quarantine {
            v.push(("quarantine", q));
        }
        v
    }

    /// A sink beside the main one (`late`, `quarantine`), with its own query id: exactly-once
    /// sinks key their markers / transactional ids on it, and must not mistake the main sink's
    /// batches for its own.
    pub(super) fn side_sink(
        &self,
        session: &Session,
        checkpoint: &CheckpointDir,
        role: &str,
        format: String,
        options: Options,
        schema: SchemaRef,
    ) -> Result<Box<dyn Sink>> {
        let f = session.registry().sink(&format)?;
        let spec = SinkSpec {
            format,
            options,
            output_mode: OutputMode::Append,
        };
        f.validate(&spec)?;
        f.create(
            &spec,
            &SinkContext {
                query_id: format!("{}-{role}", checkpoint.query_id()),
                query_name: self.query_name.as_ref().map(|n| format!("{n}_{role}")),
                schema,
                key_columns: None,
                checkpoint_dir: checkpoint.root().to_path_buf(),
                session: session.context().clone(),
                task: None,
            },
        )
    }
}
