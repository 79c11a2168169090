"""Python functions in a stream: a pandas_udf scores rows batch by batch (called once per
batch chunk with whole Series, never per row), a row udf, and a function registered for SQL."""

import json

import pandas as pd

from conftest import write_lines
from sluice.sql import functions as F
from sluice.sql.types import DoubleType


def stage(d):
    d.mkdir()
    for i in range(3):
        write_lines(
            d / ("part-%d.json" % i),
            [json.dumps({"id": i * 100 + j, "x": float(j), "y": float(i)}) for j in range(50)],
        )


def test_pandas_udf_scores_rows(spark, tmp_path):
    stage(tmp_path / "in")
    calls = []

    @F.pandas_udf(DoubleType())
    def score(x: pd.Series, y: pd.Series) -> pd.Series:
        calls.append(len(x))
        return 2.0 * x + y + 0.5

    scored = (
        spark.readStream.schema("id BIGINT, x DOUBLE, y DOUBLE")
        .option("maxFilesPerTrigger", 1)
        .json(str(tmp_path / "in"))
        .withColumn("score", score("x", F.col("y")))
    )
    q = (
        scored.writeStream.format("memory")
        .queryName("scored")
        .option("checkpointLocation", str(tmp_path / "chk"))
        .trigger(availableNow=True)
        .start()
    )
    q.awaitTermination()
    rows = spark.sql("SELECT id, x, y, score FROM scored").collect()
    assert len(rows) == 150
    assert all(r.score == 2.0 * r.x + r.y + 0.5 for r in rows)
    # one call per batch (3 files, one per batch), each with the whole batch
    assert calls == [50, 50, 50]


def test_row_udf_and_sql_registration(spark, tmp_path):
    stage(tmp_path / "in")

    @F.udf("string")
    def bucket(x):
        return "high" if x >= 25 else "low"

    spark.udf.register("bucket_sql", bucket)
    df = spark.readStream.schema("id BIGINT, x DOUBLE, y DOUBLE").json(str(tmp_path / "in"))
    df.createOrReplaceTempView("events")
    counts = spark.sql("SELECT bucket_sql(x) AS b, count(*) AS n FROM events GROUP BY bucket_sql(x)")
    q = (
        counts.writeStream.outputMode("complete")
        .format("memory")
        .queryName("buckets")
        .option("checkpointLocation", str(tmp_path / "chk"))
        .trigger(availableNow=True)
        .start()
    )
    q.awaitTermination()
    assert sorted(spark.sql("SELECT * FROM buckets").collect()) == [("high", 75), ("low", 75)]
    direct = df.select(bucket("x").alias("b"))
    assert direct.columns == ["b"]
