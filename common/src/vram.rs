//! Measured VRAM: what each model really uses, learned from the workers'
//! NVML readings, and the figure admission uses instead of the declaration.
//!
//! Why: a model's declared `vram_mib` is a guess. 3D models peak far above
//! their nominal size on some inputs, others use half of it; a system that
//! trusts the guess either runs into `out_of_memory` or wastes GPUs. So each
//! worker records, per model, the resident size after a load and the peak of
//! every job (overall and per input size class) in a decaying histogram, and
//! every process admits a model by [`admitted_mib`]: `max(declared, measured
//! p99 + gpu.vram_margin_mib)` once `gpu.min_samples` jobs were measured.
//!
//! Storage: Redis hash `<ns>:model_vram`, one field per model and worker
//! (`<model>/<worker>`), each a human-readable JSON [`ModelVram`] (p50, p99,
//! max, samples, per size class) written only by that worker: one author per
//! field, no read-modify-write race between workers. The placing
//! dispatcher merges them every few seconds into `<ns>:model_vram_merged`
//! (one field per model) for everyone else to read ([`stored`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::GpuConfig;
use crate::{Value, ValueMap};

/// Bucket bounds grow by this ratio: 5 % resolution on any size.
const RATIO: f64 = 1.05;
/// Each new sample multiplies the older weights by this: the last few
/// hundred jobs dominate, so a new model version or input mix shows.
const DECAY: f64 = 0.99;
/// Weights below this are dropped (bounds a histogram's size).
const MIN_WEIGHT: f64 = 1e-4;
/// Size classes kept per model and worker; later ones share `other`.
pub const MAX_CLASSES: usize = 16;
/// A measured p99 this far above the declaration is flagged.
pub const OVER_DECLARED_RATIO: f64 = 1.2;
/// The share of a model's jobs its *typical* size classes hold: admission
/// and packing use their p99; the rarer, bigger classes beyond are sent per
/// class to a worker that fits (a worker gives such a job back).
pub const TYPICAL_SHARE: f64 = 0.9;

/// A decaying histogram of peaks, MiB, with its summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeakHistogram {
    pub p50_mib: u64,
    pub p99_mib: u64,
    /// Largest peak ever observed (not decayed).
    pub max_mib: u64,
    /// Peaks observed (not decayed).
    pub samples: u64,
    /// Bucket upper bound (MiB) → decayed weight.
    pub buckets: BTreeMap<u64, f64>,
}

/// The upper bound of the bucket holding `mib`.
fn bucket_of(mib: u64) -> u64 {
    if mib <= 1 {
        return 1;
    }
    let k = ((mib as f64).ln() / RATIO.ln()).ceil();
    (RATIO.powf(k).ceil() as u64).max(mib)
}

impl PeakHistogram {
    /// Adds one peak; older peaks weigh a little less.
    pub fn observe(&mut self, mib: u64) {
        for weight in self.buckets.values_mut() {
            *weight *= DECAY;
        }
        self.buckets.retain(|_, w| *w >= MIN_WEIGHT);
        *self.buckets.entry(bucket_of(mib)).or_default() += 1.0;
        self.samples += 1;
        self.max_mib = self.max_mib.max(mib);
        self.refresh();
    }

    /// Adds another histogram's weights (another worker's view).
    pub fn merge(&mut self, other: &PeakHistogram) {
        for (bucket, weight) in &other.buckets {
            *self.buckets.entry(*bucket).or_default() += weight;
        }
        self.samples += other.samples;
        self.max_mib = self.max_mib.max(other.max_mib);
        self.refresh();
    }

    /// The smallest bucket bound under which `q` of the weight lies.
    fn quantile(&self, q: f64) -> u64 {
        let total: f64 = self.buckets.values().sum();
        let mut seen = 0.0;
        for (bucket, weight) in &self.buckets {
            seen += weight;
            if seen >= q * total - 1e-9 {
                return (*bucket).min(self.max_mib.max(1));
            }
        }
        self.max_mib
    }

    fn refresh(&mut self) {
        self.p50_mib = self.quantile(0.5);
        self.p99_mib = self.quantile(0.99);
    }
}

/// One worker's measurements of one model (or, merged, every worker's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelVram {
    pub model: String,
    /// The worker that wrote it; `*` once merged.
    pub worker: String,
    /// The registry's `vram_mib` when this was written.
    pub declared_mib: u64,
    /// The model's own memory right after its last load (the process's
    /// usage minus what the worker used before the load).
    pub resident_mib: Option<u64>,
    /// The highest the same usage went while it loaded (a model may load
    /// in a wider type, or keep a copy, before it settles); admission covers
    /// it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_peak_mib: Option<u64>,
    /// Every job's peak: the process's highest reading while it ran, minus
    /// the other loaded models' resident sizes.
    pub peaks: PeakHistogram,
    /// The same, by input size class ([`size_class`]).
    pub classes: BTreeMap<String, PeakHistogram>,
    /// Jobs that ended `out_of_memory` anyway.
    pub out_of_memory: u64,
    pub updated_ms: u64,
}

impl ModelVram {
    pub fn new(model: &str, worker: &str, declared_mib: u64) -> ModelVram {
        ModelVram {
            model: model.to_owned(),
            worker: worker.to_owned(),
            declared_mib,
            ..ModelVram::default()
        }
    }

    /// Records one job's peak in its size class.
    pub fn observe(&mut self, class: &str, peak_mib: u64, now_ms: u64) {
        self.peaks.observe(peak_mib);
        let class = if self.classes.contains_key(class) || self.classes.len() < MAX_CLASSES {
            class
        } else {
            "other"
        };
        self.classes
            .entry(class.to_owned())
            .or_default()
            .observe(peak_mib);
        self.updated_ms = now_ms;
    }

    /// Records an `out_of_memory` in `class`: it needed more than `at_least_mib`.
    pub fn observe_out_of_memory(&mut self, class: &str, at_least_mib: u64, now_ms: u64) {
        self.out_of_memory += 1;
        self.observe(class, at_least_mib, now_ms);
    }

    /// The peaks of the model's typical size classes: the classes by need
    /// (their p99) from the smallest, merged until they hold
    /// [`TYPICAL_SHARE`] of the jobs; all peaks when no class is known.
    /// A rare input size that needs far more (TRELLIS-class models on a
    /// huge input) then does not make the model's every job count as big:
    /// its class is routed to a bigger worker instead.
    pub fn typical_peaks(&self) -> PeakHistogram {
        let total: u64 = self.classes.values().map(|h| h.samples).sum();
        if total == 0 {
            return self.peaks.clone();
        }
        let mut classes: Vec<&PeakHistogram> = self.classes.values().collect();
        classes.sort_by_key(|h| (h.p99_mib, h.max_mib));
        let mut typical = PeakHistogram::default();
        for class in classes {
            typical.merge(class);
            if typical.samples as f64 >= TYPICAL_SHARE * total as f64 {
                break;
            }
        }
        typical
    }

    /// The Redis hash field this worker writes.
    pub fn field(&self) -> String {
        format!("{}/{}", self.model, self.worker)
    }

    /// Whether the measured p99 exceeds the declaration by more than 20 %.
    pub fn over_declared(&self, gpu: &GpuConfig) -> bool {
        self.peaks.samples >= gpu.min_samples
            && self.peaks.p99_mib as f64 > self.declared_mib as f64 * OVER_DECLARED_RATIO
    }
}

/// Each model's measurements merged over workers, from the hash's values
/// (each a worker's JSON; the model and worker are inside); unreadable
/// values are skipped.
pub fn merge<'a>(values: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, ModelVram> {
    let mut merged: BTreeMap<String, ModelVram> = BTreeMap::new();
    for json in values {
        let Ok(one) = serde_json::from_str::<ModelVram>(json) else {
            continue;
        };
        let all = merged
            .entry(one.model.clone())
            .or_insert_with(|| ModelVram::new(&one.model, "*", one.declared_mib));
        all.peaks.merge(&one.peaks);
        for (class, histogram) in &one.classes {
            all.classes
                .entry(class.clone())
                .or_default()
                .merge(histogram);
        }
        all.out_of_memory += one.out_of_memory;
        if one.updated_ms >= all.updated_ms {
            all.updated_ms = one.updated_ms;
            all.declared_mib = one.declared_mib;
            all.resident_mib = one.resident_mib.or(all.resident_mib);
        }
        if one.load_peak_mib > all.load_peak_mib {
            all.load_peak_mib = one.load_peak_mib;
        }
    }
    merged
}

/// The VRAM a model is admitted with: its declaration until `min_samples`
/// jobs were measured, then `max(declared, measured p99 + margin)`, the p99
/// of its typical size classes ([`ModelVram::typical_peaks`]), or its load
/// peak where that is higher.
pub fn admitted_mib(declared_mib: u64, learned: Option<&ModelVram>, gpu: &GpuConfig) -> u64 {
    match learned {
        Some(vram) if vram.peaks.samples >= gpu.min_samples => {
            declared_mib.max(measured_need(vram) + gpu.vram_margin_mib)
        }
        _ => declared_mib,
    }
}

/// The typical p99, or the load peak where that is higher.
fn measured_need(vram: &ModelVram) -> u64 {
    vram.typical_peaks()
        .p99_mib
        .max(vram.load_peak_mib.unwrap_or(0))
}

/// The VRAM a model is packed with beside others (a worker's residency
/// pool, placement's "fits beside"): once measured, `p99 + margin`, which
/// may be below the declaration (two models whose measured peaks fit
/// together share a worker even if their declarations do not); before,
/// the declaration. Never above [`admitted_mib`].
pub fn packed_mib(declared_mib: u64, learned: Option<&ModelVram>, gpu: &GpuConfig) -> u64 {
    match learned {
        Some(vram) if vram.peaks.samples >= gpu.min_samples => {
            measured_need(vram) + gpu.vram_margin_mib
        }
        _ => declared_mib,
    }
}

/// What a job of `class` needs, once the class was measured: `p99 +
/// margin` after `gpu.min_samples` peaks, before that its largest peak plus
/// the margin (one `out_of_memory` is evidence enough to send the next job
/// of its class elsewhere). `None` for a class never seen.
pub fn class_need_mib(learned: &ModelVram, class: &str, gpu: &GpuConfig) -> Option<u64> {
    let peaks = learned.classes.get(class).filter(|h| h.samples > 0)?;
    let figure = if peaks.samples >= gpu.min_samples {
        peaks.p99_mib
    } else {
        peaks.max_mib
    };
    Some(figure + gpu.vram_margin_mib)
}

/// The VRAM tier a job needing `need_mib` is given back to: the need
/// rounded up to the histogram's 5 % steps, so a model's tiers stay few
/// (one per bucket its classes reach) however its figures drift.
pub fn tier_mib(need_mib: u64) -> u64 {
    bucket_of(need_mib)
}

/// The registry's models with `vram_mib` replaced by [`admitted_mib`].
pub fn admitted_models(
    models: &[crate::registry::ModelConfig],
    learned: &BTreeMap<String, ModelVram>,
    gpu: &GpuConfig,
) -> Vec<crate::registry::ModelConfig> {
    models
        .iter()
        .map(|model| {
            let mut model = model.clone();
            model.vram_mib = admitted_mib(model.vram_mib, learned.get(&model.id), gpu);
            model
        })
        .collect()
}

/// A job's input size class: `<input>=<value>` for the model's
/// `vram_size_input` (e.g. `resolution=1024`), else the inputs' bytes
/// rounded up to a power of two (`bytes<=64KiB`; an artifact reference
/// counts as its `size_bytes`).
pub fn size_class(inputs: &ValueMap, size_input: Option<&str>) -> String {
    if let Some(key) = size_input {
        if let Some(value) = inputs.get(key) {
            let text = match value {
                Value::String(s) => s.as_str().unwrap_or("?").chars().take(32).collect(),
                other => other.to_string().chars().take(32).collect::<String>(),
            };
            return format!("{key}={text}");
        }
    }
    let bytes: usize = inputs.values().map(value_bytes).sum();
    let rounded = bytes.max(1024).next_power_of_two();
    if rounded >= 1 << 20 {
        format!("bytes<={}MiB", rounded >> 20)
    } else {
        format!("bytes<={}KiB", rounded >> 10)
    }
}

/// A value's bytes; an artifact reference counts as the size it names
/// (`size_bytes`), so a job's class is the same before its references are
/// resolved (when a worker decides to give it back) and after (when its
/// peak is recorded).
fn value_bytes(value: &Value) -> usize {
    if let Value::Map(entries) = value {
        let field = |name: &str| entries.iter().find(|(k, _)| k.as_str() == Some(name));
        // `$artifact` is `artifacts::ARTIFACT_KEY` (a feature this module lacks).
        if field("$artifact").is_some() {
            if let Some(size) = field("size_bytes").and_then(|(_, v)| v.as_u64()) {
                return usize::try_from(size).unwrap_or(usize::MAX);
            }
        }
    }
    match value {
        Value::Binary(bytes) => bytes.len(),
        Value::String(s) => s.as_bytes().len(),
        Value::Array(items) => items.iter().map(value_bytes).sum(),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| value_bytes(k) + value_bytes(v))
            .sum(),
        _ => 8,
    }
}

#[cfg(feature = "redis")]
pub mod stored;
#[cfg(feature = "redis")]
pub use stored::{learned, learned_for, own};

#[cfg(test)]
mod tests;
