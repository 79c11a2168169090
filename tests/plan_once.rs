//! The streaming plan is built once per query, never per batch (its own test binary, so that
//! no other query in the process moves the counter).

mod common;

use common::*;
use sluice::prelude::*;

#[test]
fn plan_is_built_once_for_many_batches() {
    let w = workdir();
    let input = w.path().join("in");
    for i in 0..5u64 {
        put_file(
            &input,
            &format!("{i}.json"),
            &format!("{{\"ts\":\"2025-01-01T00:0{i}:00Z\",\"k\":\"x\"}}\n"),
            i,
        );
    }
    let s = Session::builder().build().expect("session");
    let before = sluice::EngineSession::plans_built();
    let q = s
        .read_stream()
        .schema("ts TIMESTAMP, k STRING")
        .option("maxFilesPerTrigger", 1)
        .json(input.to_str().expect("p"))
        .expect("load")
        .with_watermark("ts", "1 minute")
        .expect("wm")
        .group_by([window(col("ts"), "1 minute"), col("k")])
        .count()
        .expect("count")
        .write_stream()
        .format("memory")
        .query_name("counts")
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .start()
        .expect("start");
    q.await_termination().expect("done");
    assert!(
        q.recent_progress().len() >= 5,
        "{} batches",
        q.recent_progress().len()
    );
    assert_eq!(sluice::EngineSession::plans_built() - before, 1);
}
