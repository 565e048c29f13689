//! The GPUs this host may use, as gpuq's own types.
//!
//! Discovery sources: NVML (not wired in yet) and the inventory declared in
//! config (`[[dispatcher.gpus]]`), for hosts without an NVIDIA driver.

use gpuq_common::config::DeclaredGpu;
use gpuq_common::record::GpuRecord;

/// Where a host's GPU list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuSource {
    Nvml,
    Declared,
}

impl GpuSource {
    pub fn as_str(self) -> &'static str {
        match self {
            GpuSource::Nvml => "nvml",
            GpuSource::Declared => "declared",
        }
    }
}

/// One GPU as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: Option<String>,
    pub name: String,
    pub memory_total_mib: u64,
    pub memory_used_mib: u64,
    /// Memory used by processes that are not gpuq workers, MiB.
    pub foreign_used_mib: u64,
    pub utilization_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    pub source: GpuSource,
}

impl GpuInfo {
    pub fn from_declared(gpu: &DeclaredGpu) -> GpuInfo {
        GpuInfo {
            index: gpu.index,
            uuid: None,
            name: gpu
                .name
                .clone()
                .unwrap_or_else(|| format!("declared-gpu-{}", gpu.index)),
            memory_total_mib: gpu.memory_mib,
            memory_used_mib: 0,
            foreign_used_mib: 0,
            utilization_percent: None,
            temperature_c: None,
            source: GpuSource::Declared,
        }
    }

    pub fn to_record(&self) -> GpuRecord {
        GpuRecord {
            index: self.index,
            name: self.name.clone(),
            memory_total_mib: self.memory_total_mib,
            source: self.source.as_str().to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("no GPUs: NVML is not available ({nvml}) and the config declares none; add [[dispatcher.gpus]] entries with index and memory_mib")]
    NoGpus { nvml: String },
}

/// The GPUs to plan for: declared ones (NVML discovery comes later).
pub fn discover(declared: &[DeclaredGpu]) -> Result<(Vec<GpuInfo>, GpuSource), DiscoveryError> {
    if declared.is_empty() {
        return Err(DiscoveryError::NoGpus {
            nvml: "NVML discovery is not built in yet".into(),
        });
    }
    tracing::warn!("using the GPU inventory declared in config; live GPU memory is not read");
    Ok((
        declared.iter().map(GpuInfo::from_declared).collect(),
        GpuSource::Declared,
    ))
}
