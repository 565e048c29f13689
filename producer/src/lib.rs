//! gpuq's producer side: a library to submit jobs and read their fate, and the
//! `gpuq` command line built on it.
//!
//! - `producer`: the API ([`Producer`], [`JobRequest`]).
//! - `amqp`: owns lapin (confirmed, mandatory publishes; queue depths).
//! - `store`: owns redis (queued records, reads, waiting on events).
//! - `system`: the system snapshot and its tables.
//! - `cli`: the `gpuq` commands.
//! - `gateway`: the HTTP gateway (`gpuq serve`).

mod amqp;
pub mod cli;
pub mod gateway;
mod producer;
mod store;
mod system;

pub use amqp::QueueDepth;
pub use producer::{JobFilter, JobListing, JobRequest, Producer, ProducerError, SubmitError};
pub use store::CancelOutcome;
pub use system::{QueueStatus, SystemStatus};
