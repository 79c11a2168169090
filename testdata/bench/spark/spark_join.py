#!/usr/bin/env python3
"""Spark baseline of the `ss_inner` stream-stream join (testdata/golden/spark-join/queries):
impressions JOIN clicks ON ad_id and click_time within an hour after impression_time, both
streams read as JSON with maxFilesPerTrigger N, watermarks 10 and 20 minutes, append mode
into Parquet, trigger availableNow, local[2], HDFS state, 2 shuffle partitions.

Prints one line `SUMMARY {json}`: rows (input rows of both streams), wall_s, rows_per_s,
output_rows, peak_state_rows (largest numRowsTotal of the join over the batches).

    python3 spark_join.py --input DIR --output DIR --checkpoint DIR [--max-files-per-trigger N]
"""
import argparse
import json
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--max-files-per-trigger", default="4")
    ap.add_argument("--shuffle-partitions", default="2")
    a = ap.parse_args()
    spark = (SparkSession.builder.master("local[2]").appName("sluice-bench-join")
             .config("spark.sql.shuffle.partitions", a.shuffle_partitions)
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "4g")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    t0 = time.time()
    imp = (spark.readStream
           .schema("impression_id BIGINT, ad_id BIGINT, campaign STRING, impression_time TIMESTAMP")
           .option("maxFilesPerTrigger", a.max_files_per_trigger)
           .json(a.input + "/impressions")
           .withWatermark("impression_time", "10 minutes").alias("i"))
    clk = (spark.readStream
           .schema("click_id BIGINT, ad_id BIGINT, click_time TIMESTAMP, cost DOUBLE")
           .option("maxFilesPerTrigger", a.max_files_per_trigger)
           .json(a.input + "/clicks")
           .withWatermark("click_time", "20 minutes").alias("c"))
    cond = ((F.col("i.ad_id") == F.col("c.ad_id"))
            & (F.col("c.click_time") >= F.col("i.impression_time"))
            & (F.col("c.click_time") <= F.col("i.impression_time") + F.expr("INTERVAL 1 HOUR")))
    j = imp.join(clk, cond, "inner").select(
        "i.impression_id", "c.click_id", F.col("i.ad_id").alias("ad_id"), "i.campaign",
        "i.impression_time", "c.click_time", "c.cost")
    q = (j.writeStream.format("parquet").outputMode("append")
         .option("path", a.output).option("checkpointLocation", a.checkpoint)
         .trigger(availableNow=True).start())
    q.awaitTermination()
    wall = time.time() - t0
    rows = peak = 0
    for p in q.recentProgress:
        rows += p["numInputRows"]
        for op in p.get("stateOperators", []):
            peak = max(peak, op["numRowsTotal"])
    # the file sink reports no output count: read what it committed (after the timing)
    out = spark.read.parquet(a.output).count()
    print("SUMMARY " + json.dumps({"rows": rows, "wall_s": wall, "rows_per_s": rows / wall,
                                   "output_rows": out, "peak_state_rows": peak}), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
