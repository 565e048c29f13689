//! The list of a model's sub-queues in Redis (`<ns>:subqueues:<model>`, see
//! `gpuq_common::fair_share`): the producer adds a sub-queue once it has
//! declared it, so workers and the placing dispatcher know to read it.

use redis::AsyncCommands;

use super::{Store, StoreError};

impl Store {
    /// Lists sub-queues (`(model, member)`) as in use; idempotent.
    pub async fn register_sub_queues(&self, subs: &[(String, String)]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for (model, member) in subs {
            pipe.sadd(self.names.sub_queues_key(model), member).ignore();
        }
        let mut connection = self.connection.clone();
        let () = pipe.query_async(&mut connection).await?;
        Ok(())
    }

    /// How many sub-queues one model has listed.
    pub async fn sub_queue_count(&self, model: &str) -> Result<u64, StoreError> {
        let mut connection = self.connection.clone();
        Ok(connection.scard(self.names.sub_queues_key(model)).await?)
    }

    /// The members of one model's sub-queue set.
    pub async fn sub_queues(&self, model: &str) -> Result<Vec<String>, StoreError> {
        let mut connection = self.connection.clone();
        Ok(connection
            .smembers(self.names.sub_queues_key(model))
            .await?)
    }
}
