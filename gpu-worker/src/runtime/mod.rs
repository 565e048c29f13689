//! The seam between the job loop and whatever runs a model.
//!
//! A [`Runtime`] is a loaded model: it runs jobs and is unloaded when evicted.
//! Implementations: the synthetic `echo` and `sleep`, `adapter` (a child process
//! per model) and, with the `torch` feature, `torchscript` (tch, in-process).
//! Input checks need no loaded model ([`validate`]), so bad inputs fail before
//! a job is claimed or a model loaded.

mod adapter;
mod synthetic;
pub mod tensor;
#[cfg(feature = "torch")]
mod torchscript;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use gpuq_common::registry::{ModelConfig, RuntimeParams};
use gpuq_common::{ErrorCode, JobError, ValueMap};

/// Reports a running job's progress, a fraction from 0 to 1.
pub type Progress = Arc<dyn Fn(f64) + Send + Sync>;

/// How a run ended when it produced no outputs.
#[derive(Debug, Clone, PartialEq)]
pub enum RunError {
    /// The job failed; the model stays usable.
    Job(JobError),
    /// The job failed and the model must be unloaded (crashed child, CUDA OOM).
    ModelBroken(JobError),
    /// The job ran past its timeout. `stuck` means a thread that cannot be
    /// interrupted is still running it: the worker process must restart.
    TimedOut { stuck: bool },
    /// The job was cancelled while running.
    Cancelled,
}

/// A loaded model.
pub trait Runtime: Send + Sync {
    /// Runs one job within `timeout`.
    fn run(
        &self,
        inputs: ValueMap,
        timeout: Duration,
        progress: Progress,
    ) -> BoxFuture<'_, Result<ValueMap, RunError>>;
    /// Releases the model (its process, its memory).
    fn unload(&self) -> BoxFuture<'_, ()>;
    /// Stops a job in progress at once (a cancelled job); the model may be
    /// unusable afterwards and is unloaded. Default: unload.
    fn abort(&self) -> BoxFuture<'_, ()> {
        self.unload()
    }
    /// Whether a running job can be stopped without restarting the worker.
    fn can_abort(&self) -> bool {
        false
    }
}

/// Why a model could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model '{model}' cannot be loaded: {reason}")]
pub struct LoadError {
    pub model: String,
    pub reason: String,
    /// `out_of_memory` when the GPU had no room, else `model_load_failed`.
    pub code: ErrorCode,
}

impl LoadError {
    pub fn new(model: &str, reason: impl Into<String>) -> LoadError {
        LoadError {
            model: model.to_owned(),
            reason: reason.into(),
            code: ErrorCode::ModelLoadFailed,
        }
    }

    pub fn to_job_error(&self) -> JobError {
        JobError::new(self.code, self.to_string())
    }
}

/// Checks a job's inputs against the model's runtime, without loading it.
pub fn validate(model: &ModelConfig, inputs: &ValueMap) -> Result<(), JobError> {
    match model.runtime_params() {
        Ok(RuntimeParams::Echo) => Ok(()),
        Ok(RuntimeParams::Sleep(params)) => synthetic::validate_sleep(&params, inputs),
        Ok(RuntimeParams::Torchscript(params)) => tensor::validate_inputs(&params.inputs, inputs),
        Ok(RuntimeParams::Adapter(_)) => Ok(()),
        Err(reason) => Err(JobError::new(
            ErrorCode::ModelLoadFailed,
            reason.to_string(),
        )),
    }
}

/// Like [`validate`], but artifact references (resolved to bytes only after the
/// job is claimed) are accepted wherever the runtime takes bytes; TorchScript
/// tensors must be inline.
pub fn validate_with_references(model: &ModelConfig, inputs: &ValueMap) -> Result<(), JobError> {
    let has_references = inputs
        .values()
        .any(|v| gpuq_common::artifacts::reference_id(v).is_some());
    match model.runtime {
        gpuq_common::registry::RuntimeKind::Torchscript if has_references => Err(JobError::new(
            ErrorCode::InvalidInput,
            "TorchScript inputs must be inline tensors, not artifact references",
        )),
        _ if has_references => Ok(()),
        _ => validate(model, inputs),
    }
}

/// Loads a registered model with its runtime.
pub async fn load(model: &ModelConfig) -> Result<Arc<dyn Runtime>, LoadError> {
    let params = model
        .runtime_params()
        .map_err(|reason| LoadError::new(&model.id, reason.to_string()))?;
    Ok(match params {
        RuntimeParams::Echo => Arc::new(synthetic::EchoModel),
        RuntimeParams::Sleep(params) => {
            Arc::new(synthetic::SleepModel::load(&model.id, params).await?)
        }
        RuntimeParams::Adapter(params) => {
            Arc::new(adapter::AdapterModel::load(model, params).await?)
        }
        #[cfg(feature = "torch")]
        RuntimeParams::Torchscript(params) => {
            Arc::new(torchscript::TorchscriptModel::load(model, params).await?)
        }
        #[cfg(not(feature = "torch"))]
        RuntimeParams::Torchscript(_) => return Err(LoadError::new(
            &model.id,
            "this gpuq-worker was built without the `torch` feature; rebuild with --features torch",
        )),
    })
}

/// Runs blocking model code on a blocking thread, within `timeout`.
pub(crate) async fn run_blocking<F>(timeout: Duration, work: F) -> Result<ValueMap, RunError>
where
    F: FnOnce() -> Result<ValueMap, RunError> + Send + 'static,
{
    let task = tokio::task::spawn_blocking(work);
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join_error)) => Err(RunError::Job(JobError::new(
            ErrorCode::ModelFailed,
            format!("the model crashed: {join_error}"),
        ))),
        Err(_) => Err(RunError::TimedOut { stuck: true }),
    }
}
