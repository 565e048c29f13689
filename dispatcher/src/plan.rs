//! VRAM planning: which worker slots a host runs, with what budget and models.
//!
//! Pure functions over the discovered GPUs and the registry, so every rule is
//! unit-tested without a GPU. Per GPU: `workers_per_gpu` slots sharing
//! `total - reserve - memory used by processes that are not ours`. A slot serves
//! every model (in the host's model filter) whose declared VRAM fits its budget.

use gpuq_common::config::DispatcherConfig;
use gpuq_common::registry::Registry;

use crate::gpu::GpuInfo;

/// One worker process to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    pub worker_id: String,
    pub gpu: u32,
    pub vram_budget_mib: u64,
    pub models: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub slots: Vec<SlotPlan>,
    /// Models this host cannot serve, each with the reason.
    pub unplaced: Vec<String>,
}

/// Plans the slots of one host.
pub fn plan(
    host_id: &str,
    gpus: &[GpuInfo],
    config: &DispatcherConfig,
    registry: &Registry,
    model_filter: Option<&[String]>,
) -> Plan {
    let candidates: Vec<_> = registry
        .models()
        .iter()
        .filter(|m| model_filter.is_none_or(|f| f.contains(&m.id)))
        .collect();
    let mut slots = Vec::new();
    for gpu in gpus {
        let usable = gpu
            .memory_total_mib
            .saturating_sub(config.vram_reserve_mib)
            .saturating_sub(gpu.foreign_used_mib);
        let budget = usable / u64::from(config.workers_per_gpu);
        for slot in 0..config.workers_per_gpu {
            let models: Vec<String> = candidates
                .iter()
                .filter(|m| m.vram_mib <= budget)
                .map(|m| m.id.clone())
                .collect();
            slots.push(SlotPlan {
                worker_id: format!("{host_id}-gpu{}-slot{slot}", gpu.index),
                gpu: gpu.index,
                vram_budget_mib: budget,
                models,
            });
        }
    }
    let largest = slots.iter().map(|s| s.vram_budget_mib).max().unwrap_or(0);
    let unplaced = candidates
        .iter()
        .filter(|m| m.vram_mib > largest)
        .map(|m| {
            format!(
                "no GPU on host {host_id} has enough memory for model {}: needs {} MiB, largest slot has {largest} MiB",
                m.id, m.vram_mib
            )
        })
        .collect();
    Plan { slots, unplaced }
}

impl Plan {
    /// Human-readable plan, printed at start.
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        for slot in &self.slots {
            let models = if slot.models.is_empty() {
                "(no model fits; not started)".to_owned()
            } else {
                slot.models.join(", ")
            };
            lines.push(format!(
                "  {} on GPU {}: budget {} MiB, models: {models}",
                slot.worker_id, slot.gpu, slot.vram_budget_mib
            ));
        }
        for reason in &self.unplaced {
            lines.push(format!("  ! {reason}"));
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuq_common::{Config, ConfigOverrides};

    fn config(workers_per_gpu: u32, reserve: u64) -> Config {
        let text = format!(
            r#"
[dispatcher]
workers_per_gpu = {workers_per_gpu}
vram_reserve_mib = {reserve}
[[models]]
id = "light"
feature = "seg"
runtime = "echo"
vram_mib = 4096
[[models]]
id = "heavy"
feature = "mesh"
runtime = "echo"
vram_mib = 19456
"#
        );
        Config::parse(&text, None, &ConfigOverrides::default()).unwrap()
    }

    fn gpu(index: u32, total: u64, foreign: u64) -> GpuInfo {
        GpuInfo {
            index,
            uuid: None,
            name: format!("gpu{index}"),
            memory_total_mib: total,
            memory_used_mib: foreign,
            foreign_used_mib: foreign,
            utilization_percent: None,
            temperature_c: None,
            source: crate::gpu::GpuSource::Declared,
        }
    }

    #[test]
    fn one_slot_per_gpu_gets_everything_after_the_reserve() {
        let c = config(1, 1024);
        let p = plan("h", &[gpu(0, 24576, 0)], &c.dispatcher, c.registry(), None);
        assert_eq!(p.slots.len(), 1);
        assert_eq!(p.slots[0].vram_budget_mib, 23552);
        assert_eq!(p.slots[0].worker_id, "h-gpu0-slot0");
        assert_eq!(p.slots[0].models, ["light", "heavy"]);
        assert!(p.unplaced.is_empty());
    }

    #[test]
    fn slots_split_the_budget_and_drop_models_that_no_longer_fit() {
        let c = config(2, 576);
        let p = plan(
            "h",
            &[gpu(0, 24576, 0), gpu(1, 24576, 0)],
            &c.dispatcher,
            c.registry(),
            None,
        );
        assert_eq!(p.slots.len(), 4);
        assert!(p.slots.iter().all(|s| s.vram_budget_mib == 12000));
        assert!(p.slots.iter().all(|s| s.models == ["light"]));
        assert_eq!(p.slots[3].worker_id, "h-gpu1-slot1");
        assert_eq!(p.unplaced.len(), 1);
        assert_eq!(
            p.unplaced[0],
            "no GPU on host h has enough memory for model heavy: needs 19456 MiB, largest slot has 12000 MiB"
        );
    }

    #[test]
    fn memory_used_by_other_processes_shrinks_the_budget() {
        let c = config(1, 0);
        let p = plan(
            "h",
            &[gpu(0, 24000, 6000)],
            &c.dispatcher,
            c.registry(),
            None,
        );
        assert_eq!(p.slots[0].vram_budget_mib, 18000);
        assert_eq!(p.slots[0].models, ["light"]);
    }

    #[test]
    fn model_filter_limits_what_the_host_serves() {
        let c = config(1, 0);
        let only = ["heavy".to_string()];
        let p = plan(
            "h",
            &[gpu(0, 24000, 0)],
            &c.dispatcher,
            c.registry(),
            Some(&only),
        );
        assert_eq!(p.slots[0].models, ["heavy"]);
    }

    #[test]
    fn a_gpu_too_small_for_anything_gets_an_empty_slot() {
        let c = config(1, 0);
        let p = plan("h", &[gpu(0, 2048, 0)], &c.dispatcher, c.registry(), None);
        assert!(p.slots[0].models.is_empty());
        assert_eq!(p.unplaced.len(), 2);
        assert!(p.describe().contains("not started"));
    }
}
