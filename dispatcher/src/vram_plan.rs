//! VRAM planning: which worker slots a host runs, with what budget and models.
//!
//! Pure functions over the discovered GPUs and the registry, so every rule is
//! unit-tested without a GPU. Per GPU, the usable memory is
//! `total - vram_reserve_mib - memory used by processes that are not ours`. It is
//! split into `workers_per_gpu` equal slots, unless `[[dispatcher.slots]]` lists
//! slots for that GPU: then those slots, with their fixed budgets, share it, and
//! slots without a budget split what the fixed ones leave. A slot serves its
//! listed models (default: every model) whose declared VRAM fits its budget.

use gpuq_common::config::{DispatcherConfig, SlotConfig};
use gpuq_common::registry::{ModelConfig, Registry};

use crate::gpu::GpuInfo;

/// One worker process to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    pub worker_id: String,
    pub gpu: u32,
    /// `CUDA_VISIBLE_DEVICES` for the worker.
    pub cuda_visible_devices: String,
    pub vram_budget_mib: u64,
    pub models: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub slots: Vec<SlotPlan>,
    /// Models this host cannot serve, or config it ignored, each with the reason.
    pub unplaced: Vec<String>,
}

/// A plan that would over-commit a GPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dispatcher.slots on GPU {gpu} ask for {asked} MiB but only {usable} MiB is usable (total {total} - reserve {reserve} - used by others {foreign})")]
pub struct OverCommitted {
    pub gpu: u32,
    pub asked: u64,
    pub usable: u64,
    pub total: u64,
    pub reserve: u64,
    pub foreign: u64,
}

/// Plans the slots of one host. `model_filter` (from `--models`) narrows
/// `dispatcher.models`, which narrows the registry.
pub fn plan(
    host_id: &str,
    gpus: &[GpuInfo],
    config: &DispatcherConfig,
    registry: &Registry,
    model_filter: Option<&[String]>,
) -> Result<Plan, OverCommitted> {
    let host_filter = model_filter.or(config.models.as_deref());
    let candidates: Vec<&ModelConfig> = registry
        .models()
        .iter()
        .filter(|m| host_filter.is_none_or(|f| f.contains(&m.id)))
        .collect();
    let mut slots = Vec::new();
    let mut unplaced = Vec::new();
    for gpu in gpus {
        let usable = gpu
            .memory_total_mib
            .saturating_sub(config.vram_reserve_mib)
            .saturating_sub(gpu.foreign_used_mib);
        let declared: Vec<&SlotConfig> =
            config.slots.iter().filter(|s| s.gpu == gpu.index).collect();
        let budgets = slot_budgets(gpu, usable, config, &declared)?;
        for (slot_index, budget) in budgets.into_iter().enumerate() {
            let worker_id = format!("{host_id}-gpu{}-slot{slot_index}", gpu.index);
            let listed = declared.get(slot_index).and_then(|s| s.models.as_ref());
            let mut models = Vec::new();
            for model in &candidates {
                if listed.is_some_and(|l| !l.contains(&model.id)) {
                    continue;
                }
                if model.vram_mib <= budget {
                    models.push(model.id.clone());
                } else if listed.is_some() {
                    unplaced.push(format!(
                        "model {} is listed for slot {worker_id} but needs {} MiB; the slot has {budget} MiB",
                        model.id, model.vram_mib
                    ));
                }
            }
            slots.push(SlotPlan {
                worker_id,
                gpu: gpu.index,
                cuda_visible_devices: gpu.cuda_visible_devices(),
                vram_budget_mib: budget,
                models,
            });
        }
    }
    for slot in config
        .slots
        .iter()
        .filter(|s| !gpus.iter().any(|g| g.index == s.gpu))
    {
        unplaced.push(format!(
            "dispatcher.slots entry for GPU {} ignored: host {host_id} has no such GPU",
            slot.gpu
        ));
    }
    let largest = slots.iter().map(|s| s.vram_budget_mib).max().unwrap_or(0);
    for model in &candidates {
        if slots.iter().any(|s| s.models.contains(&model.id)) {
            continue;
        }
        unplaced.push(if model.vram_mib > largest {
            format!(
                "no GPU on host {host_id} has enough memory for model {}: needs {} MiB, largest slot has {largest} MiB",
                model.id, model.vram_mib
            )
        } else {
            format!("model {} is not listed for any slot on host {host_id}", model.id)
        });
    }
    Ok(Plan { slots, unplaced })
}

fn slot_budgets(
    gpu: &GpuInfo,
    usable: u64,
    config: &DispatcherConfig,
    declared: &[&SlotConfig],
) -> Result<Vec<u64>, OverCommitted> {
    if declared.is_empty() {
        let share = usable / u64::from(config.workers_per_gpu);
        return Ok(vec![share; config.workers_per_gpu as usize]);
    }
    let fixed: u64 = declared.iter().filter_map(|s| s.vram_mib).sum();
    if fixed > usable {
        return Err(OverCommitted {
            gpu: gpu.index,
            asked: fixed,
            usable,
            total: gpu.memory_total_mib,
            reserve: config.vram_reserve_mib,
            foreign: gpu.foreign_used_mib,
        });
    }
    let flexible = declared.iter().filter(|s| s.vram_mib.is_none()).count() as u64;
    let share = (usable - fixed).checked_div(flexible).unwrap_or(0);
    Ok(declared
        .iter()
        .map(|s| s.vram_mib.unwrap_or(share))
        .collect())
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
mod tests;
