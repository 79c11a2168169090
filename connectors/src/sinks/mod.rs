//! Sinks: console, memory, and the exactly-once file sink (csv, json, parquet).

pub mod console;
pub mod file;
pub mod memory;
