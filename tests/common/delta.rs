//! Reading Delta tables in the tests: with delta-rs (as sorted text rows) and with the
//! independent reader, Python `deltalake` (installed by scripts/test in a venv).

use std::path::Path;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice::connectors::delta::read_table;

/// Rows of a table as sorted `a|b|c` lines, without the columns in `skip`.
pub fn rows(path: &Path, skip: &[&str]) -> Vec<String> {
    let batches = read_table(path.to_str().expect("path")).expect("read table");
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in &batches {
        let cols: Vec<ArrayFormatter<'_>> = b
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !skip.contains(&f.name().as_str()))
            .map(|(i, _)| ArrayFormatter::try_new(b.column(i).as_ref(), &opts).expect("fmt"))
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                cols.iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out.sort();
    out
}

/// The Python with `deltalake` (SLUICE_TEST_PYTHON, or the venv scripts/test makes).
pub fn python() -> String {
    std::env::var("SLUICE_TEST_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/sluice-venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    })
}

/// Every row of the table at `path` as read by Python `deltalake`, as JSON objects
/// (timestamps as ISO-8601 text), and the table's column names.
pub fn python_rows(path: &Path) -> (Vec<String>, Vec<serde_json::Value>) {
    let script = r#"
import json, os, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1]).to_pyarrow_table()
print(json.dumps(t.schema.names))
for r in t.to_pylist():
    print(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}))
# deltalake 1.6.6 aborts at interpreter teardown about half the time: leave without it once
# the output is flushed
sys.stdout.flush()
os._exit(0)
"#;
    let o = std::process::Command::new(python())
        .args(["-c", script])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("run {} (scripts/test installs it): {e}", python()));
    assert!(
        o.status.success(),
        "python deltalake on {}: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let mut lines = text.lines();
    let names: Vec<String> =
        serde_json::from_str(lines.next().expect("column names")).expect("names json");
    let rows = lines
        .map(|l| serde_json::from_str(l).expect("row json"))
        .collect();
    (names, rows)
}
