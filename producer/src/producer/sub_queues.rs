//! Declaring the sub-queues a submission publishes to (see
//! `gpuq_common::fair_share`) before anything about its jobs is written:
//! a job whose sub-queue cannot be made leaves no record, and a publish to
//! a sub-queue never meets a missing queue. Each sub-queue is declared and
//! listed in Redis once per process (then remembered), so the common case
//! costs nothing.

use std::collections::{BTreeMap, BTreeSet};

use gpuq_common::fair_share::SubQueue;
use gpuq_common::topology::Topology;

use super::prepare::{PreparedJob, SubQueueTarget};
use super::{Producer, ProducerError, SubmitError};
use crate::amqp::{BrokerError, Publisher};
use crate::store::StoreError;
use crate::system::SubQueueStatus;

/// Why the sub-queues of a submission could not be made ready.
#[derive(Debug)]
pub(super) enum DeclareError {
    Broker(BrokerError),
    Store(StoreError),
}

impl DeclareError {
    /// The error each job of the submission gets.
    pub(super) fn for_each_job(&self) -> SubmitError {
        match self {
            DeclareError::Broker(error) => SubmitError::Broker(error.clone()),
            DeclareError::Store(error) => SubmitError::Store(error.clone()),
        }
    }
}

impl Producer {
    /// Declares the sub-queues of `jobs` this process has not declared yet,
    /// then lists them in Redis for the workers and the placing dispatcher.
    pub(super) async fn declare_sub_queues(
        &self,
        publisher: &Publisher,
        jobs: &mut [(usize, PreparedJob)],
    ) -> Result<(), DeclareError> {
        let mut wanted: BTreeMap<String, SubQueueTarget> = BTreeMap::new();
        {
            let declared = self.sub_queues.lock().expect("sub-queue set lock");
            for target in jobs.iter().filter_map(|(_, job)| job.sub_queue.as_ref()) {
                let name = target.sub.queue_name(&self.names, &target.model);
                if !declared.contains(&name) {
                    wanted.insert(name, target.clone());
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let refused = self.refused_sub_queues(&wanted).await?;
        if !refused.is_empty() {
            self.route_to_model_queue(jobs, &refused);
            wanted.retain(|name, _| !refused.contains(name));
        }
        let new: BTreeMap<String, &SubQueueTarget> =
            wanted.iter().map(|(name, t)| (name.clone(), t)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let topology = Topology {
            exchanges: Vec::new(),
            queues: new
                .values()
                .map(|t| Topology::sub_queue(&self.config, &t.model, &t.sub))
                .collect(),
        };
        publisher
            .declare(&topology)
            .await
            .map_err(DeclareError::Broker)?;
        let members: Vec<(String, String)> = new
            .values()
            .map(|t| (t.model.clone(), t.sub.member()))
            .collect();
        self.store
            .register_sub_queues(&members)
            .await
            .map_err(DeclareError::Store)?;
        tracing::info!(queues = ?new.keys().collect::<Vec<_>>(), "sub-queues declared");
        self.sub_queues
            .lock()
            .expect("sub-queue set lock")
            .extend(new.into_keys());
        Ok(())
    }

    /// The wanted sub-queues that would take their model past
    /// `tenants.max_sub_queues` (the first ones, by name, fit): each
    /// sub-queue is a queue of the broker (a quorum queue holds files and a
    /// Raft member), so their number is bounded whoever names tenants. Two
    /// producers adding at the same moment can pass it by their batches.
    async fn refused_sub_queues(
        &self,
        wanted: &BTreeMap<String, SubQueueTarget>,
    ) -> Result<BTreeSet<String>, DeclareError> {
        let limit = self.config.tenants.max_sub_queues;
        let mut room: BTreeMap<&str, u64> = BTreeMap::new();
        let mut refused = BTreeSet::new();
        for (name, target) in wanted {
            let model = target.model.as_str();
            if !room.contains_key(model) {
                let listed = self
                    .store
                    .sub_queue_count(model)
                    .await
                    .map_err(DeclareError::Store)?;
                room.insert(model, limit.saturating_sub(listed));
            }
            let left = room.get_mut(model).expect("room counted");
            if *left == 0 {
                tracing::warn!(model, limit, queue = %name, "tenants.max_sub_queues reached: this tenant's jobs wait in the model's own queue");
                refused.insert(name.clone());
            } else {
                *left -= 1;
            }
        }
        Ok(refused)
    }

    /// Jobs bound for a refused sub-queue go through the jobs exchange to
    /// the model's own queue instead (the default tenant's share).
    fn route_to_model_queue(&self, jobs: &mut [(usize, PreparedJob)], refused: &BTreeSet<String>) {
        for (_, job) in jobs.iter_mut() {
            let Some(target) = &job.sub_queue else {
                continue;
            };
            if refused.contains(&target.sub.queue_name(&self.names, &target.model)) {
                (job.exchange, job.routing_key) = self.exchange_route(&job.message);
                job.sub_queue = None;
            }
        }
    }

    /// A publish to this sub-queue came back unroutable (someone deleted
    /// it): the next job declares it again.
    pub(super) fn forget_sub_queue(&self, target: &SubQueueTarget) {
        let name = target.sub.queue_name(&self.names, &target.model);
        self.sub_queues
            .lock()
            .expect("sub-queue set lock")
            .remove(&name);
    }

    /// The model's sub-queues that have jobs waiting.
    pub(super) async fn sub_queue_depths(
        &self,
        model: &str,
    ) -> Result<Vec<SubQueueStatus>, ProducerError> {
        let mut depths = Vec::new();
        for member in self.store.sub_queues(model).await? {
            let Some(sub) = SubQueue::from_member(&member) else {
                continue;
            };
            let queue = sub.queue_name(&self.names, model);
            let messages = self
                .publisher()
                .await?
                .queue_depth(&queue)
                .await?
                .map_or(0, |d| d.messages);
            if messages > 0 {
                depths.push(SubQueueStatus {
                    tenant: sub.tenant,
                    level: sub.level.as_str().to_owned(),
                    messages,
                });
            }
        }
        Ok(depths)
    }
}
