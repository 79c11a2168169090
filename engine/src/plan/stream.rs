//! Streams inside DataFusion plans ([`StreamTable`]), and the event-time bookkeeping of the
//! watermark nodes ([`EventTimeStats`], [`WatermarkSpec`]).

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session as DfSession;
use datafusion::datasource::{source_as_provider, TableProvider, TableType};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;

use crate::connector::SourceSpec;

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

/// Event times seen by one watermark operator in one batch (µs since the epoch): Spark's
/// `EventTimeStats`, behind the watermark and the progress report's `eventTime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeStats {
    /// Smallest event time.
    pub min: i64,
    /// Largest event time.
    pub max: i64,
    /// Sum of the event times (for the average).
    pub sum: i128,
    /// Rows with an event time.
    pub count: u64,
}

impl EventTimeStats {
    pub(crate) fn of(ts: &arrow::array::TimestampMicrosecondArray) -> Option<Self> {
        let count = (ts.len() - ts.null_count()) as u64;
        if count == 0 {
            return None;
        }
        let mut s = Self {
            min: i64::MAX,
            max: i64::MIN,
            sum: 0,
            count,
        };
        for t in ts.iter().flatten() {
            s.min = s.min.min(t);
            s.max = s.max.max(t);
            s.sum += i128::from(t);
        }
        Some(s)
    }

    /// Both sets of rows together.
    pub fn merge(self, o: Self) -> Self {
        Self {
            min: self.min.min(o.min),
            max: self.max.max(o.max),
            sum: self.sum + o.sum,
            count: self.count + o.count,
        }
    }

    /// The average event time, µs.
    pub fn avg(&self) -> i64 {
        (self.sum / i128::from(self.count.max(1))) as i64
    }
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
