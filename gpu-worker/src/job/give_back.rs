//! Giving a job back for want of VRAM, before it is claimed.
//!
//! Every worker learns, per model and input size class, what a job peaks at
//! (`gpuq_common::vram`). A job whose class needs more than this worker's
//! whole budget would run into `out_of_memory` here, so it is not started:
//! it moves to its model's VRAM tier for that need (a sub-queue only
//! workers with at least that budget consume, whether or not placement gave
//! them the model; `gpuq_common::fair_share`) and is acked here only once
//! the broker confirmed the copy. A worker dying in between leaves the job
//! in both queues; the claim lets one copy run. When no worker of the fleet
//! has the tier's budget, waiting would never end: the job fails
//! `out_of_memory` at once, with the figures.
//!
//! A tier sub-queue keeps the job's priority level but not its tenant (one
//! tier per level and need bucket, however many tenants). Tiers are 5 %
//! buckets of need, and a need only becomes a tier between this worker's
//! budget and the fleet's largest, so a model has at most a few dozen of
//! them whatever its inputs (3 levels × the 5 % steps between the smallest
//! and the largest slot). The record stays `queued` throughout.

use gpuq_common::config::Config;
use gpuq_common::fair_share::SubQueue;
use gpuq_common::registry::ModelConfig;
use gpuq_common::topology::Topology;
use gpuq_common::vram::{class_need_mib, size_class, tier_mib, ModelVram};
use gpuq_common::wire::DEFAULT_TENANT;
use gpuq_common::{ErrorCode, JobError, JobMessage, JobStatus};

use super::record::failed;
use super::InFlight;

/// A job too big for this worker, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiveBack {
    pub class: String,
    /// What its class needs, MiB (measured, with the margin).
    pub need_mib: u64,
    /// The VRAM tier of its sub-queue.
    pub sub: SubQueue,
}

/// Whether a job of `model` must be given back by a worker with
/// `budget_mib`, from what every worker `learned` of the model.
pub fn decide(
    job: &JobMessage,
    model: &ModelConfig,
    learned: Option<&ModelVram>,
    budget_mib: Option<u64>,
    config: &Config,
) -> Option<GiveBack> {
    let (budget, learned) = (budget_mib?, learned?);
    let class = size_class(&job.inputs, model.vram_size_input.as_deref());
    let need_mib = class_need_mib(learned, &class, &config.gpu)?;
    if need_mib <= budget {
        return None;
    }
    let sub = SubQueue::for_job(DEFAULT_TENANT, job.priority, false).with_vram(tier_mib(need_mib));
    Some(GiveBack {
        class,
        need_mib,
        sub,
    })
}

impl InFlight<'_> {
    /// This worker's give-back decision for the job.
    pub(super) fn vram_give_back(&self) -> Option<GiveBack> {
        let budget = self.ctx.pool.budget_mib();
        self.ctx.learned.with(&self.model.id, |learned| {
            decide(&self.job, self.model, learned, budget, &self.ctx.config)
        })
    }

    /// Moves the job to its VRAM tier (listed in Redis, then published and
    /// confirmed, then acked), or fails it when no worker could take it.
    /// Redis or the broker failing requeues it: nothing is lost.
    pub(super) async fn give_back(self, back: GiveBack) {
        let ctx = self.ctx;
        let tier = back.sub.vram_mib.unwrap_or(back.need_mib);
        let largest = match ctx.store.largest_budget_mib().await {
            Ok(largest) => largest,
            Err(error) => {
                tracing::warn!(%error, "cannot read the fleet's budgets; requeueing the job");
                return self.settle_requeue().await;
            }
        };
        if largest.is_none_or(|largest| largest < tier) {
            let error = JobError::new(
                ErrorCode::OutOfMemory,
                format!(
                    "inputs of size class '{}' need about {} MiB of VRAM for model '{}' (measured p99 or peak, plus gpu.vram_margin_mib); the largest worker slot has {} MiB",
                    back.class,
                    back.need_mib,
                    self.model.id,
                    largest.unwrap_or(0)
                ),
            );
            return self.refuse(failed(JobStatus::Failed, error)).await;
        }
        let spec = Topology::sub_queue(&ctx.config, &self.model.id, &back.sub);
        if let Err(error) = ctx
            .store
            .list_sub_queue(&self.model.id, &back.sub.member())
            .await
        {
            tracing::warn!(%error, "cannot list the VRAM tier; requeueing the job");
            return self.settle_requeue().await;
        }
        match ctx.broker.give_back(&spec, &self.delivery).await {
            Ok(true) => {
                tracing::info!(class = %back.class, need_mib = back.need_mib,
                    budget_mib = ?ctx.pool.budget_mib(), queue = %spec.name,
                    "job needs more VRAM than this worker has; given back to a bigger slot");
                ctx.stats.record_give_back(&self.model.id);
                self.settle_ack().await;
            }
            Ok(false) => {
                tracing::warn!(queue = %spec.name, "the VRAM tier did not take the job; requeueing it");
                self.settle_requeue().await;
            }
            Err(error) => {
                tracing::warn!(%error, queue = %spec.name, "giving the job back failed; requeueing it");
                self.settle_requeue().await;
            }
        }
    }
}
