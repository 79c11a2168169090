"""PySpark's exception names (``pyspark.errors``) for Sluice's errors."""

from sluice._native import (
    AnalysisException,
    IllegalArgumentException,
    SluiceException,
    StreamingQueryException,
)

PySparkException = SluiceException

__all__ = [
    "AnalysisException",
    "IllegalArgumentException",
    "PySparkException",
    "SluiceException",
    "StreamingQueryException",
]
