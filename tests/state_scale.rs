//! Scale: over a million distinct live groups through the RocksDB state, with the process's
//! memory capped at 768 MiB (RLIMIT_DATA via prlimit: heap and private writable mappings): the
//! state lives in RocksDB, not in a map in memory.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use common::*;

#[test]
fn a_million_live_groups_under_768_mib() {
    let w = workdir();
    let input = w.path().join("in");
    let groups: u64 = 1_050_000;
    // 16 files of new keys, then 4 files of keys seen before (state is read back and merged)
    let per_file = groups / 16;
    let mut ranges: Vec<(u64, u64)> = (0..16)
        .map(|f| (f * per_file, (f + 1) * per_file))
        .collect();
    ranges.extend((0..4).map(|f| {
        (
            f * 3 * per_file + per_file / 2,
            f * 3 * per_file + per_file / 2 + per_file,
        )
    }));
    for (f, (from, to)) in ranges.iter().enumerate() {
        let mut body = String::with_capacity(2_000_000);
        for id in *from..*to {
            let _ = writeln!(body, "{id},{}", (id % 7) + f as u64);
        }
        put_file(&input, &format!("part-{f:02}.csv"), &body, f as u64);
    }
    let p = w.path().join("p.toml");
    fs::write(
        &p,
        "[source.events]\nformat = \"csv\"\npath = \"in\"\nschema = \"id BIGINT, v BIGINT\"\n\
         options = { maxFilesPerTrigger = 1 }\n\n\
         [query.per_id]\nsql = \"SELECT id, count(*) AS n, sum(v) AS total FROM events GROUP BY id\"\n\
         output_mode = \"update\"\ntrigger = \"available-now\"\ncheckpoint = \"chk\"\n\
         progress_log = \"progress.jsonl\"\nsink = { format = \"console\", options = { numRows = 1 } }\n",
    )
    .expect("pipeline");
    // RLIMIT_DATA: the process's heap and private writable mappings (RLIMIT_AS would also count
    // the debug binary's own mapping and every thread's reserved stack)
    let o = Command::new("prlimit")
        .arg(format!("--data={}", 768u64 << 20))
        .arg(sluice_bin())
        .arg("run")
        .arg(&p)
        .env("SLUICE_LOG", "warn")
        .env("MALLOC_ARENA_MAX", "2")
        .output()
        .expect("prlimit");
    assert!(
        o.status.success(),
        "{:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let progress: Vec<serde_json::Value> = fs::read_to_string(w.path().join("progress.jsonl"))
        .expect("progress")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(progress.len(), 20);
    let last = &progress[19]["stateOperators"][0];
    assert_eq!(last["numRowsTotal"].as_u64(), Some(16 * per_file), "{last}");
    assert!(16 * per_file >= 1_000_000);
    // the last four batches touched keys already in state: updated, not added
    for p in &progress[16..] {
        assert_eq!(
            p["stateOperators"][0]["numRowsUpdated"].as_u64(),
            Some(per_file)
        );
        assert_eq!(
            p["stateOperators"][0]["numRowsTotal"].as_u64(),
            Some(16 * per_file)
        );
    }
}
