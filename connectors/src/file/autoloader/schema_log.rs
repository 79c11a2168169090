//! The schema location (`cloudFiles.schemaLocation`): the numbered versions of an Auto Loader
//! stream's schema, kept so that a restart reads files as the first start did.
//!
//! Layout: `<schemaLocation>/_schemas/<n>`, one file per version (0 = inferred at the first
//! start; each later one = the previous plus the columns `addNewColumns` met), written once,
//! never overwritten (created with `create_new` after being written aside, so a crash leaves
//! either the whole version or none). A version is JSON:
//!
//! ```json
//! {"version": 1, "schema": "id STRING, user_id STRING, country STRING, day STRING",
//!  "partitionColumns": ["day"], "reason": "new columns country in file /in/b.json",
//!  "createdAt": 1764860000000}
//! ```
//!
//! `schema` is a DDL string (Spark's type names) of the data columns followed by the partition
//! columns; the rescued-data column is not part of it (it follows from the options).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use sluice_engine::connector::storage::{is_remote, Location as Bucket};
use sluice_engine::{parse_ddl_schema, schema_to_ddl, EngineError, Options, Result};

/// One version of the schema, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SchemaVersion {
    pub version: u64,
    /// DDL of the data columns, then the partition columns.
    pub schema: String,
    /// (A version written by hand may leave out the fields below.)
    #[serde(default)]
    pub partition_columns: Vec<String>,
    /// Why this version exists (inferred from which files; which new columns in which file).
    #[serde(default)]
    pub reason: String,
    /// When it was written, ms since the epoch.
    #[serde(default)]
    pub created_at: i64,
}

impl SchemaVersion {
    /// A version of `schema` (data then partition columns), written now.
    pub fn new(
        version: u64,
        schema: &Schema,
        partition_columns: &[String],
        reason: String,
    ) -> Self {
        Self {
            version,
            schema: schema_to_ddl(schema),
            partition_columns: partition_columns.to_vec(),
            reason,
            created_at: chrono::Utc::now().timestamp_millis(),
        }
    }

    /// The columns (data, then partition).
    pub fn arrow_schema(&self) -> Result<SchemaRef> {
        Ok(Arc::new(parse_ddl_schema(&self.schema)?))
    }
}

/// The schema versions under one schema location.
#[derive(Debug, Clone)]
pub(super) struct SchemaLog {
    dir: PathBuf,
    /// A schema location in object storage (`dir` then only names it).
    bucket: Option<Arc<Bucket>>,
}

impl SchemaLog {
    /// The log at `location` (a directory, or a bucket prefix reached with `options`' storage
    /// settings).
    pub fn new(location: &str, options: &Options) -> Result<Self> {
        let dir = Path::new(location).join("_schemas");
        if !is_remote(location) {
            return Ok(Self { dir, bucket: None });
        }
        let url = format!("{}/_schemas", location.trim_end_matches('/'));
        Ok(Self {
            dir,
            bucket: Some(Arc::new(Bucket::parse(&url, &options.storage())?)),
        })
    }

    /// Where the versions are (for messages).
    pub fn dir(&self) -> PathBuf {
        match &self.bucket {
            Some(b) => PathBuf::from(b.url()),
            None => self.dir.clone(),
        }
    }

    fn ids(&self) -> Result<Vec<u64>> {
        if let Some(b) = &self.bucket {
            let mut ids: Vec<u64> = b
                .list_below(None)?
                .iter()
                .filter_map(|m| b.rel_of(&m.location)?.parse().ok())
                .collect();
            ids.sort_unstable();
            return Ok(ids);
        }
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(EngineError::io(&self.dir, e)),
        };
        let mut ids = Vec::new();
        for e in rd {
            let e = e.map_err(|e| EngineError::io(&self.dir, e))?;
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
                ids.push(n);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// The newest version, if any was written.
    pub fn latest(&self) -> Result<Option<SchemaVersion>> {
        let Some(id) = self.ids()?.last().copied() else {
            return Ok(None);
        };
        let path = self.dir().join(id.to_string());
        let text = match &self.bucket {
            Some(b) => {
                let bytes = b.get(&id.to_string())?.ok_or_else(|| {
                    EngineError::external(format!("{} vanished while read", path.display()))
                })?;
                String::from_utf8_lossy(&bytes).into_owned()
            }
            None => std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?,
        };
        let v: SchemaVersion = serde_json::from_str(&text).map_err(|e| {
            EngineError::user(format!(
                "the Auto Loader schema version {} is not valid JSON of a schema version: {e}",
                path.display()
            ))
        })?;
        v.arrow_schema().map_err(|e| {
            EngineError::user(format!(
                "the Auto Loader schema version {}: {e}",
                path.display()
            ))
        })?;
        Ok(Some(v))
    }

    /// Writes version `version`; when it exists already (written before a crash, or by another
    /// start), the stored one is returned instead, so every start agrees on each version.
    pub fn write(
        &self,
        version: u64,
        schema: &Schema,
        partition_columns: &[String],
        reason: String,
    ) -> Result<SchemaVersion> {
        let v = SchemaVersion::new(version, schema, partition_columns, reason);
        if let Some(b) = &self.bucket {
            let text = serde_json::to_vec_pretty(&v)
                .map_err(|e| EngineError::bug(format!("schema version to JSON: {e}")))?;
            // created once (a conditional put): another writer's version wins, as below
            if b.put_new(&version.to_string(), text.into())? {
                return Ok(v);
            }
            return self
                .latest()?
                .filter(|l| l.version >= version)
                .ok_or_else(|| EngineError::bug(format!("schema version {version} vanished")));
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| EngineError::io(&self.dir, e))?;
        let path = self.dir.join(version.to_string());
        let tmp = self
            .dir
            .join(format!(".{version}.{}.tmp", std::process::id()));
        let text = serde_json::to_vec_pretty(&v)
            .map_err(|e| EngineError::bug(format!("schema version to JSON: {e}")))?;
        std::fs::write(&tmp, &text).map_err(|e| EngineError::io(&tmp, e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| EngineError::io(&tmp, e))?;
        // hard_link fails if the version exists: never overwritten
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(&self.dir) {
                    let _ = d.sync_all();
                }
                Ok(v)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self
                .latest()?
                .filter(|l| l.version >= version)
                .ok_or_else(|| EngineError::bug(format!("schema version {version} vanished"))),
            Err(e) => Err(EngineError::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbered_kept_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("ok");
        let log = SchemaLog::new(dir.path().to_str().expect("ok"), &Options::new()).expect("ok");
        assert!(log.latest().expect("ok").is_none());
        let s0 = parse_ddl_schema("a STRING, day STRING").expect("ok");
        let v0 = log
            .write(0, &s0, &["day".into()], "inferred".into())
            .expect("ok");
        assert_eq!(v0.schema, "a STRING, day STRING");
        let s1 = parse_ddl_schema("a STRING, b BIGINT, day STRING").expect("ok");
        log.write(1, &s1, &["day".into()], "new b".into())
            .expect("ok");
        // a second writer of version 1 gets the stored one
        let again = log
            .write(1, &s0, &["day".into()], "other".into())
            .expect("ok");
        assert_eq!(again.schema, "a STRING, b BIGINT, day STRING");
        let latest = log.latest().expect("ok").expect("ok");
        assert_eq!(latest.version, 1);
        assert_eq!(latest.arrow_schema().expect("ok").as_ref(), &s1);
        assert!(dir.path().join("_schemas/0").is_file());
    }
}
