//! Live counters of one worker, read by its heartbeat.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Default)]
pub struct WorkerStats {
    /// Notified on every state change, so the heartbeat can publish it soon.
    pub changed: tokio::sync::Notify,
    ready: AtomicBool,
    jobs_done: AtomicU64,
    jobs_failed: AtomicU64,
    running: Mutex<BTreeSet<String>>,
    /// Queues consumed and held jobs by model, as placement sees them.
    queues: Mutex<(Vec<String>, BTreeMap<String, u64>)>,
    metrics: Mutex<gpuq_common::metrics::WorkerMetrics>,
    /// The RabbitMQ node the worker is on, for its record.
    amqp: Mutex<gpuq_common::record::AmqpLink>,
}

/// Removes a job from the running set when dropped, even if its task panics.
pub struct RunningJob {
    stats: Arc<WorkerStats>,
    job_id: String,
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.stats.running.lock().remove(&self.job_id);
    }
}

impl WorkerStats {
    /// Notes the RabbitMQ node the worker's connection is on (`None` while
    /// it reconnects) and its reconnects so far.
    pub fn set_amqp(&self, link: gpuq_common::record::AmqpLink) {
        *self.amqp.lock() = link;
        self.changed.notify_one();
    }

    pub fn amqp(&self) -> gpuq_common::record::AmqpLink {
        self.amqp.lock().clone()
    }

    pub fn job_started(self: &Arc<Self>, job_id: &str) -> RunningJob {
        self.running.lock().insert(job_id.to_owned());
        RunningJob {
            stats: Arc::clone(self),
            job_id: job_id.to_owned(),
        }
    }

    pub fn job_finished(&self, success: bool) {
        if success {
            self.jobs_done.fetch_add(1, Ordering::Relaxed);
        } else {
            self.jobs_failed.fetch_add(1, Ordering::Relaxed);
        }
        self.changed.notify_one();
    }

    /// Models loaded and queues consumed.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Records which queues are consumed and how many jobs wait here unstarted.
    pub fn set_queues(&self, consuming: Vec<String>, waiting: BTreeMap<String, u64>) {
        let mut queues = self.queues.lock();
        if queues.0 != consuming || queues.1 != waiting {
            *queues = (consuming, waiting);
            self.changed.notify_one();
        }
    }

    pub fn queues(&self) -> (Vec<String>, BTreeMap<String, u64>) {
        self.queues.lock().clone()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Counts a job that ran on `model` for `tenant` (labelled as one of at
    /// most `max_tenant_labels`) and how long it waited and ran.
    pub fn record_job(
        &self,
        model: &str,
        tenant: (&str, usize),
        status: &str,
        queue_wait_s: Option<f64>,
        run_s: Option<f64>,
    ) {
        let mut metrics = self.metrics.lock();
        let model = metrics.models.entry(model.to_owned()).or_default();
        *model.jobs.entry(status.to_owned()).or_default() += 1;
        let by_tenant = model.tenant(tenant.0, tenant.1);
        *by_tenant.jobs.entry(status.to_owned()).or_default() += 1;
        by_tenant.run_seconds_sum += run_s.unwrap_or(0.0);
        if let Some(wait) = queue_wait_s {
            model.queue_wait.observe(wait);
        }
        if let Some(run) = run_s {
            model.run.observe(run);
        }
    }

    /// Counts a model load and its duration.
    pub fn record_load(&self, model: &str, seconds: f64) {
        let mut metrics = self.metrics.lock();
        let model = metrics.models.entry(model.to_owned()).or_default();
        model.loads += 1;
        model.load_seconds_sum += seconds;
    }

    /// Counts a job given back for want of VRAM.
    pub fn record_give_back(&self, model: &str) {
        let mut metrics = self.metrics.lock();
        metrics
            .models
            .entry(model.to_owned())
            .or_default()
            .vram_give_backs += 1;
        self.changed.notify_one();
    }

    pub fn metrics(&self) -> gpuq_common::metrics::WorkerMetrics {
        self.metrics.lock().clone()
    }

    pub fn jobs_done(&self) -> u64 {
        self.jobs_done.load(Ordering::Relaxed)
    }

    pub fn jobs_failed(&self) -> u64 {
        self.jobs_failed.load(Ordering::Relaxed)
    }

    pub fn running_jobs(&self) -> Vec<String> {
        self.running.lock().iter().cloned().collect()
    }
}
