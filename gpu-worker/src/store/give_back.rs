//! The Redis side of giving a job back for want of VRAM (`crate::job`'s
//! give-back step): the fleet's largest worker budget, and the VRAM tier
//! listed as one of its model's sub-queues so the workers that fit consume it.

use redis::AsyncCommands;

use super::{Store, StoreError};

impl Store {
    /// The largest `vram_budget_mib` among the workers alive now (`None`
    /// when no worker has a budget).
    pub async fn largest_budget_mib(&self) -> Result<Option<u64>, StoreError> {
        let mut connection = self.connection.clone();
        let ids: Vec<String> = connection.smembers(self.names.workers_set()).await?;
        if ids.is_empty() {
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hget(self.names.worker_key(id), "vram_budget_mib");
        }
        let budgets: Vec<Option<u64>> = pipe.query_async(&mut connection).await?;
        Ok(budgets.into_iter().flatten().filter(|b| *b > 0).max())
    }

    /// Lists a sub-queue of `model` (idempotent), as a producer does for
    /// the sub-queues it declares.
    pub async fn list_sub_queue(&self, model: &str, member: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: u64 = connection
            .sadd(self.names.sub_queues_key(model), member)
            .await?;
        Ok(())
    }
}
