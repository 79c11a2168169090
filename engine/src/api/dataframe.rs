//! [`DataFrame`]: a (streaming) table being described with Spark's vocabulary. Operations build
//! a DataFusion logical plan; nothing runs until `write_stream().start()` (or `collect()` for
//! batch tables).

use crate::exec::expectations::{Checks, Expectation, OnViolation};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{Expr, LogicalPlan};

use crate::api::session::Session;
use crate::api::writer::DataStreamWriter;
use crate::error::{EngineError, Result};
use crate::plan::is_streaming;

/// A table described by a plan: streaming when it reads a stream.
#[derive(Clone)]
pub struct DataFrame {
    session: Session,
    df: datafusion::dataframe::DataFrame,
    /// Data-quality rules on the rows written ([`DataFrame::expect`]).
    expectations: Vec<Expectation>,
}

impl std::fmt::Debug for DataFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataFrame[{}]", self.df.logical_plan().display())
    }
}

impl DataFrame {
    pub(crate) fn from_datafusion(session: Session, df: datafusion::dataframe::DataFrame) -> Self {
        Self {
            session,
            df,
            expectations: Vec::new(),
        }
    }

    fn map(
        self,
        f: impl FnOnce(
            datafusion::dataframe::DataFrame,
        ) -> datafusion::error::Result<datafusion::dataframe::DataFrame>,
    ) -> Result<Self> {
        Ok(Self {
            df: f(self.df)?,
            session: self.session,
            expectations: self.expectations,
        })
    }

    /// The session this DataFrame belongs to.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Whether this DataFrame reads a stream.
    pub fn is_streaming(&self) -> bool {
        is_streaming(self.df.logical_plan())
    }

    /// The logical plan.
    pub fn logical_plan(&self) -> &LogicalPlan {
        self.df.logical_plan()
    }

    /// The schema of the rows.
    pub fn schema(&self) -> SchemaRef {
        std::sync::Arc::new(self.df.schema().as_arrow().clone())
    }

    /// Projects expressions (`select(vec![col("a"), col("b") * lit(2)])`).
    pub fn select(self, exprs: impl IntoIterator<Item = Expr>) -> Result<Self> {
        self.map(|df| df.select(exprs))
    }

    /// Projects columns by name.
    pub fn select_columns(self, columns: &[&str]) -> Result<Self> {
        self.map(|df| df.select_columns(columns))
    }

    /// Keeps the rows where `predicate` is true.
    pub fn filter(self, predicate: Expr) -> Result<Self> {
        self.map(|df| df.filter(predicate))
    }

    /// Alias of [`filter`](Self::filter) (`where` is a Rust keyword).
    pub fn where_(self, predicate: Expr) -> Result<Self> {
        self.filter(predicate)
    }

    /// Adds or replaces a column.
    pub fn with_column(self, name: &str, expr: Expr) -> Result<Self> {
        self.map(|df| df.with_column(name, expr))
    }

    /// Renames a column (no-op when it does not exist, as in Spark).
    pub fn with_column_renamed(self, old: &str, new: &str) -> Result<Self> {
        self.map(|df| df.with_column_renamed(old, new))
    }

    /// Drops columns.
    pub fn drop(self, columns: &[&str]) -> Result<Self> {
        self.map(|df| df.drop_columns(columns))
    }

    /// Declares `column` as the event time, late by at most `delay` (`"10 minutes"`): windows
    /// of it close, and rows for closed windows are late, as in Spark.
    pub fn with_watermark(self, column: &str, delay: &str) -> Result<Self> {
        let delay = crate::options::parse_duration(delay)
            .map_err(|e| EngineError::user(format!("with_watermark: {e}")))?;
        let (state, plan) = self.df.into_parts();
        let col = plan
            .schema()
            .qualified_field_with_unqualified_name(column)
            .map_err(|_| EngineError::user(format!("with_watermark: no column '{column}'")))?;
        if !matches!(
            col.1.data_type(),
            arrow::datatypes::DataType::Timestamp(_, _)
        ) {
            // Spark: "Event time must be defined on a window or a timestamp"
            return Err(EngineError::user(format!(
                "with_watermark: event time must be defined on a timestamp, but '{column}' is of \
                 type {}; declare it TIMESTAMP in the schema (or CAST it to one)",
                col.1.data_type()
            )));
        }
        let column = datafusion::common::Column::from(col);
        let plan = crate::operators::watermark::WatermarkNode::plan(
            plan,
            column,
            delay.as_millis() as i64,
        );
        Ok(Self {
            df: datafusion::dataframe::DataFrame::new(state, plan),
            session: self.session,
            expectations: self.expectations,
        })
    }

    /// The rows of both DataFrames (Spark's `union`: UNION ALL, columns matched by position).
    /// Each streaming input keeps its own watermark; the query's watermark is the minimum of
    /// them (or the maximum, with `multipleWatermarkPolicy = max`).
    pub fn union(self, other: DataFrame) -> Result<Self> {
        self.map(|df| df.union(other.df))
    }

    /// The rows of both DataFrames, columns matched by name (Spark's `unionByName`).
    pub fn union_by_name(self, other: DataFrame) -> Result<Self> {
        self.map(|df| df.union_by_name(other.df))
    }

    /// Names this DataFrame's columns `name.<column>` (Spark's `alias`), e.g. to tell the
    /// sides of a join apart.
    pub fn alias(self, name: &str) -> Result<Self> {
        self.map(|df| df.alias(name))
    }

    /// Joins with `right` on equal `on` columns (Spark's `join(other, on=[...], how)`): each key
    /// column appears once (first, then the left's other columns, then the right's); `how` is
    /// Spark's: `inner`, `left`/`left_outer`, `right`/`right_outer`, `full`/`full_outer`/
    /// `outer`, `left_semi`/`semi`, `left_anti`/`anti`.
    pub fn join(self, right: DataFrame, on: &[&str], how: &str) -> Result<Self> {
        let jt = join_type(how)?;
        let lschema = self.df.schema().clone();
        let rschema = right.df.schema().clone();
        let key = |schema: &datafusion::common::DFSchema, k: &str, side: &str| {
            schema
                .qualified_field_with_unqualified_name(k)
                .map(|(q, f)| Expr::Column(datafusion::common::Column::new(q.cloned(), f.name())))
                .map_err(|_| {
                    EngineError::user(format!("join: the {side} side has no column '{k}'"))
                })
        };
        let mut cond = Vec::new();
        let mut lkeys = Vec::new();
        let mut rkeys = Vec::new();
        for k in on {
            let (l, r) = (key(&lschema, k, "left")?, key(&rschema, k, "right")?);
            cond.push(l.clone().eq(r.clone()));
            lkeys.push(l);
            rkeys.push(r);
        }
        let joined = self.map(|df| df.join_on(right.df, jt, cond))?;
        use datafusion::logical_expr::JoinType as T;
        if matches!(jt, T::LeftSemi | T::LeftAnti) {
            return Ok(joined);
        }
        let mut select = Vec::new();
        for ((k, l), r) in on.iter().zip(&lkeys).zip(&rkeys) {
            select.push(
                match jt {
                    T::Right => r.clone(),
                    T::Full => crate::functions::coalesce(vec![l.clone(), r.clone()]),
                    _ => l.clone(),
                }
                .alias(*k),
            );
        }
        let is_key = |name: &str| on.contains(&name);
        for (q, f) in lschema.iter().chain(rschema.iter()) {
            if !is_key(f.name()) {
                select.push(Expr::Column(datafusion::common::Column::new(
                    q.cloned(),
                    f.name(),
                )));
            }
        }
        joined.select(select)
    }

    /// Joins with `right` where `condition` holds (Spark's `join(other, condition, how)`);
    /// `how` as in [`join`](Self::join). Both sides' columns are kept.
    pub fn join_on(self, right: DataFrame, condition: Expr, how: &str) -> Result<Self> {
        let jt = join_type(how)?;
        self.map(|df| df.join_on(right.df, jt, [condition]))
    }

    /// Groups the rows (`group_by([window(col("ts"), "1 minute"), col("action")])`), then
    /// [`GroupedData::agg`] or [`GroupedData::count`].
    pub fn group_by(self, exprs: impl IntoIterator<Item = Expr>) -> GroupedData {
        GroupedData {
            df: self,
            keys: exprs.into_iter().collect(),
        }
    }

    /// Drops rows whose `columns` repeat an earlier row's (all columns when empty). Without a
    /// watermark the keys are remembered forever; with one on an event-time column among
    /// `columns`, until the watermark passes it.
    pub fn drop_duplicates(self, columns: &[&str]) -> Result<Self> {
        self.dedup(columns, false)
    }

    /// Drops rows whose `columns` repeat an earlier row's within the watermark delay of the
    /// first (needs `with_watermark`).
    pub fn drop_duplicates_within_watermark(self, columns: &[&str]) -> Result<Self> {
        self.dedup(columns, true)
    }

    fn dedup(self, columns: &[&str], within: bool) -> Result<Self> {
        let (state, plan) = self.df.into_parts();
        let schema = plan.schema().clone();
        let cols = if columns.is_empty() {
            schema.columns()
        } else {
            columns
                .iter()
                .map(|c| {
                    schema
                        .qualified_field_with_unqualified_name(c)
                        .map(datafusion::common::Column::from)
                        .map_err(|_| EngineError::user(format!("drop_duplicates: no column '{c}'")))
                })
                .collect::<Result<Vec<_>>>()?
        };
        let plan = crate::operators::dedup::DedupNode::plan(plan, cols, within);
        Ok(Self {
            df: datafusion::dataframe::DataFrame::new(state, plan),
            session: self.session,
            expectations: self.expectations,
        })
    }

    /// Sorts (`orderBy`): on a stream only an aggregation's result in complete mode, as in
    /// Spark. Each key is (expression, ascending, nulls first).
    pub fn sort(self, keys: Vec<(Expr, bool, bool)>) -> Result<Self> {
        let exprs = keys
            .into_iter()
            .map(|(e, asc, nulls_first)| e.sort(asc, nulls_first))
            .collect();
        self.map(|df| df.sort(exprs))
    }

    /// Spark's generators on an array column (`explode`, `posexplode`, `_outer`): one row per
    /// element, the other columns repeated; the element keeps the column's name, and
    /// `position` names a 0-based INT position column put before it. Python's
    /// `select(explode(split(value, " ")).alias("word"))` is a projection then this.
    pub fn generate(self, column: &str, position: Option<&str>, outer: bool) -> Result<Self> {
        if !self.is_streaming() {
            if position.is_some() || outer {
                return Err(EngineError::user(
                    "posexplode and explode_outer are supported on streams only for now; \
                     use explode on a static DataFrame",
                ));
            }
            // a static table: DataFusion's own UNNEST runs it (NULL and empty arrays give no
            // row, as Spark's explode)
            let opts = datafusion::common::UnnestOptions::new().with_preserve_nulls(false);
            return self.map(|df| df.unnest_columns_with_options(&[column], opts));
        }
        let (state, plan) = self.df.into_parts();
        let col = plan
            .schema()
            .qualified_field_with_unqualified_name(column)
            .map(datafusion::common::Column::from)
            .map_err(|_| EngineError::user(format!("explode: no column '{column}'")))?;
        let plan = crate::operators::generate::GenerateNode::plan(
            plan,
            col,
            position.map(str::to_string),
            outer,
        )?;
        Ok(Self {
            df: datafusion::dataframe::DataFrame::new(state, plan),
            session: self.session,
            expectations: self.expectations,
        })
    }

    /// An expectation on the rows the query writes (Databricks' `@dlt.expect`): rows where
    /// `condition` (a SQL boolean expression) is FALSE are counted and kept; NULL passes, as a
    /// SQL CHECK does. Counts are in each batch's progress (`dataQuality`). Expectations stay
    /// with the DataFrame through later transformations and check the rows finally written.
    pub fn expect(self, name: &str, condition: &str) -> Result<Self> {
        self.with_expectation(name, condition, OnViolation::Warn)
    }

    /// Like [`DataFrame::expect`], the failing rows removed before the sink (and written to
    /// the quarantine sink if the writer has one).
    pub fn expect_or_drop(self, name: &str, condition: &str) -> Result<Self> {
        self.with_expectation(name, condition, OnViolation::Drop)
    }

    /// Like [`DataFrame::expect`], a failing row stopping the query before the sink commits
    /// the batch; the error names the expectation, the batch and the first failing row.
    pub fn expect_or_fail(self, name: &str, condition: &str) -> Result<Self> {
        self.with_expectation(name, condition, OnViolation::Fail)
    }

    /// Adds an expectation (checked against this DataFrame's columns now, and planned again
    /// against the written rows when the query starts).
    pub fn with_expectation(
        mut self,
        name: &str,
        condition: &str,
        on_violation: OnViolation,
    ) -> Result<Self> {
        let e = Expectation {
            name: name.to_string(),
            condition: condition.to_string(),
            on_violation,
        };
        let mut all = self.expectations.clone();
        all.push(e);
        Checks::plan(&all, &self.schema(), &self.session.context().state(), "")?;
        self.expectations = all;
        Ok(self)
    }

    /// The expectations on the rows this DataFrame's query writes.
    pub fn expectations(&self) -> &[Expectation] {
        &self.expectations
    }

    /// Registers this DataFrame as a view for `session.sql`.
    pub fn create_or_replace_temp_view(&self, name: &str) -> Result<()> {
        self.session.register_view(name, self)
    }

    /// Starts describing how to write this stream.
    pub fn write_stream(self) -> DataStreamWriter {
        DataStreamWriter::new(self)
    }

    /// Runs a batch (non-streaming) DataFrame, e.g. over a memory sink's table.
    pub fn collect(self) -> Result<Vec<RecordBatch>> {
        if self.is_streaming() {
            return Err(EngineError::user(
                "Queries with streaming sources must be executed with write_stream().start()",
            ));
        }
        let df = self.df;
        self.session
            .block_on(async move { df.collect().await })
            .map_err(Into::into)
    }
}

/// A DataFrame grouped by keys, waiting for its aggregates.
pub struct GroupedData {
    df: DataFrame,
    keys: Vec<Expr>,
}

impl GroupedData {
    /// Aggregates (`agg([count(lit(1)).alias("count"), sum(col("value"))])`).
    pub fn agg(self, aggs: impl IntoIterator<Item = Expr>) -> Result<DataFrame> {
        let keys = self.keys;
        self.df
            .map(|df| df.aggregate(keys, aggs.into_iter().collect()))
    }

    /// `count(*)` per group, in a column named `count`.
    pub fn count(self) -> Result<DataFrame> {
        self.agg([
            datafusion::functions_aggregate::expr_fn::count(datafusion::logical_expr::lit(1))
                .alias("count"),
        ])
    }
}

/// Spark's join type names.
fn join_type(how: &str) -> Result<datafusion::logical_expr::JoinType> {
    use datafusion::logical_expr::JoinType as T;
    Ok(match how.to_ascii_lowercase().replace('_', "").as_str() {
        "inner" => T::Inner,
        "left" | "leftouter" => T::Left,
        "right" | "rightouter" => T::Right,
        "full" | "fullouter" | "outer" => T::Full,
        "leftsemi" | "semi" => T::LeftSemi,
        "leftanti" | "anti" => T::LeftAnti,
        _ => {
            return Err(EngineError::user(format!(
                "join: unknown join type '{how}'; use inner, left_outer, right_outer, \
                 full_outer, left_semi or left_anti"
            )))
        }
    })
}
