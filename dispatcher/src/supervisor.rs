//! Runs one worker slot: spawns `gpuq-worker`, restarts it when it exits, and
//! stops it on shutdown.
//!
//! Restarts back off exponentially; a worker that keeps dying soon after start
//! (`crash_loop_limit` times in a row) marks its slot `failed` instead of
//! spinning. Workers get `PR_SET_PDEATHSIG`, so they stop if the dispatcher dies.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use gpuq_common::process::LogFormat;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::vram_plan::SlotPlan;

/// Exit code with which a worker asks to be restarted at once (stuck model).
const EXIT_RESTART_REQUESTED: i32 = 75;

/// How to start a worker process.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub config_path: PathBuf,
    pub host_id: String,
    pub log_format: LogFormat,
}

/// When and how often to restart.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Consecutive quick failures after which the slot is marked failed.
    pub crash_loop_limit: u32,
    /// A worker that ran this long is healthy again: backoff and count reset.
    pub stable_after: Duration,
    /// How long a stopping worker gets before SIGKILL.
    pub stop_grace: Duration,
}

/// Live state of a slot, read by the host heartbeat and the watchdog.
#[derive(Debug, Clone, Default)]
pub struct SlotStatus {
    pub state: &'static str,
    pub pid: Option<u32>,
    /// When the current process started.
    pub started_at: Option<Instant>,
    pub restarts: u32,
    pub last_exit: Option<String>,
}

/// A slot's status plus a signal that it changed (so the host record is
/// rewritten at once, not at the next heartbeat tick).
pub struct SlotCell {
    status: Mutex<SlotStatus>,
    changed: Arc<Notify>,
}

pub type SharedSlotStatus = Arc<SlotCell>;

impl SlotCell {
    pub fn new(status: SlotStatus, changed: Arc<Notify>) -> SharedSlotStatus {
        Arc::new(SlotCell {
            status: Mutex::new(status),
            changed,
        })
    }

    pub fn snapshot(&self) -> SlotStatus {
        self.status.lock().clone()
    }

    fn update(&self, change: impl FnOnce(&mut SlotStatus)) {
        change(&mut self.status.lock());
        self.changed.notify_one();
    }
}

fn update(status: &SharedSlotStatus, change: impl FnOnce(&mut SlotStatus)) {
    status.update(change);
}

/// Describes how a process ended: `exit code N` or `signal SIGX`.
pub fn describe_exit(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("signal {}", signal.as_str()),
            Err(_) => format!("signal {signal}"),
        },
        (None, None) => "unknown exit".to_owned(),
    }
}

fn spawn_worker(command: &WorkerCommand, slot: &SlotPlan) -> std::io::Result<Child> {
    let log_format = match command.log_format {
        LogFormat::Human => "human",
        LogFormat::Json => "json",
    };
    let mut process = Command::new(&command.program);
    process
        .arg("--config")
        .arg(&command.config_path)
        .args(["--worker-id", &slot.worker_id])
        .args(["--host-id", &command.host_id])
        .args(["--gpu", &slot.gpu.to_string()])
        .args(["--vram-budget-mib", &slot.vram_budget_mib.to_string()])
        .args(["--models", &slot.models.join(",")])
        .args(["--log-format", log_format])
        .env("CUDA_VISIBLE_DEVICES", &slot.cuda_visible_devices)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    gpuq_common::process::set_parent_death_signal(&mut process);
    process.spawn()
}

/// Asks a worker to stop (SIGTERM), then kills it after `grace`.
async fn stop_worker(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "worker did not stop in time; killing it"
            );
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}

/// Keeps one slot's worker running until `shutdown`.
pub async fn supervise_slot(
    slot: SlotPlan,
    command: Arc<WorkerCommand>,
    policy: RestartPolicy,
    status: SharedSlotStatus,
    shutdown: CancellationToken,
) {
    let mut backoff = policy.initial_backoff;
    let mut quick_failures = 0u32;
    loop {
        update(&status, |s| {
            s.state = "starting";
            s.pid = None;
        });
        let started = Instant::now();
        let exit = match spawn_worker(&command, &slot) {
            Ok(mut child) => {
                let pid = child.id();
                update(&status, |s| {
                    s.state = "running";
                    s.pid = pid;
                    s.started_at = Some(Instant::now());
                });
                tracing::info!(worker = %slot.worker_id, pid, "worker started");
                tokio::select! {
                    exit = child.wait() => exit.map(|e| describe_exit(&e)).unwrap_or_else(|e| format!("wait failed: {e}")),
                    _ = shutdown.cancelled() => {
                        let exit = stop_worker(&mut child, policy.stop_grace).await;
                        let exit = exit.map(|e| describe_exit(&e)).unwrap_or_default();
                        tracing::info!(worker = %slot.worker_id, %exit, "worker stopped");
                        update(&status, |s| { s.state = "stopped"; s.pid = None; s.last_exit = Some(exit); });
                        return;
                    }
                }
            }
            Err(error) => format!("spawn failed: {error}"),
        };
        let restart_requested = exit == format!("exit code {EXIT_RESTART_REQUESTED}");
        tracing::warn!(worker = %slot.worker_id, %exit, "worker exited");
        update(&status, |s| {
            s.pid = None;
            s.started_at = None;
            s.last_exit = Some(exit);
        });
        if started.elapsed() >= policy.stable_after || restart_requested {
            quick_failures = 0;
            backoff = policy.initial_backoff;
        } else {
            quick_failures += 1;
        }
        if quick_failures >= policy.crash_loop_limit {
            tracing::error!(
                worker = %slot.worker_id,
                failures = quick_failures,
                "worker keeps crashing on start; slot marked failed and no longer restarted"
            );
            update(&status, |s| s.state = "failed");
            return;
        }
        let delay = if restart_requested {
            Duration::ZERO
        } else {
            backoff
        };
        update(&status, |s| s.state = "backoff");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {
                update(&status, |s| s.state = "stopped");
                return;
            }
        }
        if !restart_requested {
            backoff = (backoff * 2).min(policy.max_backoff);
        }
        update(&status, |s| s.restarts += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_by_code_or_signal() {
        assert_eq!(describe_exit(&ExitStatus::from_raw(1 << 8)), "exit code 1");
        assert_eq!(describe_exit(&ExitStatus::from_raw(9)), "signal SIGKILL");
    }
}
