//! The Redis records gpuq writes, as typed structs for readers.
//!
//! Records are Redis hashes of human-readable string fields (numbers in decimal,
//! structured values as JSON) so that `redis-cli HGETALL` and any dashboard can
//! read them. Writers (workers, dispatchers) produce the fields with `to_fields`;
//! readers (producer, CLI) parse them with `from_hash`, tolerating missing fields.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::names::job_field;
use crate::wire::{ErrorCode, JobError, JobStatus};

fn parse_num<T: std::str::FromStr>(hash: &HashMap<String, String>, field: &str) -> Option<T> {
    hash.get(field).and_then(|v| v.parse().ok())
}

fn text(hash: &HashMap<String, String>, field: &str) -> Option<String> {
    hash.get(field).filter(|v| !v.is_empty()).cloned()
}

/// A job's record (`<namespace>:job:<id>`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRecord {
    pub job_id: String,
    pub status: Option<JobStatus>,
    pub feature: Option<String>,
    pub model: Option<String>,
    pub worker: Option<String>,
    pub host: Option<String>,
    pub gpu: Option<String>,
    pub attempts: u32,
    /// Fraction done, 0 to 1.
    pub progress: Option<f64>,
    pub created_ms: Option<u64>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub error: Option<JobError>,
    /// The model's outputs as JSON (left out of listings; read one job for it).
    pub result: Option<serde_json::Value>,
    /// Name of the gateway token that submitted the job, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// The tenant the job belongs to; absent on records written before
    /// tenants existed and on a job refused for an invalid tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The priority it runs at (0 to 9), after its tenant's `max_priority`;
    /// absent when it asked for none (or was published straight to AMQP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// The priority it asked for, when its tenant's `max_priority` lowered it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_lowered_from: Option<u8>,
    /// Its inputs as JSON (bytes as `$bytes`), when the producer recorded
    /// them (`jobs.record_inputs_max_bytes`); left out of listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<serde_json::Value>,
}

impl JobRecord {
    /// Parses `HGETALL` output; `None` when the hash is empty (no such job, or expired).
    pub fn from_hash(job_id: &str, hash: &HashMap<String, String>) -> Option<JobRecord> {
        if hash.is_empty() {
            return None;
        }
        let error_code = hash.get(job_field::ERROR_CODE).and_then(|code| {
            serde_json::from_value::<ErrorCode>(serde_json::Value::String(code.clone())).ok()
        });
        let error = error_code.map(|code| JobError {
            code,
            message: hash
                .get(job_field::ERROR_MESSAGE)
                .cloned()
                .unwrap_or_default(),
        });
        Some(JobRecord {
            job_id: job_id.to_owned(),
            status: hash
                .get(job_field::STATUS)
                .and_then(|s| JobStatus::parse(s)),
            feature: text(hash, job_field::FEATURE),
            model: text(hash, job_field::MODEL),
            worker: text(hash, job_field::WORKER),
            host: text(hash, job_field::HOST),
            gpu: text(hash, job_field::GPU),
            attempts: parse_num(hash, job_field::ATTEMPTS).unwrap_or(0),
            progress: parse_num(hash, job_field::PROGRESS),
            created_ms: parse_num(hash, job_field::CREATED_MS),
            started_ms: parse_num(hash, job_field::STARTED_MS),
            finished_ms: parse_num(hash, job_field::FINISHED_MS),
            error,
            result: hash
                .get(job_field::RESULT)
                .and_then(|r| serde_json::from_str(r).ok()),
            submitted_by: text(hash, job_field::SUBMITTED_BY),
            tenant: text(hash, job_field::TENANT),
            priority: parse_num(hash, job_field::PRIORITY),
            priority_lowered_from: parse_num(hash, job_field::PRIORITY_LOWERED_FROM),
            inputs: hash
                .get(job_field::INPUTS)
                .and_then(|r| serde_json::from_str(r).ok()),
        })
    }

    pub fn is_final(&self) -> bool {
        self.status.is_some_and(JobStatus::is_final)
    }
}

/// A worker's record (`<namespace>:worker:<id>`), refreshed by its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub worker_id: String,
    pub host: String,
    pub gpu: String,
    pub pid: u32,
    /// `starting`, `idle`, `busy` or `stopping`.
    pub state: String,
    pub vram_budget_mib: u64,
    /// Models this worker may serve (its slot's budget and model list allow them).
    pub models: Vec<String>,
    /// Models whose queues it consumes now: its placement assignment, or all
    /// of `models` when it has none.
    #[serde(default)]
    pub consuming: Vec<String>,
    /// Jobs delivered to it and not started yet, by model.
    #[serde(default)]
    pub waiting: BTreeMap<String, u64>,
    /// Comma-separated ids of the jobs running now.
    pub current_jobs: Vec<String>,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    /// Models loaded now, with their load times.
    #[serde(default)]
    pub resident_models: Vec<ResidentModel>,
    /// Model loads and unloads since start.
    #[serde(default)]
    pub model_loads: u64,
    #[serde(default)]
    pub model_unloads: u64,
    /// Largest sum of declared VRAM of resident models reached, MiB.
    #[serde(default)]
    pub peak_resident_mib: u64,
    /// Job counters and duration histograms by model, since the worker started.
    #[serde(default)]
    pub metrics: crate::metrics::WorkerMetrics,
    /// The RabbitMQ node (`host:port`) its connection is on, and its reconnects.
    #[serde(default)]
    pub amqp: AmqpLink,
    pub started_ms: u64,
    pub heartbeat_ms: u64,
}

/// Which RabbitMQ node a process is connected to (`amqp_node`, empty while
/// it has no connection) and how often it reconnected (`amqp_reconnects`):
/// after a node is lost, the records show every process on another node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmqpLink {
    pub node: Option<String>,
    pub reconnects: u64,
}

impl AmqpLink {
    fn push_fields(&self, fields: &mut Vec<(&'static str, String)>) {
        fields.push(("amqp_node", self.node.clone().unwrap_or_default()));
        fields.push(("amqp_reconnects", self.reconnects.to_string()));
    }

    fn from_hash(hash: &HashMap<String, String>) -> AmqpLink {
        AmqpLink {
            node: text(hash, "amqp_node"),
            reconnects: parse_num(hash, "amqp_reconnects").unwrap_or(0),
        }
    }
}

/// The queues one worker consumes, decided by the placing dispatcher
/// (`<namespace>:assignment:<worker>`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Model ids whose queues the worker consumes.
    pub models: Vec<String>,
    /// The model whose backlog the worker works down, if any.
    #[serde(default)]
    pub main: Option<String>,
    /// Host id of the dispatcher that decided it.
    pub by: String,
    pub decided_ms: u64,
}

/// Measured timings of one model across workers (`<namespace>:model_timings`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelTimings {
    /// Mean load time, milliseconds.
    pub load_ms: u64,
    /// Mean run time of one job, milliseconds.
    pub run_ms: u64,
}

/// A model resident in a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResidentModel {
    pub model: String,
    pub vram_mib: u64,
    /// Jobs running on it now.
    pub in_use: usize,
    pub loaded_at_ms: u64,
    /// How long its load took, milliseconds.
    pub load_ms: u64,
    /// Jobs it ran since loaded.
    pub jobs: u64,
}

impl WorkerRecord {
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("worker_id", self.worker_id.clone()),
            ("host", self.host.clone()),
            ("gpu", self.gpu.clone()),
            ("pid", self.pid.to_string()),
            ("state", self.state.clone()),
            ("vram_budget_mib", self.vram_budget_mib.to_string()),
            (
                "models",
                serde_json::to_string(&self.models).unwrap_or_default(),
            ),
            (
                "consuming",
                serde_json::to_string(&self.consuming).unwrap_or_default(),
            ),
            (
                "waiting",
                serde_json::to_string(&self.waiting).unwrap_or_default(),
            ),
            (
                "current_jobs",
                serde_json::to_string(&self.current_jobs).unwrap_or_default(),
            ),
            ("jobs_done", self.jobs_done.to_string()),
            ("jobs_failed", self.jobs_failed.to_string()),
            (
                "resident_models",
                serde_json::to_string(&self.resident_models).unwrap_or_default(),
            ),
            ("model_loads", self.model_loads.to_string()),
            ("model_unloads", self.model_unloads.to_string()),
            ("peak_resident_mib", self.peak_resident_mib.to_string()),
            (
                "metrics",
                serde_json::to_string(&self.metrics).unwrap_or_default(),
            ),
            ("started_ms", self.started_ms.to_string()),
            ("heartbeat_ms", self.heartbeat_ms.to_string()),
        ];
        self.amqp.push_fields(&mut fields);
        fields
    }

    pub fn from_hash(hash: &HashMap<String, String>) -> Option<WorkerRecord> {
        let json_list = |field: &str| -> Vec<String> {
            hash.get(field)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default()
        };
        Some(WorkerRecord {
            worker_id: text(hash, "worker_id")?,
            host: text(hash, "host").unwrap_or_default(),
            gpu: text(hash, "gpu").unwrap_or_default(),
            pid: parse_num(hash, "pid").unwrap_or(0),
            state: text(hash, "state").unwrap_or_default(),
            vram_budget_mib: parse_num(hash, "vram_budget_mib").unwrap_or(0),
            models: json_list("models"),
            consuming: json_list("consuming"),
            waiting: hash
                .get("waiting")
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
            current_jobs: json_list("current_jobs"),
            jobs_done: parse_num(hash, "jobs_done").unwrap_or(0),
            jobs_failed: parse_num(hash, "jobs_failed").unwrap_or(0),
            resident_models: hash
                .get("resident_models")
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
            model_loads: parse_num(hash, "model_loads").unwrap_or(0),
            model_unloads: parse_num(hash, "model_unloads").unwrap_or(0),
            peak_resident_mib: parse_num(hash, "peak_resident_mib").unwrap_or(0),
            metrics: hash
                .get("metrics")
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
            amqp: AmqpLink::from_hash(hash),
            started_ms: parse_num(hash, "started_ms").unwrap_or(0),
            heartbeat_ms: parse_num(hash, "heartbeat_ms").unwrap_or(0),
        })
    }
}

/// One GPU as a host reports it (live values are refreshed with NVML only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuRecord {
    pub index: u32,
    #[serde(default)]
    pub uuid: Option<String>,
    pub name: String,
    pub memory_total_mib: u64,
    #[serde(default)]
    pub memory_used_mib: u64,
    /// Memory used by processes that are not this host's gpuq workers.
    #[serde(default)]
    pub foreign_used_mib: u64,
    #[serde(default)]
    pub utilization_percent: Option<u32>,
    #[serde(default)]
    pub temperature_c: Option<u32>,
    /// Compute processes on the GPU.
    #[serde(default)]
    pub processes: u32,
    /// `nvml` or `declared`.
    pub source: String,
}

/// One planned worker slot and the state of its process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub worker_id: String,
    pub gpu: u32,
    pub vram_budget_mib: u64,
    pub models: Vec<String>,
    /// `starting`, `running`, `backoff`, `failed` (crash loop) or `stopped`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Times the worker process was restarted.
    #[serde(default)]
    pub restarts: u32,
    /// How the last worker process ended, e.g. `exit code 1` or `signal SIGKILL`.
    #[serde(default)]
    pub last_exit: Option<String>,
}

/// A dispatcher host's record (`<namespace>:host:<id>`), refreshed by its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: String,
    pub version: String,
    pub pid: u32,
    /// Where the GPU list came from: `nvml` or `declared`.
    pub gpu_source: String,
    /// Why NVML was not used, when the declared inventory was.
    #[serde(default)]
    pub nvml_error: Option<String>,
    pub gpus: Vec<GpuRecord>,
    pub slots: Vec<SlotRecord>,
    /// Models no slot of this host can hold, with the reason.
    pub unplaced_models: Vec<String>,
    /// The RabbitMQ node the dispatcher's placement connection is on.
    #[serde(default)]
    pub amqp: AmqpLink,
    pub started_ms: u64,
    pub heartbeat_ms: u64,
}

impl HostRecord {
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("host_id", self.host_id.clone()),
            ("version", self.version.clone()),
            ("pid", self.pid.to_string()),
            ("gpu_source", self.gpu_source.clone()),
            ("nvml_error", self.nvml_error.clone().unwrap_or_default()),
            (
                "gpus",
                serde_json::to_string(&self.gpus).unwrap_or_default(),
            ),
            (
                "slots",
                serde_json::to_string(&self.slots).unwrap_or_default(),
            ),
            (
                "unplaced_models",
                serde_json::to_string(&self.unplaced_models).unwrap_or_default(),
            ),
            ("started_ms", self.started_ms.to_string()),
            ("heartbeat_ms", self.heartbeat_ms.to_string()),
        ];
        self.amqp.push_fields(&mut fields);
        fields
    }

    pub fn from_hash(hash: &HashMap<String, String>) -> Option<HostRecord> {
        fn json<T: serde::de::DeserializeOwned + Default>(
            hash: &HashMap<String, String>,
            field: &str,
        ) -> T {
            hash.get(field)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default()
        }
        Some(HostRecord {
            host_id: text(hash, "host_id")?,
            version: text(hash, "version").unwrap_or_default(),
            pid: parse_num(hash, "pid").unwrap_or(0),
            gpu_source: text(hash, "gpu_source").unwrap_or_default(),
            nvml_error: text(hash, "nvml_error"),
            gpus: json(hash, "gpus"),
            slots: json(hash, "slots"),
            unplaced_models: json(hash, "unplaced_models"),
            amqp: AmqpLink::from_hash(hash),
            started_ms: parse_num(hash, "started_ms").unwrap_or(0),
            heartbeat_ms: parse_num(hash, "heartbeat_ms").unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests;
