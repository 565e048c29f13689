//! The local RabbitMQ cluster and Sentinel-managed Redis of
//! `scripts/cluster.sh`, for the failover tests: [`LocalCluster::up`] starts
//! it (or says why it cannot), dropping the guard stops every process the
//! script started, also when the test failed.
//!
//! The cluster has fixed ports, so only one runs at a time: the guard holds a
//! process-wide lock (tests in one binary run in parallel) and an exclusive
//! lock on a file for its whole life (test binaries of other runs wait).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

static ONE_CLUSTER: Mutex<()> = Mutex::new(());

/// A running local cluster; `down` when dropped.
pub struct LocalCluster {
    /// `amqp://` URLs of nodes 1, 2 and 3.
    pub amqp_urls: Vec<String>,
    /// `redis+sentinel://` URL of the Sentinel-managed primary.
    pub redis_url: String,
    _one: MutexGuard<'static, ()>,
    /// Locked (`flock`) until dropped.
    _guard: std::fs::File,
}

/// The file whose lock says a test holds the cluster.
const GUARD_FILE: &str = "/tmp/gpuq-cluster.guard";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

/// Runs `scripts/cluster.sh ARGS`, bounded by `timeout 180`.
pub fn cluster_sh(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("180")
        .arg(script())
        .args(args)
        .output()
        .expect("running scripts/cluster.sh")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

impl LocalCluster {
    /// Starts the cluster; `None` (after printing why) when RabbitMQ or
    /// Redis is not installed here, so the caller skips. Any other failure
    /// panics with the script's output.
    pub fn up() -> Option<LocalCluster> {
        let one = ONE_CLUSTER
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let guard = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(GUARD_FILE)
            .expect("cluster guard file");
        guard.lock().expect("cluster guard lock");
        // A cluster left by a killed run would make `up` refuse: start clean
        // (no other test holds it: we hold the guard).
        let _ = cluster_sh(&["down"]);
        let output = cluster_sh(&["up"]);
        let printed = text(&output);
        if output.status.code() == Some(3) {
            eprintln!("SKIPPED: the local cluster cannot start here: {printed}");
            return None;
        }
        assert!(output.status.success(), "cluster.sh up failed:\n{printed}");
        let value = |key: &str| {
            printed
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("cluster.sh up printed no {key}:\n{printed}"))
                .trim()
                .to_owned()
        };
        let amqp_urls = value("GPUQ_CLUSTER_AMQP")
            .split(',')
            .map(str::to_owned)
            .collect();
        let redis_url = value("GPUQ_CLUSTER_REDIS");
        Some(LocalCluster {
            amqp_urls,
            redis_url,
            _one: one,
            _guard: guard,
        })
    }

    /// Runs a subcommand (`stop-node 2`, `kill-redis-primary`...) and
    /// returns what it printed; panics when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let output = cluster_sh(args);
        let printed = text(&output);
        assert!(
            output.status.success(),
            "cluster.sh {args:?} failed:\n{printed}"
        );
        printed
    }

    /// `stop_app` on node `n` (1..=3): its connections drop, its replicas stop.
    pub fn stop_node(&self, n: u8) {
        self.run(&["stop-node", &n.to_string()]);
    }

    pub fn start_node(&self, n: u8) {
        self.run(&["start-node", &n.to_string()]);
    }

    /// The node (1..=3) that leads quorum queue `queue`'s replicas.
    pub fn quorum_leader(&self, queue: &str) -> u8 {
        let printed = self.run(&["quorum-leader", queue]);
        (1..=3)
            .find(|n| printed.contains(&format!("gpuq{n}@")))
            .unwrap_or_else(|| panic!("no leader in: {printed}"))
    }

    /// The `amqp_urls = [...]` line of a config that lists the nodes in `order`.
    pub fn amqp_urls_toml(&self, order: &[u8]) -> String {
        let urls: Vec<String> = order
            .iter()
            .map(|n| format!("\"{}\"", self.amqp_urls[usize::from(*n) - 1]))
            .collect();
        format!("amqp_urls = [{}]\n", urls.join(", "))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let output = cluster_sh(&["down"]);
        if !output.status.success() {
            eprintln!("cluster.sh down failed:\n{}", text(&output));
        }
    }
}
