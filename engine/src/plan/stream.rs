//! Streams inside DataFusion plans ([`StreamTable`]) and the plan's watermarks
//! ([`WatermarkSpec`]).

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session as DfSession;
use datafusion::datasource::{source_as_provider, TableProvider, TableType};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;

use crate::connector::SourceSpec;
pub use crate::operators::watermark::EventTimeStats;

/// A stream in a logical plan: the table behind `read_stream()...load()`.
#[derive(Debug)]
pub struct StreamTable {
    /// What the user asked for.
    pub spec: SourceSpec,
    /// The stream's schema.
    pub schema: SchemaRef,
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        None
    }
    async fn scan(
        &self,
        _state: &dyn DfSession,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        datafusion::common::plan_err!(
            "Queries with streaming sources must be executed with write_stream().start()"
        )
    }
}

/// Returns the stream behind a table scan, if it is one.
pub fn stream_of_scan(scan: &datafusion::logical_expr::TableScan) -> Option<Arc<StreamTable>> {
    let provider = source_as_provider(&scan.source).ok()?;
    let any: Arc<dyn Any + Send + Sync> = provider;
    any.downcast::<StreamTable>().ok()
}

/// Whether a logical plan reads any stream.
pub fn is_streaming(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(scan) = p {
            if stream_of_scan(scan).is_some() {
                found = true;
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

/// A `with_watermark` of the plan: its column and delay. A plan has one per watermarked input
/// (e.g. both sides of a UNION of two streams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkSpec {
    /// The event-time column.
    pub column: String,
    /// The delay, ms.
    pub delay_ms: i64,
}
