//! gpuq-dispatcher: one per GPU host.
//!
//! - `dispatcher`: the daemon's life: discover, plan, declare topology, supervise,
//!   heartbeat the host record, shut down.
//! - `gpu`: GPU discovery as gpuq types (pure); `nvml`: owns nvml-wrapper.
//! - `plan`: VRAM planning (pure).
//! - `placement`: which model each worker serves, from the backlog (pure);
//!   `placer`: the loop that gathers the snapshot and publishes assignments.
//! - `slots`: the running slots, kept in line with the plan (start, reload, stop).
//! - `supervisor`: one worker process per slot, restarts, crash-loop limit.
//! - `artifact_janitor`: deletes artifacts older than `artifacts.ttl_s`.
//! - `dead_letters`: records the fate of jobs the broker dead-letters (expired, delivery limit).
//! - `metrics`: owns prometheus (the host's `/metrics`).
//! - `store`: owns redis (the host record, dead-lettered jobs).

mod artifact_janitor;
mod dead_letters;
mod dispatcher;
mod gpu;
mod metrics;
mod nvml;
mod placement;
mod placer;
mod plan;
mod slots;
mod store;
mod supervisor;

pub use dispatcher::{plan_report, run, DispatcherError, DispatcherOptions};
pub use gpu::{GpuInfo, GpuSource};
pub use placement::{decide, Decision, ModelState, Policy, Snapshot, WorkerState};
pub use plan::{plan, OverCommitted, Plan, SlotPlan};
