//! Owns prometheus: the host's `/metrics`, covering its GPUs, slots and the
//! workers' job metrics (read from their Redis records at scrape time).
//!
//! Metrics:
//! - `gpuq_jobs_total{worker,model,status}` counter: jobs that ran, by final status
//! - `gpuq_tenant_jobs_total{worker,model,tenant,status}`, `gpuq_tenant_run_seconds_total{worker,model,tenant}` counters:
//!   jobs and GPU time by tenant, at most `tenants.max_labels` tenants by name per model, the rest as `other`
//! - `gpuq_job_queue_wait_seconds{worker,model}` histogram: submission to start
//! - `gpuq_job_run_seconds{worker,model}` histogram: model run time
//! - `gpuq_model_loads_total{worker,model}` counter, `gpuq_model_load_seconds_total{worker,model}` counter
//! - `gpuq_model_unloads_total{worker}` counter, `gpuq_models_resident{worker}` gauge
//! - `gpuq_worker_restarts_total{worker}` counter, `gpuq_slot_vram_budget_bytes{worker,gpu}` gauge
//! - the autoscaling gauges of `crate::autoscaling`, on the placing dispatcher only
//! - `gpuq_gpu_memory_total_bytes{gpu}`, `gpuq_gpu_memory_used_bytes{gpu}` gauges, `gpuq_gpu_utilization_ratio{gpu}` gauge (NVML only)

use gpuq_common::metrics::DurationHistogram;
use gpuq_common::record::{GpuRecord, SlotRecord, WorkerRecord};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

const MIB: f64 = 1024.0 * 1024.0;

/// What one scrape shows.
pub struct HostSnapshot {
    pub gpus: Vec<GpuRecord>,
    pub slots: Vec<SlotRecord>,
    pub workers: Vec<WorkerRecord>,
    /// The dispatcher's own RabbitMQ node.
    pub amqp: gpuq_common::record::AmqpLink,
    /// The autoscaling signals, where this dispatcher places (`crate::autoscaling`).
    pub backlog: Option<crate::autoscaling::FleetBacklog>,
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut label = LabelPair::default();
            label.set_name((*name).to_owned());
            label.set_value((*value).to_owned());
            label
        })
        .collect()
}

fn counter(value: f64, pairs: &[(&str, &str)]) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value);
    let mut metric = Metric::default();
    metric.set_label(labels(pairs));
    metric.set_counter(counter);
    metric
}

pub(crate) fn gauge(value: f64, pairs: &[(&str, &str)]) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::default();
    metric.set_label(labels(pairs));
    metric.set_gauge(gauge);
    metric
}

fn histogram(h: &DurationHistogram, pairs: &[(&str, &str)]) -> Metric {
    let mut histogram = Histogram::default();
    histogram.set_sample_count(h.count);
    histogram.set_sample_sum(h.sum_s);
    histogram.set_bucket(
        h.cumulative()
            .into_iter()
            .map(|(le, count)| {
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(le);
                bucket.set_cumulative_count(count);
                bucket
            })
            .collect(),
    );
    let mut metric = Metric::default();
    metric.set_label(labels(pairs));
    metric.set_histogram(histogram);
    metric
}

pub(crate) fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    metrics: Vec<Metric>,
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

/// The metric families of a snapshot (families without samples are left out).
// Longer than 80 lines: one block per metric family, kept together so the whole set reads in one place.
pub fn families(snapshot: &HostSnapshot) -> Vec<MetricFamily> {
    let (mut jobs, mut waits, mut runs, mut loads, mut load_seconds) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut unloads, mut resident, mut give_backs) = (vec![], vec![], vec![]);
    let (mut tenant_jobs, mut tenant_seconds) = (vec![], vec![]);
    for worker in &snapshot.workers {
        let w = worker.worker_id.as_str();
        for (model, m) in &worker.metrics.models {
            for (tenant, t) in &m.tenants {
                let pairs = [("worker", w), ("model", model), ("tenant", tenant)];
                tenant_seconds.push(counter(t.run_seconds_sum, &pairs));
                for (status, count) in &t.jobs {
                    let pairs = [pairs[0], pairs[1], pairs[2], ("status", status)];
                    tenant_jobs.push(counter(*count as f64, &pairs));
                }
            }
            for (status, count) in &m.jobs {
                jobs.push(counter(
                    *count as f64,
                    &[("worker", w), ("model", model), ("status", status)],
                ));
            }
            if m.queue_wait.count > 0 {
                waits.push(histogram(&m.queue_wait, &[("worker", w), ("model", model)]));
            }
            if m.run.count > 0 {
                runs.push(histogram(&m.run, &[("worker", w), ("model", model)]));
            }
            loads.push(counter(m.loads as f64, &[("worker", w), ("model", model)]));
            if m.vram_give_backs > 0 {
                let pairs = [("worker", w), ("model", model)];
                give_backs.push(counter(m.vram_give_backs as f64, &pairs));
            }
            load_seconds.push(counter(
                m.load_seconds_sum,
                &[("worker", w), ("model", model)],
            ));
        }
        unloads.push(counter(worker.model_unloads as f64, &[("worker", w)]));
        resident.push(gauge(worker.resident_models.len() as f64, &[("worker", w)]));
    }
    let mut restarts = vec![];
    let mut budgets = vec![];
    for slot in &snapshot.slots {
        let gpu = slot.gpu.to_string();
        restarts.push(counter(
            f64::from(slot.restarts),
            &[("worker", &slot.worker_id)],
        ));
        budgets.push(gauge(
            slot.vram_budget_mib as f64 * MIB,
            &[("worker", &slot.worker_id), ("gpu", &gpu)],
        ));
    }
    let (mut total, mut used, mut utilization) = (vec![], vec![], vec![]);
    for g in &snapshot.gpus {
        let index = g.index.to_string();
        total.push(gauge(g.memory_total_mib as f64 * MIB, &[("gpu", &index)]));
        if g.source == "nvml" {
            used.push(gauge(g.memory_used_mib as f64 * MIB, &[("gpu", &index)]));
            if let Some(u) = g.utilization_percent {
                utilization.push(gauge(f64::from(u) / 100.0, &[("gpu", &index)]));
            }
        }
    }
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    [
        family(
            "gpuq_jobs_total",
            "Jobs that ran, by final status.",
            COUNTER,
            jobs,
        ),
        family(
            "gpuq_tenant_jobs_total",
            "Jobs that ran, by tenant and final status (tenants past tenants.max_labels: `other`).",
            COUNTER,
            tenant_jobs,
        ),
        family(
            "gpuq_tenant_run_seconds_total",
            "GPU time (run time) used by each tenant's jobs: what fair share divides.",
            COUNTER,
            tenant_seconds,
        ),
        family(
            "gpuq_job_queue_wait_seconds",
            "Time from submission to the start of the run.",
            HISTOGRAM,
            waits,
        ),
        family(
            "gpuq_job_run_seconds",
            "Run time of the model.",
            HISTOGRAM,
            runs,
        ),
        family("gpuq_model_loads_total", "Model loads.", COUNTER, loads),
        family(
            "gpuq_vram_give_backs_total",
            "Jobs a worker gave back because their input size class needs more VRAM than it has.",
            COUNTER,
            give_backs,
        ),
        family(
            "gpuq_model_load_seconds_total",
            "Time spent loading models.",
            COUNTER,
            load_seconds,
        ),
        family(
            "gpuq_model_unloads_total",
            "Model unloads (evictions, broken models).",
            COUNTER,
            unloads,
        ),
        family(
            "gpuq_models_resident",
            "Models loaded now.",
            GAUGE,
            resident,
        ),
        family(
            "gpuq_worker_restarts_total",
            "Restarts of the slot's worker process.",
            COUNTER,
            restarts,
        ),
        family(
            "gpuq_slot_vram_budget_bytes",
            "VRAM budget of each slot.",
            GAUGE,
            budgets,
        ),
        family("gpuq_gpu_memory_total_bytes", "GPU memory.", GAUGE, total),
        family(
            "gpuq_gpu_memory_used_bytes",
            "GPU memory in use (NVML).",
            GAUGE,
            used,
        ),
        family(
            "gpuq_gpu_utilization_ratio",
            "GPU utilization, 0 to 1 (NVML).",
            GAUGE,
            utilization,
        ),
    ]
    .into_iter()
    .chain(amqp_families(snapshot))
    .chain(
        snapshot
            .backlog
            .iter()
            .flat_map(crate::autoscaling::families),
    )
    .filter(|f| !f.get_metric().is_empty())
    .collect()
}

/// Which RabbitMQ node the dispatcher and each worker is on, and their
/// reconnects (`process` is `dispatcher` or the worker id).
fn amqp_families(snapshot: &HostSnapshot) -> [MetricFamily; 2] {
    let processes = std::iter::once(("dispatcher", &snapshot.amqp)).chain(
        snapshot
            .workers
            .iter()
            .map(|w| (w.worker_id.as_str(), &w.amqp)),
    );
    let (mut reconnects, mut connected) = (vec![], vec![]);
    for (process, link) in processes {
        reconnects.push(counter(link.reconnects as f64, &[("process", process)]));
        if let Some(node) = &link.node {
            connected.push(gauge(1.0, &[("process", process), ("node", node)]));
        }
    }
    [
        family(
            "gpuq_amqp_reconnects_total",
            "RabbitMQ connections made after the first (failovers).",
            MetricType::COUNTER,
            reconnects,
        ),
        family(
            "gpuq_amqp_connected_node",
            "1 for the RabbitMQ node each process is connected to.",
            MetricType::GAUGE,
            connected,
        ),
    ]
}

/// Prometheus text exposition of a snapshot.
pub fn render(snapshot: &HostSnapshot) -> String {
    let mut buffer = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&families(snapshot), &mut buffer) {
        tracing::warn!(%error, "metrics not encoded");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// The latest host view the heartbeat loop saw, shared with the HTTP server.
pub type SharedView = std::sync::Arc<parking_lot::Mutex<(Vec<GpuRecord>, Vec<SlotRecord>)>>;

/// Serves `/metrics` on `address` until `shutdown`.
pub async fn serve(
    address: String,
    view: SharedView,
    backlog: crate::autoscaling::SharedBacklog,
    store: crate::store::Store,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(&address).await?;
    tracing::info!(%address, "metrics on /metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (view, store, backlog) = (view.clone(), store.clone(), backlog.clone());
            async move {
                let (gpus, slots) = view.lock().clone();
                let ids: Vec<String> = slots.iter().map(|s| s.worker_id.clone()).collect();
                let workers = store.worker_records(&ids).await.unwrap_or_default();
                let text = render(&HostSnapshot {
                    gpus,
                    slots,
                    workers,
                    amqp: crate::amqp::link(),
                    backlog: backlog.lock().clone(),
                });
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuq_common::metrics::{ModelMetrics, WorkerMetrics};

    #[test]
    fn snapshot_renders_as_prometheus_text() {
        let mut model = ModelMetrics::default();
        model.jobs.insert("completed".into(), 3);
        model.run.observe(0.02);
        model.loads = 1;
        model.vram_give_backs = 2;
        let acme = model.tenant("acme", 1);
        acme.jobs.insert("completed".into(), 2);
        acme.run_seconds_sum = 1.5;
        model.tenant("zed", 1).run_seconds_sum = 0.5;
        let mut metrics = WorkerMetrics::default();
        metrics.models.insert("echo".into(), model);
        let worker = WorkerRecord {
            worker_id: "h-gpu0-slot0".into(),
            host: "h".into(),
            gpu: "0".into(),
            pid: 1,
            state: "idle".into(),
            vram_budget_mib: 1,
            models: vec![],
            consuming: vec![],
            waiting: Default::default(),
            current_jobs: vec![],
            jobs_done: 3,
            jobs_failed: 0,
            resident_models: vec![],
            model_loads: 1,
            model_unloads: 0,
            peak_resident_mib: 0,
            metrics,
            amqp: gpuq_common::record::AmqpLink {
                node: Some("rabbit-2:5672".into()),
                reconnects: 2,
            },
            started_ms: 0,
            heartbeat_ms: 0,
        };
        let text = render(&HostSnapshot {
            gpus: vec![],
            slots: vec![],
            workers: vec![worker],
            amqp: Default::default(),
            backlog: None,
        });
        assert!(
            text.contains(
                "gpuq_amqp_connected_node{process=\"h-gpu0-slot0\",node=\"rabbit-2:5672\"} 1"
            ),
            "{text}"
        );
        // One tenant by name (tenants.max_labels = 1 here), the rest as `other`.
        for line in [
            r#"gpuq_tenant_jobs_total{worker="h-gpu0-slot0",model="echo",tenant="acme",status="completed"} 2"#,
            r#"gpuq_tenant_run_seconds_total{worker="h-gpu0-slot0",model="echo",tenant="acme"} 1.5"#,
            r#"gpuq_tenant_run_seconds_total{worker="h-gpu0-slot0",model="echo",tenant="other"} 0.5"#,
            r#"gpuq_vram_give_backs_total{worker="h-gpu0-slot0",model="echo"} 2"#,
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        assert!(
            text.contains("gpuq_amqp_reconnects_total{process=\"h-gpu0-slot0\"} 2"),
            "{text}"
        );
        assert!(text.contains("# TYPE gpuq_jobs_total counter"), "{text}");
        assert!(
            text.contains(
                r#"gpuq_jobs_total{worker="h-gpu0-slot0",model="echo",status="completed"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"gpuq_job_run_seconds_bucket{worker="h-gpu0-slot0",model="echo",le="0.025"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"gpuq_job_run_seconds_count{worker="h-gpu0-slot0",model="echo"} 1"#),
            "{text}"
        );
    }
}
