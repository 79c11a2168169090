//! [`DataStreamReader`]: `session.read_stream().format(..).option(..).schema(..).load(path)`.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::LogicalPlanBuilder;

use crate::api::session::Session;
use crate::connector::SourceSpec;
use crate::ddl::parse_ddl_schema;
use crate::error::Result;
use crate::options::Options;
use crate::plan::static_table::Reader;
use crate::plan::{StaticTable, StreamTable};
use crate::DataFrame;

/// A schema given to `schema(..)`: a DDL string or an Arrow schema.
pub trait IntoSchema {
    /// Converts into an Arrow schema.
    fn into_schema(self) -> Result<SchemaRef>;
}
impl IntoSchema for &str {
    fn into_schema(self) -> Result<SchemaRef> {
        Ok(Arc::new(parse_ddl_schema(self)?))
    }
}
impl IntoSchema for String {
    fn into_schema(self) -> Result<SchemaRef> {
        self.as_str().into_schema()
    }
}
impl IntoSchema for SchemaRef {
    fn into_schema(self) -> Result<SchemaRef> {
        Ok(self)
    }
}
impl IntoSchema for Schema {
    fn into_schema(self) -> Result<SchemaRef> {
        Ok(Arc::new(self))
    }
}

/// Describes a stream to read. Errors (bad schema, unknown format or option) surface at `load`.
pub struct DataStreamReader {
    session: Session,
    format: String,
    options: Options,
    schema: Option<Result<SchemaRef>>,
    /// `session.read()`: a static table, read whole when used (see [`DataFrameReader`]).
    is_static: bool,
}

/// `session.read()`: describes a static table (a table that is not a stream, e.g. the
/// dimension table of a stream-static join), with the same formats and options as
/// `read_stream()`, plus `refresh` (`every-batch`, the default, `once`, or an interval: when a
/// stream-static join reads it again).
pub type DataFrameReader = DataStreamReader;

impl DataStreamReader {
    pub(crate) fn new(session: Session) -> Self {
        Self {
            session,
            format: "parquet".into(),
            options: Options::new(),
            schema: None,
            is_static: false,
        }
    }

    pub(crate) fn new_static(session: Session) -> Self {
        Self {
            is_static: true,
            ..Self::new(session)
        }
    }

    /// The source format: `json`, `csv`, `parquet`, `text` (default `parquet`, as Spark).
    pub fn format(mut self, format: &str) -> Self {
        self.format = format.to_ascii_lowercase();
        self
    }

    /// Sets an option (keys are case-insensitive).
    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        self.options.set(key, value.to_string());
        self
    }

    /// Sets several options.
    pub fn options<K: AsRef<str>, V: ToString>(
        mut self,
        opts: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (k, v) in opts {
            self.options.set(k.as_ref(), v.to_string());
        }
        self
    }

    /// The schema, as a DDL string (`"ts TIMESTAMP, action STRING"`) or an Arrow schema.
    pub fn schema(mut self, schema: impl IntoSchema) -> Self {
        self.schema = Some(schema.into_schema());
        self
    }

    /// Loads the stream at `path` (a directory or a glob for file formats).
    pub fn load(self, path: impl AsRef<str>) -> Result<DataFrame> {
        let path = path.as_ref().to_string();
        self.load_spec(Some(path))
    }

    /// Loads a stream that takes no path (its location is in the options).
    pub fn load_default(self) -> Result<DataFrame> {
        let path = self.options.get("path").map(str::to_string);
        self.load_spec(path)
    }

    /// `format("json").load(path)`.
    pub fn json(self, path: impl AsRef<str>) -> Result<DataFrame> {
        self.format("json").load(path)
    }
    /// `format("csv").load(path)`.
    pub fn csv(self, path: impl AsRef<str>) -> Result<DataFrame> {
        self.format("csv").load(path)
    }
    /// `format("parquet").load(path)`.
    pub fn parquet(self, path: impl AsRef<str>) -> Result<DataFrame> {
        self.format("parquet").load(path)
    }
    /// `format("text").load(path)`: one `value` column per line.
    pub fn text(self, path: impl AsRef<str>) -> Result<DataFrame> {
        self.format("text").load(path)
    }

    fn load_spec(self, path: Option<String>) -> Result<DataFrame> {
        let schema = self.schema.transpose()?;
        let table_reader = match self.is_static {
            true => self.session.registry().table(&self.format),
            false => None,
        };
        let factory = match table_reader {
            Some(_) => None,
            None => Some(self.session.registry().source(&self.format)?),
        };
        let mut options = self
            .options
            .with_storage_defaults(&self.session.storage_options());
        options.remove("path");
        let spec = SourceSpec {
            format: self.format.clone(),
            path,
            schema,
            options,
            validate_only: self
                .session
                .conf(crate::api::session::VALIDATE_ONLY_CONF)
                .as_deref()
                == Some("true"),
        };
        if self.is_static {
            let reader = match (table_reader, &factory) {
                (Some(t), _) => Reader::Table(t),
                (None, Some(f)) => Reader::Source(Arc::clone(f)),
                (None, None) => return Err(crate::EngineError::bug("no reader for a table")),
            };
            let table = Arc::new(StaticTable::new(spec, reader)?);
            let plan =
                LogicalPlanBuilder::scan(self.format.as_str(), provider_as_source(table), None)?
                    .build()?;
            let df = datafusion::dataframe::DataFrame::new(self.session.context().state(), plan);
            return Ok(DataFrame::from_datafusion(self.session, df));
        }
        let factory = factory.ok_or_else(|| crate::EngineError::bug("no source factory"))?;
        let schema = factory.resolve_schema(&spec)?;
        let table = Arc::new(StreamTable {
            spec,
            schema: Arc::clone(&schema),
        });
        let plan = LogicalPlanBuilder::scan(self.format.as_str(), provider_as_source(table), None)?
            .build()?;
        let df = datafusion::dataframe::DataFrame::new(self.session.context().state(), plan);
        Ok(DataFrame::from_datafusion(self.session, df))
    }
}
