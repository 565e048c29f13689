//! The dashboard's history: a small time series of the last 15 minutes that
//! the gateway keeps in memory and serves at `GET /v1/history` (admin), for
//! the charts the page draws itself.
//!
//! Each point ([`Point`]) holds what one sample of the system saw: jobs
//! waiting per model, jobs finished per second by final status since the
//! previous point, each GPU's memory split (gpuq / others / free), and workers
//! busy. [`sampler`] takes one every [`SAMPLE_INTERVAL`].
//!
//! Bounded: at most [`MAX_POINTS`] points (older ones are dropped), and at
//! most [`MAX_SERIES`] models and GPUs per point (the first by name; the
//! point says `truncated`), so a big fleet costs a few MB at most.
//!
//! Not a metrics store: it lives and dies with the gateway process, each
//! gateway of a fleet keeps its own, and nothing is written to Redis. For
//! longer history, scrape `/metrics`.

pub mod sampler;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Query, State};
use axum::Json;
use gpuq_common::record::{HostRecord, WorkerRecord};
use gpuq_common::JobStatus;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as JsonValue};

use super::auth::{self, Identity};
use super::{ApiError, AppState};
use crate::system::{QueueStatus, SystemStatus};

/// How often the sampler takes a point.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// How far back the history goes.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Points kept: the window at the sampling interval.
pub const MAX_POINTS: usize = (WINDOW.as_secs() / SAMPLE_INTERVAL.as_secs()) as usize;
/// Most models (queue depths) and GPUs one point keeps.
pub const MAX_SERIES: usize = 64;

/// Jobs that reached each final status in one interval, per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FinishedRates {
    pub completed: f64,
    pub failed: f64,
    pub cancelled: f64,
    pub timed_out: f64,
}

/// Final statuses counted since the previous point, from the job events the
/// gateway receives (see [`sampler`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FinishedCounts {
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub timed_out: u64,
    /// Events were lost (the subscription lagged or reconnected): the
    /// counts are lower than what really ended.
    pub missed: bool,
}

impl FinishedCounts {
    /// Counts one status event; `queued` and `processing` count nothing.
    pub fn count(&mut self, status: JobStatus) {
        match status {
            JobStatus::Completed => self.completed += 1,
            JobStatus::Failed => self.failed += 1,
            JobStatus::Cancelled => self.cancelled += 1,
            JobStatus::TimedOut => self.timed_out += 1,
            JobStatus::Queued | JobStatus::Processing => {}
        }
    }

    /// The counts as rates over `elapsed` (at least 1 ms).
    pub fn rates(&self, elapsed: Duration) -> FinishedRates {
        let seconds = elapsed.as_secs_f64().max(0.001);
        let rate = |n: u64| ((n as f64 / seconds) * 100.0).round() / 100.0;
        FinishedRates {
            completed: rate(self.completed),
            failed: rate(self.failed),
            cancelled: rate(self.cancelled),
            timed_out: rate(self.timed_out),
        }
    }
}

/// One GPU's memory at a sample, MiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuMemory {
    /// `<host>/<index>`.
    pub gpu: String,
    /// Used by gpuq's workers (used minus others').
    pub gpuq_mib: u64,
    /// Used by processes gpuq does not run.
    pub others_mib: u64,
    pub free_mib: u64,
}

/// One sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// When it was taken, unix ms.
    pub ts_ms: u64,
    /// Jobs waiting per model: its queue plus its sub-queues (a queue that
    /// does not exist yet counts 0).
    pub queued: BTreeMap<String, u64>,
    pub finished_per_s: FinishedRates,
    pub gpus: Vec<GpuMemory>,
    /// Workers running at least one job.
    pub workers_busy: u32,
    /// Live workers.
    pub workers: u32,
    /// Job events were lost in this interval: `finished_per_s` is low.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub events_missed: bool,
    /// More than [`MAX_SERIES`] models or GPUs: only the first by name are kept.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Point {
    /// The point for a system snapshot and the final statuses counted since
    /// the previous point, `elapsed` ago.
    pub fn from_status(
        ts_ms: u64,
        status: &SystemStatus,
        finished: &FinishedCounts,
        elapsed: Duration,
    ) -> Point {
        let mut point = Point::from_parts(&status.hosts, &status.workers, &status.queues);
        point.ts_ms = ts_ms;
        point.finished_per_s = finished.rates(elapsed);
        point.events_missed = finished.missed;
        point
    }

    /// Queue depths, GPU memory and busy workers (no time, no rates).
    fn from_parts(hosts: &[HostRecord], workers: &[WorkerRecord], queues: &[QueueStatus]) -> Point {
        let mut queued = BTreeMap::new();
        for queue in queues {
            let waiting = u64::from(queue.messages.unwrap_or(0))
                + queue
                    .sub_queues
                    .iter()
                    .map(|s| u64::from(s.messages))
                    .sum::<u64>();
            *queued.entry(queue.model.clone()).or_insert(0) += waiting;
        }
        let mut truncated = queued.len() > MAX_SERIES;
        let queued = queued.into_iter().take(MAX_SERIES).collect();
        let mut gpus: Vec<GpuMemory> = hosts
            .iter()
            .flat_map(|host| {
                host.gpus.iter().map(|gpu| {
                    let others = gpu.foreign_used_mib.min(gpu.memory_used_mib);
                    GpuMemory {
                        gpu: format!("{}/{}", host.host_id, gpu.index),
                        gpuq_mib: gpu.memory_used_mib - others,
                        others_mib: others,
                        free_mib: gpu.memory_total_mib.saturating_sub(gpu.memory_used_mib),
                    }
                })
            })
            .collect();
        gpus.sort_by(|a, b| a.gpu.cmp(&b.gpu));
        truncated |= gpus.len() > MAX_SERIES;
        gpus.truncate(MAX_SERIES);
        let busy = workers
            .iter()
            .filter(|w| !w.current_jobs.is_empty())
            .count();
        Point {
            ts_ms: 0,
            queued,
            finished_per_s: FinishedRates::default(),
            gpus,
            workers_busy: busy as u32,
            workers: workers.len() as u32,
            events_missed: false,
            truncated,
        }
    }
}

/// The last [`MAX_POINTS`] points, oldest first; shared by the sampler and
/// the route.
#[derive(Default)]
pub struct History {
    points: Mutex<VecDeque<Point>>,
}

impl History {
    /// Appends a point, dropping the oldest past [`MAX_POINTS`].
    pub fn push(&self, point: Point) {
        let mut points = self.points.lock();
        while points.len() >= MAX_POINTS {
            points.pop_front();
        }
        points.push_back(point);
    }

    /// The points taken after `since_ms` (all with 0), oldest first.
    pub fn since(&self, since_ms: u64) -> Vec<Point> {
        let points = self.points.lock();
        let first = points.partition_point(|p| p.ts_ms <= since_ms);
        points.range(first..).cloned().collect()
    }
}

/// `GET /v1/history` query.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// Only points taken after this time (unix ms): a page polls with the
    /// last `ts_ms` it has.
    since_ms: Option<u64>,
}

/// `GET /v1/history`: the points of the last 15 minutes (admin, like
/// `/v1/system`).
pub async fn route(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<JsonValue>, ApiError> {
    auth::require_admin(&identity)?;
    let points = state.history.since(query.since_ms.unwrap_or(0));
    Ok(Json(json!({
        "interval_ms": SAMPLE_INTERVAL.as_millis() as u64,
        "window_s": WINDOW.as_secs(),
        "points": points,
    })))
}

#[cfg(test)]
mod tests;
