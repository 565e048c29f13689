//! gpuq-worker: one process per GPU slot.
//!
//! - `worker`: the process's life: model selection by VRAM budget, consuming,
//!   concurrency, heartbeat, shutdown.
//! - `job`: one delivery from bytes to ack (decode, route, claim, run, record, reply).
//! - `runtime`: the `Runtime` seam and its implementations (synthetic echo and
//!   sleep, adapter processes, TorchScript with feature `torch`).
//! - `placement`: the assignment from the placing dispatcher, and which held
//!   job runs next (main and loaded models first); `consumers`: the queues
//!   consumed now; `pull`: fetching instead of holding, for models with
//!   several queues; `fair`: which tenant's job runs next; `session`: one
//!   broker session's consume loop.
//! - `pool`: model residency within the VRAM budget (load on use, LRU eviction).
//! - `amqp`: owns lapin (consume and publish channels). `store`: owns redis.
//! - `gpu`: owns nvml-wrapper (free memory before a load, the process's use).
//! - `vram`: measured VRAM: readings while models load and jobs run, this
//!   worker's peak histograms in Redis, and a restart when a served model
//!   outgrows the budget.
//! - `stats`: live counters for the heartbeat; `heartbeat`: the worker's
//!   Redis record, written on a tick and on every change.

mod amqp;
mod consumers;
mod fair;
mod gpu;
mod heartbeat;
mod job;
mod placement;
mod pool;
mod pull;
mod runtime;
mod session;
mod stats;
mod store;
mod sub_queues;
mod vram;
mod worker;

pub use job::{route, Route};
pub use session::ExitReason;
pub use worker::{run, select_models, WorkerError, WorkerOptions};

/// Exit code that asks the supervisor for a restart (a model thread is stuck).
pub const EXIT_RESTART_REQUESTED: i32 = 75;
