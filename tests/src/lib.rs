//! Harness for the end-to-end tests (and `gpuq-bench`, in [`bench`]): runs the
//! real `gpuq`, `gpuq-dispatcher` and `gpuq-worker` binaries against the real
//! RabbitMQ and Redis on this machine.
//!
//! Every [`TestSystem`] has its own namespace (queue, exchange and Redis key
//! prefix), so tests run in parallel. Dropping it stops every process it started
//! (SIGTERM, then SIGKILL, by pid) and deletes its queues, exchanges and keys,
//! also when the test failed. Every wait has a deadline.

pub mod bench;
pub mod cluster;
pub mod fixtures;
pub mod http;
mod inspect;
pub mod jobs;
mod process;
mod servers;
pub mod webhook_receiver;

pub use process::ProcessGuard;
pub use servers::{MotoS3, PrivateRedis};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gpuq_common::topology::Topology;
use gpuq_common::{Config, ConfigOverrides, Names};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

/// RabbitMQ URL for tests (`GPUQ_AMQP_URL` or the local default).
pub fn amqp_url() -> String {
    std::env::var("GPUQ_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Redis URL for tests (`GPUQ_REDIS_URL` or the local default).
pub fn redis_url() -> String {
    std::env::var("GPUQ_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// Path of a workspace binary, built by `cargo build --workspace --bins`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/, gpuq-bench from target/<profile>/.
    let exe_dir = exe.parent().expect("executable dir");
    let dir = if exe_dir.ends_with("deps") {
        exe_dir.parent().expect("target dir")
    } else {
        exe_dir
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, as scripts/test.sh does)",
        path.display()
    );
    path
}

/// One isolated gpuq system: a namespace, a config file, and the processes started for it.
pub struct TestSystem {
    pub names: Names,
    pub config: Config,
    pub config_path: PathBuf,
    dir: tempfile::TempDir,
}

impl TestSystem {
    /// Writes a config: `namespace`, the broker URLs, fast heartbeats, then `body`.
    pub fn new(body: &str) -> TestSystem {
        Self::with_redis(body, &redis_url())
    }

    /// Like [`TestSystem::new`], with its own Redis (e.g. a [`PrivateRedis`]).
    pub fn with_redis(body: &str, redis: &str) -> TestSystem {
        let namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("gpuq.toml");
        let body = format!("redis_url = \"{redis}\"\n{body}");
        let config = write_config(&config_path, &namespace, &body);
        TestSystem {
            names: config.names(),
            config,
            config_path,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes another config file for this system's namespace (e.g. a second host).
    pub fn extra_config(&self, file_name: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(file_name);
        write_config(&path, self.names.namespace(), body);
        path
    }

    /// Replaces this system's config file (for reload tests); returns nothing new.
    pub fn rewrite_config(&self, body: &str) {
        write_config(&self.config_path, self.names.namespace(), body);
    }

    /// Starts a binary with another config file.
    pub fn spawn_with_config(
        &self,
        binary_name: &str,
        config: &Path,
        args: &[&str],
    ) -> ProcessGuard {
        let mut full = vec!["--config", config.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        self.spawn_raw(binary_name, &full)
    }

    /// Starts a binary with `--config` and `args`; output goes to a log file.
    pub fn spawn(&self, binary_name: &str, args: &[&str]) -> ProcessGuard {
        self.spawn_with_config(binary_name, &self.config_path.clone(), args)
    }

    fn spawn_raw(&self, binary_name: &str, args: &[&str]) -> ProcessGuard {
        let log = self.dir.path().join(format!(
            "{binary_name}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary(binary_name))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary_name}: {e}"));
        ProcessGuard {
            child: Some(child),
            name: binary_name.to_owned(),
            log,
        }
    }

    pub fn dispatcher(&self, args: &[&str]) -> ProcessGuard {
        self.spawn("gpuq-dispatcher", args)
    }

    /// Runs the `gpuq` CLI to completion (killed after `timeout`).
    pub fn gpuq(&self, args: &[&str], timeout: Duration) -> Output {
        self.gpuq_with_config(&self.config_path, args, timeout)
    }

    pub fn gpuq_with_config(&self, config: &Path, args: &[&str], timeout: Duration) -> Output {
        let mut child = Command::new(binary("gpuq"))
            .arg("--config")
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting gpuq");
        let deadline = Instant::now() + timeout;
        while child.try_wait().expect("gpuq wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("gpuq output")
    }

    fn cleanup(&self) {
        let names = self.names.clone();
        let topology = Topology::for_config(&self.config);
        // The webhook queues a dispatcher's sender declared (when webhooks are on).
        let webhook_queues: Vec<String> = if self.config.webhooks.enabled() {
            gpuq_common::webhook::queues::queue_specs(&self.config)
                .into_iter()
                .map(|q| q.name)
                .collect()
        } else {
            Vec::new()
        };
        let redis = self.config.redis.target().clone();
        // Drop may run inside a runtime: do the async clean-up on a thread of its own.
        let cleaner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                // The sub-queues producers declared (listed in Redis): quorum
                // queues left on the shared broker would pile up run after run.
                let sub_queues = listed_sub_queues(&redis, &names).await;
                if let Ok(connection) =
                    gpuq_common::amqp::connect(&amqp_url(), "gpuq-tests-cleanup").await
                {
                    if let Ok(channel) = connection.create_channel().await {
                        let queues = topology.queues.iter().map(|q| q.name.clone());
                        for queue in queues.chain(sub_queues).chain(webhook_queues) {
                            let _ = channel
                                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                                .await;
                        }
                        for exchange in &topology.exchanges {
                            let _ = channel
                                .exchange_delete(
                                    exchange.name.as_str().into(),
                                    ExchangeDeleteOptions::default(),
                                )
                                .await;
                        }
                    }
                    let _ = connection.close(200, "cleanup".into()).await;
                }
                if let Ok(mut connection) = inspect::redis_connection(&redis).await {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(names.redis_pattern())
                        .query_async(&mut connection)
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> = redis::cmd("DEL")
                            .arg(keys)
                            .query_async(&mut connection)
                            .await;
                    }
                }
            });
        });
        let _ = cleaner.join();
    }
}

/// The names of the sub-queues listed in `<ns>:subqueues:<model>` sets.
async fn listed_sub_queues(redis: &gpuq_common::config::RedisTarget, names: &Names) -> Vec<String> {
    let Ok(mut connection) = inspect::redis_connection(redis).await else {
        return Vec::new();
    };
    let prefix = names.sub_queues_key("");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .unwrap_or_default();
    let models: Vec<String> = keys.iter().map(|k| k[prefix.len()..].to_owned()).collect();
    let listed = gpuq_common::fair_share::listed(&mut connection, names, &models)
        .await
        .unwrap_or_default();
    listed
        .iter()
        .flat_map(|(model, subs)| subs.iter().map(|sub| sub.queue_name(names, model)))
        .collect()
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Writes a test config: `namespace`, the broker URLs, fast heartbeats, then `body`.
fn write_config(path: &Path, namespace: &str, body: &str) -> Config {
    let redis_line = if body.contains("redis_url") {
        String::new()
    } else {
        format!("redis_url = \"{}\"\n", redis_url())
    };
    // A body that names its brokers (`amqp_urls` of a cluster) keeps them.
    let amqp_line = if body.contains("amqp_url") {
        String::new()
    } else {
        format!("amqp_url = \"{}\"\n", amqp_url())
    };
    let text = format!("namespace = \"{namespace}\"\n{amqp_line}{redis_line}{body}");
    let text = if text.contains("[worker]") {
        text
    } else {
        format!("{text}\n[worker]\nheartbeat_interval_ms = 200\nheartbeat_ttl_ms = 2000\nshutdown_grace_s = 10\n")
    };
    // Tests run many dispatchers at once: none binds the default metrics port
    // unless the test asks for one.
    let text = if text.contains("metrics_listen") {
        text
    } else {
        text.replace("[dispatcher]\n", "[dispatcher]\nmetrics_listen = \"\"\n")
    };
    // Each system keeps its artifacts in its own temporary directory.
    let artifacts_dir = path.parent().expect("config dir").join("artifacts");
    let text = if text.contains("url = \"s3://") {
        text
    } else if text.contains("[artifacts]") {
        text.replace(
            "[artifacts]",
            &format!("[artifacts]\nurl = \"file://{}\"", artifacts_dir.display()),
        )
    } else {
        format!(
            "{text}\n[artifacts]\nurl = \"file://{}\"\n",
            artifacts_dir.display()
        )
    };
    std::fs::write(path, &text).expect("write config");
    Config::parse(&text, Some(path), &ConfigOverrides::default())
        .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"))
}

/// Polls `condition` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// First line of a process's stdout (the job id printed by `gpuq submit`).
pub fn first_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}
