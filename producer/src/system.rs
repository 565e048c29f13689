//! A snapshot of the whole system, and its rendering as readable tables.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use gpuq_common::now_ms;
use gpuq_common::record::{HostRecord, WorkerRecord};
use serde::Serialize;

pub mod vram;

/// One model's queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    pub model: String,
    pub feature: String,
    pub queue: String,
    pub vram_mib: u64,
    /// Messages ready in the queue; `None` if the queue does not exist yet.
    pub messages: Option<u32>,
    /// Consumers (workers) on the queue; `None` if the queue does not exist yet.
    pub consumers: Option<u32>,
    /// The model's sub-queues (a tenant or a priority level of its own;
    /// `gpuq_common::fair_share`) with jobs waiting; `messages` above
    /// counts only the model's own queue.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sub_queues: Vec<SubQueueStatus>,
}

/// Jobs waiting in one sub-queue of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubQueueStatus {
    pub tenant: String,
    pub level: String,
    pub messages: u32,
}

impl QueueStatus {
    /// No worker consumes this queue: its jobs wait.
    pub fn is_unserved(&self) -> bool {
        self.consumers.unwrap_or(0) == 0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SystemStatus {
    pub hosts: Vec<HostRecord>,
    pub workers: Vec<WorkerRecord>,
    pub queues: Vec<QueueStatus>,
    /// Messages in the dead-letter queue.
    pub dead_letters: Option<u32>,
    /// Webhook deliveries given up on (`<ns>.webhooks.dead`); `None` when
    /// the queue does not exist (no dispatcher has had webhooks on).
    pub webhook_dead_letters: Option<u32>,
    /// Each model's VRAM: declared, measured, admitted.
    pub vram: Vec<vram::VramStatus>,
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}

/// An optional number, or `-`.
fn opt(value: Option<u32>) -> String {
    value.map_or("-".to_owned(), |v| v.to_string())
}

fn age(ms: u64) -> String {
    let seconds = now_ms().saturating_sub(ms) as f64 / 1000.0;
    format!("{seconds:.1}s ago")
}

impl SystemStatus {
    /// Hosts and GPUs, slots, workers, then queues, as text tables.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_hosts(&mut out);
        self.render_slots(&mut out);
        self.render_workers(&mut out);
        self.render_broker_links(&mut out);
        self.render_queues(&mut out);
        vram::render(&self.vram, &mut out);
        out
    }

    /// Which RabbitMQ node each dispatcher and worker is connected to: after
    /// a node is lost, every process should show another one.
    fn render_broker_links(&self, out: &mut String) {
        let mut links = table(&["process", "rabbitmq node", "reconnects"]);
        let dispatchers = self
            .hosts
            .iter()
            .map(|h| (format!("dispatcher {}", h.host_id), &h.amqp));
        let workers = self
            .workers
            .iter()
            .map(|w| (format!("worker {}", w.worker_id), &w.amqp));
        for (process, link) in dispatchers.chain(workers) {
            links.add_row(vec![
                process,
                link.node.clone().unwrap_or_else(|| "(reconnecting)".into()),
                link.reconnects.to_string(),
            ]);
        }
        out.push_str(&format!("\nRABBITMQ CONNECTIONS\n{links}\n"));
    }

    /// Each host's GPUs, and what the host could not place.
    fn render_hosts(&self, out: &mut String) {
        let mut hosts = table(&[
            "host",
            "gpu",
            "name",
            "total MiB",
            "used MiB",
            "others MiB",
            "util %",
            "temp °C",
            "source",
            "heartbeat",
        ]);
        for host in &self.hosts {
            for gpu in &host.gpus {
                hosts.add_row(vec![
                    host.host_id.clone(),
                    gpu.index.to_string(),
                    gpu.name.clone(),
                    gpu.memory_total_mib.to_string(),
                    gpu.memory_used_mib.to_string(),
                    gpu.foreign_used_mib.to_string(),
                    opt(gpu.utilization_percent),
                    opt(gpu.temperature_c),
                    gpu.source.clone(),
                    age(host.heartbeat_ms),
                ]);
            }
        }
        out.push_str(&format!("HOSTS ({})\n{hosts}\n", self.hosts.len()));
        for host in &self.hosts {
            if let Some(reason) = &host.nvml_error {
                out.push_str(&format!(
                    "  {}: declared GPU inventory in use ({reason})\n",
                    host.host_id
                ));
            }
            for reason in &host.unplaced_models {
                out.push_str(&format!("  ! {}: {reason}\n", host.host_id));
            }
        }
    }

    /// Each host's worker slots, and those that failed.
    fn render_slots(&self, out: &mut String) {
        let mut slots = table(&[
            "host",
            "slot (worker)",
            "gpu",
            "budget MiB",
            "models",
            "state",
            "pid",
            "restarts",
            "last exit",
        ]);
        for host in &self.hosts {
            for slot in &host.slots {
                slots.add_row(vec![
                    host.host_id.clone(),
                    slot.worker_id.clone(),
                    slot.gpu.to_string(),
                    slot.vram_budget_mib.to_string(),
                    slot.models.join(","),
                    slot.state.clone(),
                    opt(slot.pid),
                    slot.restarts.to_string(),
                    slot.last_exit.clone().unwrap_or_default(),
                ]);
            }
        }
        out.push_str(&format!("\nSLOTS\n{slots}\n"));
        for host in &self.hosts {
            for slot in host.slots.iter().filter(|s| s.state == "failed") {
                out.push_str(&format!(
                    "  ! {}: slot {} failed (crash loop; last exit: {}); fix it and restart the dispatcher\n",
                    host.host_id,
                    slot.worker_id,
                    slot.last_exit.clone().unwrap_or_default()
                ));
            }
        }
    }

    /// Each live worker: what it serves, consumes, holds and runs.
    fn render_workers(&self, out: &mut String) {
        let mut workers = table(&[
            "worker",
            "host",
            "gpu",
            "pid",
            "state",
            "budget MiB",
            "models",
            "consuming",
            "loaded",
            "running",
            "done",
            "failed",
            "heartbeat",
        ]);
        for w in &self.workers {
            workers.add_row(vec![
                w.worker_id.clone(),
                w.host.clone(),
                w.gpu.clone(),
                w.pid.to_string(),
                w.state.clone(),
                w.vram_budget_mib.to_string(),
                w.models.join(","),
                w.consuming
                    .iter()
                    .map(|m| match w.waiting.get(m) {
                        Some(held) => format!("{m}({held} held)"),
                        None => m.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                w.resident_models
                    .iter()
                    .map(|r| r.model.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                w.current_jobs.join(","),
                w.jobs_done.to_string(),
                w.jobs_failed.to_string(),
                age(w.heartbeat_ms),
            ]);
        }
        out.push_str(&format!("\nWORKERS ({})\n{workers}\n", self.workers.len()));
    }

    /// Each model's queue, the models nobody serves, and the dead letters.
    fn render_queues(&self, out: &mut String) {
        let mut queues = table(&[
            "model",
            "feature",
            "vram MiB",
            "queue",
            "ready",
            "consumers",
            "ready by tenant/level",
        ]);
        for q in &self.queues {
            let subs: Vec<String> = q
                .sub_queues
                .iter()
                .map(|s| format!("{}/{} {}", s.tenant, s.level, s.messages))
                .collect();
            queues.add_row(vec![
                q.model.clone(),
                q.feature.clone(),
                q.vram_mib.to_string(),
                q.queue.clone(),
                opt(q.messages),
                opt(q.consumers),
                subs.join(", "),
            ]);
        }
        out.push_str(&format!("\nQUEUES ({})\n{queues}\n", self.queues.len()));
        for q in self.queues.iter().filter(|q| q.is_unserved()) {
            out.push_str(&format!(
                "  ! model '{}' has no consumer: no live host serves it, its jobs wait\n",
                q.model
            ));
        }
        out.push_str(&format!(
            "\ndead-letter queue: {} message(s)\n",
            opt(self.dead_letters)
        ));
        if let Some(webhooks) = self.webhook_dead_letters {
            out.push_str(&format!(
                "webhook dead-letter queue: {webhooks} message(s)\n"
            ));
        }
    }
}
