//! `with_watermark(column, delay)`: an event-time watermark in the logical plan, as Spark's
//! `EventTimeWatermark` node. It passes rows through unchanged; the executor tracks the maximum
//! event time of the rows passing it, and the watermark of batch b is
//! `max(event time over batches < b) − delay`, never decreasing.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use datafusion::common::{Column, DFSchemaRef};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};

/// The watermark node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Hash)]
pub struct WatermarkNode {
    /// The input plan.
    pub input: LogicalPlan,
    /// The event-time column.
    pub column: Column,
    /// The delay, in ms.
    pub delay_ms: i64,
}

impl WatermarkNode {
    /// Wraps `input` in a watermark node.
    pub fn plan(input: LogicalPlan, column: Column, delay_ms: i64) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(WatermarkNode {
                input,
                column,
                delay_ms,
            }),
        })
    }
}

impl UserDefinedLogicalNodeCore for WatermarkNode {
    fn name(&self) -> &str {
        "EventTimeWatermark"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![Expr::Column(self.column.clone())]
    }
    fn prevent_predicate_push_down_columns(&self) -> HashSet<String> {
        // a filter below the watermark would change the maximum event time it sees
        self.input
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EventTimeWatermark: {} delay {} ms",
            self.column, self.delay_ms
        )
    }
    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        let column = match exprs.into_iter().next() {
            Some(Expr::Column(c)) => c,
            _ => self.column.clone(),
        };
        Ok(Self {
            input: inputs.pop().unwrap_or_else(|| self.input.clone()),
            column,
            delay_ms: self.delay_ms,
        })
    }
}
