# "Window Operations on Event Time" of Spark's Structured Streaming Programming Guide (Python):
# word counts in 10-minute windows sliding every 5 minutes, over timestamped lines in files.
import sys

from pyspark.sql import SparkSession
from pyspark.sql.functions import explode, split, window

spark = SparkSession.builder.appName("StructuredNetworkWordCountWindowed").getOrCreate()

lines = spark.readStream.schema("timestamp TIMESTAMP, line STRING").json(sys.argv[1])

# Split the lines into words, retaining timestamps
words = lines.select(
    explode(split(lines.line, " ")).alias("word"),
    lines.timestamp
)

# Group the data by window and word and compute the count of each group
windowedCounts = words.groupBy(
    window(words.timestamp, "10 minutes", "5 minutes"),
    words.word
).count().orderBy("window")

query = windowedCounts \
    .writeStream \
    .outputMode("complete") \
    .format("console") \
    .option("truncate", "false") \
    .option("numRows", 100) \
    .option("checkpointLocation", sys.argv[2]) \
    .trigger(availableNow=True) \
    .start()

query.awaitTermination()
