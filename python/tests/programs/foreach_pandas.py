"""A foreachBatch query with pandas, as a separate process (killed and restarted by
test_foreach_batch.py): each batch's rows are summed per word with pandas and written to
<out>/batch-<id>.csv (overwritten when a batch is re-run: Spark's idempotent-write recipe);
every call is logged to <log>."""

import sys

from sluice.sql import SparkSession

inp, out, chk, log = sys.argv[1:5]
spark = SparkSession.builder.appName("foreach-pandas").getOrCreate()
events = (
    spark.readStream.schema("word STRING, n BIGINT")
    .option("maxFilesPerTrigger", 1)
    .json(inp)
)


def write(batch_df, batch_id):
    pdf = batch_df.toPandas()
    sums = pdf.groupby("word", as_index=False)["n"].sum().sort_values("word")
    sums.to_csv("%s/batch-%d.csv" % (out, batch_id), index=False)
    with open(log, "a") as f:
        f.write("%d %d\n" % (batch_id, len(pdf)))


q = (
    events.writeStream.foreachBatch(write)
    .option("checkpointLocation", chk)
    .trigger(availableNow=True)
    .start()
)
q.awaitTermination()
