"""Sluice: structured streaming for unbounded tables, with PySpark's API.

Write a PySpark streaming program against ``sluice.sql`` instead of ``pyspark.sql``::

    from sluice.sql import SparkSession
    from sluice.sql import functions as F

The engine, connectors and state store are Sluice's (Rust), the same code the ``sluice``
binary runs; this package is PySpark's names over them.
"""

__version__ = "0.1.0"
