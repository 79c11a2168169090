"""``spark.read`` (static tables) and ``df.write`` (a static DataFrame written once through
Sluice's sinks: parquet, csv, json, delta, jdbc, ...)."""

import os
import uuid

from sluice.errors import AnalysisException

from sluice.sql.types import StructType


def _opt(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class _Described:
    """What readers and writers share: ``format``, ``option``, ``options`` (values written as
    Spark writes them: ``true``/``false`` for booleans)."""

    def format(self, source):
        self._format = source
        return self

    def option(self, key, value):
        self._options[key] = _opt(value)
        return self

    def options(self, **options):
        for k, v in options.items():
            self.option(k, v)
        return self


class _Writer(_Described):
    """What the static and stream writers share besides: ``partitionBy``."""

    def partitionBy(self, *cols):
        if len(cols) == 1 and isinstance(cols[0], (list, tuple)):
            cols = cols[0]
        return self.option("partitionBy", ",".join(cols))


class _Reader(_Described):
    """What the stream and static readers share: format, options, schema."""

    _static = False

    def __init__(self, spark):
        self._spark = spark
        self._format = None
        self._options = {}
        self._schema = None

    def schema(self, schema):
        self._schema = schema.toDDL() if isinstance(schema, StructType) else schema
        return self

    def load(self, path=None, format=None, schema=None, **options):
        if format is not None:
            self.format(format)
        if schema is not None:
            self.schema(schema)
        self.options(**options)
        from sluice.sql.dataframe import DataFrame

        native = self._spark._native.read(
            self._format or "parquet",
            list(self._options.items()),
            self._schema,
            path,
            self._static,
        )
        return DataFrame(native, self._spark)

    def json(self, path, schema=None, **options):
        return self.load(path, "json", schema, **{k: v for k, v in options.items() if v is not None})

    def csv(self, path, schema=None, sep=None, header=None, **options):
        opts = {k: v for k, v in options.items() if v is not None}
        if sep is not None:
            opts["sep"] = sep
        if header is not None:
            opts["header"] = header
        return self.load(path, "csv", schema, **opts)

    def parquet(self, path, **options):
        return self.load(path, "parquet", None, **options)

    def text(self, path, wholetext=False, lineSep=None, **options):
        if wholetext:
            raise ValueError("text: wholetext=True is not supported yet")
        if lineSep is not None:
            options["lineSep"] = lineSep
        return self.load(path, "text", None, **options)

    def table(self, tableName):
        """A view registered with ``createOrReplaceTempView`` (or a memory sink's table), else
        the Delta table ``tableName`` in the warehouse directory (``toTable`` writes there)."""
        from sluice.errors import AnalysisException
        from sluice.sql.dataframe import DataFrame

        try:
            return DataFrame(self._spark._native.table(tableName), self._spark)
        except AnalysisException as e:
            if "not found" not in str(e):
                raise
            return self.load(self._spark._table_path(tableName), "delta")


class DataFrameReader(_Reader):
    """``spark.read``: a static table."""

    _static = True

    def jdbc(self, url, table, properties=None):
        self.option("url", url).option("dbtable", table)
        for k, v in (properties or {}).items():
            self.option(k, v)
        return self.load(None, "jdbc")


class DataFrameWriter(_Writer):
    """``df.write``: the rows of a static DataFrame written once (Spark's save modes
    ``append`` and ``overwrite``)."""

    def __init__(self, df):
        self._df = df
        self._format = "parquet"
        self._options = {}
        self._mode = "errorifexists"

    def mode(self, saveMode):
        self._mode = (saveMode or "errorifexists").lower()
        if self._mode == "error":
            self._mode = "errorifexists"
        if self._mode not in ("append", "overwrite", "errorifexists", "ignore"):
            raise ValueError("mode: unknown save mode %r (append, overwrite, errorifexists, ignore)" % saveMode)
        return self

    def save(self, path=None, format=None, mode=None, partitionBy=None, **options):
        if format is not None:
            self.format(format)
        if mode is not None:
            self.mode(mode)
        if partitionBy is not None:
            self.partitionBy(partitionBy)
        self.options(**options)
        if path is not None:
            self._options["path"] = path
        mode = self._mode
        if mode in ("errorifexists", "ignore"):
            target = self._options.get("path")
            if target is None:
                raise ValueError(
                    "save: mode %r needs to know whether the target exists; give mode('append') "
                    "or mode('overwrite') for %s" % (mode, self._format)
                )
            if os.path.exists(target) and os.listdir(target):
                if mode == "ignore":
                    return
                raise AnalysisException(
                    "[PATH_ALREADY_EXISTS] Path %s already exists. Set mode as \"overwrite\" to "
                    "overwrite the existing path." % target
                )
            mode = "append"
        batch = self._df._batch
        if batch is not None:
            # inside foreachBatch: named by the query's checkpoint, the target and the batch id,
            # so a re-run batch is not written twice to a sink that keeps batch ids
            write_id, batch_id, checkpoint = batch
            target = self._options.get("path") or self._options.get("dbtable") or self._format
            write_id = "%s-%s" % (write_id, uuid.uuid5(uuid.NAMESPACE_URL, self._format + ":" + target).hex[:12])
        else:
            write_id, batch_id, checkpoint = str(uuid.uuid4()), 0, None
        self._df._df.write_batch(
            self._format, list(self._options.items()), mode, write_id, batch_id, checkpoint
        )

    def parquet(self, path, mode=None, partitionBy=None, **options):
        if partitionBy:
            self.partitionBy(partitionBy)
        self.save(path, "parquet", mode, **options)

    def json(self, path, mode=None, **options):
        self.save(path, "json", mode, **options)

    def csv(self, path, mode=None, header=None, **options):
        if header is not None:
            options["header"] = header
        self.save(path, "csv", mode, **options)

    def text(self, path, **options):
        self.save(path, "text", None, **options)

    def jdbc(self, url, table, mode=None, properties=None):
        self.option("url", url).option("dbtable", table)
        for k, v in (properties or {}).items():
            self.option(k, v)
        self.save(None, "jdbc", mode)

    def saveAsTable(self, name, format=None, mode=None, partitionBy=None, **options):
        self.save(self._df.sparkSession._table_path(name), format or "delta", mode, partitionBy, **options)
