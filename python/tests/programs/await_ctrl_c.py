"""Starts a query, says so once its first batch is committed, then waits in awaitTermination
until Ctrl-C (SIGINT); reports whether the query was stopped (test_threads.py)."""

import sys

from sluice.sql import SparkSession

inp, chk = sys.argv[1:3]
spark = SparkSession.builder.appName("ctrl-c").getOrCreate()
q = (
    spark.readStream.text(inp)
    .writeStream.format("memory")
    .queryName("lines")
    .option("checkpointLocation", chk)
    .start()
)
q.processAllAvailable()
print("ready", len(spark.sql("SELECT * FROM lines").collect()), flush=True)
try:
    q.awaitTermination()
except KeyboardInterrupt:
    print("interrupted active=%s exception=%s" % (q.isActive, q.exception()), flush=True)
    sys.exit(3)
