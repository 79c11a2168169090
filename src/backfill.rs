//! Backfill progress for `sluice run --available-now`: after each batch, rows done, input left
//! in the sources (files or Kafka offsets, from their `backlog` metric), rows/s and an ETA — as
//! a redrawn progress bar when stderr is a terminal, as one plain line per batch otherwise.
//!
//! What is known and what is not: a source's backlog is counted in its own units (files,
//! offsets) after each batch; a source that cannot count it (Delta) leaves it unknown, and then
//! no percentage or ETA is shown. The total is estimated from the backlog after the first batch
//! plus the average amount a batch takes (known from the second batch on). "done" is printed
//! when the query ends, never before. Rates count from the query's start.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

use sluice_engine::progress::QueryProgress;

use crate::{QueryError, StreamingQueryListener};

/// What the progress line of one query is computed from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Input rows so far.
    pub rows: u64,
    /// Seconds since the query started.
    pub secs: f64,
    /// Batches so far.
    pub batches: u64,
    /// Backlog after the first batch (`None`: unknown).
    pub first_backlog: Option<u64>,
    /// Backlog now (`None`: some source cannot count it).
    pub backlog: Option<u64>,
    /// Whether the query has ended.
    pub done: bool,
}

/// The estimated share done (0..=1), when it can be known. Pure; table-tested.
pub fn fraction(s: &Snapshot) -> Option<f64> {
    if s.done {
        return Some(1.0);
    }
    let (first, now) = (s.first_backlog?, s.backlog?);
    if now == 0 {
        return Some(1.0);
    }
    if s.batches < 2 {
        return None;
    }
    // a batch takes (first - now) / (batches - 1) units on average; the first batch took as
    // much, so the total is first + that
    let per_batch = first.saturating_sub(now) as f64 / (s.batches - 1) as f64;
    let total = first as f64 + per_batch;
    Some(((total - now as f64) / total).clamp(0.0, 1.0))
}

/// The progress line of one query. Pure; table-tested.
pub fn line(name: &str, s: &Snapshot, tty: bool) -> String {
    let rate = if s.secs >= 0.5 {
        format!("{:.0} rows/s", s.rows as f64 / s.secs)
    } else {
        "– rows/s".to_string()
    };
    let frac = fraction(s);
    let left = match s.backlog {
        Some(b) => format!("{b} left in the sources"),
        None => "backlog unknown".to_string(),
    };
    let tail = if s.done {
        "done".to_string()
    } else {
        match (frac, s.backlog) {
            (Some(f), Some(b)) if f > 0.0 && b > 0 => {
                format!("ETA {:.0}s", s.secs * (1.0 - f) / f)
            }
            _ => "ETA ?".to_string(),
        }
    };
    let percent = match frac {
        Some(f) => format!("{:>3.0}%", f * 100.0),
        None => "  ?%".to_string(),
    };
    let bar = if tty {
        let filled = (frac.unwrap_or(0.0) * 30.0).round() as usize;
        format!(
            "[{}{}] ",
            "#".repeat(filled.min(30)),
            "-".repeat(30 - filled.min(30))
        )
    } else {
        String::new()
    };
    format!(
        "backfill {name}: {bar}{percent} {} rows, {left}, {rate}, {tail}",
        s.rows
    )
}

#[derive(Debug)]
struct Run {
    name: String,
    started: Instant,
    snap: Snapshot,
}

/// Prints backfill progress (a listener on the session).
#[derive(Debug)]
pub struct Backfill {
    tty: bool,
    runs: Mutex<BTreeMap<String, Run>>,
}

impl Default for Backfill {
    fn default() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            runs: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Backfill {
    fn print(&self, name: &str, snap: &Snapshot) {
        let text = line(name, snap, self.tty);
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            if snap.done {
                writeln!(err, "\r{text}\x1b[K")
            } else {
                write!(err, "\r{text}\x1b[K")
            }
        } else {
            writeln!(err, "{text}")
        };
        let _ = err.flush();
    }
}

impl StreamingQueryListener for Backfill {
    fn on_query_started(&self, id: &str, _run_id: &str, name: Option<&str>) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.insert(
            id.to_string(),
            Run {
                name: name.unwrap_or(id).to_string(),
                started: Instant::now(),
                snap: Snapshot::default(),
            },
        );
    }

    fn on_query_progress(&self, p: &QueryProgress) {
        // unknown as soon as one source cannot count its backlog
        let backlog: Option<u64> = p
            .sources
            .iter()
            .map(|s| s.metrics.get("backlog").and_then(|b| b.parse::<u64>().ok()))
            .sum();
        let (name, snap) = {
            let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
            let r = runs.entry(p.id.clone()).or_insert_with(|| Run {
                name: p.name.clone().unwrap_or_else(|| p.id.clone()),
                started: Instant::now(),
                snap: Snapshot::default(),
            });
            r.snap.rows += p.num_input_rows;
            r.snap.batches += 1;
            if r.snap.batches == 1 {
                r.snap.first_backlog = backlog;
            }
            r.snap.backlog = backlog;
            r.snap.secs = r.started.elapsed().as_secs_f64();
            (r.name.clone(), r.snap.clone())
        };
        self.print(&name, &snap);
    }

    fn on_query_terminated(&self, id: &str, _run_id: &str, error: Option<&QueryError>) {
        let run = self
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let (Some(mut r), None) = (run, error) {
            r.snap.done = true;
            r.snap.secs = r.started.elapsed().as_secs_f64();
            self.print(&r.name, &r.snap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(rows: u64, secs: f64, batches: u64, first: Option<u64>, now: Option<u64>) -> Snapshot {
        Snapshot {
            rows,
            secs,
            batches,
            first_backlog: first,
            backlog: now,
            done: false,
        }
    }

    #[test]
    fn fractions() {
        // (snapshot, expected)
        let table = [
            (snap(10, 1.0, 1, Some(9), Some(9)), None),
            // 9 left after batch 1, 6 after batch 2: 3 per batch, 12 in all, 6 done
            (snap(20, 2.0, 2, Some(9), Some(6)), Some(0.5)),
            (snap(30, 3.0, 3, Some(9), Some(0)), Some(1.0)),
            // a source that cannot count its backlog (Delta): never a percentage
            (snap(30, 3.0, 3, None, None), None),
            (snap(30, 3.0, 3, Some(4), None), None),
        ];
        for (s, want) in table {
            assert_eq!(fraction(&s), want, "{s:?}");
        }
        let done = Snapshot {
            done: true,
            ..snap(1, 1.0, 1, Some(3), Some(3))
        };
        assert_eq!(fraction(&done), Some(1.0));
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            line("q", &snap(1000, 2.0, 2, Some(10), Some(5)), false),
            "backfill q:  67% 1000 rows, 5 left in the sources, 500 rows/s, ETA 1s"
        );
        // the first batch after a few milliseconds: no absurd rate, no percentage yet
        assert_eq!(
            line("q", &snap(2000, 0.003, 1, Some(4), Some(4)), false),
            "backfill q:   ?% 2000 rows, 4 left in the sources, – rows/s, ETA ?"
        );
        // a Delta source: backlog unknown, never "100% ... done" before the end
        let l = line("q", &snap(10, 1.0, 3, None, None), false);
        assert_eq!(
            l,
            "backfill q:   ?% 10 rows, backlog unknown, 10 rows/s, ETA ?"
        );
        let end = Snapshot {
            done: true,
            ..snap(10, 1.0, 3, None, None)
        };
        assert!(line("q", &end, true).contains("[##############################] 100%"));
        assert!(line("q", &end, false).ends_with("done"));
    }
}
