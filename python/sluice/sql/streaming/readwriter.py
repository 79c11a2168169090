"""``spark.readStream`` and ``df.writeStream``."""

import os
import uuid

from sluice import _native
from sluice.sql.readwriter import _Reader, _Writer


class DataStreamReader(_Reader):
    """``spark.readStream``: ``format``, ``option(s)``, ``schema``, ``load``, ``json``, ``csv``,
    ``parquet``, ``text``, ``table``."""


class DataStreamWriter(_Writer):
    """``df.writeStream``: where and how a stream's results are written."""

    def __init__(self, df):
        self._df = df
        self._format = None
        self._options = {}
        self._mode = None
        self._trigger = None
        self._name = None
        self._foreach_batch = None

    def outputMode(self, outputMode):
        self._mode = outputMode
        return self

    def queryName(self, queryName):
        self._name = queryName
        return self

    def trigger(self, processingTime=None, once=None, continuous=None, availableNow=None):
        given = [x for x in (processingTime, once, continuous, availableNow) if x is not None]
        if len(given) != 1:
            raise ValueError("trigger: give exactly one of processingTime, once, continuous, availableNow")
        if continuous is not None:
            raise ValueError("trigger: continuous processing is not supported; use processingTime")
        if processingTime is not None:
            self._trigger = processingTime if processingTime.strip() else "0 seconds"
        elif once:
            self._trigger = "once"
        elif availableNow:
            self._trigger = "available-now"
        else:
            raise ValueError("trigger: once and availableNow take True")
        return self

    def foreachBatch(self, func):
        """``func(batch_df, batch_id)`` for every batch: ``batch_df`` is a static DataFrame
        (``toPandas()``, ``toArrow()``, ``collect()``, ``count()``, ``write``). A batch re-run
        after a crash is handed over again with the same id, as in Spark."""
        self._foreach_batch = func
        self._format = "foreach_batch"
        return self

    def foreach(self, f):
        raise ValueError("foreach is not supported; use foreachBatch (whole batches, vectorised)")

    def start(self, path=None, format=None, outputMode=None, partitionBy=None, queryName=None, **options):
        from sluice.sql.streaming.query import StreamingQuery

        if format is not None:
            self.format(format)
        if outputMode is not None:
            self.outputMode(outputMode)
        if partitionBy is not None:
            self.partitionBy(partitionBy)
        if queryName is not None:
            self.queryName(queryName)
        self.options(**options)
        if path is not None:
            self._options["path"] = path
        opts = dict(self._options)
        checkpoint = opts.pop("checkpointLocation", None)
        if checkpoint is None:
            root = self._df.sparkSession.conf.get("spark.sql.streaming.checkpointLocation")
            if root and self._name:
                checkpoint = os.path.join(root, self._name)
        spark = self._df.sparkSession
        func = None
        if self._foreach_batch is not None:
            user = self._foreach_batch
            # names the batch writes of this query (a sink keeps it, e.g. JDBC's marker rows)
            write_id = (
                "fb-%s" % uuid.uuid5(uuid.NAMESPACE_URL, os.path.abspath(checkpoint)).hex[:16]
                if checkpoint
                else None
            )

            def func(native_df, batch_id):
                from sluice.sql.dataframe import DataFrame

                ctx = (write_id, batch_id, checkpoint) if write_id else None
                user(DataFrame(native_df, spark, ctx), batch_id)

        spec = _Spec(self._format, list(opts.items()), self._mode, self._trigger, checkpoint, self._name, func)
        native = _native.start(self._df._df, spec)
        q = StreamingQuery(native, spark)
        spark.streams._started(q)
        return q

    def toTable(self, tableName, format=None, outputMode=None, partitionBy=None, queryName=None, **options):
        """Writes to the Delta table ``tableName`` in the warehouse directory
        (``spark.sql.warehouse.dir``, ``spark-warehouse`` by default)."""
        path = self._df.sparkSession._table_path(tableName)
        return self.start(path, format or self._format or "delta", outputMode, partitionBy, queryName, **options)


class _Spec:
    """What the native ``start`` reads."""

    def __init__(self, format, options, output_mode, trigger, checkpoint, query_name, foreach_batch):
        self.format = format
        self.options = options
        self.output_mode = output_mode
        self.trigger = trigger
        self.checkpoint = checkpoint
        self.query_name = query_name
        self.foreach_batch = foreach_batch
