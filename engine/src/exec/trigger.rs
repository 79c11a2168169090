//! When batches run: Spark's triggers.

use std::time::Duration;

use crate::error::{EngineError, Result};
use crate::options::parse_duration;

/// When batches run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A batch as soon as new data exists, at most one per interval. `ProcessingTime(0)` (the
    /// default) is event-driven: file sources wake the query when a file arrives; an idle query
    /// sleeps.
    ProcessingTime(Duration),
    /// One batch with everything available, then stop.
    Once,
    /// Everything available at start, in rate-limited batches, then stop.
    AvailableNow,
}

impl Default for Trigger {
    fn default() -> Self {
        Trigger::ProcessingTime(Duration::ZERO)
    }
}

impl std::str::FromStr for Trigger {
    type Err = EngineError;
    /// `once`, `available-now`, `file-arrival` / `continuous-files` (event-driven), or an interval
    /// such as `500 milliseconds`.
    fn from_str(s: &str) -> Result<Self> {
        let l = s.trim().to_ascii_lowercase().replace('_', "-");
        match l.as_str() {
            "once" => Ok(Trigger::Once),
            "available-now" | "availablenow" => Ok(Trigger::AvailableNow),
            "file-arrival" | "default" | "" => Ok(Trigger::default()),
            _ => parse_duration(s).map(Trigger::ProcessingTime).map_err(|e| {
                EngineError::user(format!(
                    "unknown trigger '{s}': use once, available-now, file-arrival or an interval ({e})"
                ))
            }),
        }
    }
}
