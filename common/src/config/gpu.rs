//! `[gpu]`: how workers measure what models use on the GPU, and when the
//! measurement replaces the declaration (`crate::vram`).
//!
//! ```toml
//! [gpu]
//! sample_ms = 100          # NVML reading interval while a job runs
//! min_samples = 20         # measured jobs before the measurement is trusted
//! vram_margin_mib = 512    # added to the measured p99
//! vram_source = "nvml"     # or "scripted": synthetic models report (tests)
//! ```

use serde::Deserialize;

use super::{invalid, ConfigError};

/// Where a worker reads its process's GPU memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VramSourceKind {
    /// NVML's running compute processes, for the worker's pid.
    #[default]
    Nvml,
    /// What the synthetic models report (tests and demos without a GPU;
    /// named as such everywhere it shows).
    Scripted,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Interval of the readings while a job runs, milliseconds. Default 100.
    pub sample_ms: u64,
    /// Jobs measured before admission uses the measurement. Default 20.
    pub min_samples: u64,
    /// Added to the measured p99 for admission, MiB. Default 512.
    pub vram_margin_mib: u64,
    pub vram_source: VramSourceKind,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            sample_ms: 100,
            min_samples: 20,
            vram_margin_mib: 512,
            vram_source: VramSourceKind::Nvml,
        }
    }
}

impl GpuConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(10..=60_000).contains(&self.sample_ms) {
            return Err(invalid("gpu.sample_ms", "must be 10 to 60000"));
        }
        if self.min_samples == 0 {
            return Err(invalid("gpu.min_samples", "must be at least 1"));
        }
        Ok(())
    }
}
