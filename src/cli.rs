//! The operator commands of the `sluice` binary: `validate` (parse and plan a pipeline file
//! without running it) and `checkpoint inspect` / `checkpoint state` (read a checkpoint without
//! changing it).

use std::fmt::Write as _;
use std::path::Path;

use sluice_state::{
    state_partition_dirs, state_partitions_found, CheckpointDir, CommitEntry, OffsetsEntry,
    ReadOnlyStore, VersionedLog,
};

use crate::pipeline::Pipeline;
use crate::{EngineError, Result};

/// `sluice graph`: the pipeline's queries as a graph of tables, stage by stage (what each
/// reads, what it writes), without running or creating anything.
pub fn graph(path: &Path) -> Result<String> {
    let (pipeline, _) = Pipeline::load(path)?;
    let session = pipeline.session("sluice-graph")?;
    pipeline.render_graph(&session)
}

/// `sluice validate`: parses the file, registers its sources (schemas, options, paths), plans
/// every query (SQL, output mode, sink options), asks each source's and sink's system whether
/// it answers (and whether an existing JDBC table has the key an upsert needs), without running
/// or creating anything: no checkpoint, output directory, progress log or table. Returns the
/// report to print.
pub fn validate(path: &Path) -> Result<String> {
    let (pipeline, base) = Pipeline::load(path)?;
    let session = pipeline.validate_session("sluice-validate")?;
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
        for e in &q.expectations {
            let _ = writeln!(
                out,
                "  expectation {}: {} (on violation: {})",
                e.name,
                e.condition,
                e.on_violation.as_deref().unwrap_or("warn")
            );
        }
        if let Some(qs) = &q.quarantine {
            let _ = writeln!(
                out,
                "  quarantine: {} {}",
                qs.format,
                qs.path.as_deref().unwrap_or("")
            );
        }
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

/// The stateful operators of the checkpoint at `dir`, each with its partition stores' directories
/// (as the state crate lays them out).
fn operators(dir: &Path) -> Result<Vec<(usize, Vec<std::path::PathBuf>)>> {
    // the count the offsets log records (a missing store then shows as one that cannot be
    // opened), else the stores found
    let recorded = CheckpointDir::open(dir)?
        .recorded_conf(sluice_engine::exec::state::SHUFFLE_PARTITIONS_CONF)?
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0);
    let mut out = Vec::new();
    for (op, found) in state_partitions_found(dir)? {
        // (a checkpoint from before partitioning records none: its one store is found)
        let n = recorded.unwrap_or(found).max(1);
        out.push((op, state_partition_dirs(dir, op, n)?));
    }
    Ok(out)
}

/// `sluice checkpoint inspect` of a query run as tasks (`sluice run --group`): the layout, then
/// every task's owner (its newest epoch) and its own checkpoint's position.
fn inspect_group(dir: &Path) -> Result<String> {
    let g =
        sluice_state::remote::GroupCheckpoint::open(&dir.to_string_lossy(), &Default::default())?;
    let layout = g.layout()?.ok_or_else(|| not_a_checkpoint(dir))?;
    let mut out = String::new();
    let _ = writeln!(out, "checkpoint   {} (a query run as tasks)", dir.display());
    let _ = writeln!(out, "query id     {}", layout.id);
    let _ = writeln!(
        out,
        "tasks        {} (partition t of {} is task t)",
        layout.tasks,
        layout.topics.join(", ")
    );
    for t in 0..layout.tasks {
        let _ = writeln!(out);
        let owner = match g.epochs(t)?.pop() {
            None => "never taken".to_string(),
            Some((e, Some(o))) => {
                format!("epoch {e}, taken by {} at {}", o.owner, ms_text(o.taken_ms))
            }
            Some((e, None)) => format!("epoch {e}"),
        };
        let _ = writeln!(out, "task {t}       {owner}");
        let task_dir = dir.join("tasks").join(t.to_string());
        if task_dir.join("metadata").is_file() {
            for line in inspect(&task_dir)?.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    Ok(out)
}

/// `sluice checkpoint inspect`: query id, last batch and whether it is committed, offsets per
/// source, watermark, state per operator.
pub fn inspect(dir: &Path) -> Result<String> {
    if dir.join("tasks").join("_layout").is_file() {
        return inspect_group(dir);
    }
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
    let ops = operators(dir)?;
    if !ops.is_empty() {
        let _ = writeln!(out, "state");
    }
    for (i, parts) in ops {
        let size: u64 = parts.iter().map(|p| dir_size(p)).sum();
        let (mut rows, mut batches, mut errors) = (0u64, Vec::new(), Vec::new());
        for (p, d) in parts.iter().enumerate() {
            match ReadOnlyStore::open(d) {
                Ok(s) => {
                    rows += s.rows_total();
                    batches.push(s.committed_batch());
                }
                Err(e) => errors.push(format!("partition {p}: {e}")),
            }
        }
        batches.dedup();
        let at = match batches.as_slice() {
            [one] => one.map_or("none".to_string(), |b| b.to_string()),
            many => format!(
                "{} (partitions differ: the next start re-runs the batch in those behind)",
                many.iter()
                    .map(|b| b.map_or("none".to_string(), |b| b.to_string()))
                    .collect::<Vec<_>>()
                    .join("/")
            ),
        };
        let _ = writeln!(
            out,
            "  operator {i}: {} partition(s), {rows} rows, {size} bytes on disk, at batch {at}",
            parts.len()
        );
        for e in errors {
            let _ = writeln!(out, "    cannot open {e}");
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
    let ops = operators(dir)?;
    let Some((_, parts)) = ops.iter().find(|(i, _)| *i == operator) else {
        let have: Vec<String> = ops.iter().map(|(i, _)| i.to_string()).collect();
        return Err(EngineError::user(format!(
            "{} has no state operator {operator} (operators: {})",
            dir.display(),
            if have.is_empty() {
                "none".into()
            } else {
                have.join(", ")
            }
        )));
    };
    let stores = parts
        .iter()
        .map(|d| ReadOnlyStore::open(d))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let hex = |b: &[u8]| {
        let mut s: String = b.iter().take(48).map(|x| format!("{x:02x}")).collect();
        if b.len() > 48 {
            s.push('…');
        }
        s
    };
    let rows: u64 = stores.iter().map(ReadOnlyStore::rows_total).sum();
    let mut at: Vec<String> = stores
        .iter()
        .map(|s| s.committed_batch().map_or("none".into(), |b| b.to_string()))
        .collect();
    at.dedup();
    let mut out = format!(
        "operator {operator}: {rows} rows in {} partition(s) at batch {}\n{:<4} | {:>4} | {:<98} | {:>5} | value\n",
        stores.len(),
        at.join("/"),
        "#",
        "part",
        "key (hex)",
        "bytes"
    );
    let mut n = 0usize;
    for (p, store) in stores.iter().enumerate() {
        store.scan(&mut |k: &[u8], v: &[u8]| {
            if n >= limit {
                return false;
            }
            let _ = writeln!(
                out,
                "{n:<4} | {p:>4} | {:<98} | {:>5} | {}",
                hex(k),
                v.len(),
                hex(v)
            );
            n += 1;
            true
        })?;
    }
    if n == limit {
        let _ = writeln!(out, "(first {limit} rows; --limit N for more)");
    }
    Ok(out)
}
