//! The dispatcher with real processes: several hosts, worker restarts, crash
//! loops, graceful shutdown without losing jobs, reload, and the heartbeat watchdog.

use std::collections::HashSet;
use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::{eventually, TestSystem};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const WAIT: Duration = Duration::from_secs(30);

/// The `sleep` model (4 GiB, a 60 s timeout) every scenario here serves.
fn sleep_model() -> ConfigBuilder {
    ConfigBuilder::new().model_with("sleep", "sleep", 4096, "timeout_s = 60")
}

/// A host with GPUs of these sizes (MiB, indices in order) and these
/// `[dispatcher]` keys, serving [`sleep_model`].
fn host(host_id: &str, gpus_mib: &[u64], dispatcher_keys: &[&str]) -> ConfigBuilder {
    let mut host = sleep_model().host(host_id);
    for key_value in dispatcher_keys {
        host = host.dispatcher(key_value);
    }
    for memory_mib in gpus_mib {
        host = host.gpu(*memory_mib);
    }
    host
}

async fn submit_sleep(system: &TestSystem, job_id: &str, duration_ms: u64) {
    let fields = format!(r#", "inputs": {{"duration_ms": {duration_ms}}}"#);
    gpuq_integration_tests::jobs::publish(system, "sleep", job_id, &fields).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_one_stream_of_jobs_and_both_show_in_system() {
    let system = host("host-a", &[8192], &[]).system();
    let second = system.extra_config("host-b.toml", &host("host-b", &[8192, 8192], &[]).build());
    let _a = system.dispatcher(&[]);
    let _b = system.spawn_with_config("gpuq-dispatcher", &second, &[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 3, WAIT)
        .await;

    let ids: Vec<String> = (0..30).map(|i| format!("stream-{i}")).collect();
    for id in &ids {
        submit_sleep(&system, id, 100).await;
    }
    let mut hosts = HashSet::new();
    for id in &ids {
        let record = system
            .wait_for_status(id, &["completed", "failed"], WAIT)
            .await;
        assert_eq!(record["status"], "completed", "{id}: {record:?}");
        hosts.insert(record["host"].clone());
    }
    assert_eq!(
        hosts,
        HashSet::from(["host-a".to_string(), "host-b".to_string()])
    );

    let output = system.gpuq(&["system", "--json"], WAIT);
    let view: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut host_ids: Vec<_> = view["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host_id"].as_str().unwrap().to_owned())
        .collect();
    host_ids.sort();
    assert_eq!(host_ids, ["host-a", "host-b"]);
    assert_eq!(view["workers"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_is_restarted_and_serves_again() {
    let system = ConfigBuilder::echo_and_sleep().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let worker = "host-a-gpu0-slot0";
    let old_pid: i32 = system
        .worker_field(worker, "pid")
        .await
        .unwrap()
        .parse()
        .unwrap();

    kill(Pid::from_raw(old_pid), Signal::SIGKILL).unwrap();
    eventually(
        "the slot reports the SIGKILL and a restart",
        WAIT,
        || async {
            let slots = system.host_slots("host-a").await;
            slots.first().is_some_and(|s| {
                s["restarts"].as_u64() >= Some(1) && s["last_exit"] == "signal SIGKILL"
            })
        },
    )
    .await;
    eventually("a new worker process heart-beating", WAIT, || async {
        system
            .worker_field(worker, "pid")
            .await
            .is_some_and(|pid| pid != old_pid.to_string())
    })
    .await;
    let output = system.gpuq(&["submit", "echo", "--input", "x=1", "--wait"], WAIT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_crashing_on_start_marks_its_slot_failed_while_others_serve() {
    let system = host(
        "host-a",
        &[16384],
        &[
            "workers_per_gpu = 2",
            "crash_loop_limit = 3",
            "restart_backoff_initial_ms = 50",
            "restart_backoff_max_ms = 200",
        ],
    )
    .system();
    // Fault injection: the worker of slot 1 exits at once; slot 0 runs the real worker.
    let wrapper = system.dir().join("crashing-worker.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$*\" in *-slot1*) echo 'injected start-up crash' >&2; exit 3;; esac\nexec {} \"$@\"\n",
            gpuq_integration_tests::binary("gpuq-worker").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let _dispatcher = system.dispatcher(&["--worker-bin", wrapper.to_str().unwrap()]);

    eventually(
        "slot 1 marked failed after the crash-loop limit",
        WAIT,
        || async {
            let slots = system.host_slots("host-a").await;
            slots.len() == 2 && slots[1]["state"] == "failed"
        },
    )
    .await;
    let slots = system.host_slots("host-a").await;
    assert_eq!(slots[1]["last_exit"], "exit code 3");
    assert_eq!(
        slots[1]["restarts"], 2,
        "3 quick crashes = start + 2 restarts"
    );
    assert_eq!(slots[0]["state"], "running");

    submit_sleep(&system, "served-by-slot0", 10).await;
    let record = system
        .wait_for_status("served-by-slot0", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed");
    assert_eq!(record["worker"], "host-a-gpu0-slot0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_job_finish() {
    let system = host("host-a", &[8192], &[]).system();
    let mut dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;

    submit_sleep(&system, "in-flight", 1500).await;
    system
        .wait_for_status("in-flight", &["processing"], WAIT)
        .await;
    dispatcher.signal(Signal::SIGTERM);
    assert_eq!(dispatcher.wait_exit(WAIT).unwrap(), Some(0));
    let record = system.job_hash("in-flight").await;
    assert_eq!(record["status"], "completed", "{record:?}");
    assert_eq!(record["attempts"], "1");
    assert!(
        system.host_record("host-a").await.is_empty(),
        "host record removed on exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_period_requeues_the_job_and_another_host_finishes_it() {
    // A one-second grace period: the 4 s job cannot finish within it.
    let scenario = |host_id: &str| {
        host(host_id, &[8192], &[]).section(
            "[worker]\nheartbeat_interval_ms = 200\nheartbeat_ttl_ms = 2000\nshutdown_grace_s = 1",
        )
    };
    let system = scenario("host-a").system();
    let mut dispatcher = system.dispatcher(&[]);
    let queue = system.names.model_queue("sleep");
    system.wait_for_consumers(&queue, 1, WAIT).await;

    submit_sleep(&system, "long-job", 4000).await;
    system
        .wait_for_status("long-job", &["processing"], WAIT)
        .await;
    dispatcher.signal(Signal::SIGTERM);
    assert_eq!(dispatcher.wait_exit(WAIT).unwrap(), Some(0));
    // Not finished, not lost: back in its queue.
    assert_eq!(system.job_hash("long-job").await["status"], "processing");
    assert_eq!(system.queue_depth(&queue).await, Some((1, 0)));

    let second = system.extra_config("host-b.toml", &scenario("host-b").build());
    let _b = system.spawn_with_config("gpuq-dispatcher", &second, &[]);
    let record = system
        .wait_for_status("long-job", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed");
    assert_eq!(record["host"], "host-b");
    assert_eq!(record["attempts"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replans_without_dropping_the_in_flight_job() {
    let system = host("host-a", &[16384], &["workers_per_gpu = 1"]).system();
    let dispatcher = system.dispatcher(&[]);
    let queue = system.names.model_queue("sleep");
    system.wait_for_consumers(&queue, 1, WAIT).await;
    submit_sleep(&system, "across-reload", 1500).await;
    system
        .wait_for_status("across-reload", &["processing"], WAIT)
        .await;

    system.rewrite_config(&host("host-a", &[16384], &["workers_per_gpu = 2"]).build());
    dispatcher.signal(Signal::SIGHUP);
    eventually("two slots after reload", WAIT, || async {
        system.host_slots("host-a").await.len() == 2
    })
    .await;
    let record = system
        .wait_for_status("across-reload", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed");
    assert_eq!(record["attempts"], "1", "the job was not interrupted");
    system.wait_for_consumers(&queue, 2, WAIT).await;
    let slots = system.host_slots("host-a").await;
    assert!(
        slots.iter().all(|s| s["vram_budget_mib"] == 7936),
        "{slots:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_heart_beating_is_killed_and_restarted() {
    let system = ConfigBuilder::echo_and_sleep().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let worker = "host-a-gpu0-slot0";
    let old_pid: i32 = system
        .worker_field(worker, "pid")
        .await
        .unwrap()
        .parse()
        .unwrap();

    // A frozen process: alive, but silent.
    kill(Pid::from_raw(old_pid), Signal::SIGSTOP).unwrap();
    eventually("a new worker process", WAIT, || async {
        system
            .worker_field(worker, "pid")
            .await
            .is_some_and(|pid| pid != old_pid.to_string())
    })
    .await;
    let slots = system.host_slots("host-a").await;
    assert_eq!(slots[0]["last_exit"], "signal SIGKILL");
    let output = system.gpuq(&["submit", "echo", "--input", "x=1", "--wait"], WAIT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn without_nvml_or_declared_gpus_the_dispatcher_exits_with_a_clear_error() {
    let system = sleep_model().system();
    // CUDA_VISIBLE_DEVICES="" hides NVML's GPUs too, so this holds on GPU machines as well.
    let output = std::process::Command::new(gpuq_integration_tests::binary("gpuq-dispatcher"))
        .arg("--config")
        .arg(&system.config_path)
        .arg("--print-plan")
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no GPUs: NVML is not available")
            && stderr.contains("add [[dispatcher.gpus]]")
            || stderr.contains("no usable GPU"),
        "{stderr}"
    );
}

#[test]
fn print_plan_shows_the_gpus_the_plan_and_each_workers_device() {
    let system = host("host-a", &[24576, 8192], &["workers_per_gpu = 2"]).system();
    let output = std::process::Command::new(gpuq_integration_tests::binary("gpuq-dispatcher"))
        .arg("--config")
        .arg(&system.config_path)
        .arg("--print-plan")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    if stdout.contains("GPUs from declared") {
        assert!(
            stdout.contains("host-a-gpu0-slot0 on GPU 0: budget 12032 MiB, models: sleep"),
            "{stdout}"
        );
        assert!(
            stdout.contains(
                "host-a-gpu1-slot1 on GPU 1: budget 3840 MiB, models: (no model fits; not started)"
            ),
            "{stdout}"
        );
        assert!(
            stdout.contains("host-a-gpu1-slot0 gets CUDA_VISIBLE_DEVICES=1"),
            "{stdout}"
        );
    } else {
        assert!(stdout.contains("GPUs from nvml"), "{stdout}");
    }
}
