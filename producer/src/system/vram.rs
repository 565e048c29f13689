//! The measured-VRAM part of the system view: per model, the declaration
//! against what workers measured (`gpuq_common::vram`), the figure admission
//! uses, and a flag where the measurement exceeds the declaration by more
//! than 20 %.

use std::collections::BTreeMap;

use comfy_table::Table;
use gpuq_common::config::Config;
use gpuq_common::vram::{admitted_mib, packed_mib, ModelVram};
use serde::Serialize;

/// One model's VRAM, declared and measured.
#[derive(Debug, Clone, Serialize)]
pub struct VramStatus {
    pub model: String,
    pub declared_mib: u64,
    /// What workers and placement admit it with.
    pub admitted_mib: u64,
    /// What it is packed with beside other models: its measured need once
    /// known (may be below the declaration).
    pub packed_mib: u64,
    /// Measured p99 over 120 % of the declaration (with enough samples).
    pub over_declared: bool,
    /// Every worker's measurements, merged; `None` before any.
    pub measured: Option<ModelVram>,
}

/// Every registered model's VRAM view.
pub fn statuses(config: &Config, learned: &BTreeMap<String, ModelVram>) -> Vec<VramStatus> {
    config
        .registry()
        .models()
        .iter()
        .map(|model| {
            let measured = learned.get(&model.id);
            VramStatus {
                model: model.id.clone(),
                declared_mib: model.vram_mib,
                admitted_mib: admitted_mib(model.vram_mib, measured, &config.gpu),
                packed_mib: packed_mib(model.vram_mib, measured, &config.gpu),
                over_declared: measured.is_some_and(|m| {
                    let mut m = m.clone();
                    m.declared_mib = model.vram_mib;
                    m.over_declared(&config.gpu)
                }),
                measured: measured.cloned(),
            }
        })
        .collect()
}

/// The table of `statuses`, with a line per flagged model.
pub fn render(statuses: &[VramStatus], out: &mut String) {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_header(vec![
            "model",
            "declared MiB",
            "admitted MiB",
            "packed MiB",
            "resident MiB",
            "p50",
            "p99",
            "max",
            "samples",
            "oom",
        ]);
    for status in statuses {
        let m = status.measured.as_ref();
        let cell = |value: Option<u64>| value.map_or("-".to_owned(), |v| v.to_string());
        table.add_row(vec![
            status.model.clone(),
            status.declared_mib.to_string(),
            status.admitted_mib.to_string(),
            status.packed_mib.to_string(),
            cell(m.and_then(|m| m.resident_mib)),
            cell(m.map(|m| m.peaks.p50_mib)),
            cell(m.map(|m| m.peaks.p99_mib)),
            cell(m.map(|m| m.peaks.max_mib)),
            cell(m.map(|m| m.peaks.samples)),
            cell(m.map(|m| m.out_of_memory)),
        ]);
    }
    out.push_str(&format!("\nVRAM, declared and measured per job\n{table}\n"));
    let freed: u64 = statuses
        .iter()
        .map(|s| s.declared_mib.saturating_sub(s.packed_mib))
        .sum();
    if freed > 0 {
        out.push_str(&format!(
            "  measured needs below the declarations free {freed} MiB for packing models side by side\n"
        ));
    }
    for status in statuses.iter().filter(|s| s.over_declared) {
        out.push_str(&format!(
            "  ! model '{}' measured p99 {} MiB, over 120 % of its declared {} MiB: admitted with {} MiB\n",
            status.model,
            status.measured.as_ref().map_or(0, |m| m.peaks.p99_mib),
            status.declared_mib,
            status.admitted_mib
        ));
    }
}
