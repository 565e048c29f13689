//! The GPUs this host may use, as gpuq's own types.
//!
//! Sources: NVML (see `nvml`, which only reads raw answers) and the inventory
//! declared in config (`[[dispatcher.gpus]]`) for hosts without an NVIDIA
//! driver. Everything here is pure: turning NVML's answers into [`GpuInfo`],
//! honouring `CUDA_VISIBLE_DEVICES`, choosing the source. Unit-tested without a GPU.

use gpuq_common::config::DeclaredGpu;
use gpuq_common::record::GpuRecord;

use crate::nvml::NvmlDevice;

const MIB: u64 = 1024 * 1024;

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

/// One GPU as the planner and the host record see it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// NVML index (PCI bus order) or the declared index.
    pub index: u32,
    pub uuid: Option<String>,
    pub name: String,
    pub memory_total_mib: u64,
    pub memory_used_mib: u64,
    /// Memory used by processes that are not this host's gpuq workers, MiB.
    pub foreign_used_mib: u64,
    pub utilization_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    /// Processes using the GPU: (pid, MiB).
    pub processes: Vec<(u32, u64)>,
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
            processes: Vec::new(),
            source: GpuSource::Declared,
        }
    }

    /// Converts an NVML reading; processes whose pid is in `our_pids` are not foreign.
    pub fn from_nvml(device: &NvmlDevice, our_pids: &[u32]) -> GpuInfo {
        let foreign_bytes: u64 = device
            .processes
            .iter()
            .filter(|(pid, _)| !our_pids.contains(pid))
            .map(|(_, bytes)| bytes.unwrap_or(0))
            .sum();
        GpuInfo {
            index: device.index,
            uuid: Some(device.uuid.clone()),
            name: device.name.clone(),
            memory_total_mib: device.memory_total_bytes / MIB,
            memory_used_mib: device.memory_used_bytes / MIB,
            foreign_used_mib: foreign_bytes.div_ceil(MIB),
            utilization_percent: device.utilization_percent,
            temperature_c: device.temperature_c,
            processes: device
                .processes
                .iter()
                .map(|(pid, bytes)| (*pid, bytes.unwrap_or(0).div_ceil(MIB)))
                .collect(),
            source: GpuSource::Nvml,
        }
    }

    /// The `CUDA_VISIBLE_DEVICES` value that shows a worker this GPU only: its
    /// UUID when known (immune to CUDA's device ordering), else its index.
    pub fn cuda_visible_devices(&self) -> String {
        self.uuid.clone().unwrap_or_else(|| self.index.to_string())
    }

    pub fn to_record(&self) -> GpuRecord {
        GpuRecord {
            index: self.index,
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            memory_total_mib: self.memory_total_mib,
            memory_used_mib: self.memory_used_mib,
            foreign_used_mib: self.foreign_used_mib,
            utilization_percent: self.utilization_percent,
            temperature_c: self.temperature_c,
            processes: self.processes.len() as u32,
            source: self.source.as_str().to_owned(),
        }
    }
}

/// Which GPUs `CUDA_VISIBLE_DEVICES` lets this host use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VisibleDevices {
    /// Unset: every GPU.
    All,
    /// Listed GPUs, by index or UUID (prefix), in the listed order.
    Only(Vec<DeviceSelector>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelector {
    Index(u32),
    Uuid(String),
}

impl VisibleDevices {
    /// Parses `CUDA_VISIBLE_DEVICES`. Like CUDA, an invalid entry ends the list
    /// (`-1` or `NoDevFiles` therefore hide every GPU).
    pub fn parse(value: Option<&str>) -> VisibleDevices {
        let Some(value) = value else {
            return VisibleDevices::All;
        };
        let mut selectors = Vec::new();
        for entry in value.split(',').map(str::trim) {
            if let Ok(index) = entry.parse::<u32>() {
                selectors.push(DeviceSelector::Index(index));
            } else if entry.starts_with("GPU-") || entry.starts_with("MIG-") {
                selectors.push(DeviceSelector::Uuid(entry.to_owned()));
            } else {
                break;
            }
        }
        VisibleDevices::Only(selectors)
    }

    pub fn allows(&self, index: u32, uuid: Option<&str>) -> bool {
        match self {
            VisibleDevices::All => true,
            VisibleDevices::Only(selectors) => selectors.iter().any(|s| match s {
                DeviceSelector::Index(i) => *i == index,
                DeviceSelector::Uuid(prefix) => {
                    uuid.is_some_and(|u| u.starts_with(prefix.as_str()))
                }
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("no GPUs: NVML is not available ({nvml_error}) and the config declares none; add [[dispatcher.gpus]] entries with index and memory_mib")]
    NoGpus { nvml_error: String },
    #[error("no usable GPU: NVML found {found} GPU(s) but CUDA_VISIBLE_DEVICES={visible:?} hides them all")]
    AllHidden { found: usize, visible: String },
}

/// Chooses the GPUs to plan for: NVML's when it answered, else the declared
/// inventory. Either way `CUDA_VISIBLE_DEVICES` filters the list.
pub fn choose_gpus(
    nvml: Result<Vec<NvmlDevice>, String>,
    declared: &[DeclaredGpu],
    visible: &VisibleDevices,
    visible_raw: Option<&str>,
) -> Result<(Vec<GpuInfo>, GpuSource, Option<String>), DiscoveryError> {
    match nvml {
        Ok(devices) if !devices.is_empty() => {
            let found = devices.len();
            let gpus: Vec<GpuInfo> = devices
                .iter()
                .filter(|d| visible.allows(d.index, Some(&d.uuid)))
                .map(|d| GpuInfo::from_nvml(d, &[]))
                .collect();
            if gpus.is_empty() {
                return Err(DiscoveryError::AllHidden {
                    found,
                    visible: visible_raw.unwrap_or_default().to_owned(),
                });
            }
            Ok((gpus, GpuSource::Nvml, None))
        }
        other => {
            let nvml_error = match other {
                Ok(_) => "NVML reports no GPU".to_owned(),
                Err(error) => error,
            };
            let gpus: Vec<GpuInfo> = declared
                .iter()
                .filter(|g| visible.allows(g.index, None))
                .map(GpuInfo::from_declared)
                .collect();
            if gpus.is_empty() {
                return Err(DiscoveryError::NoGpus { nvml_error });
            }
            Ok((gpus, GpuSource::Declared, Some(nvml_error)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: u32, processes: Vec<(u32, Option<u64>)>) -> NvmlDevice {
        NvmlDevice {
            index,
            uuid: format!("GPU-{index}aaa-bbbb"),
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_total_bytes: 81_559 * MIB,
            memory_used_bytes: 10_000 * MIB,
            utilization_percent: Some(37),
            temperature_c: Some(41),
            processes,
        }
    }

    #[test]
    fn nvml_reading_becomes_gpu_info_with_foreign_memory_excluding_ours() {
        let d = device(
            1,
            vec![
                (100, Some(4096 * MIB)),
                (200, Some(2048 * MIB)),
                (300, None),
            ],
        );
        let gpu = GpuInfo::from_nvml(&d, &[200]);
        assert_eq!(gpu.index, 1);
        assert_eq!(gpu.memory_total_mib, 81_559);
        assert_eq!(gpu.memory_used_mib, 10_000);
        assert_eq!(gpu.foreign_used_mib, 4096);
        assert_eq!(gpu.utilization_percent, Some(37));
        assert_eq!(gpu.processes, vec![(100, 4096), (200, 2048), (300, 0)]);
        assert_eq!(gpu.cuda_visible_devices(), "GPU-1aaa-bbbb");
        assert_eq!(gpu.to_record().source, "nvml");
    }

    #[test]
    fn cuda_visible_devices_parses_like_cuda() {
        assert_eq!(VisibleDevices::parse(None), VisibleDevices::All);
        assert_eq!(
            VisibleDevices::parse(Some("0, 2,GPU-ab")),
            VisibleDevices::Only(vec![
                DeviceSelector::Index(0),
                DeviceSelector::Index(2),
                DeviceSelector::Uuid("GPU-ab".into())
            ])
        );
        assert_eq!(
            VisibleDevices::parse(Some("1,-1,2")),
            VisibleDevices::Only(vec![DeviceSelector::Index(1)])
        );
        assert_eq!(
            VisibleDevices::parse(Some("")),
            VisibleDevices::Only(vec![])
        );
        let only = VisibleDevices::parse(Some("1,GPU-3"));
        assert!(only.allows(1, None));
        assert!(only.allows(3, Some("GPU-3aaa-bbbb")));
        assert!(!only.allows(0, Some("GPU-0aaa")));
    }

    #[test]
    fn nvml_wins_and_visible_devices_filter_it() {
        let devices = vec![device(0, vec![]), device(1, vec![])];
        let visible = VisibleDevices::parse(Some("1"));
        let (gpus, source, fallback) = choose_gpus(Ok(devices), &[], &visible, Some("1")).unwrap();
        assert_eq!(source, GpuSource::Nvml);
        assert_eq!(gpus.iter().map(|g| g.index).collect::<Vec<_>>(), [1]);
        assert!(fallback.is_none());
    }

    #[test]
    fn without_nvml_the_declared_inventory_is_used_and_the_reason_kept() {
        let declared = vec![DeclaredGpu {
            index: 0,
            memory_mib: 24576,
            name: None,
        }];
        let (gpus, source, fallback) = choose_gpus(
            Err("libnvidia-ml.so not found".into()),
            &declared,
            &VisibleDevices::All,
            None,
        )
        .unwrap();
        assert_eq!(source, GpuSource::Declared);
        assert_eq!(gpus[0].name, "declared-gpu-0");
        assert_eq!(fallback.as_deref(), Some("libnvidia-ml.so not found"));
    }

    #[test]
    fn neither_source_is_a_clear_error() {
        let err =
            choose_gpus(Err("no driver".into()), &[], &VisibleDevices::All, None).unwrap_err();
        assert!(
            err.to_string().contains("no driver")
                && err.to_string().contains("[[dispatcher.gpus]]"),
            "{err}"
        );
        let err = choose_gpus(
            Ok(vec![device(0, vec![])]),
            &[],
            &VisibleDevices::parse(Some("5")),
            Some("5"),
        )
        .unwrap_err();
        assert!(matches!(err, DiscoveryError::AllHidden { found: 1, .. }));
    }
}
