//! Owns the producer's Redis connection: writes `queued` records, reads job,
//! worker and host records, and waits on the events channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gpuq_common::config::RedisTarget;
use gpuq_common::job_record::scripts::{self, QueuedReply, Quota, Script};
use gpuq_common::job_record::RecordScripts;
use gpuq_common::names::job_field;
use gpuq_common::record::{HostRecord, JobRecord, WorkerRecord};
use gpuq_common::redis_link::RedisLink;
use gpuq_common::{JobError, JobStatus, Names, StatusEvent};
use redis::AsyncCommands;

mod events;
mod listing;
mod sub_queues;
use events::EventHub;
pub use events::{EventReceiver, HubEvent};
pub use listing::{JobFilter, JobListing};

/// Redis could not be reached or refused a command.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(#[from] redis::RedisError);

/// What a cancel request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was queued or running (or not seen yet) and is now cancelled.
    Cancelled { was: String },
    /// The job had already ended with this status.
    AlreadyFinal(String),
}

#[derive(Clone)]
pub struct Store {
    /// The primary, followed through failovers (`gpuq_common::redis_link`).
    connection: RedisLink,
    names: Names,
    /// The record scripts a producer runs: queued, cancel, finish (unroutable).
    scripts: RecordScripts,
    /// How long ids stay in the recent-jobs index (the finished-job TTL).
    index_ttl_ms: u64,
    events: Arc<tokio::sync::OnceCell<Arc<EventHub>>>,
}

/// A new job's first record.
pub struct QueuedJob<'a> {
    pub job_id: &'a str,
    pub feature: &'a str,
    pub model: Option<&'a str>,
    pub created_ms: u64,
    pub metadata_json: Option<String>,
    /// Its inputs as JSON, when the producer keeps them in the record.
    pub inputs_json: Option<&'a str>,
    /// Name of the gateway token that submitted it.
    pub submitted_by: Option<&'a str>,
    /// The tenant it belongs to (checked by `prepare`).
    pub tenant: Option<&'a str>,
    /// The tenant's limits, checked in the step that writes the record.
    pub quota: Quota,
    /// Its priority after the tenant's `max_priority`.
    pub priority: Option<u8>,
    /// The priority it asked for, when `max_priority` lowered it.
    pub priority_lowered_from: Option<u8>,
}

/// What [`Store::write_queued`] did with one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueuedOutcome {
    /// Its record is written: publish it.
    Written,
    /// A job with its id exists; nothing was written.
    Exists,
    /// Its tenant is past a limit; nothing was written.
    QuotaExceeded {
        /// Which limit, naming the tenant and the config key.
        reason: String,
        /// When the rate limit refused: how long until the next submit may pass.
        retry_after_ms: Option<u64>,
    },
}

impl QueuedOutcome {
    fn of(reply: QueuedReply, job: &QueuedJob<'_>) -> QueuedOutcome {
        let tenant = job.tenant.unwrap_or_default();
        match reply {
            QueuedReply::Written => QueuedOutcome::Written,
            QueuedReply::Exists => QueuedOutcome::Exists,
            QueuedReply::OverMaxQueued { queued } => QueuedOutcome::QuotaExceeded {
                reason: format!(
                    "tenant '{tenant}' has {queued} jobs waiting (tenants.{tenant}.max_queued = {})",
                    job.quota.max_queued.unwrap_or_default()
                ),
                retry_after_ms: None,
            },
            QueuedReply::OverRate { retry_after_ms } => QueuedOutcome::QuotaExceeded {
                reason: format!(
                    "tenant '{tenant}' submits faster than tenants.{tenant}.rate_per_s = {} (burst {}); the next submit may pass in {retry_after_ms} ms",
                    job.quota.rate.map_or(0.0, |r| r.per_s),
                    job.quota.rate.map_or(0, |r| r.burst)
                ),
                retry_after_ms: Some(retry_after_ms),
            },
        }
    }
}

impl Store {
    pub async fn connect(
        target: &RedisTarget,
        names: Names,
        index_ttl_ms: u64,
    ) -> Result<Store, StoreError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let mut connection = RedisLink::connect(target, config).await?;
        let scripts = RecordScripts::new();
        // Loaded up front: `write_queued` pipelines it by hash.
        scripts
            .script(Script::Queued)
            .prepare_invoke()
            .load_async(&mut connection)
            .await?;
        Ok(Store {
            connection,
            names,
            scripts,
            index_ttl_ms,
            events: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// Writes the `queued` records of many jobs and publishes their events, in
    /// one pipelined round trip; one outcome per job, in order (a job id that
    /// already exists, or a tenant past its quota, writes nothing).
    pub async fn write_queued(
        &self,
        jobs: &[QueuedJob<'_>],
    ) -> Result<Vec<QueuedOutcome>, StoreError> {
        let mut pipe = redis::pipe();
        for job in jobs {
            let mut fields = vec![
                (job_field::STATUS, JobStatus::Queued.as_str().to_owned()),
                (job_field::FEATURE, job.feature.to_owned()),
                (job_field::ATTEMPTS, "0".to_owned()),
                (job_field::PROGRESS, "0".to_owned()),
                (job_field::CREATED_MS, job.created_ms.to_string()),
            ];
            if let Some(model) = job.model {
                fields.push((job_field::MODEL, model.to_owned()));
            }
            if let Some(metadata) = &job.metadata_json {
                fields.push((job_field::METADATA, metadata.clone()));
            }
            if let Some(inputs) = job.inputs_json {
                fields.push((job_field::INPUTS, inputs.to_owned()));
            }
            if let Some(submitted_by) = job.submitted_by {
                fields.push((job_field::SUBMITTED_BY, submitted_by.to_owned()));
            }
            if let Some(tenant) = job.tenant {
                fields.push((job_field::TENANT, tenant.to_owned()));
            }
            if let Some(priority) = job.priority {
                fields.push((job_field::PRIORITY, priority.to_string()));
            }
            if let Some(asked) = job.priority_lowered_from {
                fields.push((job_field::PRIORITY_LOWERED_FROM, asked.to_string()));
            }
            let event = StatusEvent {
                feature: Some(job.feature.to_owned()),
                model: job.model.map(str::to_owned),
                tenant: job.tenant.map(str::to_owned),
                ts_ms: job.created_ms,
                ..StatusEvent::new(job.job_id.to_owned(), JobStatus::Queued)
            };
            let call = scripts::queued(
                &self.names,
                job.job_id,
                job.created_ms,
                job.created_ms.saturating_sub(self.index_ttl_ms),
                &fields,
                serde_json::to_string(&event).unwrap_or_default(),
                job.quota,
            );
            pipe.add_command(self.scripts.evalsha(&call));
        }
        let mut connection = self.connection.clone();
        let replies: Vec<QueuedReply> = match pipe.query_async(&mut connection).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // Redis restarted and forgot the script: load it and go again.
                self.scripts
                    .script(Script::Queued)
                    .prepare_invoke()
                    .load_async(&mut connection)
                    .await?;
                pipe.query_async(&mut connection).await?
            }
            other => other?,
        };
        Ok(replies
            .into_iter()
            .zip(jobs)
            .map(|(reply, job)| QueuedOutcome::of(reply, job))
            .collect())
    }

    /// Records why a job never reached a queue.
    pub async fn mark_failed(
        &self,
        job_id: &str,
        error: &JobError,
        ttl_s: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let event = StatusEvent {
            error: Some(error.clone()),
            ts_ms: now_ms,
            ..StatusEvent::new(job_id.to_owned(), JobStatus::Failed)
        };
        let event_json = serde_json::to_string(&event).unwrap_or_default();
        let ending =
            scripts::Ending::without_result(JobStatus::Failed, now_ms, ttl_s, error, event_json);
        let call = scripts::finish(&self.names, job_id, ending);
        // `false` (the job had already ended) is no error here.
        self.scripts.finish(&mut connection, &call).await?;
        Ok(())
    }

    /// Cancels a job that has not ended: marks it `cancelled` (so no worker runs
    /// it) and tells the worker running it, if any, to stop.
    pub async fn cancel(
        &self,
        job_id: &str,
        ttl_s: u64,
        now_ms: u64,
    ) -> Result<CancelOutcome, StoreError> {
        let mut connection = self.connection.clone();
        let event = StatusEvent {
            job_id: job_id.to_owned(),
            status: JobStatus::Cancelled,
            ts_ms: now_ms,
            feature: None,
            model: None,
            worker: None,
            attempt: None,
            progress: None,
            error: Some(JobError::new(
                gpuq_common::ErrorCode::Cancelled,
                "cancelled by request",
            )),
            tenant: None,
        };
        let call = scripts::cancel(
            &self.names,
            job_id,
            "cancelled by request",
            now_ms,
            ttl_s,
            serde_json::to_string(&event).unwrap_or_default(),
        );
        let reply: String = self
            .scripts
            .invocation(&call)
            .invoke_async(&mut connection)
            .await?;
        Ok(match reply.strip_prefix("was_") {
            Some(was) => CancelOutcome::Cancelled {
                was: was.to_owned(),
            },
            None => CancelOutcome::AlreadyFinal(reply),
        })
    }

    /// Forgets a job that never reached the broker (and takes it out of its
    /// tenant's queued count).
    pub async fn delete_job(&self, job_id: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let call = scripts::forget(&self.names, job_id);
        let _: i64 = self
            .scripts
            .invocation(&call)
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }

    pub async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let mut connection = self.connection.clone();
        let hash: HashMap<String, String> = connection.hgetall(self.names.job_key(job_id)).await?;
        Ok(JobRecord::from_hash(job_id, &hash))
    }

    /// Waits until the job is final or `timeout` passes; returns the last record seen.
    pub async fn wait_final(
        &self,
        job_id: &str,
        timeout: Duration,
    ) -> Result<Option<JobRecord>, StoreError> {
        let hub = self.hub().await?;
        // Register before reading, so a transition between the two is not missed.
        let finished = hub.register(job_id);
        let record = self.job(job_id).await?;
        if record.as_ref().is_some_and(JobRecord::is_final) {
            hub.forget(job_id);
            return Ok(record);
        }
        let _ = tokio::time::timeout(timeout, finished).await;
        hub.forget(job_id);
        self.job(job_id).await
    }

    /// The process's one subscription to the events channel, started on first use.
    async fn hub(&self) -> Result<&Arc<EventHub>, StoreError> {
        Ok(self
            .events
            .get_or_try_init(|| {
                EventHub::start(self.connection.clone(), self.names.events_channel())
            })
            .await?)
    }

    /// Every status event from now on, through the shared subscription: a
    /// bounded receiver that reports a gap (lag, or a lost subscription)
    /// instead of buffering for a slow reader.
    pub async fn subscribe_events(&self) -> Result<EventReceiver, StoreError> {
        Ok(self.hub().await?.receiver())
    }

    /// Whether the primary answers now (with Sentinel: the primary the
    /// sentinels name, found again after a failover).
    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.connection.ping().await?)
    }

    /// Records who owns an artifact (`<ns>:artifact:<id>` field `owner`),
    /// expiring after `ttl_s` like the artifact.
    pub async fn set_artifact_owner(
        &self,
        artifact_id: &str,
        owner: &str,
        ttl_s: u64,
    ) -> Result<(), StoreError> {
        let key = self.names.artifact_key(artifact_id);
        redis::pipe()
            .atomic()
            .hset(&key, "owner", owner)
            .ignore()
            .expire(&key, i64::try_from(ttl_s).unwrap_or(i64::MAX))
            .ignore()
            .query_async::<()>(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    /// The artifact's recorded owner, if any.
    pub async fn artifact_owner(&self, artifact_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .connection
            .clone()
            .hget(self.names.artifact_key(artifact_id), "owner")
            .await?)
    }

    /// Live worker records; ids whose record expired are dropped from the index.
    pub async fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let hashes = self
            .live_members(&self.names.workers_set(), |id| self.names.worker_key(id))
            .await?;
        Ok(hashes.iter().filter_map(WorkerRecord::from_hash).collect())
    }

    /// Every worker's measured VRAM, merged per model.
    pub async fn learned_vram(
        &self,
    ) -> Result<std::collections::BTreeMap<String, gpuq_common::vram::ModelVram>, StoreError> {
        let mut connection = self.connection.clone();
        Ok(gpuq_common::vram::learned(&mut connection, &self.names).await?)
    }

    /// Live host records; ids whose record expired are dropped from the index.
    pub async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let hashes = self
            .live_members(&self.names.hosts_set(), |id| self.names.host_key(id))
            .await?;
        Ok(hashes.iter().filter_map(HostRecord::from_hash).collect())
    }

    async fn live_members(
        &self,
        set: &str,
        key_of: impl Fn(&str) -> String,
    ) -> Result<Vec<HashMap<String, String>>, StoreError> {
        let mut connection = self.connection.clone();
        let mut ids: Vec<String> = connection.smembers(set).await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(key_of(id));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut connection).await?;
        let mut live = Vec::new();
        for (id, hash) in ids.iter().zip(hashes) {
            if hash.is_empty() {
                let _: () = connection.srem(set, id).await?;
            } else {
                live.push(hash);
            }
        }
        Ok(live)
    }
}
