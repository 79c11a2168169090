//! The operator commands of the `sluice` binary: `validate` (parse and plan a pipeline file
//! without running it) and `checkpoint inspect` / `checkpoint state` (read a checkpoint without
//! changing it).

use std::fmt::Write as _;
use std::path::Path;

use sluice_state::{
    CheckpointDir, CommitEntry, OffsetsEntry, RocksStateStore, StateStore, VersionedLog,
};

use crate::pipeline::Pipeline;
use crate::{EngineError, Result, Session};

/// `sluice validate`: parses the file, registers its sources (schemas, options, paths), plans
/// every query (SQL, output mode, sink options), asks each source's and sink's system whether
/// it answers (and whether an existing JDBC table has the key an upsert needs), without running
/// or creating anything: no checkpoint, output directory, progress log or table. Returns the
/// report to print.
pub fn validate(path: &Path) -> Result<String> {
    let (pipeline, base) = Pipeline::load(path)?;
    let session = Session::builder().app_name("sluice-validate").build()?;
    let checked = pipeline.validate(&session, &base, true)?;
    let mut out = String::new();
    let _ = writeln!(out, "{}: OK", path.display());
    for (name, s) in &pipeline.source {
        let _ = writeln!(
            out,
            "source {name}: {} {}{}",
            s.format,
            s.path.as_deref().unwrap_or(""),
            s.watermark
                .as_ref()
                .map(|w| format!(" (watermark {} - {})", w.column, w.delay))
                .unwrap_or_default()
        );
    }
    for (name, c) in &checked {
        let q = &pipeline.query[name];
        let df = session.sql(&q.sql)?;
        let _ = writeln!(
            out,
            "query {name} ({}): {} mode into {}, trigger {}\n  guarantee: {} ({})\n{}",
            match &c.id {
                Some(id) => format!("id {id}, checkpoint {}", c.checkpoint.display()),
                None => format!(
                    "new: checkpoint {} is created at start",
                    c.checkpoint.display()
                ),
            },
            q.output_mode.as_deref().unwrap_or("append"),
            q.sink.format,
            q.trigger.as_deref().unwrap_or("as soon as data arrives"),
            c.guarantee.0,
            c.guarantee.1,
            df.logical_plan().display_indent()
        );
    }
    Ok(out)
}

fn not_a_checkpoint(dir: &Path) -> EngineError {
    if !dir.exists() {
        EngineError::user(format!("{} does not exist", dir.display()))
    } else if !dir.is_dir() {
        EngineError::user(format!(
            "{} is a file, not a checkpoint directory",
            dir.display()
        ))
    } else {
        EngineError::user(format!(
            "{} is not a Sluice checkpoint (no `metadata` file)",
            dir.display()
        ))
    }
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn ms_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// The state operator directories of a checkpoint: (operator index, path).
fn operators(dir: &Path) -> Vec<(usize, std::path::PathBuf)> {
    let mut v: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(dir.join("state"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<usize>()
                        .ok()
                        .map(|i| (i, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `sluice checkpoint inspect`: query id, last batch and whether it is committed, offsets per
/// source, watermark, state per operator.
pub fn inspect(dir: &Path) -> Result<String> {
    if !dir.join("metadata").is_file() {
        return Err(not_a_checkpoint(dir));
    }
    let chk = CheckpointDir::open(dir)?;
    let offsets: &VersionedLog<OffsetsEntry> = chk.offsets();
    let commits: &VersionedLog<CommitEntry> = chk.commits();
    let last_offsets = offsets.latest()?;
    let last_commit = commits.latest()?;
    let mut out = String::new();
    let _ = writeln!(out, "checkpoint   {}", dir.display());
    let _ = writeln!(out, "query id     {}", chk.query_id());
    match &last_offsets {
        None => {
            let _ = writeln!(out, "last batch   none (the query has not run a batch)");
        }
        Some((id, e)) => {
            let committed = last_commit.as_ref().is_some_and(|(c, _)| c == id);
            let _ = writeln!(
                out,
                "last batch   {id} ({})",
                if committed {
                    "committed".to_string()
                } else {
                    format!(
                        "NOT committed: the next start re-runs batch {id} with the same offsets"
                    )
                }
            );
            let _ = writeln!(out, "batch time   {}", ms_text(e.batch_timestamp_ms));
            let watermark = last_commit
                .as_ref()
                .map(|(_, c)| c.next_watermark_ms)
                .unwrap_or(e.watermark_ms);
            let _ = writeln!(
                out,
                "watermark    {}",
                if watermark > 0 {
                    ms_text(watermark)
                } else {
                    "none".into()
                }
            );
            let _ = writeln!(out, "sources");
            for (i, s) in e.sources.iter().enumerate() {
                let _ = writeln!(out, "  {i}: {s}");
            }
        }
    }
    let ops = operators(dir);
    if !ops.is_empty() {
        let _ = writeln!(out, "state");
    }
    for (i, p) in ops {
        let size = dir_size(&p);
        match RocksStateStore::open(&p) {
            Ok(s) => {
                let _ = writeln!(
                    out,
                    "  operator {i}: {} rows, {size} bytes on disk, at batch {}",
                    s.rows_total(),
                    s.committed_batch()
                        .map_or("none".to_string(), |b| b.to_string())
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "  operator {i}: {size} bytes on disk; cannot open: {e}"
                );
            }
        }
    }
    Ok(out)
}

/// `sluice checkpoint state --operator N`: the state rows (keys and values as hex, as stored:
/// window end ++ arrow row-format keys, arrow row-format accumulator states), at most `limit`.
pub fn state_rows(dir: &Path, operator: usize, limit: usize) -> Result<String> {
    if !dir.join("metadata").is_file() {
        return Err(not_a_checkpoint(dir));
    }
    let p = dir.join("state").join(operator.to_string());
    if !p.is_dir() {
        let have: Vec<String> = operators(dir).iter().map(|(i, _)| i.to_string()).collect();
        return Err(EngineError::user(format!(
            "{} has no state operator {operator} (operators: {})",
            dir.display(),
            if have.is_empty() {
                "none".into()
            } else {
                have.join(", ")
            }
        )));
    }
    let store = RocksStateStore::open(&p)?;
    let hex = |b: &[u8]| {
        let mut s: String = b.iter().take(48).map(|x| format!("{x:02x}")).collect();
        if b.len() > 48 {
            s.push('…');
        }
        s
    };
    let mut out = format!(
        "operator {operator}: {} rows at batch {}\n{:<4} | {:<98} | {:>5} | value\n",
        store.rows_total(),
        store
            .committed_batch()
            .map_or("none".into(), |b| b.to_string()),
        "#",
        "key (hex)",
        "bytes"
    );
    let mut n = 0usize;
    store.scan(&[], None, &mut |k: &[u8], v: &[u8]| {
        if n >= limit {
            return Ok(false);
        }
        let _ = writeln!(out, "{n:<4} | {:<98} | {:>5} | {}", hex(k), v.len(), hex(v));
        n += 1;
        Ok(true)
    })?;
    if n == limit {
        let _ = writeln!(out, "(first {limit} rows; --limit N for more)");
    }
    Ok(out)
}
