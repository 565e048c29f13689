//! Owns the worker's Redis connection: job claims, outcomes, dead-letter notes
//! and the worker's heartbeat record.
//!
//! Each job makes two record writes: a claim script and an outcome script. Both
//! are Lua so that the check ("is this job already final?") and the write are
//! one atomic step, and both publish the status event in the same step, so a
//! subscriber never sees an event before the hash says the same. The scripts
//! and their arguments are `gpuq_common::job_record`'s; this module sends them,
//! through `writer`, which sends the writes of many jobs in flight as one
//! Redis call.

use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use gpuq_common::config::RedisConfig;
use gpuq_common::fair_share::{self, SubQueue};
use gpuq_common::job_record::{scripts, RecordScripts};
use gpuq_common::record::{Assignment, JobRecord, WorkerRecord};
use gpuq_common::redis_link::RedisLink;
use gpuq_common::wire::value_map_to_json_string;
use gpuq_common::{now_ms, JobError, JobStatus, Names, StatusEvent, ValueMap};
use redis::AsyncCommands;

mod give_back;
mod writer;

use writer::RecordWriter;

/// Why a write is not (yet) safe; the caller retries, then requeues.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or refused a command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The outcome reached the primary (`wrote`: this call wrote it) but
    /// fewer than `redis.min_replicas_acked` replicas confirmed it within
    /// `redis.wait_timeout_ms`: a failover now could lose it, so the job is
    /// not acked. Retried like an outage.
    #[error("redis: outcome confirmed by {acked} of {wanted} replicas within {timeout_ms} ms")]
    ReplicasShort {
        wrote: bool,
        acked: u32,
        wanted: u32,
        timeout_ms: u64,
    },
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The job is ours to run; `attempt` counts every claim, this one included.
    Run { attempt: u32 },
    /// The job already ended (redelivery of a finished job): ack without running.
    AlreadyFinal(JobStatus),
    /// Its tenant is at `max_running`: not claimed; give the delivery back.
    TenantBusy,
    /// No producer recorded it (published straight to AMQP) and its tenant
    /// has `max_queued` jobs waiting: not claimed; end it `quota_exceeded`.
    QuotaExceeded,
}

/// The final state of a job, ready to be stored.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: JobStatus,
    /// Outputs, for completed jobs.
    pub result: Option<ValueMap>,
    pub error: Option<JobError>,
}

/// Upper bound of the recent dead letters kept in `<namespace>:dead`.
const DEAD_LETTERS_KEPT: isize = 1000;

#[derive(Clone)]
pub struct Store {
    /// The primary, followed through failovers (`gpuq_common::redis_link`).
    connection: RedisLink,
    names: Names,
    finished_ttl_s: u64,
    /// Replicas that must confirm an outcome (`WAIT`) before it counts.
    min_replicas_acked: u32,
    wait_timeout_ms: u64,
    /// The job record's scripts (`gpuq_common::job_record`).
    scripts: RecordScripts,
    /// Claims, outcomes, retries and progress, batched.
    writer: RecordWriter,
}

impl Store {
    pub async fn connect(
        redis: &RedisConfig,
        names: Names,
        finished_ttl_s: u64,
    ) -> Result<Store, StoreError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let connection = RedisLink::connect(redis.target(), config).await?;
        let scripts = RecordScripts::new();
        Ok(Store {
            writer: RecordWriter::start(connection.clone(), scripts.clone()),
            connection,
            names,
            finished_ttl_s,
            min_replicas_acked: redis.min_replicas_acked(),
            wait_timeout_ms: redis.wait_timeout_ms,
            scripts,
        })
    }

    /// Atomically marks a job `processing` unless it is already final.
    pub async fn claim(
        &self,
        job_id: &str,
        by: &scripts::Claimant<'_>,
    ) -> Result<Claim, StoreError> {
        let call = scripts::claim(&self.names, job_id, now_ms(), by);
        let reply = self.writer.write(call).await?;
        Ok(match reply {
            redis::Value::Int(attempt) => Claim::Run {
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            },
            other => {
                let status: String =
                    redis::from_redis_value(other).map_err(redis::RedisError::from)?;
                if status == "tenant_busy" {
                    Claim::TenantBusy
                } else if status == "quota_exceeded" {
                    Claim::QuotaExceeded
                } else {
                    Claim::AlreadyFinal(JobStatus::parse(&status).unwrap_or(JobStatus::Completed))
                }
            }
        })
    }

    /// Stores a final outcome, sets the record's TTL and publishes the event;
    /// with `redis.min_replicas_acked`, then `WAIT`s for that many replicas
    /// ([`StoreError::ReplicasShort`] when fewer confirm: never a success).
    /// Returns `false` when the job had already ended (the outcome is dropped).
    pub async fn finish(
        &self,
        job_id: &str,
        outcome: &Outcome,
        event: &StatusEvent,
    ) -> Result<bool, StoreError> {
        debug_assert!(outcome.status.is_final());
        let ending = scripts::Ending {
            status: outcome.status,
            finished_ms: event.ts_ms,
            ttl_s: self.finished_ttl_s,
            result_json: outcome.result.as_ref().map(value_map_to_json_string),
            error: outcome.error.as_ref(),
            event_json: serde_json::to_string(event).unwrap_or_default(),
            feature: event.feature.as_deref(),
            model: event.model.as_deref(),
            tenant: event.tenant.as_deref(),
        };
        let call = scripts::finish(&self.names, job_id, ending);
        if self.min_replicas_acked == 0 {
            let reply = self.writer.write(call).await?;
            let reply: String = redis::from_redis_value(reply).map_err(redis::RedisError::from)?;
            return Ok(reply == "ok");
        }
        // The script and WAIT in one pipeline, on one server connection:
        // see `RecordScripts::finish_replicated`.
        let mut connection = self.connection.clone();
        let (wrote, acked) = self
            .scripts
            .finish_replicated(
                &mut connection,
                &call,
                self.min_replicas_acked,
                self.wait_timeout_ms,
            )
            .await?;
        if acked < self.min_replicas_acked {
            return Err(StoreError::ReplicasShort {
                wrote,
                acked,
                wanted: self.min_replicas_acked,
                timeout_ms: self.wait_timeout_ms,
            });
        }
        Ok(wrote)
    }

    /// A job's record as a reader sees it (for a reply sent again).
    pub async fn recorded_outcome(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let mut connection = self.connection.clone();
        let hash: std::collections::HashMap<String, String> =
            connection.hgetall(self.names.job_key(job_id)).await?;
        Ok(JobRecord::from_hash(job_id, &hash))
    }

    /// Sets a running job's progress (0 to 1) and publishes it as an event.
    pub async fn set_progress(&self, job_id: &str, progress: f64) -> Result<(), StoreError> {
        let event = StatusEvent {
            progress: Some(progress),
            ..StatusEvent::new(job_id.to_owned(), JobStatus::Processing)
        };
        let event_json = serde_json::to_string(&event).unwrap_or_default();
        let call = scripts::progress(&self.names, job_id, progress, event_json);
        self.writer.write(call).await?;
        Ok(())
    }

    /// Puts a job back to `queued` with the error that will be retried, and when.
    pub async fn mark_retrying(
        &self,
        job_id: &str,
        event: &StatusEvent,
        backoff: Duration,
    ) -> Result<(), StoreError> {
        let call = scripts::retry(
            &self.names,
            job_id,
            event.error.as_ref(),
            event.ts_ms.saturating_add(backoff.as_millis() as u64),
            serde_json::to_string(event).unwrap_or_default(),
        );
        self.writer.write(call).await?;
        Ok(())
    }

    /// Job ids published on the cancel channel, as they come.
    pub async fn cancel_requests(
        &self,
    ) -> Result<impl futures_util::Stream<Item = String> + use<>, StoreError> {
        self.subscribe_ids(self.names.cancel_channel()).await
    }

    /// Worker ids published on the assignments channel, as they come.
    pub async fn assignment_changes(
        &self,
    ) -> Result<impl futures_util::Stream<Item = String> + use<>, StoreError> {
        self.subscribe_ids(self.names.assignments_channel()).await
    }

    /// The string payloads of one channel, from a subscription of its own
    /// on the current primary; the stream ends when the primary goes or
    /// moves (subscribe again then).
    async fn subscribe_ids(
        &self,
        channel: String,
    ) -> Result<impl futures_util::Stream<Item = String> + use<>, StoreError> {
        use futures_util::StreamExt;
        let messages = self.connection.subscribe(&channel).await?;
        Ok(messages.filter_map(|message| async move { message.get_payload::<String>().ok() }))
    }

    /// Tells the placing dispatcher this worker ran out of jobs.
    pub async fn announce_idle(&self, worker_id: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: () = connection
            .publish(self.names.idle_channel(), worker_id)
            .await?;
        Ok(())
    }

    /// This worker's placement assignment; `None` when there is none (no
    /// placing dispatcher, or it stopped renewing it) or it cannot be read as one.
    pub async fn assignment(&self, worker_id: &str) -> Result<Option<Assignment>, StoreError> {
        let mut connection = self.connection.clone();
        let json: Option<String> = connection.get(self.names.assignment_key(worker_id)).await?;
        Ok(json.and_then(|json| match serde_json::from_str(&json) {
            Ok(assignment) => Some(assignment),
            Err(error) => {
                tracing::warn!(%error, "unreadable placement assignment; consuming every model");
                None
            }
        }))
    }

    /// The sub-queues listed for each of `models` (`<ns>:subqueues:<model>`;
    /// members this version cannot read are skipped).
    pub async fn sub_queues(
        &self,
        models: &[String],
    ) -> Result<BTreeMap<String, BTreeSet<SubQueue>>, StoreError> {
        let mut connection = self.connection.clone();
        let listed = fair_share::listed(&mut connection, &self.names, models).await?;
        Ok(listed
            .into_iter()
            .map(|(model, subs)| (model, subs.into_iter().collect()))
            .collect())
    }

    /// How many jobs of each of `tenants` run across the fleet (the
    /// `processing` count the record scripts keep in `<ns>:tenant_load:<t>`).
    pub async fn tenants_running(
        &self,
        tenants: &[String],
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let mut pipe = redis::pipe();
        for tenant in tenants {
            pipe.hget(self.names.tenant_load_key(tenant), "processing");
        }
        let mut connection = self.connection.clone();
        let counts: Vec<Option<i64>> = pipe.query_async(&mut connection).await?;
        Ok(tenants
            .iter()
            .cloned()
            .zip(counts)
            .map(|(tenant, count)| (tenant, count.unwrap_or(0).max(0) as u64))
            .collect())
    }

    /// Notes on the job's record a `reply_to` that got no reply. Written just
    /// before the outcome, whose write sets the record's expiry.
    pub async fn note_reply_to_ignored(
        &self,
        job_id: &str,
        reply_to: &str,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let field = gpuq_common::names::job_field::REPLY_TO_IGNORED;
        redis::cmd("HSET")
            .arg(self.names.job_key(job_id))
            .arg(field)
            .arg(reply_to)
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    /// Records a message that could not be run at all, for people to inspect.
    pub async fn note_dead_letter(&self, entry: &serde_json::Value) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let key = self.names.dead_letters_list();
        redis::pipe()
            .lpush(&key, entry.to_string())
            .ignore()
            .ltrim(&key, 0, DEAD_LETTERS_KEPT - 1)
            .ignore()
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    /// Records `owner` (a gateway token name) as the owner of artifacts
    /// (`<ns>:artifact:<id>` field `owner`), expiring after `ttl_s`.
    pub async fn set_artifact_owners(
        &self,
        artifact_ids: &[String],
        owner: &str,
        ttl_s: u64,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        for id in artifact_ids {
            let key = self.names.artifact_key(id);
            pipe.hset(&key, "owner", owner)
                .ignore()
                .expire(&key, i64::try_from(ttl_s).unwrap_or(i64::MAX))
                .ignore();
        }
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }

    /// Every worker's measured VRAM of `models`, merged per model (the
    /// placing dispatcher's merged figures where it keeps them).
    pub async fn learned_vram(
        &self,
        models: &[String],
    ) -> Result<BTreeMap<String, gpuq_common::vram::ModelVram>, StoreError> {
        let mut connection = self.connection.clone();
        Ok(gpuq_common::vram::learned_for(&mut connection, &self.names, models).await?)
    }

    /// This worker's own measured VRAM fields of `models`.
    pub async fn own_vram(
        &self,
        worker_id: &str,
        models: &[String],
    ) -> Result<BTreeMap<String, gpuq_common::vram::ModelVram>, StoreError> {
        let mut connection = self.connection.clone();
        Ok(gpuq_common::vram::own(&mut connection, &self.names, worker_id, models).await?)
    }

    /// Writes one of this worker's measured VRAM fields (`<model>/<worker>`).
    pub async fn write_vram(&self, field: &str, json: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        connection
            .hset::<_, _, _, ()>(self.names.model_vram(), field, json)
            .await?;
        Ok(())
    }

    /// Writes the worker's record and renews its expiry.
    pub async fn heartbeat(&self, record: &WorkerRecord, ttl: Duration) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let key = self.names.worker_key(&record.worker_id);
        let fields = record.to_fields();
        let live = self.names.workers_set();
        gpuq_common::heartbeat::pipeline(&key, &fields, ttl, &live, &record.worker_id)
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    /// Removes the worker's record on a clean exit, unless another process
    /// (its `pid`) wrote it last: never another worker's record by mistake.
    pub async fn remove_worker(&self, worker_id: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let removed: i64 = redis::Script::new(gpuq_common::heartbeat::REMOVE_IF_WRITER)
            .key(self.names.worker_key(worker_id))
            .key(self.names.workers_set())
            .arg(std::process::id())
            .arg(worker_id)
            .invoke_async(&mut connection)
            .await?;
        if removed == 0 {
            tracing::warn!(
                worker = worker_id,
                "worker record left in place: another process with this worker id wrote it"
            );
        }
        Ok(())
    }
}
