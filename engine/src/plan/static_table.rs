//! Static tables: tables that are not streams (a dimension table joined to a stream), read
//! whole when asked, with the same formats and options as streams
//! (`session.read().format("csv").option(..).load(path)`).
//!
//! A static table is read by its format's [`TableFactory`] when it has one (`jdbc`), otherwise
//! through its format's source: a fresh source reads everything there is now (as
//! `Trigger.Once` would) into memory, with its private log in a temporary directory removed
//! afterwards. The stream-static join reads it once per refresh (`refresh`:
//! `every-batch`, the default, `once`, or an interval).

use std::any::Any;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session as DfSession;
use datafusion::datasource::{source_as_provider, TableProvider, TableType};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;

use crate::connector::{ReadLimit, SourceContext, SourceFactory, SourceSpec, TableFactory};
use crate::error::{EngineError, Result};
use crate::operators::join::static_join::Refresh;

/// A table that is not a stream.
pub struct StaticTable {
    /// What the user asked for (without `refresh`).
    pub spec: SourceSpec,
    /// The table's schema.
    pub schema: SchemaRef,
    /// When a stream-static join reads it again.
    pub refresh: Refresh,
    reader: Reader,
}

/// What reads a static table.
#[derive(Clone)]
pub enum Reader {
    /// The format's own table reader.
    Table(Arc<dyn TableFactory>),
    /// The format's stream source, read to its end.
    Source(Arc<dyn SourceFactory>),
}

impl std::fmt::Debug for StaticTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticTable")
            .field("format", &self.spec.format)
            .field("path", &self.spec.path)
            .field("refresh", &self.refresh)
            .finish()
    }
}

static READS: AtomicU64 = AtomicU64::new(0);

impl StaticTable {
    /// A static table of `spec`'s format, read by `factory`; the `refresh` option is taken out
    /// of the spec's options.
    pub fn new(mut spec: SourceSpec, reader: Reader) -> Result<Self> {
        let refresh = Refresh::parse(spec.options.get("refresh"))?;
        spec.options.remove("refresh");
        let schema = match &reader {
            Reader::Table(t) => t.resolve_schema(&spec)?,
            Reader::Source(f) => f.resolve_schema(&spec)?,
        };
        Ok(Self {
            spec,
            schema,
            refresh,
            reader,
        })
    }

    /// How many times static tables were read in this process (tests check the refresh
    /// policy with it).
    pub fn reads() -> u64 {
        READS.load(Ordering::SeqCst)
    }

    /// Reads the whole table as it is now.
    pub fn read(&self) -> Result<Vec<RecordBatch>> {
        let read = READS.fetch_add(1, Ordering::SeqCst);
        let factory = match &self.reader {
            Reader::Table(t) => {
                return t.read(&self.spec, &self.schema).map_err(|e| {
                    e.context(&format!("reading the static {} table", self.spec.format))
                })
            }
            Reader::Source(f) => f,
        };
        let dir = std::env::temp_dir().join(format!("sluice-static-{}-{read}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| {
            EngineError::external(format!(
                "cannot create the temporary directory {} to read a static table: {e}",
                dir.display()
            ))
        })?;
        let result = (|| {
            let ctx = SourceContext {
                query_id: "static-table".into(),
                index: 0,
                checkpoint_dir: dir.clone(),
            };
            let mut source = factory.create(&self.spec, Arc::clone(&self.schema), &ctx)?;
            match source.latest_offset(None, ReadLimit::All)? {
                Some(end) => source.get_batch(None, &end),
                None => Ok(Vec::new()),
            }
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result.map_err(|e| {
            e.context(&format!(
                "reading the static {} table {}",
                self.spec.format,
                self.spec.path.as_deref().unwrap_or("")
            ))
        })
    }
}

#[async_trait]
impl TableProvider for StaticTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        None
    }
    async fn scan(
        &self,
        _state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let batches = self
            .read()
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        Ok(
            datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
                &[batches],
                Arc::clone(&self.schema),
                projection.cloned(),
            )?,
        )
    }
}

/// The static table behind a table scan, if it is one.
pub fn static_of_scan(scan: &datafusion::logical_expr::TableScan) -> Option<Arc<StaticTable>> {
    let provider = source_as_provider(&scan.source).ok()?;
    let any: Arc<dyn Any + Send + Sync> = provider;
    any.downcast::<StaticTable>().ok()
}
