//! One dispatcher per host id: the host lease (`<ns>:host:<id>:lease`). A
//! second dispatcher started with the same config refuses to start and names
//! the first; the first keeps its workers. A dispatcher killed without
//! releasing its lease is replaced once the lease expires.

use std::time::{Duration, Instant};

use gpuq_common::host_lease::HostLeaseHolder;
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::{eventually, TestSystem};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const WAIT: Duration = Duration::from_secs(30);

/// The lease's time to live under the tests' 200 ms heartbeat: the 5 s floor.
const LEASE_TTL: Duration = Duration::from_secs(5);

const WORKER: &str = "host-a-gpu0-slot0";

/// This machine's hostname, as the dispatcher reads it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_owned()
}

/// Who holds host `host-a` now, if anyone.
async fn lease_holder(system: &TestSystem) -> Option<HostLeaseHolder> {
    let mut connection = system.redis().await;
    let value: Option<String> = redis::cmd("GET")
        .arg(system.names.host_lease("host-a"))
        .query_async(&mut connection)
        .await
        .expect("GET");
    value.map(|v| HostLeaseHolder::from_value(&v).expect("a holder's JSON"))
}

async fn worker_pid(system: &TestSystem) -> Option<String> {
    system.worker_field(WORKER, "pid").await
}

fn submit_echo(system: &TestSystem) {
    let output = system.gpuq(&["submit", "echo", "--input", "x=1", "--wait"], WAIT);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_dispatcher_with_the_same_host_id_refuses_and_the_first_keeps_its_worker() {
    let system = ConfigBuilder::one_host().echo("echo").system();
    let first = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let holder = lease_holder(&system)
        .await
        .expect("the first holds the lease");
    assert_eq!(holder.pid, first.pid());
    assert_eq!(holder.hostname, hostname());
    let worker_before = worker_pid(&system).await.expect("the worker's record");

    let mut second = system.dispatcher(&[]);
    let started = Instant::now();
    // It waits out at most the lease's remaining time + 1 s, then refuses.
    let code = second
        .wait_exit(LEASE_TTL + Duration::from_secs(10))
        .expect("the second dispatcher exits by itself");
    assert!(
        code.is_some_and(|code| code != 0),
        "exit code {code:?}:\n{}",
        second.log()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited first"
    );
    let log = second.log();
    for part in [
        "host id 'host-a' is in use by another dispatcher".to_owned(),
        format!("hostname {}", hostname()),
        format!("pid {}", first.pid()),
        "dispatcher.host_id".to_owned(),
    ] {
        assert!(log.contains(&part), "{part:?} not in:\n{log}");
    }
    assert!(
        !log.contains("worker started"),
        "the refused dispatcher started no worker:\n{log}"
    );

    // The first dispatcher's worker lives on: no watchdog kills, same pid,
    // for longer than the watchdog's 2 s heartbeat limit.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(worker_pid(&system).await, Some(worker_before));
    let slots = system.host_slots("host-a").await;
    assert_eq!(slots[0]["restarts"], 0, "{slots:?}");
    assert_eq!(
        lease_holder(&system).await.map(|h| h.pid),
        Some(first.pid())
    );
    assert!(!first.log().contains("stopped heart-beating"));
    submit_echo(&system);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dispatchers_host_id_is_taken_over_once_its_lease_expires() {
    let system = ConfigBuilder::one_host().echo("echo").system();
    let mut first = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let old_worker: i32 = worker_pid(&system).await.unwrap().parse().unwrap();

    let first_pid = first.pid();
    first.signal(Signal::SIGKILL);
    first.wait_exit(WAIT).expect("killed");
    let dead = lease_holder(&system).await;
    assert!(
        dead.as_ref().is_some_and(|h| h.pid == first_pid),
        "a killed dispatcher does not release its lease: {dead:?}"
    );

    let second = system.dispatcher(&[]);
    let started = Instant::now();
    eventually("the new dispatcher holds the lease", WAIT, || async {
        lease_holder(&system)
            .await
            .is_some_and(|h| h.pid == second.pid())
    })
    .await;
    assert!(
        started.elapsed() < LEASE_TTL + Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(second.log().contains("waiting up to"), "{}", second.log());
    eventually("a new worker heart-beating", WAIT, || async {
        worker_pid(&system)
            .await
            .is_some_and(|pid| pid != old_worker.to_string())
    })
    .await;
    submit_echo(&system);

    // The killed dispatcher's worker stopped on its parent-death signal;
    // never leave it behind.
    let gone = Instant::now() + WAIT;
    while kill(Pid::from_raw(old_worker), None).is_ok() && Instant::now() < gone {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if kill(Pid::from_raw(old_worker), None).is_ok() {
        let _ = kill(Pid::from_raw(old_worker), Signal::SIGKILL);
        panic!("the killed dispatcher's worker {old_worker} outlived it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_whose_lease_another_took_stops_with_its_workers_instead_of_fighting() {
    let system = ConfigBuilder::one_host().echo("echo").system();
    let mut dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let worker: i32 = worker_pid(&system).await.unwrap().parse().unwrap();
    let key = system.names.host_lease("host-a");
    let mut connection = system.redis().await;

    // Redis lost the key and nobody took it: the holder takes it again.
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    eventually("the lease taken again by its holder", WAIT, || async {
        lease_holder(&system)
            .await
            .is_some_and(|h| h.pid == dispatcher.pid())
    })
    .await;

    // Another dispatcher took it meanwhile: this one stops, and says why.
    let other = HostLeaseHolder::new("other-machine".into(), 7, 1);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(other.to_value())
        .arg("PX")
        .arg(60_000)
        .query_async(&mut connection)
        .await
        .unwrap();
    let code = dispatcher.wait_exit(WAIT).expect("the dispatcher stops");
    assert!(code.is_some_and(|code| code != 0), "exit code {code:?}");
    let log = dispatcher.log();
    assert!(log.contains("ERROR"), "{log}");
    assert!(
        log.contains("taken over by another dispatcher: hostname other-machine, pid 7"),
        "{log}"
    );
    assert!(
        kill(Pid::from_raw(worker), None).is_err(),
        "its worker stopped with it"
    );
    // The new holder's lease is left alone.
    assert_eq!(lease_holder(&system).await, Some(other));
}
