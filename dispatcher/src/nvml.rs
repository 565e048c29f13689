//! Owns nvml-wrapper: opens NVML and reads each GPU's raw answers into a plain
//! struct. No decisions here; `gpu` turns the readings into gpuq types.
//!
//! `Nvml::init` loads `libnvidia-ml.so` at run time and returns an error (it
//! does not panic) where there is no NVIDIA driver, so this builds and runs
//! everywhere.

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

pub struct NvmlReader {
    nvml: Nvml,
}

impl NvmlReader {
    /// Opens NVML; the error says why it is unavailable.
    pub fn open() -> Result<NvmlReader, String> {
        Nvml::init()
            .map(|nvml| NvmlReader { nvml })
            .map_err(|e| format!("NVML unavailable: {e}"))
    }

    /// Reads every GPU NVML sees.
    pub fn read(&self) -> Result<Vec<NvmlDevice>, String> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| format!("NVML device count: {e}"))?;
        (0..count).map(|index| self.read_device(index)).collect()
    }

    fn read_device(&self, index: u32) -> Result<NvmlDevice, String> {
        let device = self
            .nvml
            .device_by_index(index)
            .map_err(|e| format!("NVML device {index}: {e}"))?;
        let memory = device
            .memory_info()
            .map_err(|e| format!("NVML memory of device {index}: {e}"))?;
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
                .map_err(|e| format!("NVML uuid of device {index}: {e}"))?,
            name: device.name().unwrap_or_else(|_| format!("gpu-{index}")),
            memory_total_bytes: memory.total,
            memory_used_bytes: memory.used,
            utilization_percent: device.utilization_rates().ok().map(|u| u.gpu),
            temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
            processes,
        })
    }
}
