# The quick example of Spark's Structured Streaming Programming Guide (Python), reading a
# directory of text files instead of a socket: running word count, complete mode, console.
import sys

from pyspark.sql import SparkSession
from pyspark.sql.functions import explode
from pyspark.sql.functions import split

spark = SparkSession \
    .builder \
    .appName("StructuredNetworkWordCount") \
    .getOrCreate()

# Create DataFrame representing the stream of input lines from the files of a directory
lines = spark \
    .readStream \
    .format("text") \
    .load(sys.argv[1])

# Split the lines into words
words = lines.select(
   explode(
       split(lines.value, " ")
   ).alias("word")
)

# Generate running word count
wordCounts = words.groupBy("word").count()

 # Start running the query that prints the running counts to the console
query = wordCounts \
    .writeStream \
    .outputMode("complete") \
    .format("console") \
    .option("checkpointLocation", sys.argv[2]) \
    .trigger(availableNow=True) \
    .start()

query.awaitTermination()
