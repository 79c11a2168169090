//! The repository as a newcomer meets it: it stands alone (nothing reads the shared folder
//! beside it, or another path outside it), the README is ordered for a first hour (what it is, the two set-up
//! commands, the binary's install command, the pipeline file, the Rust API, the internals last)
//! and documents the feature flags and timestamp forms; the quickstart prints its windowed
//! results; a build without the default features has none of the heavy connectors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo_dir;

/// Every text file of the repository that code or documentation lives in.
fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".git" || name == "target" || name == "testdata" {
            continue;
        }
        if p.is_dir() {
            text_files(&p, out);
        } else if let Some(ext) = p.extension().and_then(|x| x.to_str()) {
            if ["rs", "toml", "md", "sh", "py", "html"].contains(&ext) {
                out.push(p);
            }
        } else if p.starts_with(repo_dir().join("scripts")) || p.starts_with(repo_dir().join(".ci"))
        {
            out.push(p);
        }
    }
}

#[test]
fn nothing_reads_outside_the_repository() {
    let mut files = Vec::new();
    text_files(&repo_dir(), &mut files);
    assert!(files.len() > 50, "found the sources: {}", files.len());
    let needle = ["..", "/shared"].concat();
    let offenders: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).ok()?;
            text.contains(&needle).then(|| f.display().to_string())
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "these files point outside the repository: {offenders:?}"
    );
    // what the tests and benches read from outside before is in testdata/
    for p in [
        "testdata/golden/spark-window/main/append_final.csv",
        "testdata/golden/spark-window/gen_events.py",
        "testdata/golden/spark-window/README.md",
        "testdata/bench/spark/gen_events.py",
        "testdata/bench/spark/spark_window_agg.py",
    ] {
        assert!(repo_dir().join(p).is_file(), "{p} is in the repository");
    }
}

fn readme() -> String {
    std::fs::read_to_string(repo_dir().join("README.md")).expect("README.md")
}

/// The `## ` headings of the README, in order.
fn headings(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("## "))
        .map(|l| l[3..].trim().to_string())
        .collect()
}

fn position(h: &[String], prefix: &str) -> usize {
    h.iter()
        .position(|x| x.starts_with(prefix))
        .unwrap_or_else(|| panic!("README has no '## {prefix}…' section; it has {h:?}"))
}

/// The text of the section whose heading starts with `prefix`.
fn section(text: &str, prefix: &str) -> String {
    let start = text
        .find(&format!("\n## {prefix}"))
        .unwrap_or_else(|| panic!("no section {prefix}"));
    let rest = &text[start + 4..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_string()
}

#[test]
fn the_readme_is_ordered_for_a_newcomer() {
    let text = readme();
    let h = headings(&text);
    let order = [
        position(&h, "Set up"),
        position(&h, "Install the binary"),
        position(&h, "The pipeline file"),
        position(&h, "The Rust API"),
        position(&h, "Internals"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "sections out of order: {h:?}"
    );
    assert_eq!(
        order[4],
        h.len() - 1,
        "the internals come last (after them only nothing): {h:?}"
    );
    // the set-up section gives exactly two commands, and they exist
    let setup = section(&text, "Set up");
    let commands: Vec<&str> = setup
        .lines()
        .filter(|l| l.starts_with("    "))
        .map(str::trim)
        .collect();
    assert_eq!(commands, ["scripts/quickstart", "scripts/test"], "{setup}");
    for c in &commands {
        let p = repo_dir().join(c);
        assert!(p.is_file(), "{c} exists");
    }
    // the binary's install command, which exists and installs the sluice binary
    let install = section(&text, "Install the binary");
    assert!(install.contains("    scripts/install"), "{install}");
    let script = std::fs::read_to_string(repo_dir().join("scripts/install")).expect("install");
    assert!(script.contains("cargo install"), "{script}");
    assert!(script.contains("--bin sluice"), "{script}");
    // what a newcomer looks up
    for (what, needle) in [
        ("feature flags", "--no-default-features"),
        ("feature flags", "`kafka`"),
        ("feature flags", "`delta`"),
        ("feature flags", "`jdbc`"),
        ("cold-build times", "cold build"),
        ("timestamp forms", "2025-01-01T00:00:00Z"),
        ("timestamp forms", "2025-01-01 00:00:00"),
        ("timestamp forms", "+02:00"),
    ] {
        assert!(text.contains(needle), "README documents {what} ({needle})");
    }
}

/// The quickstart example prints the windowed results (`scripts/quickstart` runs it; the test
/// runs the binary cargo built for the suite).
#[test]
fn the_quickstart_prints_windowed_results() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
        .parent()
        .expect("target dir")
        .join("examples/quickstart");
    assert!(
        bin.is_file(),
        "{} missing: cargo test builds the examples",
        bin.display()
    );
    let w = tempfile::tempdir().expect("tmp");
    let o = Command::new(&bin)
        .arg(w.path())
        .env("SLUICE_LOG", "warn")
        .output()
        .expect("run the quickstart");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // the windowed query's table: minute, action, events, avg_value, with rows of 2025-01-01
    let header = out
        .lines()
        .find(|l| l.contains("minute") && l.contains("events") && l.contains("avg_value"))
        .unwrap_or_else(|| panic!("no windowed table in:\n{out}"));
    assert!(header.contains("action"), "{header}");
    // (as Spark's console sink prints them: `|2025-01-01 00:01:00|click|...`)
    let rows = out
        .lines()
        .filter(|l| {
            l.trim_start_matches('|')
                .trim_start()
                .starts_with("2025-01-01 00:")
        })
        .count();
    assert!(rows >= 4, "windowed rows printed:\n{out}");
}

/// `cargo tree` of the facade without its default features has no librdkafka, delta-rs or sqlx
/// (a program that embeds Sluice for files and SQL builds none of them).
#[test]
fn a_build_without_default_features_has_no_heavy_connectors() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |args: &[&str]| -> String {
        let o = Command::new(&cargo)
            .current_dir(repo_dir())
            .args([
                "tree",
                "--offline",
                "--locked",
                "-p",
                "sluice",
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .args(args)
            .output()
            .expect("cargo tree");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let crates = |t: &str| -> Vec<String> {
        t.lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    };
    let lean = crates(&tree(&["--no-default-features"]));
    let full = crates(&tree(&[]));
    for heavy in ["rdkafka", "deltalake", "sqlx"] {
        assert!(
            full.iter().any(|c| c == heavy),
            "{heavy} in the default build"
        );
        assert!(
            !lean.iter().any(|c| c == heavy),
            "{heavy} in a build without default features"
        );
    }
    for each in ["kafka", "delta", "jdbc"] {
        let one = crates(&tree(&["--no-default-features", "--features", each]));
        let dep = match each {
            "kafka" => "rdkafka",
            "delta" => "deltalake",
            _ => "sqlx",
        };
        assert!(one.iter().any(|c| c == dep), "feature {each} brings {dep}");
    }
}
