"""PySpark 3's import path of the exceptions (``pyspark.sql.utils``)."""

from sluice.errors import (  # noqa: F401
    AnalysisException,
    IllegalArgumentException,
    PySparkException,
    StreamingQueryException,
)
