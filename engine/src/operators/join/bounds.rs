//! How long a stream-stream join keeps each side's rows: the state watermarks Spark derives from
//! the join condition (`StreamingJoinHelper.getStateValueWatermark`), as a pure function of the
//! condition's time terms.
//!
//! A term compares an event-time column of one side with one of the other side, each plus a
//! constant (`c.t <= i.t + INTERVAL 1 HOUR`, `c.t BETWEEN i.t AND i.t + ...`). Written as a
//! bound on `d = right.t − left.t`:
//! - an upper bound `d <= k` means a left row can only match right rows up to `k` after it: once
//!   the watermark `W` passes `left.t + k`, no future right row (they are all after `W`) can
//!   match it, so the left state watermark is `W − k`;
//! - a lower bound `d >= k` gives the right state watermark `W + k`.
//!
//! A non-strict bound (`<=`, `>=`) subtracts 1 ms (Spark's rule); rows whose time is at or below
//! their side's state watermark are evicted. With several bounds the tightest (latest) wins.

/// A bound on `d = right time − left time`, µs: `d <= k` (upper) or `d >= k` (lower), strict or
/// not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBound {
    /// `true`: `d <= k` / `d < k`; `false`: `d >= k` / `d > k`.
    pub upper: bool,
    /// `k`, µs.
    pub k_us: i64,
    /// `<` or `>`.
    pub strict: bool,
}

/// Spark's 1 ms for a non-strict bound, in µs.
const NON_STRICT_US: i64 = 1000;

/// The offset of each side's state watermark from the input watermark `W`, µs (`W + offset`):
/// `(left, right)`, `None` where no bound limits that side (its rows are kept forever).
pub fn state_watermark_offsets(bounds: &[TimeBound]) -> (Option<i64>, Option<i64>) {
    let mut left: Option<i64> = None;
    let mut right: Option<i64> = None;
    for b in bounds {
        let adjust = if b.strict { 0 } else { NON_STRICT_US };
        if b.upper {
            let off = -b.k_us - adjust;
            left = Some(left.map_or(off, |o| o.max(off)));
        } else {
            let off = b.k_us - adjust;
            right = Some(right.map_or(off, |o| o.max(off)));
        }
    }
    (left, right)
}

/// A comparison `a op b` of two linear terms, each `Some(side)` column (0 = left, 1 = right)
/// plus a constant µs, as a bound on `d = right − left`; `None` when it is not one (both terms
/// on one side, or a constant). `op`: `<`, `<=`, `>`, `>=`.
pub fn bound_of(a: (usize, i64), op: &str, b: (usize, i64)) -> Option<TimeBound> {
    let (strict, less) = match op {
        "<" => (true, true),
        "<=" => (false, true),
        ">" => (true, false),
        ">=" => (false, false),
        _ => return None,
    };
    match (a.0, b.0) {
        // right + ca op left + cb  ⇒  d op cb − ca
        (1, 0) => Some(TimeBound {
            upper: less,
            k_us: b.1 - a.1,
            strict,
        }),
        // left + ca op right + cb  ⇒  −d op cb − ca  ⇒  d op' ca − cb
        (0, 1) => Some(TimeBound {
            upper: !less,
            k_us: a.1 - b.1,
            strict,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000;

    #[test]
    fn state_watermarks_from_time_terms() {
        // (terms as (a, op, b), expected (left, right) offsets)
        #[allow(clippy::type_complexity)]
        let table: &[(
            &[((usize, i64), &str, (usize, i64))],
            (Option<i64>, Option<i64>),
        )] = &[
            // the golden's c.t >= i.t AND c.t <= i.t + 1h: impressions kept 1 h + 1 ms
            // behind W, clicks 1 ms
            (
                &[((1, 0), ">=", (0, 0)), ((1, 0), "<=", (0, H))],
                (Some(-H - 1000), Some(-1000)),
            ),
            // the same written from the left: i.t <= c.t AND i.t + 1h >= c.t
            (
                &[((0, 0), "<=", (1, 0)), ((0, H), ">=", (1, 0))],
                (Some(-H - 1000), Some(-1000)),
            ),
            // strict bounds: no millisecond
            (
                &[((1, 0), ">", (0, 0)), ((1, 0), "<", (0, H))],
                (Some(-H), Some(0)),
            ),
            // only an upper bound: the right side is unbounded
            (&[((1, 0), "<=", (0, H))], (Some(-H - 1000), None)),
            // a lower bound after the left event: c.t >= i.t + 10 min
            (&[((1, 0), ">=", (0, H / 6))], (None, Some(H / 6 - 1000))),
            // two upper bounds: the tighter wins
            (
                &[((1, 0), "<=", (0, H)), ((1, 0), "<=", (0, 2 * H))],
                (Some(-H - 1000), None),
            ),
            // both terms on one side: no bound
            (&[((0, 0), "<=", (0, H))], (None, None)),
            (&[], (None, None)),
        ];
        for (terms, want) in table {
            let bounds: Vec<TimeBound> = terms
                .iter()
                .filter_map(|(a, op, b)| bound_of(*a, op, *b))
                .collect();
            assert_eq!(state_watermark_offsets(&bounds), *want, "{terms:?}");
        }
    }
}
