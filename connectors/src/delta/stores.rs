//! Object storage under Delta tables: delta-rs looks a table's store up by URL scheme, and
//! Sluice registers its own for `s3://`, `s3a://`, `gs://`, `az://`, `abfs://` and `abfss://`,
//! built like every other location of a query (the environment, then the options, Hadoop's
//! `fs.s3a.*` names included; see [`Location`]). The log store is delta-rs's default one:
//! each commit is a conditional put of the next log entry, so two writers cannot both commit
//! a version.

use std::sync::{Arc, Once};

use deltalake::logstore::{
    default_logstore, logstore_factories, object_store_factories, LogStore, LogStoreFactory,
    ObjectStoreFactory, ObjectStoreRef, StorageConfig,
};
use deltalake::{DeltaResult, DeltaTableError, Path};
use sluice_engine::connector::storage::{Location, StorageOptions};
use url::Url;

/// The schemes served by [`Location`] (`is_remote`'s).
const SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "abfs", "abfss", "azure"];

struct Stores;

impl ObjectStoreFactory for Stores {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let options: StorageOptions = config
            .raw
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let loc = Location::parse(url.as_str(), &options)
            .map_err(|e| DeltaTableError::InvalidTableLocation(e.to_string()))?;
        Ok((loc.store(), loc.prefix().clone()))
    }
}

impl LogStoreFactory for Stores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Registers the stores (once per process).
pub(crate) fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for s in SCHEMES {
            if let Ok(u) = Url::parse(&format!("{s}://")) {
                object_store_factories().insert(u.clone(), Arc::new(Stores));
                logstore_factories().insert(u, Arc::new(Stores));
            }
        }
    });
}

/// The store at the root of the bucket of table `url` (delta-rs's paths are from there), and
/// whether it is an object store (else a local directory).
pub(crate) fn root_store(
    url: &Url,
    options: &StorageOptions,
) -> sluice_engine::Result<Arc<dyn deltalake::ObjectStore>> {
    if sluice_engine::connector::storage::is_remote(url.as_str()) {
        return Ok(Location::parse(url.as_str(), options)?.store());
    }
    let (base, _) = deltalake::logstore::object_store::parse_url(url).map_err(|e| {
        sluice_engine::EngineError::user(format!("delta: no storage for {url}: {e}"))
    })?;
    Ok(Arc::from(base))
}
