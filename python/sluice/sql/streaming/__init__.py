"""PySpark's ``pyspark.sql.streaming``: the stream reader and writer, the query handle."""

from sluice.sql.streaming.query import StreamingQuery, StreamingQueryManager
from sluice.sql.streaming.readwriter import DataStreamReader, DataStreamWriter

__all__ = ["DataStreamReader", "DataStreamWriter", "StreamingQuery", "StreamingQueryManager"]
