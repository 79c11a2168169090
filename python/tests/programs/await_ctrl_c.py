"""Starts a query, says so once its first batch is committed, then waits in awaitTermination
until Ctrl-C (SIGINT); reports whether the query was stopped (test_threads.py)."""

import sys
import threading
import time

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
rows = len(spark.sql("SELECT * FROM lines").collect())
main = threading.main_thread().ident


def say_ready():
    # "ready" once the main thread is inside awaitTermination (the test's Ctrl-C must land there)
    while sys._current_frames()[main].f_code.co_name != "awaitTermination":
        time.sleep(0.01)
    print("ready", rows, flush=True)


threading.Thread(target=say_ready, daemon=True).start()
try:
    q.awaitTermination()
except KeyboardInterrupt:
    print("interrupted active=%s exception=%s" % (q.isActive, q.exception()), flush=True)
    sys.exit(3)
