//! The join queries of testdata/golden/spark-join written as Spark's PySpark and SQL write
//! them (queries/*.py, *.sql), over the regenerated golden input, and a pipeline file that runs
//! them.

use std::fs;
use std::path::{Path, PathBuf};

use sluice::functions::{coalesce, col, count, get_field, interval, lit, sum, window, Expr};
use sluice::prelude::*;

use super::repo_dir;
use super::spark::stage;

pub const IMPRESSIONS: &str =
    "impression_id BIGINT, ad_id BIGINT, campaign STRING, impression_time TIMESTAMP";
pub const CLICKS: &str = "click_id BIGINT, ad_id BIGINT, click_time TIMESTAMP, cost DOUBLE";
pub const CAMPAIGNS: &str = "campaign STRING, advertiser STRING, region STRING";

pub fn session(partitions: usize) -> Session {
    Session::builder()
        .config("spark.sql.shuffle.partitions", partitions.to_string())
        .build()
        .expect("session")
}

/// The two streams as Spark's queries read them: one file per batch each, watermarked.
pub fn streams(s: &Session, input: &Path) -> (DataFrame, DataFrame) {
    let read = |dir: &str, schema: &str, time: &str, delay: &str| {
        s.read_stream()
            .schema(schema)
            .option("maxFilesPerTrigger", 1)
            .json(input.join(dir).to_str().expect("path"))
            .expect("load")
            .with_watermark(time, delay)
            .expect("watermark")
    };
    (
        read("impressions", IMPRESSIONS, "impression_time", "10 minutes"),
        read("clicks", CLICKS, "click_time", "20 minutes"),
    )
}

pub fn campaigns(s: &Session, input: &Path) -> DataFrame {
    s.read()
        .schema(CAMPAIGNS)
        .option("header", true)
        .csv(input.join("campaigns.csv").to_str().expect("path"))
        .expect("campaigns")
}

/// Spark's `_ss_join` (queries/ss_inner.py) with the DataFrame API.
pub fn ss_join(s: &Session, input: &Path, how: &str) -> DataFrame {
    let (imp, clk) = streams(s, input);
    let i = imp.alias("i").expect("alias");
    let c = clk.alias("c").expect("alias");
    let cond = col("i.ad_id")
        .eq(col("c.ad_id"))
        .and(col("c.click_time").gt_eq(col("i.impression_time")))
        .and(col("c.click_time").lt_eq(col("i.impression_time") + hour()));
    let j = i.join_on(c, cond, how).expect("join");
    if how == "left_semi" {
        return j
            .select([
                col("i.impression_id"),
                col("i.ad_id"),
                col("i.campaign"),
                col("i.impression_time"),
            ])
            .expect("select");
    }
    j.select([
        col("i.impression_id"),
        col("c.click_id"),
        coalesce(vec![col("i.ad_id"), col("c.ad_id")]).alias("ad_id"),
        col("i.campaign"),
        col("i.impression_time"),
        col("c.click_time"),
        col("c.cost"),
    ])
    .expect("select")
}

/// `INTERVAL 1 HOUR`.
pub fn hour() -> Expr {
    interval("1 hour").expect("interval")
}

/// Spark's `_static_join` with the DataFrame API.
pub fn static_join(s: &Session, input: &Path, how: &str) -> DataFrame {
    let (imp, _) = streams(s, input);
    let i = imp.alias("i").expect("alias");
    let c = campaigns(s, input).alias("s").expect("alias");
    i.join_on(c, col("i.campaign").eq(col("s.campaign")), how)
        .expect("join")
        .select([
            col("i.impression_id"),
            col("i.ad_id"),
            col("i.campaign"),
            col("i.impression_time"),
            col("s.advertiser"),
            col("s.region"),
        ])
        .expect("select")
}

/// Spark's `chain_join_window` with the DataFrame API.
pub fn join_window(s: &Session, input: &Path) -> DataFrame {
    ss_join(s, input, "inner")
        .group_by([window(col("click_time"), "10 minutes"), col("campaign")])
        .agg([
            count(lit(1)).alias("clicks"),
            sum(col("cost")).alias("spend"),
        ])
        .expect("agg")
        .select([
            get_field(col("window"), "start").alias("window_start"),
            get_field(col("window"), "end").alias("window_end"),
            col("campaign"),
            col("clicks"),
            col("spend"),
        ])
        .expect("select")
}

/// The SQL of a golden query (testdata/golden/spark-join/queries), with Spark 4's `WATERMARK`
/// clauses taken out: the views carry the watermarks (declared on the streams).
pub fn golden_sql(query: &str) -> String {
    let text = fs::read_to_string(golden_dir().join(format!("queries/{query}.sql"))).expect("sql");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "impressions_src WATERMARK impression_time DELAY OF INTERVAL 10 MINUTES",
            "impressions_src",
        )
        .replace(
            "clicks_src WATERMARK click_time DELAY OF INTERVAL 20 MINUTES",
            "clicks_src",
        )
}

pub fn golden_dir() -> PathBuf {
    repo_dir().join("testdata/golden/spark-join")
}

/// The session's views of the golden SQL: the watermarked streams and the static campaigns.
pub fn sql_session(input: &Path, partitions: usize) -> Session {
    let s = session(partitions);
    let (imp, clk) = streams(&s, input);
    imp.create_or_replace_temp_view("impressions_src")
        .expect("view");
    clk.create_or_replace_temp_view("clicks_src").expect("view");
    campaigns(&s, input)
        .create_or_replace_temp_view("campaigns")
        .expect("view");
    s
}

/// A pipeline file over the staged input: both streams as sources (watermarked, one file per
/// batch), campaigns.csv as a static table, and `sql` as the query, with `partitions` state
/// partitions.
pub fn pipeline(dir: &Path, sql: &str, partitions: usize) -> PathBuf {
    let p = dir.join("pipeline.toml");
    fs::write(
        &p,
        format!(
            "shuffle_partitions = {partitions}\n\n\
             [source.impressions_src]\nformat = \"json\"\npath = \"in/impressions\"\n\
             schema = \"{IMPRESSIONS}\"\n\
             watermark = {{ column = \"impression_time\", delay = \"10 minutes\" }}\n\
             options = {{ maxFilesPerTrigger = 1 }}\n\n\
             [source.clicks_src]\nformat = \"json\"\npath = \"in/clicks\"\n\
             schema = \"{CLICKS}\"\n\
             watermark = {{ column = \"click_time\", delay = \"20 minutes\" }}\n\
             options = {{ maxFilesPerTrigger = 1 }}\n\n\
             [table.campaigns]\nformat = \"csv\"\npath = \"in/campaigns.csv\"\n\
             schema = \"{CAMPAIGNS}\"\noptions = {{ header = true }}\n\n\
             [query.join]\nsql = \"\"\"{sql}\"\"\"\noutput_mode = \"append\"\n\
             trigger = \"available-now\"\ncheckpoint = \"chk\"\nprogress_log = \"progress.jsonl\"\n\
             sink = {{ format = \"csv\", path = \"out\", options = {{ header = true }} }}\n"
        ),
    )
    .expect("pipeline");
    p
}

/// Stages both streams (keeping their modification times) and the static table.
pub fn stage_all(gen: &Path, dir: &Path) {
    stage(gen, dir, "impressions");
    stage(gen, dir, "clicks");
    fs::copy(gen.join("campaigns.csv"), dir.join("in/campaigns.csv")).expect("campaigns");
}
