"""The stateful golden from real Spark 4.3, driven from Python: the watermarked windowed
aggregation in append mode gives exactly Spark's rows (testdata/golden/spark-window)."""

import csv
import subprocess
import sys

from conftest import GOLDEN
from sluice.sql import functions as F


def gen_input(out):
    cmd = (GOLDEN / "main" / "gen_command.txt").read_text().splitlines()
    line = next(l for l in cmd if l.startswith("python3 gen_events.py"))
    args = line.split()[2:]
    i = args.index("--out")
    args[i + 1] = str(out)
    subprocess.run([sys.executable, str(GOLDEN / "gen_events.py"), *args], check=True, cwd=GOLDEN)


def iso(ts):
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (ts.microsecond // 1000)


def test_windowed_aggregation_matches_spark(spark, tmp_path):
    gen_input(tmp_path / "in")
    events = (
        spark.readStream.schema(
            "event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING"
        )
        .option("maxFilesPerTrigger", 1)
        .json(str(tmp_path / "in"))
    )
    counts = (
        events.withWatermark("event_time", "10 minutes")
        .groupBy(F.window("event_time", "1 minute"), "action")
        .agg(
            F.count("*").alias("count"),
            F.sum("value").alias("sum"),
            F.avg("value").alias("avg"),
            F.max("value").alias("max"),
        )
    )
    q = (
        counts.writeStream.outputMode("append")
        .format("memory")
        .queryName("golden")
        .option("checkpointLocation", str(tmp_path / "chk"))
        .trigger(availableNow=True)
        .start()
    )
    q.awaitTermination()
    got = sorted(
        (iso(r.window["start"]), iso(r.window["end"]), r.action, r["count"], r.sum, r.avg, r.max)
        for r in spark.sql("SELECT * FROM golden").collect()
    )
    with open(GOLDEN / "main" / "append_final.csv") as f:
        want = sorted(
            (r["window_start"], r["window_end"], r["action"], int(r["count"]), float(r["sum"]),
             float(r["avg"]), float(r["max"]))
            for r in csv.DictReader(f)
        )
    assert len(got) == len(want) == 1079
    assert got == want
