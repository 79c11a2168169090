//! From what the user wrote to the compiled streaming program, once per query: Spark's SQL
//! forms rewritten in the parsed statement ([`sql`]), DDL schema strings ([`ddl`]), the
//! DataFusion logical plan translated into streaming nodes ([`translate`], re-exported here),
//! and what a checkpoint's state means (`fingerprint`).

pub mod ddl;
pub(crate) mod fingerprint;
pub mod sql;
pub mod translate;

pub use translate::*;
