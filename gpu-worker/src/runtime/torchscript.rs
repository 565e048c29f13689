//! Owns tch: the `torchscript` runtime loads a `.pt` TorchScript module on the
//! worker's GPU (`cuda:0`: the worker sees exactly one) or on the CPU where CUDA
//! is absent, and runs `forward` with `no_grad` on a blocking thread.
//!
//! Inputs are the wire tensors declared in the model's params, in `forward`
//! order; outputs are named by `params.outputs` (one tensor, or a tuple/list of
//! tensors). CUDA out-of-memory is reported as `out_of_memory` and unloads the model.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use gpuq_common::registry::{ModelConfig, TorchscriptParams};
use gpuq_common::{ErrorCode, JobError, Value, ValueMap};
use tch::jit::IValue;
use tch::{CModule, Device, Kind, Tensor};

use super::tensor::{output_value, parse_inputs, DType, WireTensor};
use super::{run_blocking, LoadError, Progress, RunError, Runtime};

pub struct TorchscriptModel {
    module: Arc<CModule>,
    params: TorchscriptParams,
    device: Device,
}

fn kind(dtype: DType) -> Kind {
    match dtype {
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::F16 => Kind::Half,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    }
}

fn is_out_of_memory(message: &str) -> bool {
    message.contains("out of memory") || message.contains("CUDA_ERROR_OUT_OF_MEMORY")
}

/// `device = "cuda"` where this worker sees no CUDA device.
#[derive(Debug, thiserror::Error)]
#[error("device = \"cuda\" but CUDA is not available to this worker")]
struct CudaUnavailable;

fn choose_device(setting: &str) -> Result<Device, CudaUnavailable> {
    match setting {
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        "cuda" => Err(CudaUnavailable),
        _ => Ok(Device::cuda_if_available()),
    }
}

impl TorchscriptModel {
    pub async fn load(
        model: &ModelConfig,
        params: TorchscriptParams,
    ) -> Result<TorchscriptModel, LoadError> {
        let id = model.id.clone();
        tokio::task::spawn_blocking(move || {
            let device = choose_device(&params.device)
                .map_err(|reason| LoadError::new(&id, reason.to_string()))?;
            let mut module = CModule::load_on_device(&params.path, device).map_err(|e| {
                let message = e.to_string();
                LoadError {
                    code: if is_out_of_memory(&message) {
                        ErrorCode::OutOfMemory
                    } else {
                        ErrorCode::ModelLoadFailed
                    },
                    ..LoadError::new(
                        &id,
                        format!("cannot load TorchScript file {}: {message}", params.path),
                    )
                }
            })?;
            module.set_eval();
            tracing::info!(model = %id, ?device, "TorchScript module loaded");
            Ok(TorchscriptModel {
                module: Arc::new(module),
                params,
                device,
            })
        })
        .await
        .map_err(|e| LoadError::new(&model.id, format!("loading thread failed: {e}")))?
    }
}

fn to_tensor(wire: &WireTensor, device: Device) -> Result<Tensor, JobError> {
    Tensor::f_from_data_size(&wire.bytes, &wire.shape, kind(wire.dtype))
        .and_then(|t| t.f_to(device))
        .map_err(|e| JobError::new(ErrorCode::InvalidInput, format!("cannot build tensor: {e}")))
}

fn output_to_value(tensor: &Tensor) -> Result<Value, tch::TchError> {
    let tensor = tensor.f_to(Device::Cpu)?;
    let shape = tensor.size();
    let flat = tensor.f_flatten(0, -1)?;
    let (dtype, data) = match tensor.kind() {
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 | Kind::Bool => {
            let values: Vec<i64> = Vec::try_from(&flat)?;
            let dtype = if tensor.kind() == Kind::Bool {
                "bool"
            } else {
                "int64"
            };
            (dtype, values.into_iter().map(Value::from).collect())
        }
        Kind::Double => {
            let values: Vec<f64> = Vec::try_from(&flat)?;
            ("float64", values.into_iter().map(Value::from).collect())
        }
        _ => {
            let values: Vec<f32> = Vec::try_from(&flat)?;
            (
                "float32",
                values
                    .into_iter()
                    .map(|v| Value::from(f64::from(v)))
                    .collect(),
            )
        }
    };
    Ok(output_value(dtype, &shape, data))
}

fn forward(
    module: &CModule,
    params: &TorchscriptParams,
    device: Device,
    inputs: &ValueMap,
) -> Result<ValueMap, RunError> {
    let wire = parse_inputs(&params.inputs, inputs).map_err(RunError::Job)?;
    let tensors = wire
        .iter()
        .map(|w| to_tensor(w, device).map(IValue::Tensor))
        .collect::<Result<Vec<_>, _>>()
        .map_err(RunError::Job)?;
    let output = tch::no_grad(|| module.forward_is(&tensors)).map_err(|e| {
        let message = e.to_string();
        if is_out_of_memory(&message) {
            RunError::ModelBroken(JobError::new(
                ErrorCode::OutOfMemory,
                format!("CUDA out of memory: {message}"),
            ))
        } else {
            RunError::Job(JobError::new(
                ErrorCode::ModelFailed,
                format!("forward failed: {message}"),
            ))
        }
    })?;
    let returned: Vec<Tensor> = match output {
        IValue::Tensor(t) => vec![t],
        IValue::Tuple(items) | IValue::GenericList(items) => items
            .into_iter()
            .map(|item| match item {
                IValue::Tensor(t) => Ok(t),
                _ => Err(()),
            })
            .collect::<Result<_, _>>()
            .map_err(|_| model_error("the module returned a tuple or list holding non-tensors"))?,
        IValue::TensorList(items) => items,
        _ => {
            return Err(model_error(
                "the module returned something other than tensors",
            ))
        }
    };
    if returned.len() != params.outputs.len() {
        return Err(model_error(&format!(
            "the module returned {} tensor(s) but params.outputs names {}",
            returned.len(),
            params.outputs.len()
        )));
    }
    let mut outputs = ValueMap::new();
    for (name, tensor) in params.outputs.iter().zip(&returned) {
        let value =
            output_to_value(tensor).map_err(|e| model_error(&format!("output '{name}': {e}")))?;
        outputs.insert(name.clone(), value);
    }
    Ok(outputs)
}

fn model_error(message: &str) -> RunError {
    RunError::Job(JobError::new(ErrorCode::ModelFailed, message))
}

impl Runtime for TorchscriptModel {
    fn run(
        &self,
        inputs: ValueMap,
        timeout: Duration,
        _progress: Progress,
    ) -> BoxFuture<'_, Result<ValueMap, RunError>> {
        let (module, params, device) = (Arc::clone(&self.module), self.params.clone(), self.device);
        run_blocking(timeout, move || forward(&module, &params, device, &inputs)).boxed()
    }

    fn unload(&self) -> BoxFuture<'_, ()> {
        // Dropping the last Arc frees the module; CUDA's cache keeps the memory
        // for this process until it exits, which the pool's accounting assumes.
        async {}.boxed()
    }
}
