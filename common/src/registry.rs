//! The model registry: which models exist, which feature each serves, how much
//! VRAM each needs and which runtime runs it.
//!
//! Producers use it to refuse unknown features before publishing, the dispatcher
//! to plan budgets and workers to pick their queues. Routing rule: a feature's
//! default model is the one marked `default = true`, else its first entry.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One `[[models]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model id: its queue is `<namespace>.model.<id>`.
    pub id: String,
    /// Feature served, e.g. `mesh_segmentation`.
    pub feature: String,
    /// Which runtime runs the model.
    pub runtime: RuntimeKind,
    /// VRAM the model needs once loaded, MiB.
    pub vram_mib: u64,
    /// Default run-time limit of a job, seconds. Default 600.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Floor of a job's run-time limit, seconds: a job asking for a shorter
    /// `timeout_s` runs with this one. A timed-out in-process model restarts its
    /// worker, so without a floor a client could cycle workers at will. Default
    /// [`DEFAULT_MIN_TIMEOUT_S`], or `timeout_s` when that is lower; at most
    /// `timeout_s`. Read it through [`ModelConfig::min_timeout_s`].
    #[serde(default, rename = "min_timeout_s")]
    pub min_timeout_s_setting: Option<u64>,
    /// The feature's default model (at most one per feature).
    #[serde(default)]
    pub default: bool,
    /// The input whose value classes a job's VRAM peak (e.g. `resolution`);
    /// default: the inputs' size in bytes (`crate::vram::size_class`).
    #[serde(default)]
    pub vram_size_input: Option<String>,
    /// Runtime-specific settings.
    #[serde(default)]
    pub params: toml::Table,
}

fn default_timeout_s() -> u64 {
    600
}

/// Default floor of a job's run-time limit, seconds (`min_timeout_s`).
pub const DEFAULT_MIN_TIMEOUT_S: u64 = 10;

/// Runtimes a model can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// Synthetic: returns its inputs as outputs. For tests and benchmarks.
    Echo,
    /// Synthetic: holds its declared VRAM budget for a while, may fail on purpose.
    /// For tests and benchmarks.
    Sleep,
    /// A TorchScript module run in-process through tch (worker feature `torch`).
    Torchscript,
    /// A long-lived child process speaking the adapter protocol (docs/adapters.md).
    Adapter,
}

/// Why a model's `params` were refused.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    /// A param is unknown or its value impossible; the message names the
    /// param and what it must be.
    #[error("{0}")]
    Invalid(String),
    /// The params do not have the runtime's shape (a missing or mistyped key).
    #[error("{}", .0.message())]
    Shape(#[from] toml::de::Error),
}

impl From<&str> for ParamsError {
    fn from(message: &str) -> Self {
        ParamsError::Invalid(message.to_owned())
    }
}

impl From<String> for ParamsError {
    fn from(message: String) -> Self {
        ParamsError::Invalid(message)
    }
}

/// Typed, validated `params` of a model.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeParams {
    Echo,
    Sleep(SleepParams),
    Torchscript(TorchscriptParams),
    Adapter(AdapterParams),
}

/// Params of the synthetic `sleep` runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct SleepParams {
    /// Run time when the job gives no `duration_ms` input. Default 20.
    pub duration_ms: u64,
    /// Probability in [0, 1] that a job fails on purpose. Default 0.
    pub fail_rate: f64,
    /// Synthetic load time, milliseconds. Default 0.
    pub load_ms: u64,
    /// File to which each run appends its input `tag` (a line), so tests and
    /// benchmarks can count how often each job really ran. Default none.
    pub run_log: Option<String>,
    /// Whether the `abort_worker` input may crash the worker process (crash
    /// injection for gpuq's own tests). Without it that input is `invalid_input`,
    /// so no client can kill a worker. Default false; no shipped config sets it.
    pub allow_crash_inputs: bool,
    /// Synthetic GPU memory held while loaded, MiB, reported through the
    /// scripted VRAM source (`gpu.vram_source = "scripted"`). Default 0.
    pub vram_resident_mib: u64,
    /// Synthetic peak while a job runs, MiB (resident included); a job's
    /// `vram_peak_mib` input overrides it. Default: the resident size.
    pub vram_peak_mib: u64,
}

/// Params of the `torchscript` runtime.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchscriptParams {
    /// Path of the `.pt` TorchScript file.
    pub path: String,
    /// The module's `forward` arguments, in order.
    pub inputs: Vec<TensorSpec>,
    /// Names given to the returned tensor (or to each tensor of a returned tuple).
    #[serde(default = "default_outputs")]
    pub outputs: Vec<String>,
    /// `auto` (CUDA when available, else CPU), `cpu` or `cuda`.
    #[serde(default = "default_device")]
    pub device: String,
}

fn default_outputs() -> Vec<String> {
    vec!["output".into()]
}

fn default_device() -> String {
    "auto".into()
}

/// A named tensor argument: its dtype and shape (`-1` for any size).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    /// `float32`, `float64`, `float16`, `int64`, `int32`, `uint8` or `bool`.
    pub dtype: String,
    pub shape: Vec<i64>,
}

/// Tensor dtypes of the wire format.
pub const TENSOR_DTYPES: [&str; 7] = [
    "float32", "float64", "float16", "int64", "int32", "uint8", "bool",
];

/// Params of the `adapter` runtime.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterParams {
    /// Program and arguments of the adapter process.
    pub command: Vec<String>,
    /// Extra environment variables for it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; default the worker's.
    #[serde(default)]
    pub cwd: Option<String>,
    /// How long loading may take, seconds. Default 600.
    #[serde(default = "default_load_timeout_s")]
    pub load_timeout_s: u64,
    /// Model-specific settings passed to the adapter's `load` (checkpoint paths, ...).
    #[serde(default)]
    pub settings: toml::Table,
}

fn default_load_timeout_s() -> u64 {
    600
}

impl ModelConfig {
    /// The floor of a job's run-time limit, seconds: `min_timeout_s`, else the
    /// default (10 s), lowered to `timeout_s` when the model's own limit is lower.
    pub fn min_timeout_s(&self) -> u64 {
        self.min_timeout_s_setting
            .unwrap_or(DEFAULT_MIN_TIMEOUT_S.min(self.timeout_s))
    }

    /// The run-time limit of a job, seconds: its own `timeout_s` (already
    /// range-checked by the caller) or the model's, never below [`Self::min_timeout_s`].
    pub fn effective_timeout_s(&self, requested_s: Option<u64>) -> u64 {
        requested_s
            .unwrap_or(self.timeout_s)
            .max(self.min_timeout_s())
    }

    /// Checks `params` against the runtime; the error names the bad param.
    pub fn runtime_params(&self) -> Result<RuntimeParams, ParamsError> {
        match self.runtime {
            RuntimeKind::Echo => {
                if let Some(name) = self.params.keys().next() {
                    return Err(format!("runtime 'echo' takes no params, got '{name}'").into());
                }
                Ok(RuntimeParams::Echo)
            }
            RuntimeKind::Torchscript => {
                let params: TorchscriptParams = self.typed_params()?;
                if params.inputs.is_empty() {
                    return Err("'inputs' must list at least one tensor".into());
                }
                if params.outputs.is_empty() {
                    return Err("'outputs' must name at least one tensor".into());
                }
                if let Some(spec) = params
                    .inputs
                    .iter()
                    .find(|s| !TENSOR_DTYPES.contains(&s.dtype.as_str()))
                {
                    return Err(format!(
                        "input '{}' has dtype '{}'; known: {}",
                        spec.name,
                        spec.dtype,
                        TENSOR_DTYPES.join(", ")
                    )
                    .into());
                }
                if !["auto", "cpu", "cuda"].contains(&params.device.as_str()) {
                    return Err(
                        format!("'device' is '{}'; use auto, cpu or cuda", params.device).into(),
                    );
                }
                Ok(RuntimeParams::Torchscript(params))
            }
            RuntimeKind::Adapter => {
                let params: AdapterParams = self.typed_params()?;
                if params
                    .command
                    .first()
                    .is_none_or(|program| program.is_empty())
                {
                    return Err("'command' must name the adapter program".into());
                }
                if params.load_timeout_s == 0 {
                    return Err("'load_timeout_s' must be at least 1".into());
                }
                Ok(RuntimeParams::Adapter(params))
            }
            RuntimeKind::Sleep => self.sleep_params().map(RuntimeParams::Sleep),
        }
    }
}

impl ModelConfig {
    /// The synthetic `sleep` runtime's params, checked one by one.
    fn sleep_params(&self) -> Result<SleepParams, ParamsError> {
        let mut params = SleepParams {
            duration_ms: 20,
            fail_rate: 0.0,
            load_ms: 0,
            run_log: None,
            allow_crash_inputs: false,
            vram_resident_mib: 0,
            vram_peak_mib: 0,
        };
        let mib = |value: &toml::Value, name: &str| {
            value
                .as_integer()
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| format!("'{name}' must be a non-negative integer (MiB)"))
        };
        for (name, value) in &self.params {
            match name.as_str() {
                "duration_ms" => {
                    params.duration_ms = value
                        .as_integer()
                        .and_then(|v| u64::try_from(v).ok())
                        .ok_or("'duration_ms' must be a non-negative integer")?;
                }
                "load_ms" => {
                    params.load_ms = value
                        .as_integer()
                        .and_then(|v| u64::try_from(v).ok())
                        .ok_or("'load_ms' must be a non-negative integer")?;
                }
                "run_log" => {
                    params.run_log = Some(value.as_str().ok_or("'run_log' must be a file path")?.to_owned());
                }
                "vram_resident_mib" => params.vram_resident_mib = mib(value, name)?,
                "vram_peak_mib" => params.vram_peak_mib = mib(value, name)?,
                "allow_crash_inputs" => {
                    params.allow_crash_inputs = value
                        .as_bool()
                        .ok_or("'allow_crash_inputs' must be true or false")?;
                }
                "fail_rate" => {
                    let rate = value
                        .as_float()
                        .or_else(|| value.as_integer().map(|v| v as f64))
                        .ok_or("'fail_rate' must be a number")?;
                    if !(0.0..=1.0).contains(&rate) {
                        return Err("'fail_rate' must be between 0 and 1".into());
                    }
                    params.fail_rate = rate;
                }
                other => {
                    return Err(format!(
                        "runtime 'sleep' has no param '{other}' (known: allow_crash_inputs, duration_ms, fail_rate, load_ms, run_log, vram_peak_mib, vram_resident_mib)"
                    ).into())
                }
            }
        }
        Ok(params)
    }

    fn typed_params<T: serde::de::DeserializeOwned>(&self) -> Result<T, ParamsError> {
        Ok(toml::Value::Table(self.params.clone()).try_into()?)
    }
}

/// Lookups over the registered models, built once at config load.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    models: Vec<ModelConfig>,
    default_by_feature: BTreeMap<String, usize>,
}

impl Registry {
    pub fn new(models: &[ModelConfig]) -> Self {
        let mut default_by_feature = BTreeMap::new();
        for (i, model) in models.iter().enumerate() {
            if model.default {
                default_by_feature.insert(model.feature.clone(), i);
            }
        }
        for (i, model) in models.iter().enumerate() {
            default_by_feature.entry(model.feature.clone()).or_insert(i);
        }
        Self {
            models: models.to_vec(),
            default_by_feature,
        }
    }

    pub fn models(&self) -> &[ModelConfig] {
        &self.models
    }

    /// Every model's id, in config order.
    pub fn ids(&self) -> Vec<String> {
        self.models.iter().map(|m| m.id.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    pub fn model(&self, id: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The model that jobs routed by feature name alone go to.
    pub fn default_model(&self, feature: &str) -> Option<&ModelConfig> {
        self.default_by_feature
            .get(feature)
            .map(|&i| &self.models[i])
    }

    pub fn is_default(&self, model: &ModelConfig) -> bool {
        self.default_model(&model.feature)
            .is_some_and(|d| d.id == model.id)
    }

    /// Every feature with at least one model, sorted.
    pub fn features(&self) -> impl Iterator<Item = &str> {
        self.default_by_feature.keys().map(String::as_str)
    }

    /// Models of one feature, in registry order.
    pub fn models_for<'a>(&'a self, feature: &'a str) -> impl Iterator<Item = &'a ModelConfig> {
        self.models.iter().filter(move |m| m.feature == feature)
    }
}
