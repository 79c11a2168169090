//! Schema inference at an Auto Loader stream's first start: a sample of the files (Databricks'
//! limits: the first 1000 files or 50 GB, whichever comes first), all columns STRING for JSON
//! and CSV unless `cloudFiles.inferColumnTypes`, Parquet's own types, `cloudFiles.schemaHints`
//! over the result, and Hive-style `key=value` directories as partition columns.

use std::path::Path;

use arrow::datatypes::{DataType, Field, Schema};
use sluice_engine::{parse_ddl_schema, EngineError, Result};

use super::super::listing::FileEntry;
use super::super::settings::FileFormat;
use super::AutoOptions;
use crate::formats::{self, csv::CsvOptions};

/// The sample inference reads: files in arrival order, up to `max_files` and `max_bytes`.
pub(super) fn sample(
    mut files: Vec<FileEntry>,
    max_files: usize,
    max_bytes: u64,
) -> Vec<FileEntry> {
    files.sort_by(|a, b| (a.mtime_ms, &a.path).cmp(&(b.mtime_ms, &b.path)));
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for f in files {
        if out.len() >= max_files || (!out.is_empty() && bytes + f.size > max_bytes) {
            break;
        }
        bytes += f.size;
        out.push(f);
    }
    out
}

/// Adds `(name, type)` unless a column of that name (in any case) is there; a name already
/// there with another type becomes STRING (it can hold either).
fn merge_column(fields: &mut Vec<Field>, name: &str, dt: DataType) {
    match fields
        .iter_mut()
        .find(|f| f.name().eq_ignore_ascii_case(name))
    {
        Some(f) if f.data_type() != &dt && f.data_type() != &DataType::Null => {
            if dt != DataType::Null {
                *f = Field::new(f.name(), DataType::Utf8, true);
            }
        }
        Some(f) => {
            if f.data_type() == &DataType::Null {
                *f = Field::new(f.name(), dt, true);
            }
        }
        None => fields.push(Field::new(name, dt, true)),
    }
}

/// The data columns of the sampled files (no partition columns).
pub(super) fn infer_data_schema(
    format: FileFormat,
    loc: &super::super::listing::Location,
    files: &[FileEntry],
    o: &AutoOptions,
    csv: Option<&CsvOptions>,
) -> Result<Schema> {
    let mut fields: Vec<Field> = Vec::new();
    for f in files {
        let bytes = super::super::listing::read_whole(loc, f)?;
        let cannot = |e: &dyn std::fmt::Display| {
            EngineError::user(format!(
                "Auto Loader cannot infer a schema from {}: {e}",
                f.path
            ))
        };
        let file_schema: Vec<(String, DataType)> = match format {
            // arrow's inference reads the whole file fast; with STRING columns only the names
            // count, so records whose types clash are named record by record instead
            FileFormat::Json => match formats::json::infer_all(formats::strip_bom(&bytes)) {
                Ok(s) if o.infer_types => fields_of(&s),
                Ok(s) => fields_of(&s)
                    .into_iter()
                    .map(|(n, _)| (n, DataType::Utf8))
                    .collect(),
                Err(e) if o.infer_types => return Err(cannot(&e)),
                Err(_) => json_names(formats::strip_bom(&bytes))
                    .into_iter()
                    .map(|n| (n, DataType::Utf8))
                    .collect(),
            },
            FileFormat::Csv => {
                let csv = csv.ok_or_else(|| EngineError::bug("csv options missing"))?;
                let s = formats::csv::infer(&bytes, csv).map_err(|e| cannot(&e))?;
                fields_of(&s)
                    .into_iter()
                    .enumerate()
                    .map(|(i, (n, t))| {
                        // named as the reader names them: by the header, else `_c0`, `_c1`, ...
                        let n = if csv.header {
                            n
                        } else {
                            formats::csv::column_name(i)
                        };
                        (n, if o.infer_types { t } else { DataType::Utf8 })
                    })
                    .collect()
            }
            FileFormat::Parquet => {
                fields_of(&formats::parquet::infer(bytes).map_err(|e| cannot(&e))?)
            }
            FileFormat::Text => vec![("value".to_string(), DataType::Utf8)],
        };
        for (n, t) in file_schema {
            merge_column(&mut fields, &n, t);
        }
    }
    // JSON columns in name order, as Spark's JSON inference gives them
    if format == FileFormat::Json {
        fields.sort_by(|a, b| a.name().cmp(b.name()));
    }
    // a column only ever null in the sample is read as text
    for f in fields.iter_mut() {
        if f.data_type() == &DataType::Null {
            *f = Field::new(f.name(), DataType::Utf8, true);
        }
    }
    Ok(Schema::new(fields))
}

fn fields_of(s: &Schema) -> Vec<(String, DataType)> {
    s.fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect()
}

/// The top-level field names of JSON lines, in the order first seen.
pub(super) fn json_names(bytes: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (_, line) in formats::split_lines(bytes, false) {
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(line)
        {
            for k in m.keys() {
                if !names.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                    names.push(k.clone());
                }
            }
        }
    }
    names
}

/// The `key=value` directories between `base` and the file, in order.
pub(super) fn partition_values(base: &Path, file: &Path) -> Vec<(String, String)> {
    let rel = file.strip_prefix(base).unwrap_or(file);
    let mut out = Vec::new();
    if let Some(dirs) = rel.parent() {
        for c in dirs.components() {
            let s = c.as_os_str().to_string_lossy();
            if let Some((k, v)) = s.split_once('=') {
                if !k.is_empty() {
                    out.push((k.to_string(), v.to_string()));
                }
            }
        }
    }
    out
}

/// The partition columns: `cloudFiles.partitionColumns` if given (an empty value: none), else
/// the keys of the sampled files' `key=value` directories.
pub(super) fn partition_columns(base: &Path, files: &[FileEntry], o: &AutoOptions) -> Vec<String> {
    if let Some(given) = &o.partition_columns {
        return given.clone();
    }
    let mut names: Vec<String> = Vec::new();
    for f in files {
        for (k, _) in partition_values(base, Path::new(&f.path)) {
            if !names.contains(&k) {
                names.push(k);
            }
        }
    }
    names
}

/// Applies `cloudFiles.schemaHints` (a DDL list): a hinted column takes the hint's type; a hint
/// for a column not in the sample adds it, as Databricks does.
pub(super) fn apply_hints(schema: Schema, hints: Option<&str>) -> Result<Schema> {
    let Some(hints) = hints.filter(|h| !h.trim().is_empty()) else {
        return Ok(schema);
    };
    let hinted = parse_ddl_schema(hints)
        .map_err(|e| EngineError::user(format!("option 'cloudFiles.schemaHints': {e}")))?;
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for h in hinted.fields() {
        match fields
            .iter_mut()
            .find(|f| f.name().eq_ignore_ascii_case(h.name()))
        {
            Some(f) => *f = Field::new(f.name(), h.data_type().clone(), true),
            None => fields.push(h.as_ref().clone().with_nullable(true)),
        }
    }
    Ok(Schema::new(fields))
}

/// The data columns followed by the partition columns (STRING unless hinted; a partition
/// column that is also a data column stays where it is).
pub(super) fn with_partitions(
    data: Schema,
    partitions: &[String],
    hints: Option<&str>,
) -> Result<Schema> {
    let mut fields: Vec<Field> = data.fields().iter().map(|f| f.as_ref().clone()).collect();
    for p in partitions {
        if !fields.iter().any(|f| f.name() == p) {
            fields.push(Field::new(p, DataType::Utf8, true));
        }
    }
    apply_hints(Schema::new(fields), hints)
}

/// The type a new column gets from the value that revealed it: STRING, or with
/// `inferColumnTypes` the type inference gives the value alone.
pub(super) fn new_column_type(value: &serde_json::Value, infer_types: bool) -> DataType {
    if !infer_types {
        return DataType::Utf8;
    }
    let line = serde_json::json!({ "v": value }).to_string();
    formats::json::infer(line.as_bytes())
        .ok()
        .and_then(|s| s.field_with_name("v").ok().map(|f| f.data_type().clone()))
        .filter(|t| t != &DataType::Null)
        .unwrap_or(DataType::Utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_come_from_key_value_directories() {
        /// (base, file, the partition values found)
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let cases: &[Case<'_>] = &[
            ("/in", "/in/a.json", &[]),
            ("/in", "/in/day=2026-01-01/a.json", &[("day", "2026-01-01")]),
            (
                "/in",
                "/in/y=2026/m=01/x/a.json",
                &[("y", "2026"), ("m", "01")],
            ),
            ("/in", "/in/=x/a.json", &[]),
        ];
        for (base, file, want) in cases {
            let got = partition_values(Path::new(base), Path::new(file));
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, want, "{file}");
        }
    }

    #[test]
    fn hints_override_and_add_columns() {
        let s = Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("ts", DataType::Utf8, true),
        ]);
        let h = apply_hints(s, Some("USER_ID BIGINT, tags ARRAY<STRING>")).expect("ok");
        assert_eq!(h.field(0).name(), "user_id");
        assert_eq!(h.field(0).data_type(), &DataType::Int64);
        assert_eq!(h.field(1).data_type(), &DataType::Utf8);
        assert_eq!(h.field(2).name(), "tags");
        assert!(apply_hints(h.clone(), Some("x NOTATYPE")).is_err());
    }

    #[test]
    fn sample_stops_at_files_or_bytes() {
        let files: Vec<FileEntry> = (0..5)
            .map(|i| FileEntry {
                path: format!("/f{i}"),
                mtime_ms: 10 - i,
                size: 10,
            })
            .collect();
        let s = sample(files.clone(), 2, u64::MAX);
        assert_eq!(
            s.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["/f4", "/f3"]
        );
        assert_eq!(sample(files.clone(), 1000, 25).len(), 2);
        // the first file is read even if it alone is over the byte limit
        assert_eq!(sample(files, 1000, 1).len(), 1);
    }

    #[test]
    fn json_names_keep_first_seen_order_and_one_case() {
        let names = json_names(b"{\"b\":1,\"a\":2}\n{\"A\":3,\"c\":{\"x\":1}}\nnot json\n");
        // serde_json's map is sorted per object: a, b from line 1, then c
        assert_eq!(names, ["a", "b", "c"]);
    }
}
