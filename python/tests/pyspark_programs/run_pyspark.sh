#!/usr/bin/env bash
# Runs the PySpark programs of this folder with real PySpark and keeps what they print in
# expected/ (usage: run_pyspark.sh <python that has pyspark 4.3>). Also records PySpark's
# lastProgress keys in ../programs/expected/progress_keys.json.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${1:?usage: run_pyspark.sh <python with pyspark>}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export TZ=UTC PYSPARK_PYTHON="$py"
"$py" "$here/make_input.py" text "$work/text"
"$py" "$here/make_input.py" events "$work/events"
run() { # name input
  "$py" "$here/$1.py" "$work/$2" "$work/chk-$1" "$work/out-$1" 2>"$work/$1.err" \
    | grep -v '^$' > "$here/expected/$1.out" || { cat "$work/$1.err"; exit 1; }
}
run word_count text
run windowed_word_count events
run watermark_word_count events
run foreach_batch events
"$py" - "$work/text" "$work/chk-keys" > "$here/../programs/expected/progress_keys.json" <<'PY'
import json, sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("keys").getOrCreate()
q = (spark.readStream.text(sys.argv[1]).groupBy("value").count().writeStream
     .outputMode("complete").format("memory").queryName("k")
     .option("checkpointLocation", sys.argv[2]).trigger(availableNow=True).start())
q.awaitTermination()
print(json.dumps(list(q.lastProgress.keys())))
PY
echo "expected/ rewritten from $("$py" -c 'import pyspark; print("PySpark", pyspark.__version__)')"
