//! gpuq-worker: one process per GPU slot.
//!
//! - `worker`: the process's life: model selection by VRAM budget, consuming,
//!   concurrency, heartbeat, shutdown.
//! - `job`: one delivery from bytes to ack (decode, route, claim, run, record, reply).
//! - `models`: the `Model` seam that runtimes implement; `synthetic`: echo and sleep.
//! - `amqp`: owns lapin (consume and publish channels). `store`: owns redis.
//! - `stats`: live counters for the heartbeat.

mod amqp;
mod job;
mod models;
mod stats;
mod store;
mod synthetic;
mod worker;

pub use job::{route, Route};
pub use worker::{run, select_models, ExitReason, WorkerError, WorkerOptions};

/// Exit code that asks the supervisor for a restart (a model thread is stuck).
pub const EXIT_RESTART_REQUESTED: i32 = 75;
