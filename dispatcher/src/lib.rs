//! gpuq-dispatcher: one per GPU host.
//!
//! - `dispatcher`: the daemon's life: discover, plan, declare topology, supervise,
//!   heartbeat the host record, shut down.
//! - `gpu`: GPU discovery as gpuq types. `plan`: VRAM planning (pure).
//! - `supervisor`: one worker process per slot, restarts, crash-loop limit.
//! - `store`: owns redis (the host record).

mod dispatcher;
mod gpu;
mod plan;
mod store;
mod supervisor;

pub use dispatcher::{run, DispatcherError, DispatcherOptions};
pub use gpu::{GpuInfo, GpuSource};
pub use plan::{plan, Plan, SlotPlan};
