//! The set of worker slots a dispatcher runs, kept in line with the current plan.
//!
//! Applying a new plan (at start, and on reload) keeps every slot whose plan is
//! unchanged, stops the ones that changed or vanished (gracefully: their
//! in-flight jobs finish or go back to the queue), and starts the new ones. A
//! replacement waits for its predecessor to exit, so one worker id never has
//! two processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuq_common::record::SlotRecord;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::supervisor::{
    supervise_slot, RestartPolicy, SharedSlotStatus, SlotCell, SlotStatus, WorkerCommand,
};
use crate::vram_plan::{Plan, SlotPlan};

struct Slot {
    plan: SlotPlan,
    status: SharedSlotStatus,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

pub struct Slots {
    slots: Vec<Slot>,
    command: Arc<WorkerCommand>,
    policy: RestartPolicy,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Notified whenever a slot's status changes.
    changed: Arc<Notify>,
}

/// What applying a plan changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplySummary {
    pub kept: usize,
    pub started: usize,
    pub stopped: usize,
}

impl Slots {
    pub fn new(
        command: Arc<WorkerCommand>,
        policy: RestartPolicy,
        shutdown: CancellationToken,
    ) -> Slots {
        Slots {
            slots: Vec::new(),
            command,
            policy,
            shutdown,
            tracker: TaskTracker::new(),
            changed: Arc::new(Notify::new()),
        }
    }

    pub fn apply(&mut self, plan: &Plan) -> ApplySummary {
        let mut summary = ApplySummary::default();
        let mut previous: Vec<Slot> = std::mem::take(&mut self.slots);
        for slot_plan in &plan.slots {
            if let Some(i) = previous.iter().position(|s| &s.plan == slot_plan) {
                self.slots.push(previous.swap_remove(i));
                summary.kept += 1;
                continue;
            }
            // Same worker id with another plan: stop the old process first.
            let predecessor = previous
                .iter()
                .position(|s| s.plan.worker_id == slot_plan.worker_id)
                .map(|i| previous.swap_remove(i))
                .and_then(|old| {
                    old.stop.cancel();
                    summary.stopped += 1;
                    old.task
                });
            if !slot_plan.models.is_empty() {
                summary.started += 1;
            }
            self.slots.push(self.start(slot_plan.clone(), predecessor));
        }
        for old in previous {
            old.stop.cancel();
            summary.stopped += 1;
        }
        summary
    }

    fn start(&self, plan: SlotPlan, predecessor: Option<JoinHandle<()>>) -> Slot {
        let status = SlotCell::new(
            SlotStatus {
                state: if plan.models.is_empty() {
                    "unused"
                } else {
                    "starting"
                },
                ..SlotStatus::default()
            },
            Arc::clone(&self.changed),
        );
        let stop = self.shutdown.child_token();
        let task = (!plan.models.is_empty()).then(|| {
            let (plan, command, policy, status, stop) = (
                plan.clone(),
                Arc::clone(&self.command),
                self.policy.clone(),
                Arc::clone(&status),
                stop.clone(),
            );
            self.tracker.spawn(async move {
                if let Some(predecessor) = predecessor {
                    let _ = predecessor.await;
                }
                supervise_slot(plan, command, policy, status, stop).await;
            })
        });
        Slot {
            plan,
            status,
            stop,
            task,
        }
    }

    /// Resolves when any slot's status changed since the last call.
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    /// Pids of the running worker processes.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| s.status.snapshot().pid)
            .collect()
    }

    /// Running workers that have been up for at least `min_age`: (worker id, pid).
    pub fn settled_workers(&self, min_age: Duration) -> Vec<(String, u32)> {
        self.slots
            .iter()
            .filter_map(|s| {
                let status = s.status.snapshot();
                let old_enough = status.started_at.is_some_and(|t| t.elapsed() >= min_age);
                match (status.pid, old_enough) {
                    (Some(pid), true) => Some((s.plan.worker_id.clone(), pid)),
                    _ => None,
                }
            })
            .collect()
    }

    /// Kills a worker that stopped heart-beating; its supervisor restarts it.
    pub fn kill_unresponsive(&self, worker_id: &str, pid: u32) {
        let current = self
            .slots
            .iter()
            .any(|s| s.plan.worker_id == worker_id && s.status.snapshot().pid == Some(pid));
        if current {
            tracing::error!(
                worker = worker_id,
                pid,
                "worker stopped heart-beating; killing it so it restarts"
            );
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    pub fn records(&self) -> Vec<SlotRecord> {
        self.slots
            .iter()
            .map(|slot| {
                let status = slot.status.snapshot();
                SlotRecord {
                    worker_id: slot.plan.worker_id.clone(),
                    gpu: slot.plan.gpu,
                    vram_budget_mib: slot.plan.vram_budget_mib,
                    models: slot.plan.models.clone(),
                    state: status.state.to_owned(),
                    pid: status.pid,
                    restarts: status.restarts,
                    last_exit: status.last_exit,
                }
            })
            .collect()
    }

    /// Stops every worker and waits for all supervisors to end.
    pub async fn stop_all(self, started: Instant) {
        for slot in &self.slots {
            slot.stop.cancel();
        }
        self.tracker.close();
        self.tracker.wait().await;
        tracing::debug!(
            uptime_s = started.elapsed().as_secs(),
            "all workers stopped"
        );
    }
}
