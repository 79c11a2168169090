//! One retry policy for everything that waits and tries again after an external failure: a
//! source that cannot be reached, a sink (or late-data sink) whose write failed, and the daemon
//! restarting a query that failed on an external error.
//!
//! [`RetryPolicy`] is the only policy type; a query builds its policy once when it is prepared
//! (session settings, then the writer's `sinkMaxRetries` / `sinkRetryBackoff`) and every loop of
//! that query uses it through [`retry`]. The wait a log line announces is the wait that happens:
//! [`wait_for`] sleeps the whole backoff and returns early only when the query is stopped (a
//! wake-up meant for the trigger, such as a new file, does not cut it short).

use std::time::{Duration, Instant};

use crate::connector::Notifier;
use crate::error::{ErrorKind, Result};

/// Session setting: the first wait after a failure (a duration, e.g. `"200 milliseconds"`).
pub const INITIAL_BACKOFF_CONF: &str = "sluice.retry.initialBackoff";
/// Session setting: the longest wait (the backoff doubles up to it).
pub const MAX_BACKOFF_CONF: &str = "sluice.retry.maxBackoff";
/// Session setting: retries after the first attempt before a sink failure fails the query.
pub const MAX_RETRIES_CONF: &str = "sluice.retry.maxRetries";

/// How long to wait before each retry and when to give up: the wait before retry `n` (1-based)
/// is `initial_backoff * 2^(n-1)`, at most `max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before the first retry.
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
    /// Retries after the first attempt before giving up (`None`: never give up, as for a
    /// source, which makes the query wait until its system is back).
    pub max_retries: Option<u32>,
}

impl Default for RetryPolicy {
    /// The sink's policy: 200 ms doubling to 30 s, 10 retries.
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            max_retries: Some(10),
        }
    }
}

impl RetryPolicy {
    /// The daemon's policy for restarting a query that failed on an external error:
    /// 1 s doubling to 5 minutes, forever.
    pub const QUERY_RESTART: RetryPolicy = RetryPolicy {
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(300),
        max_retries: None,
    };

    /// The same policy without a retry limit (sources: a query waits for its source).
    pub fn unbounded(self) -> Self {
        Self {
            max_retries: None,
            ..self
        }
    }

    /// The wait before retry `attempt` (1 = the first retry). Pure; table-tested.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        self.initial_backoff
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// Whether a failure after `attempt` retries may be retried once more.
    pub fn may_retry(&self, attempt: u32) -> bool {
        self.max_retries.is_none_or(|m| attempt < m)
    }
}

/// Waits `wait` in full unless `stopped()` becomes true (checked whenever `notifier` wakes the
/// waiter, which `stop()` does). Returns false when stopped. A wake-up that is not a stop does
/// not end the wait; the wake-up it carried is given back to the notifier afterwards, so a
/// trigger waiting for new data still sees it.
pub fn wait_for(notifier: &Notifier, wait: Duration, stopped: &dyn Fn() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    let mut woken = false;
    loop {
        if stopped() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        woken |= notifier.wait(Some(deadline - now));
    }
    if woken {
        notifier.notify();
    }
    true
}

/// What one retry loop reports before each wait.
pub struct Attempt<'a> {
    /// The retry about to happen (1 = the first).
    pub attempt: u32,
    /// How long the failed call took (a connection timeout can make it long: the log says
    /// so, so that the wait announced is the wait that follows it).
    pub took: Duration,
    /// How long it waits first.
    pub wait: Duration,
    /// The failure that caused it.
    pub error: &'a crate::error::EngineError,
}

/// Calls `f` until it succeeds, fails with an error that is not External, the policy gives up,
/// or the query is stopped (the last error is returned then). Before each wait `on_retry` is
/// told the attempt (to log it and set the query's status), then [`wait_for`] waits it in full.
pub fn retry<T>(
    policy: &RetryPolicy,
    notifier: &Notifier,
    stopped: &dyn Fn() -> bool,
    mut on_retry: impl FnMut(&Attempt<'_>),
    mut f: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        match f() {
            Ok(v) => return Ok(v),
            Err(e)
                if e.kind() == ErrorKind::External
                    && !e.is_fenced()
                    && policy.may_retry(attempt)
                    && !stopped() =>
            {
                attempt += 1;
                let wait = policy.backoff(attempt);
                on_retry(&Attempt {
                    attempt,
                    took: started.elapsed(),
                    wait,
                    error: &e,
                });
                if !wait_for(notifier, wait, stopped) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EngineError;
    use std::cell::Cell;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let q = RetryPolicy::QUERY_RESTART;
        // (policy, attempt, expected wait)
        let table: &[(&RetryPolicy, u32, Duration)] = &[
            (&p, 0, Duration::from_millis(200)),
            (&p, 1, Duration::from_millis(200)),
            (&p, 2, Duration::from_millis(400)),
            (&p, 8, Duration::from_millis(25_600)),
            (&p, 9, Duration::from_secs(30)),
            (&p, 1000, Duration::from_secs(30)),
            (&q, 1, Duration::from_secs(1)),
            (&q, 2, Duration::from_secs(2)),
            (&q, 5, Duration::from_secs(16)),
            (&q, 9, Duration::from_secs(256)),
            (&q, 10, Duration::from_secs(300)),
            (&q, 40, Duration::from_secs(300)),
            (&q, u32::MAX, Duration::from_secs(300)),
        ];
        for (policy, attempt, want) in table {
            assert_eq!(policy.backoff(*attempt), *want, "attempt {attempt}");
        }
    }

    #[test]
    fn gives_up_after_max_retries_only_when_bounded() {
        let p = RetryPolicy {
            max_retries: Some(2),
            ..RetryPolicy::default()
        };
        assert!(p.may_retry(0) && p.may_retry(1) && !p.may_retry(2));
        assert!(p.unbounded().may_retry(u32::MAX - 1));
    }

    fn fast(max_retries: Option<u32>) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            max_retries,
        }
    }

    #[test]
    fn retries_external_errors_and_reports_each_attempt() {
        let calls = Cell::new(0);
        let mut seen = Vec::new();
        let r = retry(
            &fast(Some(5)),
            &Notifier::new(),
            &|| false,
            |a| seen.push((a.attempt, a.wait)),
            || {
                calls.set(calls.get() + 1);
                if calls.get() < 3 {
                    Err(EngineError::external("down"))
                } else {
                    Ok(calls.get())
                }
            },
        );
        assert_eq!(r.expect("third call succeeds"), 3);
        assert_eq!(
            seen,
            vec![(1, Duration::from_millis(1)), (2, Duration::from_millis(2))]
        );
    }

    /// A failed call that took long (a connection timeout) is reported with how long it took,
    /// so that the log's "retrying in 200ms" is not read as the whole wait.
    #[test]
    fn each_attempt_reports_how_long_the_failed_call_took() {
        let mut took = Vec::new();
        let calls = Cell::new(0);
        let _ = retry(
            &fast(Some(1)),
            &Notifier::new(),
            &|| false,
            |a| took.push(a.took),
            || {
                calls.set(calls.get() + 1);
                // the first call stands for a connect that times out
                if calls.get() == 1 {
                    std::thread::sleep(Duration::from_millis(30));
                }
                Err::<(), _>(EngineError::external("down"))
            },
        );
        assert_eq!(took.len(), 1);
        assert!(took[0] >= Duration::from_millis(30), "{took:?}");
    }

    #[test]
    fn user_errors_and_exhausted_retries_fail() {
        let calls = Cell::new(0);
        let r: Result<()> = retry(
            &fast(Some(5)),
            &Notifier::new(),
            &|| false,
            |_| {},
            || {
                calls.set(calls.get() + 1);
                Err(EngineError::user("bad"))
            },
        );
        assert!(r.is_err());
        assert_eq!(calls.get(), 1, "a user error is not retried");
        calls.set(0);
        let r: Result<()> = retry(
            &fast(Some(2)),
            &Notifier::new(),
            &|| false,
            |_| {},
            || {
                calls.set(calls.get() + 1);
                Err(EngineError::external("down"))
            },
        );
        assert!(r.is_err());
        assert_eq!(calls.get(), 3, "the first attempt and two retries");
    }

    #[test]
    fn a_wake_up_does_not_cut_the_wait_short_but_a_stop_does() {
        let n = Notifier::new();
        let n2 = n.clone();
        let t = std::thread::spawn(move || {
            for _ in 0..20 {
                n2.notify();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let start = Instant::now();
        assert!(wait_for(&n, Duration::from_millis(300), &|| false));
        assert!(start.elapsed() >= Duration::from_millis(300));
        t.join().expect("notifier thread");
        assert!(n.wait(Some(Duration::ZERO)), "the wake-up is given back");

        let stop = std::sync::atomic::AtomicBool::new(false);
        let n3 = n.clone();
        let start = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                n3.notify();
            });
            assert!(!wait_for(&n, Duration::from_secs(30), &|| stop
                .load(std::sync::atomic::Ordering::SeqCst)));
        });
        assert!(start.elapsed() < Duration::from_secs(30));
    }
}
