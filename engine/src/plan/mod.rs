//! From what the user wrote to the compiled streaming program, once per query: Spark's SQL
//! forms rewritten in the parsed statement ([`sql`]), streams inside DataFusion plans
//! ([`stream`]), the logical plan translated ([`translate`]) into stateless nodes (`node`) and
//! a chain of stateful operators ([`stream_plan`]: the [`StreamPlan`]), what a checkpoint's
//! state means (`fingerprint`), and whether the state follows the input partitioning
//! ([`partitioning`]: a query run as tasks). The plan imports operators, never the batch loop.

pub(crate) mod fingerprint;
pub(crate) mod join;
pub(crate) mod node;
pub mod partitioning;
pub mod sql;
pub mod static_table;
pub mod stream;
pub mod stream_plan;
pub mod translate;

pub use static_table::StaticTable;
pub use stream::{is_streaming, stream_of_scan, EventTimeStats, StreamTable, WatermarkSpec};
pub use stream_plan::{BatchOutput, PartitionBatch, StreamPlan};
pub use translate::PLANS_BUILT;
