//! Event-time windows: `window(ts, size [, slide [, start]])` and `session_window(ts, gap)`,
//! as SQL functions and DataFrame expressions. Both return Spark's `window` struct
//! (`start`, `end`: TIMESTAMP, end exclusive, aligned to the Unix epoch plus `start`).
//!
//! In a GROUP BY, the streaming planner recognises these functions and assigns each row to its
//! windows itself (a sliding window puts a row in several); evaluated row by row (e.g. in a
//! projection) only a tumbling `window` has a single answer.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StructArray, TimestampMicrosecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::common::{exec_err, plan_err, ScalarValue};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::ddl::timestamp_type;
use crate::options::parse_duration;

/// An event-time column as microseconds since the epoch (any timestamp unit or date is cast).
pub fn event_micros(array: &ArrayRef) -> crate::error::Result<TimestampMicrosecondArray> {
    let ts = cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    ts.as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .cloned()
        .ok_or_else(|| crate::error::EngineError::bug("event time did not cast to a timestamp"))
}

/// The struct type of a window column.
pub fn window_type() -> DataType {
    DataType::Struct(window_fields())
}

fn window_fields() -> Fields {
    Fields::from(vec![
        Field::new("start", timestamp_type(), true),
        Field::new("end", timestamp_type(), true),
    ])
}

/// Tumbling, sliding or session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// `window(...)`.
    Time,
    /// `session_window(...)`.
    Session,
}

/// A window's shape, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window length (the gap for session windows).
    pub size_us: i64,
    /// Distance between window starts (= size for tumbling windows).
    pub slide_us: i64,
    /// Offset of window starts from the epoch.
    pub offset_us: i64,
    /// Tumbling/sliding or session.
    pub kind: WindowKind,
}

impl WindowSpec {
    /// Start of the last window starting at or before `ts`.
    pub fn last_start(&self, ts: i64) -> i64 {
        ts - (ts - self.offset_us).rem_euclid(self.slide_us)
    }

    /// Ends of every window containing `ts`, earliest first.
    pub fn windows_of(&self, ts: i64, out: &mut Vec<i64>) {
        let last = self.last_start(ts);
        // the earliest window still covering ts starts at most size - slide before `last`
        let mut start = last - ((self.size_us - 1) / self.slide_us) * self.slide_us;
        while start <= last {
            if start + self.size_us > ts {
                out.push(start + self.size_us);
            }
            start += self.slide_us;
        }
    }
}

/// The longest window, slide or start offset, µs (1000 years, as durations).
const MAX_INTERVAL_US: i64 = 1000 * 365 * 86_400_000_000;

/// The most windows one row may fall in (`window(ts, size, slide)`: ⌈size / slide⌉); more is
/// refused rather than multiplying every row that many times.
pub const MAX_WINDOWS_PER_ROW: i64 = 10_000;

/// Event times windows are computed for: Spark's timestamp range, 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59.999999Z, in µs. Within it, with durations of at most 1000 years, window
/// arithmetic cannot overflow.
pub const MIN_EVENT_TIME_US: i64 = -62_135_596_800_000_000;
/// See [`MIN_EVENT_TIME_US`].
pub const MAX_EVENT_TIME_US: i64 = 253_402_300_799_999_999;

/// Refuses event times outside [`MIN_EVENT_TIME_US`]..=[`MAX_EVENT_TIME_US`] (checked on the
/// batch's minimum and maximum, then the first offending row is named).
pub fn check_event_times(ts: &arrow::array::TimestampMicrosecondArray) -> DfResult<()> {
    let (Some(min), Some(max)) = (arrow::compute::min(ts), arrow::compute::max(ts)) else {
        return Ok(());
    };
    if min >= MIN_EVENT_TIME_US && max <= MAX_EVENT_TIME_US {
        return Ok(());
    }
    let (row, t) = ts
        .iter()
        .enumerate()
        .find_map(|(i, t)| {
            t.filter(|t| !(MIN_EVENT_TIME_US..=MAX_EVENT_TIME_US).contains(t))
                .map(|t| (i, t))
        })
        .unwrap_or((0, min));
    exec_err!(
        "event time {t} µs of row {row} of the batch is outside the range windows are computed \
         for (0001-01-01 to 9999-12-31, as Spark's timestamps)"
    )
}

fn interval_us(v: &ScalarValue, what: &str) -> DfResult<i64> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => parse_duration(s)
            .map(|d| d.as_micros() as i64)
            .or_else(|e| plan_err!("{what}: {e}")),
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => (i.days as i64)
            .checked_mul(86_400_000_000)
            .and_then(|d| d.checked_add(i.nanoseconds / 1000))
            .filter(|us| us.unsigned_abs() <= MAX_INTERVAL_US as u64)
            .map_or_else(|| plan_err!("{what} {v} is too long"), Ok),
        ScalarValue::IntervalDayTime(Some(i)) => (i.days as i64)
            .checked_mul(86_400_000_000)
            .and_then(|d| d.checked_add(i.milliseconds as i64 * 1000))
            .filter(|us| us.unsigned_abs() <= MAX_INTERVAL_US as u64)
            .map_or_else(|| plan_err!("{what} {v} is too long"), Ok),
        other => plan_err!("{what} must be a literal duration such as '10 minutes', got {other}"),
    }
}

/// Reads the window shape from the literal arguments of a window function call.
pub fn spec_of_args(kind: WindowKind, args: &[Expr]) -> DfResult<WindowSpec> {
    let lit = |i: usize, what: &str| -> DfResult<i64> {
        match args.get(i) {
            Some(Expr::Literal(v, _)) => interval_us(v, what),
            Some(other) => plan_err!("{what} must be a literal, got {other}"),
            None => plan_err!("{what} is missing"),
        }
    };
    let size = lit(1, "window duration")?;
    if size <= 0 {
        return plan_err!("window duration must be positive");
    }
    match kind {
        WindowKind::Session => {
            if args.len() != 2 {
                return plan_err!("session_window(time_column, gap) takes two arguments");
            }
            Ok(WindowSpec {
                size_us: size,
                slide_us: size,
                offset_us: 0,
                kind,
            })
        }
        WindowKind::Time => {
            if !(2..=4).contains(&args.len()) {
                return plan_err!(
                    "window(time_column, duration [, slide [, start]]) takes 2 to 4 arguments"
                );
            }
            let slide = if args.len() >= 3 {
                lit(2, "slide duration")?
            } else {
                size
            };
            if slide <= 0 || slide > size {
                return plan_err!(
                    "the slide duration must be positive and at most the window duration"
                );
            }
            let per_row = (size + slide - 1) / slide;
            if per_row > MAX_WINDOWS_PER_ROW {
                return plan_err!(
                    "a window of {size} µs sliding every {slide} µs puts every row in {per_row} \
                     windows; at most {MAX_WINDOWS_PER_ROW} are allowed: use a longer slide"
                );
            }
            let offset = if args.len() == 4 {
                lit(3, "start time")?
            } else {
                0
            };
            Ok(WindowSpec {
                size_us: size,
                slide_us: slide,
                offset_us: offset.rem_euclid(slide),
                kind,
            })
        }
    }
}

/// The `window` / `session_window` function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowUdf {
    kind: WindowKind,
    signature: Signature,
}

impl WindowUdf {
    /// The function of this kind.
    pub fn new(kind: WindowKind) -> Self {
        Self {
            kind,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }

    /// Whether `udf` is a window function, and which.
    pub fn kind_of(udf: &ScalarUDF) -> Option<WindowKind> {
        let any: &dyn std::any::Any = udf.inner().as_ref();
        any.downcast_ref::<WindowUdf>().map(|w| w.kind)
    }
}

impl ScalarUDFImpl for WindowUdf {
    fn name(&self) -> &str {
        match self.kind {
            WindowKind::Time => "window",
            WindowKind::Session => "session_window",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types.first() {
            Some(DataType::Timestamp(_, _)) | Some(DataType::Date32) => Ok(window_type()),
            Some(other) => plan_err!("{}() needs a TIMESTAMP column, got {other}", self.name()),
            None => plan_err!("{}() needs a time column", self.name()),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let scalars: Vec<ScalarValue> = args.args[1..]
            .iter()
            .map(|a| match a {
                ColumnarValue::Scalar(s) => Ok(s.clone()),
                _ => exec_err!("window durations must be literals"),
            })
            .collect::<DfResult<_>>()?;
        let lits: Vec<Expr> = std::iter::once(Expr::Literal(ScalarValue::Null, None))
            .chain(scalars.into_iter().map(|s| Expr::Literal(s, None)))
            .collect();
        let spec = spec_of_args(self.kind, &lits)?;
        if self.kind == WindowKind::Session || spec.slide_us != spec.size_us {
            return exec_err!(
                "{}() with more than one window per row can only be used in GROUP BY",
                self.name()
            );
        }
        let ts = args.args[0].to_array(args.number_rows)?;
        let ts = cast(&ts, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let ts = ts
            .as_any()
            .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("timestamp cast".into()))?;
        check_event_times(ts)?;
        let starts: TimestampMicrosecondArray = ts
            .iter()
            .map(|v| v.map(|t| spec.last_start(t)))
            .collect::<TimestampMicrosecondArray>()
            .with_timezone("UTC");
        let ends: TimestampMicrosecondArray = starts
            .iter()
            .map(|v| v.map(|s| s + spec.size_us))
            .collect::<TimestampMicrosecondArray>()
            .with_timezone("UTC");
        Ok(ColumnarValue::Array(window_struct(starts, ends)))
    }
}

/// Builds a window struct column.
pub fn window_struct(
    starts: TimestampMicrosecondArray,
    ends: TimestampMicrosecondArray,
) -> ArrayRef {
    Arc::new(StructArray::new(
        window_fields(),
        vec![Arc::new(starts) as ArrayRef, Arc::new(ends) as ArrayRef],
        None,
    ))
}

/// `window(ts, "10 minutes")`: a tumbling time window expression (Spark's
/// `window(ts, "10 minutes", "5 minutes")` is [`sliding_window`] here).
pub fn window(time: Expr, duration: &str) -> Expr {
    call(
        WindowKind::Time,
        vec![
            time,
            Expr::Literal(ScalarValue::Utf8(Some(duration.into())), None),
        ],
    )
}

/// `sliding_window(ts, "10 minutes", "5 minutes")`: Spark's three-argument `window`, each row in
/// every window that covers it.
pub fn sliding_window(time: Expr, duration: &str, slide: &str) -> Expr {
    call(
        WindowKind::Time,
        vec![
            time,
            Expr::Literal(ScalarValue::Utf8(Some(duration.into())), None),
            Expr::Literal(ScalarValue::Utf8(Some(slide.into())), None),
        ],
    )
}

/// `session_window(ts, "5 minutes")`.
pub fn session_window(time: Expr, gap: &str) -> Expr {
    call(
        WindowKind::Session,
        vec![
            time,
            Expr::Literal(ScalarValue::Utf8(Some(gap.into())), None),
        ],
    )
}

/// The call, named `window` / `session_window` as Spark names the column.
fn call(kind: WindowKind, args: Vec<Expr>) -> Expr {
    let udf = WindowUdf::new(kind);
    let name = udf.name().to_string();
    Expr::ScalarFunction(ScalarFunction {
        func: Arc::new(ScalarUDF::new_from_impl(udf)),
        args,
    })
    .alias(name)
}

/// Spark's `window_time(window)`: the event time of a window, `window.end − 1 µs`, so that a
/// windowed result can be windowed again (the rows an aggregation emits carry it).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowTimeUdf {
    signature: Signature,
}

impl WindowTimeUdf {
    /// The function's SQL name.
    pub const NAME: &'static str = "window_time";

    /// The function.
    pub fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl Default for WindowTimeUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for WindowTimeUdf {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types.first() {
            Some(t) if *t == window_type() => Ok(timestamp_type()),
            Some(other) => plan_err!(
                "window_time() needs a window column (the struct of window() or \
                 session_window()), got {other}"
            ),
            None => plan_err!("window_time() needs a window column"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let w = args.args[0].to_array(args.number_rows)?;
        let Some(w) = w.as_any().downcast_ref::<StructArray>() else {
            return exec_err!("window_time() needs a window column");
        };
        let ends = cast(
            w.column(1),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let Some(ends) = ends.as_any().downcast_ref::<TimestampMicrosecondArray>() else {
            return exec_err!("window_time(): the window's end is not a timestamp");
        };
        let mut times: TimestampMicrosecondArray =
            arrow::compute::kernels::arity::unary(ends, |e: i64| e.saturating_sub(1));
        if let Some(nulls) = w.nulls() {
            times = TimestampMicrosecondArray::new(
                times.values().clone(),
                arrow::buffer::NullBuffer::union(times.nulls(), Some(nulls)),
            );
        }
        Ok(ColumnarValue::Array(Arc::new(times.with_timezone("UTC"))))
    }
}

/// `window_time(col("window"))`: the event time of a window (its end − 1 µs), Spark's
/// `window_time`, to window a windowed result again.
pub fn window_time(window: Expr) -> Expr {
    Expr::ScalarFunction(ScalarFunction {
        func: Arc::new(ScalarUDF::new_from_impl(WindowTimeUdf::new())),
        args: vec![window],
    })
    .alias(WindowTimeUdf::NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_epoch_aligned_and_end_exclusive() {
        let min = 60_000_000;
        let t = WindowSpec {
            size_us: min,
            slide_us: min,
            offset_us: 0,
            kind: WindowKind::Time,
        };
        let mut v = Vec::new();
        t.windows_of(90_000_000, &mut v);
        assert_eq!(v, vec![2 * min]);
        v.clear();
        t.windows_of(min, &mut v); // exactly on a boundary: the window that starts there
        assert_eq!(v, vec![2 * min]);
        v.clear();
        t.windows_of(-1, &mut v);
        assert_eq!(v, vec![0]);
        let s = WindowSpec {
            size_us: 10 * min,
            slide_us: 5 * min,
            offset_us: 0,
            kind: WindowKind::Time,
        };
        v.clear();
        s.windows_of(7 * min, &mut v);
        assert_eq!(v, vec![10 * min, 15 * min]);
    }
}
