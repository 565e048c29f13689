//! Owns nvml-wrapper: opens NVML and reads each GPU's raw answers into a plain
//! struct. No decisions here; `gpu` turns the readings into gpuq types.
//!
//! `Nvml::init` loads `libnvidia-ml.so` at run time and returns an error (it
//! does not panic) where there is no NVIDIA driver, so this builds and runs
//! everywhere.

use std::sync::Arc;

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

/// One GPU's NVML answers. Optional values are ones some GPUs do not report.
#[derive(Debug, Clone, PartialEq)]
pub struct NvmlDevice {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub utilization_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    /// Compute processes: (pid, bytes used when reported).
    pub processes: Vec<(u32, Option<u64>)>,
}

/// An NVML call failed: `what` it was asked (`unavailable` when the library
/// or driver is missing). Clone, so a discovery error can be kept and shown.
#[derive(Debug, Clone, thiserror::Error)]
#[error("NVML {what}: {source}")]
pub struct NvmlError {
    pub what: String,
    #[source]
    source: Arc<nvml_wrapper::error::NvmlError>,
}

fn failed(what: impl Into<String>) -> impl FnOnce(nvml_wrapper::error::NvmlError) -> NvmlError {
    let what = what.into();
    move |source| NvmlError {
        what,
        source: Arc::new(source),
    }
}

pub struct NvmlReader {
    nvml: Nvml,
}

impl NvmlReader {
    /// Opens NVML; the error says why it is unavailable.
    pub fn open() -> Result<NvmlReader, NvmlError> {
        Nvml::init()
            .map(|nvml| NvmlReader { nvml })
            .map_err(failed("unavailable"))
    }

    /// Reads every GPU NVML sees.
    pub fn read(&self) -> Result<Vec<NvmlDevice>, NvmlError> {
        let count = self.nvml.device_count().map_err(failed("device count"))?;
        (0..count).map(|index| self.read_device(index)).collect()
    }

    fn read_device(&self, index: u32) -> Result<NvmlDevice, NvmlError> {
        let device = self
            .nvml
            .device_by_index(index)
            .map_err(failed(format!("device {index}")))?;
        let memory = device
            .memory_info()
            .map_err(failed(format!("memory of device {index}")))?;
        let processes = device
            .running_compute_processes()
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let bytes = match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes),
                    UsedGpuMemory::Unavailable => None,
                };
                (p.pid, bytes)
            })
            .collect();
        Ok(NvmlDevice {
            index,
            uuid: device
                .uuid()
                .map_err(failed(format!("uuid of device {index}")))?,
            name: device.name().unwrap_or_else(|_| format!("gpu-{index}")),
            memory_total_bytes: memory.total,
            memory_used_bytes: memory.used,
            utilization_percent: device.utilization_rates().ok().map(|u| u.gpu),
            temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
            processes,
        })
    }
}
