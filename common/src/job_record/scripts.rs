//! Every Lua script that writes a job record, with the typed calls that fill
//! their `KEYS` and `ARGV`: a process picks the call, never the layout.
//!
//! Each script makes one transition of [`super::apply`] atomically: it reads
//! the status, refuses what the rules refuse (through the shared
//! `gpuq_is_final`, generated from [`JobStatus::is_final`]), writes the
//! fields, keeps the job indexes (`crate::job_index`) and publishes the
//! status event, all in one step. This module owns the text; the processes'
//! Redis modules load it with `redis::Script` and turn a [`ScriptCall`] into
//! an invocation. It owns no IO.
//!
//! Replies (what a store parses):
//! - [`Script::Queued`]: `1` written, `0` the id exists, or a quota refusal
//!   (`{'max_queued', queued}`, `{'rate_per_s', retry_after_ms}`), parsed
//!   as a [`QueuedReply`];
//! - [`Script::Claim`]: the attempt number (integer), the final status
//!   (string), `tenant_busy` (the tenant is at its `max_running`), or
//!   `quota_exceeded` (a job no producer recorded, its tenant at `max_queued`);
//! - [`Script::Finish`]: `"ok"`, or the final status it already had;
//! - [`Script::Retry`], [`Script::Progress`]: `1` written, `0` refused or ignored;
//! - [`Script::Cancel`]: `"was_<status>"` (`was_unknown` without a record), or
//!   the final status it already had;
//! - [`Script::Forget`]: `1` deleted, `0` no record.

use crate::job_index::REINDEX_LUA;
use crate::names::Names;
use crate::wire::{JobError, JobStatus};

mod batch;
mod queued;
pub use batch::{batch, batch_source, BatchCall, MAX_BATCH};
pub use queued::{queued, QueuedReply, Quota, Rate};

/// The scripts, one per kind of write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Queued,
    Claim,
    Finish,
    Retry,
    Progress,
    Cancel,
    /// Deletes a record whose job never reached the broker.
    Forget,
}

impl Script {
    pub const ALL: [Script; 7] = [
        Script::Queued,
        Script::Claim,
        Script::Finish,
        Script::Retry,
        Script::Progress,
        Script::Cancel,
        Script::Forget,
    ];

    /// The full Lua source: the shared prelude, then the script's body.
    pub fn source(self) -> String {
        format!("{}\n{}", prelude(), self.body())
    }

    /// The script's own Lua, which reads `KEYS` and `ARGV` and ends with a
    /// `return` (a batch runs it as a function of those two).
    fn body(self) -> &'static str {
        match self {
            Script::Queued => queued::QUEUED,
            Script::Claim => CLAIM,
            Script::Finish => FINISH,
            Script::Retry => RETRY,
            Script::Progress => PROGRESS,
            Script::Cancel => CANCEL,
            Script::Forget => FORGET,
        }
    }

    /// Its name in a batch's header.
    fn name(self) -> &'static str {
        match self {
            Script::Queued => "queued",
            Script::Claim => "claim",
            Script::Finish => "finish",
            Script::Retry => "retry",
            Script::Progress => "progress",
            Script::Cancel => "cancel",
            Script::Forget => "forget",
        }
    }
}

/// What every script starts with: `gpuq_is_final` and the index keeping.
fn prelude() -> String {
    format!("{}\n{REINDEX_LUA}", is_final_lua())
}

/// `gpuq_is_final(status)`, written from [`JobStatus::is_final`] so the Lua
/// and the Rust can never disagree on which statuses are final.
fn is_final_lua() -> String {
    let finals: Vec<String> = JobStatus::ALL
        .into_iter()
        .filter(|s| s.is_final())
        .map(|s| format!("status == '{}'", s.as_str()))
        .collect();
    format!(
        "local function gpuq_is_final(status) return {} end",
        finals.join(" or ")
    )
}

/// KEYS as [`queued::QUEUED`]'s first three; ARGV[1] now ms, ARGV[2]
/// feature, ARGV[3] model, ARGV[4] worker, ARGV[5] host, ARGV[6] gpu,
/// ARGV[7] job id, ARGV[8] metadata JSON or '', ARGV[9] tenant or '' (kept
/// when the record has one), ARGV[10] the tenant's `max_running` or '',
/// ARGV[11] its `max_queued` or ''.
/// With `max_running`, a job not already `processing` (a redelivery of a
/// claimed job counts already) is refused with `tenant_busy` while the
/// tenant's `processing` count is at the limit: the check and the count's
/// increment are one step, so workers cannot race past it. With
/// `max_queued`, a job with no record (published straight to AMQP, never
/// counted) is refused with `quota_exceeded` while the tenant already has
/// that many jobs waiting.
const CLAIM: &str = r#"
local before = redis.call('HMGET', KEYS[1], 'status', 'tenant', 'feature', 'submitted_by')
local status, old_tenant = before[1], before[2]
if gpuq_is_final(status) then return status end
local tenant = old_tenant or (ARGV[9] ~= '' and ARGV[9]) or nil
local ns = string.match(KEYS[1], '^([^:]+):job:')
if tenant and ns then
  local load = ns .. ':tenant_load:' .. tenant
  if ARGV[11] ~= '' and not status then
    local queued = tonumber(redis.call('HGET', load, 'queued')) or 0
    if queued >= tonumber(ARGV[11]) then return 'quota_exceeded' end
  end
  if ARGV[10] ~= '' and status ~= 'processing' then
    local running = tonumber(redis.call('HGET', load, 'processing')) or 0
    if running >= tonumber(ARGV[10]) then return 'tenant_busy' end
  end
end
local now = ARGV[1]
redis.call('HSET', KEYS[1], 'status', 'processing', 'feature', ARGV[2], 'model', ARGV[3],
  'worker', ARGV[4], 'host', ARGV[5], 'gpu', ARGV[6], 'started_ms', now, 'progress', '0')
if redis.call('HSETNX', KEYS[1], 'created_ms', now) == 1 then
  redis.call('ZADD', KEYS[3], now, ARGV[7])
end
if ARGV[8] ~= '' then redis.call('HSETNX', KEYS[1], 'metadata', ARGV[8]) end
if ARGV[9] ~= '' and not old_tenant then redis.call('HSET', KEYS[1], 'tenant', ARGV[9]) end
gpuq_reindex(KEYS[1], status, 'processing', nil, old_tenant,
  {feature = before[3], by = before[4], tenant = old_tenant})
redis.call('PERSIST', KEYS[1])
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('PUBLISH', KEYS[2], cjson.encode({job_id = ARGV[7], status = 'processing',
  ts_ms = tonumber(now), feature = ARGV[2], model = ARGV[3], worker = ARGV[4], attempt = attempt,
  tenant = tenant}))
return attempt
"#;

/// KEYS[1] job, KEYS[2] events channel; ARGV[1] final status, ARGV[2]
/// finished ms, ARGV[3] record TTL s, ARGV[4] result JSON (completed),
/// ARGV[5] error code, ARGV[6] error message, ARGV[7] event, ARGV[8]
/// feature or '', ARGV[9] model or '', ARGV[10] tenant or ''.
const FINISH: &str = r#"
local before = redis.call('HMGET', KEYS[1], 'status', 'tenant', 'feature', 'submitted_by')
local status, old_tenant = before[1], before[2]
if gpuq_is_final(status) then return status end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_ms', ARGV[2])
if ARGV[1] == 'completed' then
  redis.call('HSET', KEYS[1], 'progress', '1', 'result', ARGV[4])
  redis.call('HDEL', KEYS[1], 'error_code', 'error_message')
else
  redis.call('HSET', KEYS[1], 'error_code', ARGV[5], 'error_message', ARGV[6])
end
redis.call('HSETNX', KEYS[1], 'created_ms', ARGV[2])
redis.call('HSETNX', KEYS[1], 'attempts', '0')
if ARGV[8] ~= '' and not before[3] then redis.call('HSET', KEYS[1], 'feature', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSETNX', KEYS[1], 'model', ARGV[9]) end
if ARGV[10] ~= '' and not old_tenant then redis.call('HSET', KEYS[1], 'tenant', ARGV[10]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
gpuq_reindex(KEYS[1], status, ARGV[1], tonumber(ARGV[2]) - tonumber(ARGV[3]) * 1000,
  old_tenant, {feature = before[3], by = before[4], tenant = old_tenant})
redis.call('PUBLISH', KEYS[2], ARGV[7])
return 'ok'
"#;

/// KEYS[1] job, KEYS[2] events channel; ARGV[1] error code, ARGV[2] error
/// message, ARGV[3] retry-at ms, ARGV[4] event.
const RETRY: &str = r#"
local status = redis.call('HGET', KEYS[1], 'status')
if gpuq_is_final(status) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'progress', '0', 'error_code', ARGV[1],
  'error_message', ARGV[2], 'retry_at_ms', ARGV[3])
gpuq_reindex(KEYS[1], status, 'queued', nil)
redis.call('PUBLISH', KEYS[2], ARGV[4])
return 1
"#;

/// KEYS[1] job, KEYS[2] events channel; ARGV[1] progress (0 to 1), ARGV[2] event.
const PROGRESS: &str = r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
"#;

/// KEYS[1] job, KEYS[2] events channel, KEYS[3] cancel channel; ARGV[1]
/// message, ARGV[2] now ms, ARGV[3] record TTL s, ARGV[4] event, ARGV[5] job id.
const CANCEL: &str = r#"
local status = redis.call('HGET', KEYS[1], 'status')
if gpuq_is_final(status) then return status end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'error_code', 'cancelled', 'error_message', ARGV[1], 'finished_ms', ARGV[2])
redis.call('HSETNX', KEYS[1], 'created_ms', ARGV[2])
redis.call('HSETNX', KEYS[1], 'attempts', '0')
redis.call('EXPIRE', KEYS[1], ARGV[3])
gpuq_reindex(KEYS[1], status, 'cancelled', tonumber(ARGV[2]) - tonumber(ARGV[3]) * 1000)
redis.call('PUBLISH', KEYS[2], ARGV[4])
redis.call('PUBLISH', KEYS[3], ARGV[5])
if status then return 'was_' .. status end
return 'was_unknown'
"#;

/// KEYS[1] job. The record goes, and with it the job's place in its
/// tenant's load count (its ids stay in the indexes, as any expired
/// record's do, and listings skip them).
const FORGET: &str = r#"
local fields = redis.call('HMGET', KEYS[1], 'status', 'tenant')
if not fields[1] then return redis.call('DEL', KEYS[1]) end
local ns = string.match(KEYS[1], '^([^:]+):job:')
if ns then gpuq_tenant_load(ns, fields[2], false, fields[1], false) end
return redis.call('DEL', KEYS[1])
"#;

/// The keys and arguments of one script run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptCall {
    pub script: Script,
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

/// Who claims a job, and what it learned from the message.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    pub feature: &'a str,
    pub model: &'a str,
    pub worker: &'a str,
    pub host: &'a str,
    pub gpu: &'a str,
    /// Client metadata as JSON, stored only when the record has none yet.
    pub metadata_json: Option<&'a str>,
    /// The job's tenant, stored only when the record has none yet (a job
    /// another client published); the event carries the record's.
    pub tenant: Option<&'a str>,
    /// The tenant's `max_running`: past it the claim is refused.
    pub max_running: Option<u64>,
    /// The tenant's `max_queued`: a job with no record (published straight
    /// to AMQP) is refused while the tenant has that many waiting.
    pub max_queued: Option<u64>,
}

pub fn claim(names: &Names, job_id: &str, now_ms: u64, by: &Claimant<'_>) -> ScriptCall {
    ScriptCall {
        script: Script::Claim,
        keys: vec![
            names.job_key(job_id),
            names.events_channel(),
            names.jobs_index(),
        ],
        args: vec![
            now_ms.to_string(),
            by.feature.to_owned(),
            by.model.to_owned(),
            by.worker.to_owned(),
            by.host.to_owned(),
            by.gpu.to_owned(),
            job_id.to_owned(),
            by.metadata_json.unwrap_or("").to_owned(),
            by.tenant.unwrap_or("").to_owned(),
            by.max_running.map(|m| m.to_string()).unwrap_or_default(),
            by.max_queued.map(|m| m.to_string()).unwrap_or_default(),
        ],
    }
}

/// How a job ends.
#[derive(Debug, Clone)]
pub struct Ending<'a> {
    /// A final status.
    pub status: JobStatus,
    pub finished_ms: u64,
    /// How long the record lives from now, seconds.
    pub ttl_s: u64,
    /// The outputs as JSON, for `completed`.
    pub result_json: Option<String>,
    pub error: Option<&'a JobError>,
    pub event_json: String,
    /// Recorded only when the record has none (a job never claimed).
    pub feature: Option<&'a str>,
    pub model: Option<&'a str>,
    /// Recorded only when the record has none (a job never claimed).
    pub tenant: Option<&'a str>,
}

impl<'a> Ending<'a> {
    /// A job that ends without running (or without a result): a final
    /// status and why, nothing else to record.
    pub fn without_result(
        status: JobStatus,
        finished_ms: u64,
        ttl_s: u64,
        error: &'a JobError,
        event_json: String,
    ) -> Ending<'a> {
        Ending {
            status,
            finished_ms,
            ttl_s,
            result_json: None,
            error: Some(error),
            event_json,
            feature: None,
            model: None,
            tenant: None,
        }
    }
}

pub fn finish(names: &Names, job_id: &str, ending: Ending<'_>) -> ScriptCall {
    debug_assert!(ending.status.is_final());
    let (code, message) = ending
        .error
        .map(|e| (e.code.as_str(), e.message.as_str()))
        .unwrap_or_default();
    ScriptCall {
        script: Script::Finish,
        keys: vec![names.job_key(job_id), names.events_channel()],
        args: vec![
            ending.status.as_str().to_owned(),
            ending.finished_ms.to_string(),
            ending.ttl_s.to_string(),
            ending.result_json.unwrap_or_else(|| "{}".to_owned()),
            code.to_owned(),
            message.to_owned(),
            ending.event_json,
            ending.feature.unwrap_or("").to_owned(),
            ending.model.unwrap_or("").to_owned(),
            ending.tenant.unwrap_or("").to_owned(),
        ],
    }
}

pub fn retry(
    names: &Names,
    job_id: &str,
    error: Option<&JobError>,
    retry_at_ms: u64,
    event_json: String,
) -> ScriptCall {
    let (code, message) = error
        .map(|e| (e.code.as_str(), e.message.as_str()))
        .unwrap_or_default();
    ScriptCall {
        script: Script::Retry,
        keys: vec![names.job_key(job_id), names.events_channel()],
        args: vec![
            code.to_owned(),
            message.to_owned(),
            retry_at_ms.to_string(),
            event_json,
        ],
    }
}

pub fn progress(names: &Names, job_id: &str, progress: f64, event_json: String) -> ScriptCall {
    ScriptCall {
        script: Script::Progress,
        keys: vec![names.job_key(job_id), names.events_channel()],
        args: vec![progress.to_string(), event_json],
    }
}

pub fn cancel(
    names: &Names,
    job_id: &str,
    message: &str,
    now_ms: u64,
    ttl_s: u64,
    event_json: String,
) -> ScriptCall {
    ScriptCall {
        script: Script::Cancel,
        keys: vec![
            names.job_key(job_id),
            names.events_channel(),
            names.cancel_channel(),
        ],
        args: vec![
            message.to_owned(),
            now_ms.to_string(),
            ttl_s.to_string(),
            event_json,
            job_id.to_owned(),
        ],
    }
}

/// Deletes the record of a job that never reached the broker.
pub fn forget(names: &Names, job_id: &str) -> ScriptCall {
    ScriptCall {
        script: Script::Forget,
        keys: vec![names.job_key(job_id)],
        args: Vec::new(),
    }
}
