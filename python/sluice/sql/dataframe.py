"""``DataFrame`` and ``GroupedData``: PySpark's names over the engine's DataFrame. Streaming
DataFrames run with ``writeStream``; static ones (``spark.read``, a ``foreachBatch`` batch)
also offer ``collect``, ``toPandas``, ``toArrow``, ``count`` and ``write``."""

from sluice.sql.column import Column, _col, _name
from sluice.sql.row import Row
from sluice.sql.types import from_arrow_schema


def _cols(cols):
    if len(cols) == 1 and isinstance(cols[0], (list, tuple)):
        cols = tuple(cols[0])
    return [_col(c)._c for c in cols]


class DataFrame:
    """A table described by a plan: streaming when it reads a stream."""

    def __init__(self, native, session, batch=None):
        self._df = native
        self.sparkSession = session
        # (write id, batch id, checkpoint) inside foreachBatch: batch writes are idempotent
        self._batch = batch

    def _wrap(self, native):
        return DataFrame(native, self.sparkSession, self._batch)

    # --- schema -----------------------------------------------------------------------------
    @property
    def schema(self):
        return from_arrow_schema(self._df.arrow_schema())

    @property
    def columns(self):
        return [f.name for f in self._df.arrow_schema()]

    @property
    def dtypes(self):
        return [(f.name, f.dataType.simpleString()) for f in self.schema.fields]

    @property
    def isStreaming(self):
        return self._df.is_streaming()

    def printSchema(self, level=None):
        if level is not None:
            raise ValueError("printSchema: level is not supported; the whole tree is printed")
        print(self.schema.treeString(), end="")

    def explain(self, extended=None, mode=None):
        """Prints the logical plan (Sluice has one plan: ``extended`` shows the same)."""
        if mode not in (None, "simple", "extended"):
            raise ValueError("explain: mode %r is not supported; simple or extended" % (mode,))
        print(self._df.plan_text())

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self.columns:
            return Column(_col(name)._c)
        raise AttributeError("'DataFrame' object has no attribute '%s'" % name)

    def __getitem__(self, item):
        if isinstance(item, str):
            return _col(item)
        if isinstance(item, Column):
            return self.filter(item)
        if isinstance(item, (list, tuple)):
            return self.select(*item)
        raise TypeError("unexpected item type: %s" % type(item))

    # --- transformations ----------------------------------------------------------------------
    def select(self, *cols):
        return self._wrap(self._df.select(_cols(cols)))

    def selectExpr(self, *expr):
        from sluice.sql.functions import expr as _expr

        if len(expr) == 1 and isinstance(expr[0], list):
            expr = expr[0]
        return self.select(*[_expr(e) for e in expr])

    def filter(self, condition):
        if isinstance(condition, str):
            from sluice.sql.functions import expr as _expr

            condition = _expr(condition)
        return self._wrap(self._df.filter(condition._c))

    where = filter

    def withColumn(self, colName, col):
        return self._wrap(self._df.with_column(colName, col._c))

    def withColumns(self, colsMap):
        df = self
        for k, v in colsMap.items():
            df = df.withColumn(k, v)
        return df

    def withColumnRenamed(self, existing, new):
        return self._wrap(self._df.with_column_renamed(existing, new))

    def withColumnsRenamed(self, colsMap):
        df = self
        for k, v in colsMap.items():
            df = df.withColumnRenamed(k, v)
        return df

    def drop(self, *cols):
        names = [_name(c) for c in cols]
        return self._wrap(self._df.drop(names))

    def withWatermark(self, eventTime, delayThreshold):
        return self._wrap(self._df.with_watermark(eventTime, delayThreshold))

    def union(self, other):
        return self._wrap(self._df.union(other._df))

    unionAll = union

    def unionByName(self, other, allowMissingColumns=False):
        if allowMissingColumns:
            raise ValueError("unionByName: allowMissingColumns=True is not supported yet")
        return self._wrap(self._df.union_by_name(other._df))

    def dropDuplicates(self, subset=None):
        return self._wrap(self._df.drop_duplicates(list(subset or []), False))

    drop_duplicates = dropDuplicates

    def distinct(self):
        return self.dropDuplicates()

    def dropDuplicatesWithinWatermark(self, subset=None):
        return self._wrap(self._df.drop_duplicates(list(subset or []), True))

    def join(self, other, on=None, how=None):
        how = how or "inner"
        if on is None:
            raise ValueError("join: give the join columns or a condition (cross joins are not supported)")
        if isinstance(on, str):
            return self._wrap(self._df.join(other._df, [on], None, how))
        if isinstance(on, Column):
            return self._wrap(self._df.join(other._df, [], on._c, how))
        if isinstance(on, (list, tuple)) and all(isinstance(c, str) for c in on):
            return self._wrap(self._df.join(other._df, list(on), None, how))
        if isinstance(on, (list, tuple)):
            cond = on[0]
            for c in on[1:]:
                cond = cond & c
            return self._wrap(self._df.join(other._df, [], cond._c, how))
        raise TypeError("join: on must be a column name, a list of names or a Column")

    def orderBy(self, *cols, ascending=None):
        """Sorts; on a stream only an aggregation's result in complete mode (as in Spark)."""
        if len(cols) == 1 and isinstance(cols[0], (list, tuple)):
            cols = tuple(cols[0])
        if ascending is None:
            ascending = [True] * len(cols)
        elif isinstance(ascending, (bool, int)):
            ascending = [bool(ascending)] * len(cols)
        elif len(ascending) != len(cols):
            raise ValueError("orderBy: %d columns but %d ascending flags" % (len(cols), len(ascending)))
        keys = []
        for c, up in zip(cols, ascending):
            c = _col(c)
            asc, nulls_first = c._sort if c._sort is not None else (bool(up), bool(up))
            keys.append((c._c, asc, nulls_first))
        return self._wrap(self._df.order_by(keys))

    sort = orderBy

    def alias(self, alias):
        return self._wrap(self._df.alias(alias))

    def groupBy(self, *cols):
        return GroupedData(self, _cols(cols))

    groupby = groupBy

    def agg(self, *exprs):
        return self.groupBy().agg(*exprs)

    def createOrReplaceTempView(self, name):
        self._df.create_or_replace_temp_view(name)

    createTempView = createOrReplaceTempView

    # --- static DataFrames ------------------------------------------------------------------------
    def toArrow(self):
        """The rows as a pyarrow Table."""
        return self._df.collect_arrow()

    def __arrow_c_stream__(self, requested_schema=None):
        return self.toArrow().__arrow_c_stream__(requested_schema)

    def toPandas(self):
        return self.toArrow().to_pandas()

    def collect(self):
        t = self.toArrow()
        names = t.column_names
        return [Row._make(names, r) for r in zip(*[c.to_pylist() for c in t.columns])]

    def take(self, num):
        return self.collect()[:num]

    def head(self, n=None):
        rows = self.collect()
        if n is None:
            return rows[0] if rows else None
        return rows[:n]

    def first(self):
        return self.head()

    def count(self):
        return self.toArrow().num_rows

    def isEmpty(self):
        return self.count() == 0

    def show(self, n=20, truncate=True, vertical=False):
        """Prints the first ``n`` rows as Spark does (the console sink's table); ``truncate``
        cuts cells to 20 characters."""
        if vertical:
            raise ValueError("show: vertical=True is not supported")
        if not isinstance(truncate, bool):
            raise ValueError("show: truncate takes True or False (a width is not supported)")
        print(self._df.show_text(n, truncate), end="")

    def persist(self, storageLevel=None):
        """A no-op kept for PySpark programs: a batch's rows are already in memory."""
        return self

    cache = persist

    def unpersist(self, blocking=False):
        return self

    # --- writing -------------------------------------------------------------------------------------
    @property
    def write(self):
        from sluice.sql.readwriter import DataFrameWriter

        return DataFrameWriter(self)

    @property
    def writeStream(self):
        from sluice.sql.streaming.readwriter import DataStreamWriter

        return DataStreamWriter(self)

    def __repr__(self):
        return "DataFrame[%s]" % ", ".join("%s: %s" % c for c in self.dtypes)


class GroupedData:
    """A DataFrame grouped by keys, waiting for its aggregates."""

    def __init__(self, df, keys):
        self._parent = df
        self._keys = keys

    def agg(self, *exprs):
        if len(exprs) == 1 and isinstance(exprs[0], dict):
            from sluice.sql import functions as F

            exprs = [getattr(F, fn)(c) for c, fn in exprs[0].items()]
        return self._parent._wrap(self._parent._df.aggregate(self._keys, [e._c for e in exprs]))

    def count(self):
        from sluice.sql import functions as F

        return self.agg(F.count("*").alias("count"))

    def _simple(self, fn, cols):
        from sluice.sql import functions as F

        if not cols:
            raise ValueError("%s: give the columns to aggregate" % fn)
        return self.agg(*[getattr(F, fn)(c) for c in cols])

    def sum(self, *cols):
        return self._simple("sum", cols)

    def avg(self, *cols):
        return self._simple("avg", cols)

    mean = avg

    def min(self, *cols):
        return self._simple("min", cols)

    def max(self, *cols):
        return self._simple("max", cols)
