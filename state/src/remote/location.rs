//! A prefix in an object store, named by a URL, with blocking calls for the engine's threads.
//!
//! Credentials and endpoints come from the usual environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT_URL`, `GOOGLE_*`, `AZURE_*`) and from options, which win: Hadoop's S3A names
//! as Spark users write them (`fs.s3a.endpoint`, `fs.s3a.access.key`, `fs.s3a.secret.key`,
//! `fs.s3a.session.token`, `fs.s3a.endpoint.region`, `fs.s3a.path.style.access`,
//! `fs.s3a.connection.ssl.enabled`), each also with Spark's `spark.hadoop.` prefix, and
//! `object_store`'s own keys (`aws_*`, `google_*`, `azure_*`). An `http://` endpoint allows
//! plain HTTP (a local S3 server). A location prints as its URL only: no option value is ever
//! part of a message.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::{Result, StateError};

/// Options of a location (a source's, a sink's, or the session's `spark.hadoop.*` settings).
pub type StorageOptions = BTreeMap<String, String>;

/// URL schemes served by an object store (anything else is a local path).
const REMOTE_SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "abfs", "abfss", "azure"];

fn scheme(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    (!scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+'))
    .then_some(scheme)
}

/// Whether `s` names a location in an object store (`s3://…` and the others).
pub fn is_remote(s: &str) -> bool {
    scheme(s).is_some_and(|sc| REMOTE_SCHEMES.contains(&sc.to_ascii_lowercase().as_str()))
}

/// The local path `s` names: a plain path, or a `file://` URL. `None` for a remote URL or
/// another scheme.
pub fn local_path(s: &str) -> Option<PathBuf> {
    match scheme(s) {
        None => Some(PathBuf::from(s)),
        Some(sc) if sc.eq_ignore_ascii_case("file") => {
            url::Url::parse(s).ok().and_then(|u| u.to_file_path().ok())
        }
        Some(_) => None,
    }
}

/// Hadoop S3A option names and the `object_store` keys they set.
const S3A_NAMES: &[(&str, AmazonS3ConfigKey)] = &[
    ("fs.s3a.endpoint", AmazonS3ConfigKey::Endpoint),
    ("fs.s3a.access.key", AmazonS3ConfigKey::AccessKeyId),
    ("fs.s3a.secret.key", AmazonS3ConfigKey::SecretAccessKey),
    ("fs.s3a.session.token", AmazonS3ConfigKey::Token),
    ("fs.s3a.endpoint.region", AmazonS3ConfigKey::Region),
    ("fs.s3a.region", AmazonS3ConfigKey::Region),
];

/// The storage option that accepts a store without conditional puts (see
/// [`Location::put_new_key`]).
pub const ALLOW_UNSAFE_CREATE: &str = "sluice.allowUnsafeCreate";

/// Whether option `key` configures storage (and so must never be printed).
pub fn is_storage_option(key: &str) -> bool {
    let k = key.strip_prefix("spark.hadoop.").unwrap_or(key);
    let k = k.to_ascii_lowercase();
    k.eq_ignore_ascii_case(ALLOW_UNSAFE_CREATE)
        || k.starts_with("fs.s3a.")
        || k.starts_with("aws_")
        || k.starts_with("google_")
        || k.starts_with("azure_")
}

/// `url` without a password or query string (an Azure SAS token), for messages.
fn without_secrets(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => url.split('?').next().unwrap_or_default().to_string(),
    }
}

/// The name of the object-store runtime's threads.
const RUNTIME_THREAD: &str = "sluice-objects";

/// The runtime that drives object-store requests for the engine's (blocking) threads.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(RUNTIME_THREAD)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| StateError::Remote {
        url: String::new(),
        reason: format!("cannot start the object-store runtime: {e}"),
    })
}

/// Runs `f` on the object-store runtime and waits for it (from any thread, inside another
/// runtime or not).
pub fn block_on<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> Result<T> {
    if std::thread::current().name() == Some(RUNTIME_THREAD) {
        // waiting here would hold one of the two threads the request needs
        return Err(StateError::Bug {
            dir: PathBuf::new(),
            reason: "block_on called from the object-store runtime's own thread".into(),
        });
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().map_err(|_| StateError::Bug {
        dir: PathBuf::new(),
        reason: "an object-store request task ended without an answer".into(),
    })
}

/// A prefix in an object store.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    /// [`ALLOW_UNSAFE_CREATE`]: a store without conditional puts is used anyway.
    unsafe_create: bool,
    /// `scheme://bucket` (no credentials, no path).
    root: String,
    prefix: ObjPath,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Location({})", self.url())
    }
}

impl Location {
    /// Opens the location `url` names with `options` (see the module's notes). An error names
    /// the URL and what is wrong, never an option's value.
    pub fn parse(url: &str, options: &StorageOptions) -> Result<Self> {
        let shown = without_secrets(url);
        let bad = |reason: String| StateError::Config {
            what: shown.clone(),
            reason,
        };
        let u = url::Url::parse(url).map_err(|e| bad(format!("not a valid URL: {e}")))?;
        let bucket = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("the URL names no bucket (scheme://bucket/path)".into()))?
            .to_string();
        let opts: BTreeMap<String, &String> = options
            .iter()
            .map(|(k, v)| {
                let k = k.strip_prefix("spark.hadoop.").unwrap_or(k);
                (k.to_ascii_lowercase(), v)
            })
            .collect();
        let scheme = u.scheme().to_ascii_lowercase();
        let unsafe_create = opts.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case(ALLOW_UNSAFE_CREATE) && v.eq_ignore_ascii_case("true")
        });
        let store: Arc<dyn ObjectStore> = match scheme.as_str() {
            "s3" | "s3a" => {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(&bucket);
                for (k, v) in &opts {
                    if let Some((_, key)) = S3A_NAMES.iter().find(|(n, _)| n == k) {
                        b = b.with_config(*key, v.as_str());
                    } else if k == "fs.s3a.path.style.access" {
                        let path_style = v.eq_ignore_ascii_case("true");
                        b = b.with_virtual_hosted_style_request(!path_style);
                    } else if k == "fs.s3a.connection.ssl.enabled" {
                        b = b.with_allow_http(v.eq_ignore_ascii_case("false"));
                    } else if k.starts_with("fs.s3a.") {
                        return Err(bad(format!(
                            "option {k} is not one Sluice maps to its S3 client (fs.s3a.endpoint, \
                             .access.key, .secret.key, .session.token, .endpoint.region, .region, \
                             .path.style.access, .connection.ssl.enabled; or object_store's aws_* \
                             keys)"
                        )));
                    } else if k.starts_with("aws_") {
                        let key: AmazonS3ConfigKey = k
                            .parse()
                            .map_err(|_| bad(format!("unknown S3 option {k}")))?;
                        b = b.with_config(key, v.as_str());
                    }
                }
                if b.get_config_value(&AmazonS3ConfigKey::Region).is_none() {
                    b = b.with_region("us-east-1");
                }
                if b.get_config_value(&AmazonS3ConfigKey::Endpoint)
                    .is_some_and(|e| e.starts_with("http://"))
                {
                    b = b.with_allow_http(true);
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "gs" => {
                let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(&bucket);
                for (k, v) in opts.iter().filter(|(k, _)| k.starts_with("google_")) {
                    let key: GoogleConfigKey = k
                        .parse()
                        .map_err(|_| bad(format!("unknown GCS option {k}")))?;
                    b = b.with_config(key, v.as_str());
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "az" | "abfs" | "abfss" | "azure" => {
                let mut b = MicrosoftAzureBuilder::from_env().with_url(url);
                for (k, v) in opts.iter().filter(|(k, _)| k.starts_with("azure_")) {
                    let key: AzureConfigKey = k
                        .parse()
                        .map_err(|_| bad(format!("unknown Azure option {k}")))?;
                    b = b.with_config(key, v.as_str());
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other}:// (s3://, s3a://, gs://, az://, abfss:// or a local path)"
                )))
            }
        };
        let prefix = ObjPath::from_url_path(u.path())
            .map_err(|e| bad(format!("invalid object path: {e}")))?;
        // an Azure URL's user part is the container: kept, a password never is
        let root = match u.username() {
            "" => format!("{}://{}", u.scheme(), bucket),
            container => format!("{}://{container}@{}", u.scheme(), bucket),
        };
        Ok(Self {
            store,
            unsafe_create,
            root,
            prefix,
        })
    }

    /// A directory of the local file system (or of a network file system every process
    /// mounts) seen as an object store: what a group's task checkpoints use when the
    /// checkpoint location is a path. Conditional puts are the file system's exclusive create.
    pub fn local_dir(dir: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
        let abs = std::fs::canonicalize(dir).map_err(|e| StateError::io(dir, e))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&abs).map_err(|e| {
            StateError::Config {
                what: abs.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            store: Arc::new(fs),
            unsafe_create: false,
            root: format!("file://{}", abs.display()),
            prefix: ObjPath::default(),
        })
    }

    /// Whether the user accepted a store without conditional puts ([`ALLOW_UNSAFE_CREATE`]).
    pub fn allows_unsafe_create(&self) -> bool {
        self.unsafe_create
    }

    /// The location `rel` below this one (same store and credentials).
    pub fn child(&self, rel: &str) -> Self {
        Self {
            store: Arc::clone(&self.store),
            unsafe_create: self.unsafe_create,
            root: self.root.clone(),
            prefix: self.key(rel),
        }
    }

    /// The location's URL (never with credentials).
    pub fn url(&self) -> String {
        if self.prefix.as_ref().is_empty() {
            self.root.clone()
        } else {
            format!("{}/{}", self.root, self.prefix)
        }
    }

    /// The object store (for libraries that take one, such as Delta's).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// The prefix inside the store.
    pub fn prefix(&self) -> &ObjPath {
        &self.prefix
    }

    /// The key of `rel` (a `/`-separated path below the prefix).
    pub fn key(&self, rel: &str) -> ObjPath {
        let mut k = self.prefix.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            k = k.join(part);
        }
        k
    }

    /// The URL of object `key` of this store.
    pub fn url_of(&self, key: &ObjPath) -> String {
        format!("{}/{}", self.root, key)
    }

    /// The URL of the object with key `key` (as text) of this store.
    pub fn url_of_key(&self, key: &str) -> String {
        format!("{}/{key}", self.root)
    }

    /// The bucket (or container) name.
    pub fn bucket(&self) -> &str {
        let host = self.root.split_once("://").map_or("", |(_, h)| h);
        host.split_once('@').map_or(host, |(c, _)| c)
    }

    /// The key a URL of this store names (`None`: another store or bucket).
    pub fn key_of_url(&self, url: &str) -> Option<ObjPath> {
        let rest = url.strip_prefix(&self.root)?.strip_prefix('/')?;
        ObjPath::parse(rest).ok()
    }

    /// `rel` of key `key` below the prefix (`None`: not below it).
    pub fn rel_of(&self, key: &ObjPath) -> Option<String> {
        let parts: Vec<String> = key
            .prefix_match(&self.prefix)?
            .map(|p| p.as_ref().to_string())
            .collect();
        Some(parts.join("/"))
    }

    fn err(&self, key: &ObjPath, e: object_store::Error) -> StateError {
        let url = self.url_of(key);
        match e {
            object_store::Error::Unauthenticated { .. }
            | object_store::Error::PermissionDenied { .. } => StateError::Config {
                what: url,
                reason: format!("the object store refused the credentials: {e}"),
            },
            e => StateError::Remote {
                url,
                reason: e.to_string(),
            },
        }
    }

    /// Writes object `key` (replacing it).
    pub fn put_key(&self, key: &ObjPath, bytes: Bytes) -> Result<()> {
        let (store, k) = (self.store(), key.clone());
        block_on(async move { store.put(&k, PutPayload::from(bytes)).await })?
            .map(|_| ())
            .map_err(|e| self.err(key, e))
    }

    /// Creates object `key` unless it exists (a conditional put, `If-None-Match: *`):
    /// `Ok(false)` when it already exists. A store that cannot put conditionally is an error
    /// saying so — unless [`ALLOW_UNSAFE_CREATE`] is set: then an existence check and a plain
    /// put (two writers racing between them can both succeed).
    pub fn put_new_key(&self, key: &ObjPath, bytes: Bytes) -> Result<bool> {
        let (store, k) = (self.store(), key.clone());
        let opts = PutOptions::from(PutMode::Create);
        let payload = bytes.clone();
        match block_on(async move { store.put_opts(&k, PutPayload::from(payload), opts).await })? {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. })
            | Err(object_store::Error::NotSupported { .. })
                if self.unsafe_create =>
            {
                if self.get_key(key)?.is_some() {
                    return Ok(false);
                }
                self.put_key(key, bytes)?;
                Ok(true)
            }
            Err(e @ object_store::Error::NotImplemented { .. })
            | Err(e @ object_store::Error::NotSupported { .. }) => Err(StateError::Config {
                what: self.url_of(key),
                reason: format!(
                    "this object store cannot create an object only if it is absent ({e}); a \
                     checkpoint there could be written by two queries at once. Use a store \
                     with conditional puts (S3, GCS, Azure, MinIO, R2), or set the storage \
                     option {ALLOW_UNSAFE_CREATE} = \"true\" to accept that risk"
                ),
            }),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Reads object `key` (`None`: absent).
    pub fn get_key(&self, key: &ObjPath) -> Result<Option<Bytes>> {
        let (store, k) = (self.store(), key.clone());
        let got = block_on(async move {
            match store.get(&k).await {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            }
        })?;
        match got {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Reads bytes `range` of object `key` (`None`: absent).
    pub fn get_range_key(&self, key: &ObjPath, range: Range<u64>) -> Result<Option<Bytes>> {
        let (store, k) = (self.store(), key.clone());
        match block_on(async move { store.get_range(&k, range).await })? {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Deletes object `key` (absent is fine).
    pub fn delete_key(&self, key: &ObjPath) -> Result<()> {
        let (store, k) = (self.store(), key.clone());
        match block_on(async move { store.delete(&k).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Every object below `key` (the prefix itself with `None`), recursively.
    pub fn list_below(&self, key: Option<&ObjPath>) -> Result<Vec<object_store::ObjectMeta>> {
        let k = key.cloned().unwrap_or_else(|| self.prefix.clone());
        let store = self.store();
        let k2 = k.clone();
        let listed = block_on(async move {
            let mut out = Vec::new();
            let mut s = store.list(Some(&k2));
            while let Some(m) = s.next().await {
                out.push(m?);
            }
            Ok::<_, object_store::Error>(out)
        })?;
        listed.map_err(|e| self.err(&k, e))
    }

    /// Asks the store whether the location answers (one listing request): for
    /// `sluice validate`.
    pub fn check_reachable(&self) -> Result<()> {
        let (store, k) = (self.store(), self.prefix.clone());
        block_on(async move { store.list_with_delimiter(Some(&k)).await })?
            .map(|_| ())
            .map_err(|e| self.err(&self.prefix, e))
    }

    /// [`Self::put_key`] of `rel`.
    pub fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        self.put_key(&self.key(rel), bytes)
    }

    /// [`Self::put_new_key`] of `rel`.
    pub fn put_new(&self, rel: &str, bytes: Bytes) -> Result<bool> {
        self.put_new_key(&self.key(rel), bytes)
    }

    /// [`Self::get_key`] of `rel`.
    pub fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        self.get_key(&self.key(rel))
    }

    /// [`Self::delete_key`] of `rel`.
    pub fn delete(&self, rel: &str) -> Result<()> {
        self.delete_key(&self.key(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_are_told_apart() {
        // (input, remote?, local path)
        let table: &[(&str, bool, Option<&str>)] = &[
            ("s3://b/raw", true, None),
            ("S3A://b/raw", true, None),
            ("gs://b/x", true, None),
            ("abfss://c@acct.dfs.core.windows.net/x", true, None),
            ("/tmp/x", false, Some("/tmp/x")),
            ("rel/dir", false, Some("rel/dir")),
            ("file:///tmp/y", false, Some("/tmp/y")),
            ("http://h/x", false, None),
        ];
        for (s, remote, local) in table {
            assert_eq!(is_remote(s), *remote, "{s}");
            assert_eq!(local_path(s), local.map(PathBuf::from), "{s}");
        }
    }

    #[test]
    fn a_location_never_shows_its_secrets() {
        let mut o = StorageOptions::new();
        o.insert("fs.s3a.secret.key".into(), "sEcReT-42".into());
        o.insert("fs.s3a.access.key".into(), "AKIDEXAMPLE".into());
        o.insert("fs.s3a.endpoint".into(), "http://127.0.0.1:9".into());
        let l = Location::parse("s3://bkt/chk/q1", &o).expect("location");
        assert_eq!(l.url(), "s3://bkt/chk/q1");
        assert!(!format!("{l:?}").contains("sEcReT"));
        assert_eq!(l.key("offsets/3").as_ref(), "chk/q1/offsets/3");
        assert_eq!(
            l.rel_of(&l.key("state/0/1.changelog/7")).as_deref(),
            Some("state/0/1.changelog/7")
        );
        assert_eq!(
            l.key_of_url("s3://bkt/raw/a.json").map(|k| k.to_string()),
            Some("raw/a.json".to_string())
        );
        assert!(Location::parse("s3:///nobucket", &o).is_err());
        assert!(Location::parse("s3://b/x", &{
            let mut o = StorageOptions::new();
            o.insert("aws_no_such_thing".into(), "1".into());
            o
        })
        .is_err());
    }
}
