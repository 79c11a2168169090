"""``SparkSession``: the entry point, built with PySpark's builder."""

import atexit
import os
import re
import threading

from sluice import _native
from sluice.sql.readwriter import DataFrameReader
from sluice.sql.streaming.query import StreamingQueryManager
from sluice.sql.streaming.readwriter import DataStreamReader


class RuntimeConfig:
    """``spark.conf``: the settings the session was built with (read-only: Sluice's settings
    are fixed when the session is built, so ``set`` of a different value is refused)."""

    def __init__(self, spark, conf):
        self._spark = spark
        self._conf = dict(conf)

    def get(self, key, default=None):
        return self._conf.get(key, default)

    def set(self, key, value):
        value = str(value)
        if self._conf.get(key) == value:
            return
        raise _native.IllegalArgumentException(
            "spark.conf.set('%s', '%s'): Sluice fixes settings when the session is built; "
            "give it to SparkSession.builder.config(...) before getOrCreate()" % (key, value)
        )

    def getAll(self):
        return dict(self._conf)


class UDFRegistration:
    """``spark.udf``: Python functions by name in SQL."""

    def __init__(self, spark):
        self._spark = spark

    def register(self, name, f, returnType=None):
        from sluice.sql.udf import UserDefinedFunction

        if isinstance(f, UserDefinedFunction):
            if returnType is not None:
                raise TypeError("register: returnType can only be given for a plain Python function, not a UDF")
        else:
            f = UserDefinedFunction(f, returnType or "string", kind="row")
        self._spark._native.register_udf(name, f._native)
        return f


class SparkContext:
    """The little of ``spark.sparkContext`` a streaming program uses."""

    def __init__(self, spark):
        self._spark = spark
        self.appName = spark._native.app_name()
        self.master = "local[*]"

    def setLogLevel(self, logLevel):
        """Sluice prints no log lines from Python programs; the level is checked and kept."""
        level = str(logLevel).upper()
        if level not in ("ALL", "DEBUG", "ERROR", "FATAL", "INFO", "OFF", "TRACE", "WARN"):
            raise _native.IllegalArgumentException("setLogLevel: unknown level '%s'" % logLevel)
        self.logLevel = level


class SparkSession:
    """The entry point: ``SparkSession.builder.appName(...).getOrCreate()``."""

    _active = None
    _lock = threading.Lock()

    class Builder:
        def __init__(self):
            self._conf = {}
            self._app = None

        def appName(self, name):
            self._app = name
            return self

        def master(self, master):
            """Sluice runs in this process on every core: ``local``, ``local[n]`` and
            ``local[*]`` are accepted; a cluster master is refused."""
            m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", str(master))
            if m is None:
                raise _native.IllegalArgumentException(
                    "master('%s'): Sluice runs in-process (local); run several `sluice run` "
                    "processes to scale out" % master
                )
            # local[n]: n threads for the stateful operators' partitions
            n = m.group(1)
            if n is None:
                self._conf.setdefault("sluice.state.workerThreads", "1")
            elif n != "*":
                self._conf.setdefault("sluice.state.workerThreads", n)
            return self

        def config(self, key=None, value=None, conf=None, map=None):
            for k, v in (map or {}).items():
                self._conf[k] = str(v)
            if conf is not None:
                for k, v in conf.getAll():
                    self._conf[k] = str(v)
            if key is not None:
                if isinstance(value, bool):
                    value = "true" if value else "false"
                self._conf[key] = str(value)
            return self

        def enableHiveSupport(self):
            raise _native.IllegalArgumentException("enableHiveSupport: Sluice has no Hive metastore")

        def getOrCreate(self):
            with SparkSession._lock:
                s = SparkSession._active
                if s is None:
                    s = SparkSession(self._app or "sluice", self._conf)
                    SparkSession._active = s
                    return s
                # the running session's settings are fixed: a different one is refused
                for k, v in self._conf.items():
                    if s.conf.get(k) != v:
                        raise _native.IllegalArgumentException(
                            "getOrCreate: a session is running with %s=%r; stop it "
                            "(spark.stop()) to start one with %r" % (k, s.conf.get(k), v)
                        )
                return s

        create = getOrCreate

    builder = None  # set below: a fresh Builder each time it is read

    def __init__(self, app_name="sluice", conf=None):
        conf = dict(conf or {})
        self._warehouse = conf.pop("spark.sql.warehouse.dir", "spark-warehouse")
        local = {k: v for k, v in conf.items() if k == "spark.sql.streaming.checkpointLocation"}
        engine_conf = {k: v for k, v in conf.items() if k not in local}
        self._native = _native.Session(app_name, list(engine_conf.items()))
        self.conf = RuntimeConfig(self, conf)
        self.streams = StreamingQueryManager(self)
        self.udf = UDFRegistration(self)
        self.sparkContext = SparkContext(self)

    @classmethod
    def getActiveSession(cls):
        return cls._active

    @property
    def readStream(self):
        return DataStreamReader(self)

    @property
    def read(self):
        return DataFrameReader(self)

    def sql(self, sqlQuery, args=None, **kwargs):
        from sluice.sql.dataframe import DataFrame

        if args or kwargs:
            raise ValueError("sql: parameters are not supported yet")
        return DataFrame(self._native.sql(sqlQuery), self)

    def table(self, tableName):
        return self.read.table(tableName)

    def createDataFrame(self, data, schema=None):
        raise ValueError("createDataFrame is not supported yet: read a file with spark.read")

    def _table_path(self, name):
        return os.path.join(self._warehouse, *name.split("."))

    def stop(self):
        """Stops the session's queries."""
        self._native.stop()
        with SparkSession._lock:
            if SparkSession._active is self:
                SparkSession._active = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def version(self):
        import sluice

        return sluice.__version__


@atexit.register
def _stop_at_exit():
    """Stops the running queries before the interpreter goes (their threads call Python)."""
    s = SparkSession._active
    if s is not None:
        s.stop()


class _BuilderDescriptor:
    def __get__(self, obj, owner):
        return SparkSession.Builder()


SparkSession.builder = _BuilderDescriptor()
