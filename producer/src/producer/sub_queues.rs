//! Declaring the sub-queues a submission publishes to (see
//! `gpuq_common::fair_share`) before anything about its jobs is written:
//! a job whose sub-queue cannot be made leaves no record, and a publish to
//! a sub-queue never meets a missing queue. Each sub-queue is declared and
//! listed in Redis once per process (then remembered), so the common case
//! costs nothing.

use std::collections::BTreeMap;

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
        jobs: &[(usize, PreparedJob)],
    ) -> Result<(), DeclareError> {
        let mut new: BTreeMap<String, &SubQueueTarget> = BTreeMap::new();
        {
            let declared = self.sub_queues.lock().expect("sub-queue set lock");
            for target in jobs.iter().filter_map(|(_, job)| job.sub_queue.as_ref()) {
                let name = target.sub.queue_name(&self.names, &target.model);
                if !declared.contains(&name) {
                    new.insert(name, target);
                }
            }
        }
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
