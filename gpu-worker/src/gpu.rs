//! Owns nvml-wrapper in the worker: free memory of the worker's GPU, checked
//! before a model loads, and the worker process's own usage, read while
//! jobs run (`crate::vram`). Absent NVML (no driver) means neither.

use std::sync::Arc;

use nvml_wrapper::Nvml;

use crate::pool::FreeMemoryProbe;

/// A probe of free MiB on the GPU named by `cuda_visible_devices` (a UUID or an
/// index; the first entry), or `None` where NVML or the GPU cannot be found.
pub fn free_memory_probe(cuda_visible_devices: Option<&str>) -> Option<FreeMemoryProbe> {
    let device = cuda_visible_devices?.split(',').next()?.trim().to_owned();
    let nvml = Arc::new(Nvml::init().ok()?);
    let read = move || -> Option<u64> {
        let gpu = match device.parse::<u32>() {
            Ok(index) => nvml.device_by_index(index).ok()?,
            Err(_) => nvml.device_by_uuid(device.as_str()).ok()?,
        };
        gpu.memory_info().ok().map(|m| m.free / (1024 * 1024))
    };
    read()?;
    Some(Arc::new(read))
}

/// Reads how much GPU memory one process uses (`crate::vram`).
pub trait VramSource: Send + Sync {
    /// MiB used by the process now; `None` when it cannot be read.
    fn used_mib(&self) -> Option<u64>;
}

/// NVML's running compute processes on the worker's GPU, for one pid.
pub struct NvmlVram {
    nvml: Nvml,
    device: String,
    pid: u32,
}

impl NvmlVram {
    /// A source for `pid` on the GPU named by `cuda_visible_devices`, or
    /// `None` where NVML or the GPU cannot be found.
    pub fn open(cuda_visible_devices: Option<&str>, pid: u32) -> Option<NvmlVram> {
        let device = cuda_visible_devices?.split(',').next()?.trim().to_owned();
        let source = NvmlVram {
            nvml: Nvml::init().ok()?,
            device,
            pid,
        };
        let found = source.device().is_some();
        found.then_some(source)
    }

    fn device(&self) -> Option<nvml_wrapper::Device<'_>> {
        match self.device.parse::<u32>() {
            Ok(index) => self.nvml.device_by_index(index).ok(),
            Err(_) => self.nvml.device_by_uuid(self.device.as_str()).ok(),
        }
    }
}

impl VramSource for NvmlVram {
    fn used_mib(&self) -> Option<u64> {
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let processes = self.device()?.running_compute_processes().ok()?;
        // A process with no CUDA context is not listed: it uses nothing.
        let used = processes
            .iter()
            .filter(|p| p.pid == self.pid)
            .map(|p| match p.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => bytes / (1024 * 1024),
                UsedGpuMemory::Unavailable => 0,
            })
            .sum();
        Some(used)
    }
}
