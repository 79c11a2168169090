# "Using Foreach and ForeachBatch" of Spark's Structured Streaming Programming Guide (Python):
# foreachBatch writing each micro-batch with the batch writer, then the written table read back.
import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

spark = SparkSession.builder.appName("ForeachBatchExample").getOrCreate()

streamingDF = spark.readStream \
    .schema("timestamp TIMESTAMP, line STRING") \
    .option("maxFilesPerTrigger", 1) \
    .json(sys.argv[1])

out = sys.argv[3]


def foreach_batch_function(df, epoch_id):
    # Transform and write batchDF
    df.persist()
    counts = df.select(F.explode(F.split(df.line, " ")).alias("word")) \
        .groupBy("word").count() \
        .withColumn("batch", F.lit(epoch_id))
    counts.write.format("parquet").mode("append").save(out)
    print("batch %d: %d rows" % (epoch_id, df.count()))
    df.unpersist()


query = streamingDF.writeStream \
    .foreachBatch(foreach_batch_function) \
    .option("checkpointLocation", sys.argv[2]) \
    .trigger(availableNow=True) \
    .start()
query.awaitTermination()

written = spark.read.parquet(out)
for row in sorted(written.collect(), key=lambda r: (r["batch"], r["word"])):
    print("row %d %s %d" % (row["batch"], row["word"], row["count"]))
