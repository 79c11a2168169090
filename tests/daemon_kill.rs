//! The daemon killed with SIGKILL at several points while files keep arriving: after a restart
//! the file sink's manifest holds every input row exactly once.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

#[test]
fn sigkill_while_files_arrive_loses_and_doubles_nothing() {
    let w = workdir();
    let input = w.path().join("in");
    fs::create_dir_all(&input).expect("mkdir");
    let p = w.path().join("p.toml");
    fs::write(
        &p,
        "[source.events]\nformat = \"csv\"\npath = \"in\"\nschema = \"id BIGINT, note STRING\"\n\
         options = { maxFilesPerTrigger = 2 }\n\n\
         [query.copy]\nsql = \"SELECT id, upper(note) AS note FROM events\"\n\
         checkpoint = \"chk\"\nprogress_log = \"progress.jsonl\"\n\
         sink = { format = \"csv\", path = \"out\" }\n",
    )
    .expect("write pipeline");
    let files = 60u64;
    let rows_per_file = 50u64;
    let progress = || {
        fs::read_to_string(w.path().join("progress.jsonl"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let mut next = 0u64;
    let mut add_files = |n: u64| {
        for _ in 0..n {
            if next == files {
                return;
            }
            let body: String = (0..rows_per_file)
                .map(|r| format!("{},row {r} of file {next}\n", next * rows_per_file + r))
                .collect();
            put_file(&input, &format!("f{next:03}.csv"), &body, next);
            next += 1;
        }
    };
    // five kills at different moments: right after a batch, and a little later while the next
    // files arrive (the daemon is mid-batch or idle at that point, whichever it happens to be)
    for round in 0..5u64 {
        let child = spawn_pipeline(&p, &[]);
        let before = progress();
        add_files(6);
        wait_until("a batch", Duration::from_secs(60), || progress() > before);
        add_files(3);
        std::thread::sleep(Duration::from_micros(300 * round));
        signal(&child, "KILL");
        let o = child.wait_with_output().expect("wait");
        assert!(!o.status.success());
    }
    add_files(files);
    let child = spawn_pipeline(&p, &[]);
    let out = w.path().join("out");
    wait_until("all rows committed", Duration::from_secs(120), || {
        committed_lines(&out, false).len() as u64 >= files * rows_per_file
    });
    signal(&child, "TERM");
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut ids: Vec<u64> = committed_lines(&out, false)
        .iter()
        .map(|l| l.split(',').next().expect("id").parse().expect("number"))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        (0..files * rows_per_file).collect::<Vec<_>>(),
        "every row exactly once"
    );
    assert_eq!(
        sorted(visible_lines(&out, false)).len() as u64,
        files * rows_per_file
    );
}
