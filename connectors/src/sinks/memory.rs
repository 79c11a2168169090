//! The memory sink: a named in-memory table (the query name) the session can query with SQL.
//! Append and update modes add rows; complete mode replaces them. A batch id already written is
//! ignored (within the process).

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::datasource::memory::PartitionData;
use datafusion::datasource::MemTable;
use sluice_engine::{EngineError, OutputMode, Result, Sink, SinkContext, SinkFactory, SinkSpec};

/// Creates memory sinks.
#[derive(Debug, Default)]
pub struct MemorySinkFactory;

impl SinkFactory for MemorySinkFactory {
    fn formats(&self) -> Vec<&'static str> {
        vec!["memory"]
    }
    fn supported_modes(&self, _format: &str) -> Vec<OutputMode> {
        vec![OutputMode::Append, OutputMode::Update, OutputMode::Complete]
    }
    fn requires_checkpoint(&self, _format: &str) -> bool {
        false
    }
    fn validate(&self, spec: &SinkSpec) -> Result<()> {
        spec.options.check_known("the memory sink", &[], &[])
    }
    fn create(&self, spec: &SinkSpec, ctx: &SinkContext) -> Result<Box<dyn Sink>> {
        let name = ctx.query_name.clone().ok_or_else(|| {
            EngineError::user(
                "the memory sink needs a query name (query_name(\"...\")): it names the table",
            )
        })?;
        let table = MemTable::try_new(Arc::clone(&ctx.schema), vec![vec![]])?;
        let data = table
            .batches
            .first()
            .cloned()
            .ok_or_else(|| EngineError::bug("memory table without partition"))?;
        let _ = ctx.session.deregister_table(name.as_str())?;
        ctx.session.register_table(name.as_str(), Arc::new(table))?;
        Ok(Box::new(MemorySink {
            name,
            data,
            mode: spec.output_mode,
            last_batch: None,
        }))
    }
}

/// Keeps the rows in memory.
pub struct MemorySink {
    name: String,
    data: PartitionData,
    mode: OutputMode,
    last_batch: Option<u64>,
}

impl Sink for MemorySink {
    fn description(&self) -> String {
        format!("MemorySink[{}]", self.name)
    }
    fn add_batch(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        if self.last_batch.is_some_and(|l| batch_id <= l) {
            return Ok(());
        }
        let mut data = self.data.blocking_write();
        if self.mode == OutputMode::Complete {
            data.clear();
        }
        data.extend(batches.iter().cloned());
        self.last_batch = Some(batch_id);
        Ok(())
    }
}
