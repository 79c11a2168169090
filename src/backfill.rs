//! Backfill progress for `sluice run --available-now`: after each batch, rows done, input left
//! in the sources (files or Kafka offsets, from their `backlog` metric), rows/s and an ETA —
//! as a redrawn progress bar when stderr is a terminal, as one plain line per batch otherwise.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

use sluice_engine::progress::QueryProgress;

use crate::StreamingQueryListener;

#[derive(Debug)]
struct Run {
    started: Instant,
    rows: u64,
    first_backlog: Option<u64>,
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

/// The progress line of one query. Pure; unit-tested.
pub fn line(
    name: &str,
    rows: u64,
    secs: f64,
    first_backlog: u64,
    backlog: u64,
    tty: bool,
) -> String {
    let rate = if secs > 0.0 { rows as f64 / secs } else { 0.0 };
    let done = first_backlog.saturating_sub(backlog);
    let fraction = if first_backlog == 0 {
        1.0
    } else {
        done as f64 / first_backlog as f64
    };
    let eta = if backlog == 0 {
        "done".to_string()
    } else if done > 0 && secs > 0.0 {
        format!("ETA {:.0}s", backlog as f64 * secs / done as f64)
    } else {
        "ETA ?".to_string()
    };
    let bar = if tty {
        let filled = (fraction * 30.0).round() as usize;
        format!(
            "[{}{}] ",
            "#".repeat(filled.min(30)),
            "-".repeat(30 - filled.min(30))
        )
    } else {
        String::new()
    };
    format!(
        "backfill {name}: {bar}{:>3.0}% {rows} rows, {backlog} left in the sources, {rate:.0} rows/s, {eta}",
        fraction * 100.0
    )
}

impl StreamingQueryListener for Backfill {
    fn on_query_progress(&self, p: &QueryProgress) {
        let backlog: u64 = p
            .sources
            .iter()
            .filter_map(|s| s.metrics.get("backlog").and_then(|b| b.parse::<u64>().ok()))
            .sum();
        let name = p.name.clone().unwrap_or_else(|| p.id.clone());
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let r = runs.entry(name.clone()).or_insert_with(|| Run {
            started: Instant::now(),
            rows: 0,
            first_backlog: None,
        });
        r.rows += p.num_input_rows;
        let first = *r.first_backlog.get_or_insert(backlog + 1);
        let text = line(
            &name,
            r.rows,
            r.started.elapsed().as_secs_f64(),
            first,
            backlog,
            self.tty,
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r{text}\x1b[K")
        } else {
            writeln!(err, "{text}")
        };
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::line;

    #[test]
    fn progress_lines() {
        assert_eq!(
            line("q", 1000, 2.0, 10, 5, false),
            "backfill q:  50% 1000 rows, 5 left in the sources, 500 rows/s, ETA 2s"
        );
        assert!(line("q", 10, 1.0, 10, 0, true).contains("[##############################] 100%"));
        assert!(line("q", 10, 1.0, 10, 0, false).ends_with("done"));
        assert!(line("q", 0, 0.0, 4, 4, false).ends_with("ETA ?"));
    }
}
