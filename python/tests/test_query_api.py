"""The StreamingQuery handle and errors: awaitTermination with a timeout, stop from another
thread, Spark's progress keys, AnalysisException for a bad column, StreamingQueryException with
the Python traceback of a failing foreachBatch."""

import json
import threading
import time

import pytest

from conftest import write_lines
from sluice.errors import AnalysisException, StreamingQueryException
from sluice.sql import functions as F

# PySpark 4.3's StreamingQuery.lastProgress keys, read off a real PySpark 4.3 run of the same
# query (tests/programs/expected/progress_keys.json, made by tests/programs/run_pyspark.sh)
from conftest import PROGRAMS

SPARK_PROGRESS_KEYS = json.loads((PROGRAMS / "expected" / "progress_keys.json").read_text())


def events(spark, tmp_path, files=2):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(files):
        write_lines(
            d / ("part-%d.json" % i),
            [json.dumps({"ts": "2024-01-01T00:0%d:00Z" % i, "word": w}) for w in ("a", "b", "a")],
        )
    return spark.readStream.schema("ts TIMESTAMP, word STRING").json(str(d))


def start_counts(spark, tmp_path, **trigger):
    df = events(spark, tmp_path).groupBy("word").count()
    w = df.writeStream.outputMode("complete").format("memory").queryName("counts")
    w = w.option("checkpointLocation", str(tmp_path / "chk"))
    if trigger:
        w = w.trigger(**trigger)
    return w.start()


def test_await_termination_timeout_and_stop(spark, tmp_path):
    q = start_counts(spark, tmp_path)
    try:
        t0 = time.monotonic()
        assert q.awaitTermination(0.3) is False
        assert time.monotonic() - t0 >= 0.3
        assert q.isActive
        q.processAllAvailable()
        assert sorted(spark.sql("SELECT * FROM counts").collect()) == [("a", 4), ("b", 2)]
    finally:
        q.stop()
    assert not q.isActive
    assert q.awaitTermination(5) is True
    assert q.exception() is None


def test_stop_from_another_thread_ends_await(spark, tmp_path):
    q = start_counts(spark, tmp_path)
    q.processAllAvailable()
    stopper = threading.Timer(0.5, q.stop)
    stopper.start()
    t0 = time.monotonic()
    assert q.awaitTermination() is None  # blocks until the other thread's stop
    assert 0.4 <= time.monotonic() - t0 < 30
    assert not q.isActive
    assert spark.streams.active == []


def test_last_progress_has_sparks_keys(spark, tmp_path):
    q = start_counts(spark, tmp_path, availableNow=True)
    q.awaitTermination()
    p = q.lastProgress
    assert list(p.keys()) == SPARK_PROGRESS_KEYS
    assert p["id"] == q.id and p["runId"] == q.runId and p["name"] == "counts"
    assert sum(x["numInputRows"] for x in q.recentProgress) == 6
    assert p["batchDuration"] == p["durationMs"]["triggerExecution"]
    assert set(q.status) == {"message", "isDataAvailable", "isTriggerActive"}


def test_bad_column_is_an_analysis_exception(spark, tmp_path):
    df = events(spark, tmp_path)
    with pytest.raises(AnalysisException, match="nope"):
        df.select("nope")
    with pytest.raises(AnalysisException, match="UNRESOLVED_COLUMN"):
        df.filter(F.col("missing") > 1)
    with pytest.raises(AnalysisException):
        df.groupBy(F.expr("no_such_function(word)")).count()


def test_failing_foreach_batch_fails_the_query_with_the_traceback(spark, tmp_path):
    def boom(batch_df, batch_id):
        raise ZeroDivisionError("scoring failed on batch %d" % batch_id)

    q = (
        events(spark, tmp_path)
        .writeStream.foreachBatch(boom)
        .option("checkpointLocation", str(tmp_path / "chk"))
        .start()
    )
    with pytest.raises(StreamingQueryException) as e:
        q.awaitTermination(60)
    msg = str(e.value)
    assert "ZeroDivisionError: scoring failed on batch 0" in msg
    assert "in boom" in msg  # the Python traceback names the function
    assert not q.isActive
    assert isinstance(q.exception(), StreamingQueryException)
    # nothing was committed: a restart hands batch 0 over again
    assert not (tmp_path / "chk" / "commits" / "0").exists()
