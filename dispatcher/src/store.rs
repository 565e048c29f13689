//! Owns the dispatcher's Redis connection: the host record and its heartbeat.

use std::time::Duration;

use gpuq_common::record::HostRecord;
use gpuq_common::Names;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

#[derive(Clone)]
pub struct Store {
    connection: ConnectionManager,
    names: Names,
}

impl Store {
    pub async fn connect(url: &str, names: Names) -> Result<Store, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let connection = client.get_connection_manager_with_config(config).await?;
        Ok(Store { connection, names })
    }

    /// Writes the host record and renews its expiry.
    pub async fn heartbeat(
        &self,
        record: &HostRecord,
        ttl: Duration,
    ) -> Result<(), redis::RedisError> {
        let mut connection = self.connection.clone();
        let key = self.names.host_key(&record.host_id);
        redis::pipe()
            .hset_multiple(&key, &record.to_fields())
            .ignore()
            .pexpire(&key, ttl.as_millis() as i64)
            .ignore()
            .sadd(self.names.hosts_set(), &record.host_id)
            .ignore()
            .query_async::<()>(&mut connection)
            .await
    }

    /// Each worker's last heartbeat time and pid, `None` when it has no record.
    pub async fn worker_heartbeats(
        &self,
        worker_ids: &[String],
    ) -> Result<Vec<Option<(u64, u32)>>, redis::RedisError> {
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        for id in worker_ids {
            pipe.cmd("HMGET")
                .arg(self.names.worker_key(id))
                .arg("heartbeat_ms")
                .arg("pid");
        }
        let replies: Vec<(Option<u64>, Option<u32>)> = pipe.query_async(&mut connection).await?;
        Ok(replies.into_iter().map(|(at, pid)| at.zip(pid)).collect())
    }

    pub async fn remove_host(&self, host_id: &str) -> Result<(), redis::RedisError> {
        let mut connection = self.connection.clone();
        let _: () = connection.del(self.names.host_key(host_id)).await?;
        connection.srem(self.names.hosts_set(), host_id).await
    }
}
