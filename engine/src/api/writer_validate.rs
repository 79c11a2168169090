//! `DataStreamWriter::validate`: everything `start()` checks, with nothing created or changed
//! (for `sluice validate`).

use std::path::PathBuf;
use std::sync::Arc;

use sluice_state::CheckpointDir;

use super::DataStreamWriter;
use crate::connector::{OutputMode, SinkContext, SinkSpec};
use crate::error::{EngineError, Result};
use crate::exec::guarantee::Guarantee;
use crate::plan::fingerprint::verify_state_fingerprint;

/// What [`DataStreamWriter::validate`] found.
#[derive(Debug, Clone)]
pub struct QueryCheck {
    /// The query id recorded in an existing checkpoint (`None`: a new checkpoint would be made).
    pub id: Option<String>,
    /// The checkpoint location.
    pub checkpoint: PathBuf,
    /// The schema of the rows the sink would receive.
    pub output_schema: arrow::datatypes::SchemaRef,
    /// The query's delivery guarantee (the weakest of its sources and sink), and why.
    pub guarantee: (Guarantee, String),
}

impl DataStreamWriter {
    /// Checks the query as [`DataStreamWriter::start`] would — the plan, the output mode, every
    /// option, the sink's options and, with `reachable`, whether the sink's and the late-data
    /// sink's external systems answer and an existing target fits — without creating or
    /// changing anything: no checkpoint, no output directory, no table. For `sluice validate`.
    pub fn validate(mut self, reachable: bool) -> Result<QueryCheck> {
        let c = self.checked()?;
        let location = c.checkpoint_dir.to_string_lossy().into_owned();
        let id = CheckpointDir::peek_query_id_at(&location, &c.session.storage_options())?;
        if id.is_some() && !sluice_state::remote::is_remote(&location) {
            for (i, _) in c.plan.state_operators() {
                verify_state_fingerprint(
                    &c.checkpoint_dir,
                    i,
                    &c.plan.state_fingerprint(i)?,
                    &c.plan.legacy_state_fingerprint(i)?,
                )?;
            }
        }
        for (role, (format, options)) in self.side_sinks() {
            let schema = if role == "late-data" {
                c.plan.late_rows_schema().ok_or_else(|| {
                    EngineError::user(
                        "a late-data sink needs a watermarked window aggregation: only it drops late rows",
                    )
                })?
            } else {
                Arc::clone(&c.plan.output_schema)
            };
            let f = c.session.registry().sink(format)?;
            let spec = SinkSpec {
                format: format.clone(),
                options: options.clone(),
                output_mode: OutputMode::Append,
            };
            f.validate(&spec)?;
            let short = role.trim_end_matches("-data");
            let ctx = SinkContext {
                query_id: format!("{}-{short}", id.as_deref().unwrap_or("new")),
                query_name: self.query_name.as_ref().map(|n| format!("{n}_{short}")),
                schema,
                key_columns: None,
                checkpoint_dir: c.checkpoint_dir.clone(),
                session: c.session.context().clone(),
                task: None,
            };
            let what = format!("{role} sink");
            f.check(&spec, &ctx).map_err(|e| e.context(&what))?;
            if reachable {
                f.check_reachable(&spec, &ctx)
                    .map_err(|e| e.context(&what))?;
            }
        }
        let sink_ctx = SinkContext {
            query_id: id.clone().unwrap_or_else(|| "new".into()),
            query_name: self.query_name.clone(),
            schema: Arc::clone(&c.plan.output_schema),
            key_columns: c.plan.key_columns.clone(),
            checkpoint_dir: c.checkpoint_dir.clone(),
            session: c.session.context().clone(),
            task: None,
        };
        if let Some(f) = &c.factory {
            f.check(&c.spec, &sink_ctx).map_err(|e| e.context("sink"))?;
        }
        if reachable {
            for t in &c.plan.sources {
                c.session
                    .registry()
                    .source(&t.spec.format)?
                    .check_reachable(&t.spec)
                    .map_err(|e| e.context(&format!("source {}", t.spec.format)))?;
            }
            if let Some(f) = &c.factory {
                f.check_reachable(&c.spec, &sink_ctx).map_err(|e| {
                    if e.kind() == crate::error::ErrorKind::External {
                        e.context("sink not reachable")
                    } else {
                        e.context("sink")
                    }
                })?;
            }
        }
        Ok(QueryCheck {
            id,
            checkpoint: c.checkpoint_dir,
            output_schema: Arc::clone(&c.plan.output_schema),
            guarantee: c.guarantee,
        })
    }
}
