"""Spark's rules the Python API keeps (each checked on a static DataFrame read from files, the
same plans a stream runs): names of derived columns, generators, date parts, NULLs in concat
and collect_list, substring positions, UDF return types, save modes."""

import json

import pytest

from conftest import write_lines
from sluice.errors import AnalysisException, StreamingQueryException
from sluice.sql import functions as F


@pytest.fixture
def df(spark, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rows = [
        {"k": "a", "n": 1, "s": "x y", "ts": "2024-05-05T10:00:00Z"},  # a Sunday
        {"k": "a", "n": 2, "s": None, "ts": "2024-05-06T10:00:00Z"},
        {"k": "b", "n": None, "s": "z", "ts": "2024-05-11T10:00:00Z"},  # a Saturday
    ]
    write_lines(d / "p.json", [json.dumps(r) for r in rows])
    return spark.read.schema("k STRING, n BIGINT, s STRING, ts TIMESTAMP").json(str(d))


def test_names_of_derived_columns_are_sparks(df):
    agg = df.groupBy("k").agg(F.sum("n"), F.count("*"), F.max(df.n), F.countDistinct("s"))
    assert agg.columns == ["k", "sum(n)", "count(1)", "max(n)", "count(DISTINCT s)"]
    assert df.groupBy("k").count().columns == ["k", "count"]
    # a Spark-named column inside an expression keeps no inner alias
    assert sorted(r[1] for r in df.groupBy("k").agg((F.count("*") + 1).alias("c")).collect()) == [2, 3]


def test_generators(df):
    words = df.select("*", F.explode(F.split("s", " ")).alias("w"))
    assert words.columns == ["k", "n", "s", "ts", "w"]
    assert sorted(r.w for r in words.collect()) == ["x", "y", "z"]
    with pytest.raises(AnalysisException, match="UNSUPPORTED_GENERATOR"):
        df.select(F.upper(F.explode(F.split("s", " "))))
    with pytest.raises(AnalysisException, match="UNSUPPORTED_GENERATOR"):
        df.filter(F.explode(F.split("s", " ")) == "x")


def test_date_parts_nulls_and_positions(df):
    rows = df.select(
        "k",
        F.dayofweek("ts").alias("dow"),
        F.concat("k", "s").alias("c"),
        F.substring("k", 0, 1).alias("sub"),
    ).collect()
    assert sorted((r.dow, r.c, r.sub) for r in rows) == [(1, "ax y", "a"), (2, None, "a"), (7, "bz", "b")]
    lists = {r.k: sorted(r.l) for r in df.groupBy("k").agg(F.collect_list("n").alias("l")).collect()}
    assert lists == {"a": [1, 2], "b": []}


def test_udf_value_of_the_wrong_type_fails_the_query(spark, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_lines(d / "p.json", [json.dumps({"x": 1.5})])

    @F.udf("int")
    def bad(x):
        return "not a number"

    q = (
        spark.readStream.schema("x DOUBLE").json(str(d))
        .select(bad("x").alias("y"))
        .writeStream.format("memory").queryName("bad")
        .option("checkpointLocation", str(tmp_path / "chk"))
        .trigger(availableNow=True).start()
    )
    with pytest.raises(StreamingQueryException, match="do not fit its return type"):
        q.awaitTermination(60)


def test_foreach_batch_of_a_projection_with_literals(spark, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_lines(d / "p.json", [json.dumps({"x": 1.5}), json.dumps({"x": 2.5})])
    seen = []
    q = (
        spark.readStream.schema("x DOUBLE").json(str(d))
        .select(F.lit(1).alias("one"), (F.col("x") * 2).alias("x2"))
        .writeStream.foreachBatch(lambda b, i: seen.append(sorted(tuple(r) for r in b.collect())))
        .option("checkpointLocation", str(tmp_path / "chk"))
        .trigger(availableNow=True).start()
    )
    q.awaitTermination(60)
    assert seen == [[(1, 3.0), (1, 5.0)]]


def test_save_modes(df, tmp_path):
    out = str(tmp_path / "out")
    df.select("k").write.parquet(out)
    with pytest.raises(AnalysisException, match="PATH_ALREADY_EXISTS"):
        df.select("k").write.parquet(out)
    df.select("k").write.mode("ignore").parquet(out)
    df.select("k").write.mode("append").parquet(out)
    with pytest.raises(ValueError, match="unknown save mode"):
        df.write.mode("sometimes")


def test_order_by_an_aggregation_in_complete_mode(spark, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_lines(d / "p.json", [json.dumps({"k": k}) for k in "abbcccdddd"])
    counts = spark.readStream.schema("k STRING").json(str(d)).groupBy("k").count()
    q = (
        counts.orderBy(F.desc("count"))
        .writeStream.outputMode("complete").format("memory").queryName("ordered")
        .option("checkpointLocation", str(tmp_path / "chk"))
        .trigger(availableNow=True).start()
    )
    q.awaitTermination(60)
    assert [tuple(r) for r in spark.table("ordered").collect()] == [("d", 4), ("c", 3), ("b", 2), ("a", 1)]
    with pytest.raises(AnalysisException, match="ORDER BY"):
        (spark.readStream.schema("k STRING").json(str(d)).orderBy("k")
         .writeStream.format("memory").queryName("no").start())


def test_show_prints_sparks_table(df, capsys):
    df.select("k", "n").show(2)
    assert capsys.readouterr().out == (
        "+---+---+\n|  k|  n|\n+---+---+\n|  a|  1|\n|  a|  2|\n+---+---+\n"
        "only showing top 2 rows\n\n"
    )
