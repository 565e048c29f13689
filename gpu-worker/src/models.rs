//! The seam between the job loop and whatever runs a model.
//!
//! A [`Model`] is loaded once and then runs jobs on a blocking thread; it never
//! sees AMQP or Redis. Real runtimes (TorchScript, adapter processes) plug in
//! here; today the registry's runtimes are the synthetic `echo` and `sleep`.

use gpuq_common::registry::{ModelConfig, RuntimeParams};
use gpuq_common::{JobError, ValueMap};

use crate::synthetic::{EchoModel, SleepModel};

/// A loaded model. `run` is called from a blocking thread and may block.
pub trait Model: Send + Sync {
    /// Checks inputs before the job is claimed, so bad inputs fail at once.
    fn validate(&self, inputs: &ValueMap) -> Result<(), JobError>;
    /// Runs one job.
    fn run(&self, inputs: &ValueMap) -> Result<ValueMap, JobError>;
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("model '{model}' cannot be loaded: {reason}")]
pub struct LoadError {
    pub model: String,
    pub reason: String,
}

/// Loads a registered model with its runtime.
pub fn load(config: &ModelConfig) -> Result<Box<dyn Model>, LoadError> {
    let params = config.runtime_params().map_err(|reason| LoadError {
        model: config.id.clone(),
        reason,
    })?;
    Ok(match params {
        RuntimeParams::Echo => Box::new(EchoModel),
        RuntimeParams::Sleep(params) => Box::new(SleepModel::new(params)),
    })
}
