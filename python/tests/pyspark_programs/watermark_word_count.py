# "Handling Late Data and Watermarking" of Spark's Structured Streaming Programming Guide
# (Python): windowed word counts with a 10-minute watermark, append mode, one file per batch.
import sys

from pyspark.sql import SparkSession
from pyspark.sql.functions import explode, split, window

spark = SparkSession.builder.appName("WatermarkedWordCount").getOrCreate()

lines = spark.readStream \
    .schema("timestamp TIMESTAMP, line STRING") \
    .option("maxFilesPerTrigger", 1) \
    .json(sys.argv[1])

words = lines.select(explode(split(lines.line, " ")).alias("word"), lines.timestamp)

windowedCounts = words \
    .withWatermark("timestamp", "10 minutes") \
    .groupBy(
        window("timestamp", "10 minutes", "5 minutes"),
        "word") \
    .count()

query = windowedCounts.writeStream \
    .outputMode("append") \
    .format("console") \
    .option("truncate", False) \
    .option("numRows", 100) \
    .option("checkpointLocation", sys.argv[2]) \
    .trigger(availableNow=True) \
    .start()

query.awaitTermination()
