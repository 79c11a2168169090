"""A file -> PostgreSQL pipeline from Python, read back with psql: the streaming JDBC sink
(exactly-once, update mode keyed by the grouping keys), and `batch_df.write.jdbc` inside
foreachBatch (the batch's write is named by the checkpoint and batch id, so it is not repeated)."""

import json
import uuid

from conftest import pg_url, psql, write_lines
from sluice.sql import functions as F


def stage(d, files):
    d.mkdir()
    for i, rows in enumerate(files):
        write_lines(d / ("part-%d.json" % i), [json.dumps(r) for r in rows])


FILES = [
    [{"user": "ann", "amount": 10.5}, {"user": "bob", "amount": 2.0}],
    [{"user": "ann", "amount": 1.0}, {"user": "cid", "amount": 7.25}, {"user": "bob", "amount": 3.0}],
]


def test_file_to_postgres_streaming_sink(spark, tmp_path):
    stage(tmp_path / "in", FILES)
    table = "py_totals_%s" % uuid.uuid4().hex[:8]
    totals = (
        spark.readStream.schema("user STRING, amount DOUBLE")
        .option("maxFilesPerTrigger", 1)
        .json(str(tmp_path / "in"))
        .groupBy("user")
        .agg(F.sum("amount").alias("total"), F.count("*").alias("orders"))
    )
    q = (
        totals.writeStream.format("jdbc")
        .outputMode("update")
        .option("url", pg_url())
        .option("dbtable", table)
        .option("checkpointLocation", str(tmp_path / "chk"))
        .trigger(availableNow=True)
        .start()
    )
    q.awaitTermination()
    assert psql("postgres", "SELECT \"user\", total, orders FROM %s ORDER BY 1" % table) == [
        "ann|11.5|2",
        "bob|5|2",
        "cid|7.25|1",
    ]
    assert len(q.recentProgress) == 2


def test_foreach_batch_jdbc_write(spark, tmp_path):
    stage(tmp_path / "in", FILES)
    table = "py_orders_%s" % uuid.uuid4().hex[:8]
    calls = []

    def write(batch_df, batch_id):
        calls.append(batch_id)
        big = batch_df.filter(F.col("amount") > 2)
        big.write.format("jdbc").option("url", pg_url()).option("dbtable", table).mode("append").save()

    q = (
        spark.readStream.schema("user STRING, amount DOUBLE")
        .option("maxFilesPerTrigger", 1)
        .json(str(tmp_path / "in"))
        .writeStream.foreachBatch(write)
        .option("checkpointLocation", str(tmp_path / "chk"))
        .trigger(availableNow=True)
        .start()
    )
    q.awaitTermination()
    assert calls == [0, 1]
    assert psql("postgres", "SELECT \"user\", amount FROM %s ORDER BY 1, 2" % table) == [
        "ann|10.5",
        "bob|3",
        "cid|7.25",
    ]
