//! docs/architecture.md stays true: every module its table names exists, and
//! every function it names on the job's path is defined where it says.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn doc() -> String {
    std::fs::read_to_string(root().join("docs/architecture.md")).expect("docs/architecture.md")
}

/// The first cell of each row of the module table: `| `path` | ...`.
fn module_paths(doc: &str) -> Vec<String> {
    let table = doc
        .split("## Modules: who owns what")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the module table section");
    table
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_module_in_the_table_exists() {
    let paths = module_paths(&doc());
    assert!(paths.len() > 30, "the table lists {} modules", paths.len());
    let missing: Vec<&String> = paths
        .iter()
        .filter(|path| !root().join(path).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md names missing modules: {missing:?}"
    );
}

#[test]
fn the_functions_on_the_paths_are_defined_where_the_doc_says() {
    let source = |path: &str| std::fs::read_to_string(root().join(path)).expect(path);
    for (path, function) in [
        ("producer/src/producer.rs", "fn submit_many"),
        ("producer/src/producer/prepare.rs", "fn prepare"),
        ("producer/src/store.rs", "fn write_queued"),
        ("producer/src/amqp.rs", "fn start_publish"),
        ("producer/src/producer/publish.rs", "fn publish_all"),
        ("gpu-worker/src/consumers.rs", "fn receive"),
        ("gpu-worker/src/job/mod.rs", "fn handle_delivery"),
        ("gpu-worker/src/job/mod.rs", "fn process"),
        ("gpu-worker/src/job/decode.rs", "fn decode"),
        ("gpu-worker/src/job/route.rs", "fn check"),
        ("gpu-worker/src/job/attempts.rs", "fn claim"),
        ("gpu-worker/src/session.rs", "fn fair_pick"),
        (
            "producer/src/producer/sub_queues.rs",
            "fn declare_sub_queues",
        ),
        ("gpu-worker/src/job/run.rs", "fn run_model"),
        ("gpu-worker/src/job/attempts.rs", "fn conclude"),
        ("gpu-worker/src/job/route.rs", "fn route"),
        ("gpu-worker/src/job/route.rs", "fn queue_timeout_exceeded"),
        ("gpu-worker/src/store.rs", "fn claim"),
        ("gpu-worker/src/store.rs", "fn finish"),
        ("gpu-worker/src/job/record.rs", "fn record"),
        ("gpu-worker/src/job/attempts.rs", "fn retry_later"),
        ("gpu-worker/src/job/reply.rs", "fn reply"),
        ("gpu-worker/src/job/record.rs", "fn settle_ack"),
        ("gpu-worker/src/job/reply.rs", "fn checked_reply_to"),
        ("gpu-worker/src/pool.rs", "fn acquire"),
        ("common/src/artifacts.rs", "fn resolve_inputs"),
        ("dispatcher/src/placement_loop.rs", "fn round"),
        ("dispatcher/src/amqp.rs", "fn ready_counts"),
        ("dispatcher/src/placement_decision/inputs.rs", "fn snapshot"),
        (
            "dispatcher/src/placement_decision/inputs.rs",
            "fn assignments",
        ),
        ("dispatcher/src/placement_decision.rs", "fn decide"),
        ("dispatcher/src/store.rs", "fn publish_placement"),
        ("dispatcher/src/store.rs", "fn hold_placement_lease"),
        ("gpu-worker/src/placement.rs", "fn watch_assignment"),
    ] {
        let name = function.trim_start_matches("fn ");
        assert!(
            doc().contains(name),
            "the doc no longer names {name}: drop it here"
        );
        assert!(source(path).contains(function), "{path} has no {function}");
    }
}
