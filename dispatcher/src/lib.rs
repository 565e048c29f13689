//! gpuq-dispatcher: one per GPU host.
//!
//! - `dispatcher`: the daemon's life: discover, plan, declare topology, supervise,
//!   heartbeat the host record, shut down.
//! - `gpu`: GPU discovery as gpuq types (pure); `nvml`: owns nvml-wrapper.
//! - `vram_plan`: the VRAM plan: each GPU's slots and the models that fit each (pure).
//! - `placement_decision`: which model each worker serves, from the backlog
//!   (pure), with `placement_decision::inputs`, the snapshot built from the
//!   records and the assignments built from a decision (pure);
//!   `placement_loop`: the loop that reads queues and records, holds the lease
//!   and publishes assignments (I/O only).
//! - `host_lease`: holding this host id exclusively (take, renew, release).
//! - `slots`: the running slots, kept in line with the plan (start, reload, stop).
//! - `supervisor`: one worker process per slot, restarts, crash-loop limit.
//! - `background`: starts the metrics endpoint, dead-letter watcher, janitor
//!   and placement loop as tracked tasks.
//! - `artifact_janitor`: deletes artifacts older than `artifacts.ttl_s`.
//! - `webhooks`: the webhook sender (signed POSTs, tiered retries, dead
//!   letters), run when `webhooks.allow_hosts` is set.
//! - `dead_letters`: records the fate of jobs the broker dead-letters (expired, delivery limit).
//! - `amqp`: owns lapin (topology, ready counts, dead-letter events, the
//!   webhook queues).
//! - `metrics`: owns prometheus (the host's `/metrics`).
//! - `store`: owns redis (the host record, dead-lettered jobs).

mod amqp;
mod artifact_janitor;
mod autoscaling;
mod background;
mod dead_letters;
mod dispatcher;
mod gpu;
mod host_lease;
mod metrics;
mod nvml;
mod placement_decision;
mod placement_loop;
mod slots;
mod store;
mod supervisor;
mod vram_plan;
mod webhooks;

pub use dispatcher::{plan_report, run, DispatcherError, DispatcherOptions};
pub use gpu::{GpuInfo, GpuSource};
pub use placement_decision::inputs::{
    round as placement_round, History as PlacementHistory, Round as PlacementRound,
};
pub use placement_decision::{decide, Decision, ModelState, Policy, Snapshot, WorkerState};
pub use vram_plan::{plan, OverCommitted, Plan, SlotPlan};
