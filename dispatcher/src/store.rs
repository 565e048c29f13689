//! Owns the dispatcher's Redis connection: the host record and its heartbeat,
//! the host lease (`store/host_lease.rs`), the placement lease, assignments
//! and model timings.

use std::collections::HashMap;
use std::time::Duration;

use gpuq_common::config::RedisTarget;
use gpuq_common::fair_share;
use gpuq_common::job_record::{scripts, RecordScripts};
use gpuq_common::placement_lease;
use gpuq_common::record::{Assignment, HostRecord, ModelTimings, WorkerRecord};
use gpuq_common::redis_link::RedisLink;
use gpuq_common::{now_ms, JobError, JobStatus, Names, StatusEvent};
use redis::AsyncCommands;

mod host_lease;

/// Redis could not be reached or refused a command.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(#[from] redis::RedisError);

#[derive(Clone)]
pub struct Store {
    /// The primary, followed through failovers (`gpuq_common::redis_link`).
    connection: RedisLink,
    names: Names,
    /// The record script a dispatcher runs: finish (dead letters).
    scripts: RecordScripts,
}

impl Store {
    pub async fn connect(target: &RedisTarget, names: Names) -> Result<Store, StoreError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let connection = RedisLink::connect(target, config).await?;
        Ok(Store {
            connection,
            names,
            scripts: RecordScripts::new(),
        })
    }

    /// Writes the host record and renews its expiry.
    pub async fn heartbeat(&self, record: &HostRecord, ttl: Duration) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let key = self.names.host_key(&record.host_id);
        let fields = record.to_fields();
        gpuq_common::heartbeat::pipeline(
            &key,
            &fields,
            ttl,
            &self.names.hosts_set(),
            &record.host_id,
        )
        .query_async::<()>(&mut connection)
        .await?;
        Ok(())
    }

    /// Each worker's last heartbeat time and pid, `None` when it has no record.
    pub async fn worker_heartbeats(
        &self,
        worker_ids: &[String],
    ) -> Result<Vec<Option<(u64, u32)>>, StoreError> {
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

    /// Records a final status unless the job already ended; returns whether it wrote.
    pub async fn end_if_not_final(
        &self,
        job_id: &str,
        status: JobStatus,
        error: &JobError,
        ttl_s: u64,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let now = now_ms();
        let event = StatusEvent {
            error: Some(error.clone()),
            ts_ms: now,
            ..StatusEvent::new(job_id.to_owned(), status)
        };
        let event_json = serde_json::to_string(&event).unwrap_or_default();
        let ending = scripts::Ending::without_result(status, now, ttl_s, error, event_json);
        let call = scripts::finish(&self.names, job_id, ending);
        Ok(self.scripts.finish(&mut connection, &call).await?)
    }

    /// The records of these workers (missing ones are left out).
    pub async fn worker_records(
        &self,
        worker_ids: &[String],
    ) -> Result<Vec<WorkerRecord>, StoreError> {
        if worker_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        for id in worker_ids {
            pipe.hgetall(self.names.worker_key(id));
        }
        let hashes: Vec<std::collections::HashMap<String, String>> =
            pipe.query_async(&mut connection).await?;
        Ok(hashes.iter().filter_map(WorkerRecord::from_hash).collect())
    }

    /// Takes or renews the placement lease for `host_id`; `true` when held.
    pub async fn hold_placement_lease(
        &self,
        host_id: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let held: i64 = redis::Script::new(placement_lease::HOLD)
            .key(self.names.placement_lease())
            .arg(host_id)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut connection)
            .await?;
        Ok(held == 1)
    }

    /// Ids of workers announcing they ran out of jobs, as they come; the
    /// stream ends when the primary goes or moves (subscribe again then).
    pub async fn idle_workers(
        &self,
    ) -> Result<impl futures_util::Stream<Item = String> + use<>, StoreError> {
        use futures_util::StreamExt;
        let messages = self
            .connection
            .subscribe(&self.names.idle_channel())
            .await?;
        Ok(messages.filter_map(|message| async move { message.get_payload::<String>().ok() }))
    }

    /// Gives the placement lease up, if `host_id` holds it.
    pub async fn release_placement_lease(&self, host_id: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        redis::Script::new(placement_lease::RELEASE)
            .key(self.names.placement_lease())
            .arg(host_id)
            .invoke_async::<i64>(&mut connection)
            .await?;
        Ok(())
    }

    /// Every live worker's record, whichever host runs it.
    pub async fn all_worker_records(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let mut connection = self.connection.clone();
        let ids: Vec<String> = connection.smembers(self.names.workers_set()).await?;
        self.worker_records(&ids).await
    }

    /// The queues of each model that hold its jobs: its own and the
    /// sub-queues listed in Redis (`gpuq_common::fair_share`).
    pub async fn job_queues(
        &self,
        models: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let mut connection = self.connection.clone();
        let listed = fair_share::listed(&mut connection, &self.names, models).await?;
        Ok(listed
            .into_iter()
            .map(|(model, subs)| {
                let mut queues = vec![self.names.model_queue(&model)];
                queues.extend(subs.iter().map(|sub| sub.queue_name(&self.names, &model)));
                (model, queues)
            })
            .collect())
    }

    /// Every worker's measured VRAM, merged per model (`gpuq_common::vram`):
    /// the leader's merged figures where it keeps them.
    pub async fn learned_vram(
        &self,
    ) -> Result<std::collections::BTreeMap<String, gpuq_common::vram::ModelVram>, StoreError> {
        let mut connection = self.connection.clone();
        Ok(gpuq_common::vram::learned(&mut connection, &self.names).await?)
    }

    /// The placing dispatcher's merge: every worker's raw fields merged per
    /// model, written to the merged hash for everyone else
    /// (`gpuq_common::vram::stored`).
    pub async fn merge_learned_vram(
        &self,
    ) -> Result<std::collections::BTreeMap<String, gpuq_common::vram::ModelVram>, StoreError> {
        use gpuq_common::vram::stored;
        let mut connection = self.connection.clone();
        let merged = stored::learned_raw(&mut connection, &self.names).await?;
        stored::write_merged(&mut connection, &self.names, &merged).await?;
        Ok(merged)
    }

    /// The oldest `limit` queued jobs (oldest first) as (created_ms,
    /// feature, pinned model): the status index, then two fields per record.
    /// A record gone between the two reads is skipped.
    pub async fn oldest_queued(
        &self,
        limit: usize,
    ) -> Result<Vec<(u64, String, Option<String>)>, StoreError> {
        let mut connection = self.connection.clone();
        let index = self.names.jobs_by_status(JobStatus::Queued.as_str());
        let stop = limit.saturating_sub(1) as isize;
        let ids: Vec<(String, f64)> = connection.zrange_withscores(index, 0, stop).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (id, _) in &ids {
            pipe.cmd("HMGET")
                .arg(self.names.job_key(id))
                .arg("feature")
                .arg("model");
        }
        let fields: Vec<(Option<String>, Option<String>)> =
            pipe.query_async(&mut connection).await?;
        Ok(ids
            .into_iter()
            .zip(fields)
            .filter_map(|((_, created), (feature, model))| {
                Some((created.max(0.0) as u64, feature?, model))
            })
            .collect())
    }

    /// Model timings stored by earlier placements.
    pub async fn model_timings(&self) -> Result<HashMap<String, ModelTimings>, StoreError> {
        let mut connection = self.connection.clone();
        let stored: HashMap<String, String> =
            connection.hgetall(self.names.model_timings()).await?;
        Ok(stored
            .into_iter()
            .filter_map(|(model, json)| Some((model, serde_json::from_str(&json).ok()?)))
            .collect())
    }

    /// Writes every worker's assignment (renewing its expiry), the measured
    /// model timings, and announces the assignments that changed.
    pub async fn publish_placement(
        &self,
        assignments: &[(String, Assignment)],
        changed: &[String],
        ttl: Duration,
        timings: &HashMap<String, ModelTimings>,
    ) -> Result<(), StoreError> {
        if assignments.is_empty() && timings.is_empty() && changed.is_empty() {
            // Nothing to write (an empty pipeline is an error in redis-rs).
            return Ok(());
        }
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        for (worker_id, assignment) in assignments {
            pipe.cmd("SET")
                .arg(self.names.assignment_key(worker_id))
                .arg(serde_json::to_string(assignment).unwrap_or_default())
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .ignore();
        }
        for (model, timing) in timings {
            pipe.hset(
                self.names.model_timings(),
                model,
                serde_json::to_string(timing).unwrap_or_default(),
            )
            .ignore();
        }
        for worker_id in changed {
            pipe.publish(self.names.assignments_channel(), worker_id)
                .ignore();
        }
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }

    pub async fn remove_host(&self, host_id: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: () = connection.del(self.names.host_key(host_id)).await?;
        let _: () = connection.srem(self.names.hosts_set(), host_id).await?;
        Ok(())
    }
}
