//! Owns nvml-wrapper in the worker: free memory of the worker's GPU, checked
//! before a model loads. Absent NVML (no driver) means no check.

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
