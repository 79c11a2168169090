"""What foreachBatch hands over: a static DataFrame with toPandas, toArrow, collect, count, the
Arrow PyCapsule stream protocol, and batch writes (Delta here, read back by the independent
`deltalake` reader; parquet and JDBC in the other tests)."""

import json

import pyarrow as pa

from conftest import write_lines
from sluice.sql import functions as F


def test_batch_dataframe_api_and_delta_write(spark, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(2):
        write_lines(inp / ("p%d.json" % i), [json.dumps({"k": "k%d" % j, "v": i * 10 + j}) for j in range(3)])
    seen = []
    table = str(tmp_path / "delta")

    def f(batch_df, batch_id):
        assert not batch_df.isStreaming
        t = pa.table(batch_df)  # the PyCapsule stream protocol
        pdf = batch_df.toPandas()
        rows = batch_df.collect()
        seen.append((batch_id, batch_df.count(), t.num_rows, len(pdf), sorted(r.v for r in rows)))
        batch_df.withColumn("batch", F.lit(batch_id)).write.format("delta").mode("append").save(table)

    q = (
        spark.readStream.schema("k STRING, v BIGINT")
        .option("maxFilesPerTrigger", 1)
        .json(str(inp))
        .writeStream.foreachBatch(f)
        .option("checkpointLocation", str(tmp_path / "chk"))
        .trigger(availableNow=True)
        .start()
    )
    q.awaitTermination()
    assert seen == [(0, 3, 3, 3, [0, 1, 2]), (1, 3, 3, 3, [10, 11, 12])]
    from deltalake import DeltaTable

    dt = DeltaTable(table)
    got = sorted(zip(*[dt.to_pyarrow_table().column(c).to_pylist() for c in ("batch", "k", "v")]))
    assert got == [(0, "k0", 0), (0, "k1", 1), (0, "k2", 2), (1, "k0", 10), (1, "k1", 11), (1, "k2", 12)]
