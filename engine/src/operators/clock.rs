//! The batch clock: `now()`, `current_timestamp()`, `current_date()` and `current_time()` inside
//! a streaming query return the batch timestamp recorded in the offsets log, so that a re-run
//! batch computes the same rows. The streaming planner replaces DataFusion's functions by
//! [`BatchClockUdf`]s that read the query's [`BatchClock`].

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use arrow::datatypes::{DataType, FieldRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// The timestamp of the batch being executed, in ms since the epoch; set by the executor.
#[derive(Debug, Clone, Default)]
pub struct BatchClock(Arc<AtomicI64>);

impl BatchClock {
    /// A new clock at 0.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the batch timestamp.
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    /// The batch timestamp.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Which time function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockKind {
    /// `now()` / `current_timestamp()`.
    Timestamp,
    /// `current_date()`.
    Date,
    /// `current_time()`.
    Time,
}

/// A time function bound to a query's batch clock.
#[derive(Debug)]
pub struct BatchClockUdf {
    name: String,
    kind: ClockKind,
    return_field: FieldRef,
    clock: BatchClock,
    signature: Signature,
}

impl BatchClockUdf {
    /// A clock function returning `return_field` (the type DataFusion's own function declared).
    pub fn new(name: &str, kind: ClockKind, return_field: FieldRef, clock: BatchClock) -> Self {
        Self {
            name: name.to_string(),
            kind,
            return_field,
            clock,
            signature: Signature::nullary(Volatility::Volatile),
        }
    }

    /// Maps a DataFusion function name to a clock kind.
    pub fn kind_of(name: &str) -> Option<ClockKind> {
        match name {
            "now" | "current_timestamp" => Some(ClockKind::Timestamp),
            "current_date" | "today" => Some(ClockKind::Date),
            "current_time" => Some(ClockKind::Time),
            _ => None,
        }
    }
}

impl PartialEq for BatchClockUdf {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && Arc::ptr_eq(&self.clock.0, &other.clock.0)
    }
}
impl Eq for BatchClockUdf {}
impl Hash for BatchClockUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        (Arc::as_ptr(&self.clock.0) as usize).hash(state);
    }
}

impl ScalarUDFImpl for BatchClockUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.return_field.data_type().clone())
    }
    fn return_field_from_args(&self, _args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        Ok(Arc::clone(&self.return_field))
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let ms = self.clock.get();
        let v = match (self.kind, self.return_field.data_type()) {
            (ClockKind::Timestamp, DataType::Timestamp(unit, tz)) => {
                let tz = tz.clone();
                match unit {
                    TimeUnit::Second => ScalarValue::TimestampSecond(Some(ms / 1000), tz),
                    TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(Some(ms), tz),
                    TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(Some(ms * 1000), tz),
                    TimeUnit::Nanosecond => {
                        ScalarValue::TimestampNanosecond(Some(ms * 1_000_000), tz)
                    }
                }
            }
            (ClockKind::Date, DataType::Date32) => {
                ScalarValue::Date32(Some(ms.div_euclid(86_400_000) as i32))
            }
            (ClockKind::Date, DataType::Date64) => {
                ScalarValue::Date64(Some(ms.div_euclid(86_400_000) * 86_400_000))
            }
            (ClockKind::Time, DataType::Time64(TimeUnit::Nanosecond)) => {
                ScalarValue::Time64Nanosecond(Some(ms.rem_euclid(86_400_000) * 1_000_000))
            }
            (ClockKind::Time, DataType::Time64(TimeUnit::Microsecond)) => {
                ScalarValue::Time64Microsecond(Some(ms.rem_euclid(86_400_000) * 1000))
            }
            (kind, dt) => {
                return datafusion::common::internal_err!(
                    "batch clock {kind:?} cannot produce {dt}"
                )
            }
        };
        Ok(ColumnarValue::Scalar(v))
    }
}
