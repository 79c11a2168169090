//! The user-facing API, shaped as Spark's: a [`session::Session`] reads streams into
//! [`dataframe::DataFrame`]s, a [`writer::DataStreamWriter`] starts them as
//! [`query::StreamingQuery`]s.

pub mod dataframe;
pub mod query;
pub mod reader;
pub mod session;
pub mod writer;
