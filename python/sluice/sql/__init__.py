"""PySpark's ``pyspark.sql`` over Sluice: ``SparkSession``, ``DataFrame``, ``Column``,
``functions``, ``types`` and the streaming reader, writer and query."""

from sluice.sql.column import Column
from sluice.sql.dataframe import DataFrame, GroupedData
from sluice.sql.row import Row
from sluice.sql.session import SparkSession
from sluice.sql import functions, types  # noqa: F401

__all__ = ["Column", "DataFrame", "GroupedData", "Row", "SparkSession", "functions", "types"]
