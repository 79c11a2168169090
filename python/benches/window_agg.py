"""The windowed aggregation of benches/window_throughput.rs driven from Python with PySpark's
API (run by `cargo bench --bench python_overhead`): json source with explicit schema,
maxFilesPerTrigger 10, 10-minute watermark, 1-minute window count/sum/avg/max by action, append
mode into a Parquet sink, trigger availableNow. With `--udf`, a pandas_udf scores every event
before the aggregation (its cost is the point). Prints one JSON line: wall seconds, rows in."""

import json
import sys
import tempfile
import time

from sluice.sql import SparkSession
from sluice.sql import functions as F

inp, max_files = sys.argv[1], sys.argv[2]
udf = "--udf" in sys.argv
if udf:
    import pandas as pd

    @F.pandas_udf("double")
    def score(value: pd.Series) -> pd.Series:
        return value * 0.5 + 1.0


with tempfile.TemporaryDirectory() as d:
    spark = SparkSession.builder.appName("python-bench").getOrCreate()
    t0 = time.monotonic()
    events = (
        spark.readStream.schema(
            "event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING"
        )
        .option("maxFilesPerTrigger", max_files)
        .json(inp)
    )
    if udf:
        events = events.withColumn("value", score("value"))
    agg = (
        events.withWatermark("event_time", "10 minutes")
        .groupBy(F.window("event_time", "1 minute"), "action")
        .agg(F.count("*").alias("count"), F.sum("value").alias("sum"),
             F.avg("value").alias("avg"), F.max("value").alias("max"))
        .select(F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"),
                "action", "count", "sum", "avg", "max")
    )
    q = (
        agg.writeStream.format("parquet")
        .option("path", d + "/out")
        .option("checkpointLocation", d + "/chk")
        .trigger(availableNow=True)
        .start()
    )
    q.awaitTermination()
    wall = time.monotonic() - t0
    rows = sum(p["numInputRows"] for p in q.recentProgress)
    print(json.dumps({"wall_s": wall, "events": rows, "batches": len(q.recentProgress)}))
