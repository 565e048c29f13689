//! One delivery, from bytes to ack, as a value that flows one way:
//! [`Received::decode`] → [`InFlight::check`] → [`InFlight::claim`] →
//! [`InFlight::run`] → [`InFlight::record`] → reply → ack. Each step is a
//! method in the module that owns it:
//!
//! | step | module | owns |
//! |---|---|---|
//! | decode (or dead-letter a body that is no job) | `job/decode.rs` | the wire format, the dead-letter path |
//! | check (route, references, queue timeout) | `job/route.rs` | the pure decisions before anything runs |
//! | give back (size class too big for this worker) | `job/give_back.rs` | the VRAM tier it moves to |
//! | claim, retry, give up | `job/attempts.rs` | the attempt count and its limits |
//! | take the slot (cancel heard from here) | `job/slot.rs` | the slot hand-off of a job claimed ahead |
//! | run, then its bookkeeping off the slot | `job/run.rs` | the model pool, artifacts, cancel and timeout |
//! | record, reply, ack (or forward) | `job/record.rs`, `job/reply.rs` | the outcome's Redis write, the RPC reply |
//! | webhook (between record and ack) | `job/notify.rs` | the job's `WebhookDelivery` |
//!
//! The order is the guarantee: the outcome is stored in Redis *before* the ack,
//! so a worker dying at any point leaves either a redelivery or a recorded
//! outcome, never a silent loss. Settling consumes the delivery, so a job is
//! acked or requeued exactly once.
//!
//! The GPU slot never waits for bookkeeping: the job holds its slot (a
//! [`slot::Slot`], the session's concurrency permit) only until its model run
//! ends. Output offload, the measured VRAM's write, record, reply and ack
//! then run beside the next job, which the
//! session starts on the freed slot (issue 18), and which was usually
//! decoded, checked and claimed while the slot was still busy (claimed
//! ahead, `crate::session`): it only waits for the slot. Nothing about the
//! order above changes, only who waits for it. The one exception: a run that
//! requested a worker restart (a stuck model thread) keeps its slot, so no
//! other job starts on that model before the process restarts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::amqp::{Broker, Delivery};
use gpuq_common::artifacts::ArtifactStore;
use gpuq_common::config::Config;
use gpuq_common::registry::ModelConfig;
use gpuq_common::wire::Encoding;
use gpuq_common::{JobMessage, Names};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::attempts::Claimed;
use self::route::Checked;
use self::slot::NoSlot;
pub use self::slot::SlotSource;
use crate::fair::RunTimes;
use crate::pool::ModelPool;
use crate::stats::WorkerStats;
use crate::store::Store;

/// Everything a delivery handler needs, shared by all in-flight jobs.
pub struct JobContext {
    pub config: Arc<Config>,
    pub names: Names,
    pub worker_id: String,
    pub host_id: String,
    pub gpu: String,
    pub store: Store,
    pub broker: Arc<Broker>,
    /// Registry entries of the models whose queues this worker consumes.
    pub models: HashMap<String, ModelConfig>,
    /// The loaded models.
    pub pool: Arc<ModelPool>,
    /// Where artifact references in inputs and large outputs live.
    pub artifacts: ArtifactStore,
    /// Cancel signals of the jobs running now.
    pub cancels: Arc<CancelRegistry>,
    pub stats: Arc<WorkerStats>,
    /// Cancelled when a model thread is stuck and the process must be restarted.
    pub restart: CancellationToken,
    /// Measures what models use on the GPU; `None` where it cannot be read.
    pub vram: Option<Arc<crate::vram::VramMeter>>,
    /// What every worker learned of the models' VRAM, read every heartbeat:
    /// a job whose size class needs more than this worker has is given back.
    pub learned: Arc<crate::vram::LearnedVram>,
}

/// Cancel tokens of running jobs, by job id; fed by the cancel channel.
#[derive(Default)]
pub struct CancelRegistry {
    running: parking_lot::Mutex<HashMap<String, CancellationToken>>,
}

impl CancelRegistry {
    /// Cancels the job if it runs here; returns whether it did.
    pub fn cancel(&self, job_id: &str) -> bool {
        match self.running.lock().get(job_id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// How a delivery's handling ended.
pub enum Handled {
    /// Settled (acked, requeued, forwarded or dead-lettered); `ran_from`:
    /// when its run step began (it had its slot, or was cancelled while
    /// waiting for one), if it got that far.
    Ended { ran_from: Option<Instant> },
    /// Unclaimed: its tenant is at `max_running`. The session holds it
    /// until the tenant may run again.
    GivenBack(Box<Delivery>),
}

/// Handles one delivery from `model_id`'s queue to its ack (or requeue),
/// taking its slot from `slot` for the run and freeing it as soon as the
/// model run ends.
pub async fn handle_delivery(
    ctx: Arc<JobContext>,
    model_id: String,
    delivery: Delivery,
    slot: SlotSource,
    run_times: RunTimes,
) -> Handled {
    let message_id = delivery.message_id();
    let span = tracing::info_span!(
        "job",
        job_id = tracing::field::Empty,
        model = %model_id,
        feature = tracing::field::Empty,
        trace_id = tracing::field::Empty
    );
    // W3C trace context from the publisher (`traceparent`), when it sent one.
    if let Some(trace_id) = delivery
        .header_str("traceparent")
        .and_then(|t| t.split('-').nth(1))
    {
        span.record("trace_id", trace_id);
    }
    if let Some(id) = message_id.as_deref() {
        span.record("job_id", id);
    }
    let model = &ctx.models[&model_id];
    let received = Received {
        ctx: &ctx,
        model,
        delivery,
        message_id,
    };
    process(received, slot, run_times).instrument(span).await
}

/// A delivery not yet decoded: it may not be a job at all.
pub(crate) struct Received<'a> {
    ctx: &'a JobContext,
    /// The model whose queue delivered it.
    model: &'a ModelConfig,
    delivery: Delivery,
    message_id: Option<String>,
}

/// A job between decode and ack: the message, the delivery it came in (settled
/// exactly once, by the method that ends the job) and how to answer it.
pub(crate) struct InFlight<'a> {
    ctx: &'a JobContext,
    /// The model whose queue delivered it (and that runs it, unless forwarded).
    model: &'a ModelConfig,
    delivery: Delivery,
    job: JobMessage,
    /// The body's encoding, which a reply uses too.
    encoding: Encoding,
}

/// The whole path of one delivery; every branch ends in exactly one settle.
/// The slot is taken after the claim and freed when the run ends (or when
/// the job ends without one).
async fn process(received: Received<'_>, slot: SlotSource, run_times: RunTimes) -> Handled {
    const ENDED: Handled = Handled::Ended { ran_from: None };
    let Some(job) = received.decode().await else {
        return ENDED; // not a job: dead-lettered
    };
    let timeout = match job.check() {
        Checked::Run { timeout } => timeout,
        Checked::Forward { routing_key } => {
            job.forward(&routing_key).await;
            return ENDED;
        }
        Checked::Refused(outcome) => {
            job.refuse(outcome).await;
            return ENDED;
        }
        Checked::GiveBack(back) => {
            job.give_back(back).await;
            return ENDED;
        }
    };
    let (mut job, attempt) = match job.claim().await {
        Claimed::Run(job, attempt) => (job, attempt),
        Claimed::Settled => return ENDED, // already final (acked) or Redis is down (requeued)
        Claimed::GivenBack(delivery) => return Handled::GivenBack(Box::new(delivery)),
    };
    if let Some(error) = job.out_of_attempts(attempt) {
        job.give_up(error, attempt).await;
        return ENDED;
    }
    // Its cancel is heard from the claim on (while it waits for a slot,
    // while its model loads, while it runs).
    let cancel = job.ctx.cancels.register(&job.job.job_id);
    let slot = match slot.take(&cancel.token, &job.ctx.restart).await {
        Ok(slot) => Some(slot),
        // Cancelled while waiting: the run step ends it without the model.
        Err(NoSlot::Cancelled) => None,
        Err(NoSlot::Restart) => {
            tracing::info!("the worker restarts before a slot freed; job requeued");
            job.settle_requeue().await;
            return ENDED;
        }
    };
    // Charged from here: a job claimed ahead waited for its slot first.
    let ran_from = Instant::now();
    run_times.began();
    let ran = job.run(timeout, &cancel.token).await;
    run_times.ended();
    drop(cancel);
    // The next job may start while this one's outputs are offloaded and its
    // outcome recorded, replied and acked; a run that asked for a restart
    // keeps the slot until the process goes.
    if !job.ctx.restart.is_cancelled() {
        drop(slot);
        // The job the slot woke (usually claimed ahead) starts first: its
        // model runs while this one's bookkeeping is done.
        tokio::task::yield_now().await;
    }
    let outcome = job.outcome(ran, timeout).await;
    job.conclude(outcome, attempt).await;
    Handled::Ended {
        ran_from: Some(ran_from),
    }
}

impl InFlight<'_> {
    /// How long Redis writes of this job are retried before it is requeued.
    fn redis_retry(&self) -> Duration {
        Duration::from_secs(self.ctx.config.worker.redis_retry_s)
    }

    /// The job's tenant for records and events (`default` when it names
    /// none); `None` for an invalid one, which `check` refuses.
    fn tenant(&self) -> Option<String> {
        self.job.tenant().ok().map(str::to_owned)
    }
}

mod attempts;
mod decode;
mod give_back;
mod notify;
mod record;
mod reply;
mod route;
mod run;
mod slot;
pub use route::{route, Route};
#[cfg(test)]
mod tests;
