//! Two more trace shapes for the mixed benchmark (issue 18), beside the
//! bursts of [`super::generate_trace`]:
//!
//! - **hot spot**: the popular model changes every 20 s (scaled): in each
//!   segment 70 % of the arrivals are one model's, the rest spread over the
//!   others, Poisson arrivals at 80 % of the workers' capacity;
//! - **long tail**: the bursts of the five models plus twelve rarely used
//!   ones (`r01` to `r12`), each with one to three jobs at random times.
//!
//! Seeded like the bursts (ChaCha8), so a seed names one trace. Pure,
//! tested in `tests.rs`.

use super::{SyntheticModel, TraceJob, TraceRng, ARRIVAL_WINDOW_MS, MODELS};

/// Which trace a run replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceShape {
    Bursts,
    HotSpot,
    LongTail,
}

impl TraceShape {
    pub fn parse(text: &str) -> Option<TraceShape> {
        match text {
            "bursts" => Some(TraceShape::Bursts),
            "hot-spot" => Some(TraceShape::HotSpot),
            "long-tail" => Some(TraceShape::LongTail),
            _ => None,
        }
    }

    /// The models of a trace of this shape.
    pub fn models(self) -> Vec<SyntheticModel> {
        match self {
            TraceShape::LongTail => MODELS.iter().chain(&RARE_MODELS).copied().collect(),
            _ => MODELS.to_vec(),
        }
    }

    /// The trace of this shape for `seed`.
    pub fn trace(self, workers: usize, scale: f64, seed: u64) -> Vec<TraceJob> {
        match self {
            TraceShape::Bursts => super::generate_trace(&MODELS, workers, scale, seed),
            TraceShape::HotSpot => hot_spot(&MODELS, workers, scale, seed),
            TraceShape::LongTail => long_tail(workers, scale, seed),
        }
    }
}

/// Length of one hot-spot segment at scale 1, ms.
pub const HOT_SEGMENT_MS: f64 = 20_000.0;
/// Share of a segment's arrivals that are the hot model's.
pub const HOT_SHARE: f64 = 0.7;
/// Offered load of the hot-spot trace, as a fraction of the workers' capacity.
const HOT_LOAD: f64 = 0.8;

/// One segment per model, each hot in turn.
pub fn hot_spot(models: &[SyntheticModel], workers: usize, scale: f64, seed: u64) -> Vec<TraceJob> {
    let mut rng = TraceRng::new(seed);
    let segment = HOT_SEGMENT_MS * scale;
    let mut trace = Vec::new();
    for hot in 0..models.len() {
        let start = hot as f64 * segment;
        // Mean run time of one arrival in this segment.
        let others = (models.len() - 1).max(1) as f64;
        let mean_run: f64 = models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let p = if i == hot {
                    HOT_SHARE
                } else {
                    (1.0 - HOT_SHARE) / others
                };
                p * m.duration_ms as f64
            })
            .sum();
        let gap_mean = mean_run / (HOT_LOAD * workers.max(1) as f64);
        let mut at = start + rng.exponential(gap_mean);
        while at < start + segment {
            let model = if rng.unit() < HOT_SHARE {
                hot
            } else {
                let pick = rng.range(0, models.len() as u64 - 2) as usize;
                if pick >= hot {
                    pick + 1
                } else {
                    pick
                }
            };
            trace.push(TraceJob {
                arrival_ms: at.round() as u64,
                model,
                duration_ms: models[model].duration_ms,
            });
            at += rng.exponential(gap_mean);
        }
    }
    normalize(trace)
}

/// The bursts trace plus one to three jobs of each rare model at random times.
pub fn long_tail(workers: usize, scale: f64, seed: u64) -> Vec<TraceJob> {
    let mut trace = super::generate_trace(&MODELS, workers, scale, seed);
    let mut rng = TraceRng::new(seed ^ 0x7a11);
    let window = ARRIVAL_WINDOW_MS * scale;
    for (i, model) in RARE_MODELS.iter().enumerate() {
        for _ in 0..rng.range(1, 3) {
            trace.push(TraceJob {
                arrival_ms: (rng.unit() * window).round() as u64,
                model: MODELS.len() + i,
                duration_ms: model.duration_ms,
            });
        }
    }
    normalize(trace)
}

fn normalize(mut trace: Vec<TraceJob>) -> Vec<TraceJob> {
    trace.sort_by_key(|job| (job.arrival_ms, job.model));
    let first = trace.first().map_or(0, |job| job.arrival_ms);
    for job in &mut trace {
        job.arrival_ms -= first;
    }
    trace
}

/// Twelve rarely used models: small to mid-sized, loads of 0.5 to 2 s.
pub const RARE_MODELS: [SyntheticModel; 12] = [
    rare("r01", 3000, 500, 100),
    rare("r02", 4000, 800, 150),
    rare("r03", 5000, 1000, 200),
    rare("r04", 6000, 1200, 250),
    rare("r05", 7000, 1500, 300),
    rare("r06", 3000, 600, 120),
    rare("r07", 4000, 900, 180),
    rare("r08", 5000, 1100, 220),
    rare("r09", 6000, 1300, 260),
    rare("r10", 7000, 1700, 320),
    rare("r11", 8000, 2000, 350),
    rare("r12", 4000, 700, 140),
];

const fn rare(id: &'static str, vram_mib: u64, load_ms: u64, duration_ms: u64) -> SyntheticModel {
    SyntheticModel {
        id,
        vram_mib,
        load_ms,
        duration_ms,
    }
}
