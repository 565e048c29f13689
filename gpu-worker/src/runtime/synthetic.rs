//! Synthetic models for tests, demos and benchmarks. They do no GPU work and
//! are named as such everywhere they appear.
//!
//! - `echo` returns its inputs as outputs.
//! - `sleep` stands for a GPU-bound model: it takes `load_ms` to load, holds its
//!   slot (and, by the pool's accounting, its declared VRAM) for `duration_ms`
//!   per job, and can fail on purpose (`fail: true` input, or `fail_rate`), or
//!   crash its whole worker process (`abort_worker: true`), but only where the
//!   operator set `params.allow_crash_inputs`: crash injection is for gpuq's own
//!   tests, and without the switch any client could kill workers at will. With
//!   `run_log`, each run appends `<tag input> <start ms>` to a file, so tests
//!   count real runs. With `vram_resident_mib` / `vram_peak_mib` it reports
//!   synthetic GPU memory through the scripted VRAM source (`crate::vram`).

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use gpuq_common::registry::SleepParams;
use gpuq_common::{ErrorCode, JobError, Value, ValueMap};

use super::{run_blocking, LoadError, Progress, RunError, Runtime};
use crate::vram::scripted;

pub struct EchoModel;

impl Runtime for EchoModel {
    fn run(
        &self,
        inputs: ValueMap,
        _timeout: Duration,
        _progress: Progress,
    ) -> BoxFuture<'_, Result<ValueMap, RunError>> {
        async move { Ok(inputs) }.boxed()
    }

    fn unload(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}

pub struct SleepModel {
    params: SleepParams,
}

/// Longest sleep a job may ask for; longer requests are input errors, not hangs.
const MAX_SLEEP_MS: u64 = 3_600_000;

fn duration_ms(inputs: &ValueMap, default_ms: u64) -> Result<u64, JobError> {
    match inputs.get("duration_ms") {
        None => Ok(default_ms),
        Some(value) => value.as_u64().filter(|ms| *ms <= MAX_SLEEP_MS).ok_or_else(|| {
            JobError::new(
                ErrorCode::InvalidInput,
                format!("input 'duration_ms' must be an integer from 0 to {MAX_SLEEP_MS}, got {value}"),
            )
        }),
    }
}

fn forced_failure(inputs: &ValueMap) -> Result<bool, JobError> {
    match inputs.get("fail") {
        None => Ok(false),
        Some(Value::Boolean(fail)) => Ok(*fail),
        Some(other) => Err(JobError::new(
            ErrorCode::InvalidInput,
            format!("input 'fail' must be a boolean, got {other}"),
        )),
    }
}

/// Appends the run's `tag` input and start time to the run log (one short append: atomic
/// across the processes sharing the file).
fn record_run(path: &str, inputs: &ValueMap) {
    use std::io::Write;
    let tag = inputs.get("tag").and_then(Value::as_str).unwrap_or("-");
    let line = format!("{tag} {}\n", gpuq_common::now_ms());
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(error) = appended {
        tracing::warn!(%error, path, "run log not written");
    }
}

/// Whether the job asks to crash the worker; an error unless the model's
/// `allow_crash_inputs` switch is on.
fn crash_requested(params: &SleepParams, inputs: &ValueMap) -> Result<bool, JobError> {
    let Some(value) = inputs.get("abort_worker") else {
        return Ok(false);
    };
    if !params.allow_crash_inputs {
        return Err(JobError::new(
            ErrorCode::InvalidInput,
            "input 'abort_worker' is refused: crash injection needs the model's params.allow_crash_inputs = true",
        ));
    }
    match value {
        Value::Boolean(abort) => Ok(*abort),
        other => Err(JobError::new(
            ErrorCode::InvalidInput,
            format!("input 'abort_worker' must be a boolean, got {other}"),
        )),
    }
}

/// Input checks of the `sleep` runtime.
pub fn validate_sleep(params: &SleepParams, inputs: &ValueMap) -> Result<(), JobError> {
    duration_ms(inputs, 0)?;
    forced_failure(inputs)?;
    crash_requested(params, inputs)?;
    Ok(())
}

impl SleepModel {
    /// "Loads" by waiting `load_ms`, as a real model's load would, and
    /// holds `vram_resident_mib` of scripted VRAM (`crate::vram::scripted`).
    pub async fn load(model_id: &str, params: SleepParams) -> Result<SleepModel, LoadError> {
        tokio::time::sleep(Duration::from_millis(params.load_ms)).await;
        if !scripted::allocate(params.vram_resident_mib) {
            let mut error = LoadError::new(
                model_id,
                format!(
                    "synthetic: {} MiB of scripted VRAM is more than the worker has left",
                    params.vram_resident_mib
                ),
            );
            error.code = ErrorCode::OutOfMemory;
            return Err(error);
        }
        Ok(SleepModel { params })
    }
}

/// The job's synthetic peak, MiB: its `vram_peak_mib` input, else the param.
fn peak_mib(params: &SleepParams, inputs: &ValueMap) -> u64 {
    inputs
        .get("vram_peak_mib")
        .and_then(Value::as_u64)
        .unwrap_or(params.vram_peak_mib)
        .max(params.vram_resident_mib)
}

impl Runtime for SleepModel {
    fn run(
        &self,
        inputs: ValueMap,
        timeout: Duration,
        progress: Progress,
    ) -> BoxFuture<'_, Result<ValueMap, RunError>> {
        let params = self.params.clone();
        run_blocking(timeout, move || {
            let duration_ms = duration_ms(&inputs, params.duration_ms).map_err(RunError::Job)?;
            // Checked again here: inputs with artifact references skip `validate`.
            let crash = crash_requested(&params, &inputs).map_err(RunError::Job)?;
            if let Some(path) = &params.run_log {
                record_run(path, &inputs);
            }
            if crash {
                // Stands for a model that crashes its process (a segfault in native code).
                tracing::error!("synthetic sleep model aborting the worker process on purpose");
                std::process::abort();
            }
            // The job's scripted working memory, beyond the resident size.
            let extra = peak_mib(&params, &inputs) - params.vram_resident_mib;
            if !scripted::allocate(extra) {
                return Err(RunError::ModelBroken(JobError::new(
                    ErrorCode::OutOfMemory,
                    format!("synthetic: the job's {extra} MiB of scripted VRAM is more than the worker has left"),
                )));
            }
            // Report progress half-way, as a long model would. The run
            // lasts `duration_ms` from here: the second sleep makes up for
            // the first one's overshoot (a sleep wakes 50 to 100 µs late),
            // so a benchmark's overhead is gpuq's, not the emulation's.
            let end = std::time::Instant::now() + Duration::from_millis(duration_ms);
            std::thread::sleep(Duration::from_millis(duration_ms / 2));
            progress(0.5);
            std::thread::sleep(end.saturating_duration_since(std::time::Instant::now()));
            scripted::free(extra);
            let unlucky = params.fail_rate > 0.0 && rand::random::<f64>() < params.fail_rate;
            if forced_failure(&inputs).map_err(RunError::Job)? || unlucky {
                return Err(RunError::Job(JobError::new(
                    ErrorCode::ModelFailed,
                    format!("synthetic sleep model failed on purpose after {duration_ms} ms"),
                )));
            }
            let mut outputs = ValueMap::new();
            outputs.insert("slept_ms".into(), Value::from(duration_ms));
            Ok(outputs)
        })
        .boxed()
    }

    fn unload(&self) -> BoxFuture<'_, ()> {
        scripted::free(self.params.vram_resident_mib);
        async {}.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sleep_model(fail_rate: f64) -> SleepModel {
        SleepModel {
            params: SleepParams {
                duration_ms: 1,
                fail_rate,
                load_ms: 0,
                run_log: None,
                allow_crash_inputs: false,
                vram_resident_mib: 0,
                vram_peak_mib: 0,
            },
        }
    }

    fn no_progress() -> Progress {
        Arc::new(|_| {})
    }

    const LONG: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn echo_returns_its_inputs() {
        let mut inputs = ValueMap::new();
        inputs.insert("text".into(), Value::from("hello"));
        inputs.insert("bytes".into(), Value::Binary(vec![1, 2, 3]));
        assert_eq!(
            EchoModel
                .run(inputs.clone(), LONG, no_progress())
                .await
                .unwrap(),
            inputs
        );
    }

    #[tokio::test]
    async fn sleep_reports_how_long_it_slept_and_its_progress() {
        let mut inputs = ValueMap::new();
        inputs.insert("duration_ms".into(), Value::from(2));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let progress: Progress = Arc::new(move |p| sink.lock().unwrap().push(p));
        let outputs = sleep_model(0.0).run(inputs, LONG, progress).await.unwrap();
        assert_eq!(outputs["slept_ms"], Value::from(2));
        assert_eq!(*seen.lock().unwrap(), [0.5]);
    }

    #[test]
    fn sleep_rejects_wrong_input_types() {
        for (name, value) in [
            ("duration_ms", Value::from("soon")),
            ("duration_ms", Value::from(-5)),
            ("fail", Value::from(1)),
        ] {
            let mut inputs = ValueMap::new();
            inputs.insert(name.into(), value);
            assert_eq!(
                validate_sleep(&sleep_model(0.0).params, &inputs)
                    .unwrap_err()
                    .code,
                ErrorCode::InvalidInput
            );
        }
    }

    #[tokio::test]
    async fn abort_worker_is_an_input_error_without_the_operator_switch() {
        let mut inputs = ValueMap::new();
        inputs.insert("abort_worker".into(), Value::from(true));
        let model = sleep_model(0.0);
        let error = validate_sleep(&model.params, &inputs).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidInput);
        assert!(error.message.contains("allow_crash_inputs"), "{error:?}");
        // The run itself refuses too (inputs with artifact references skip validation).
        let result = model.run(inputs.clone(), LONG, no_progress()).await;
        assert!(
            matches!(&result, Err(RunError::Job(e)) if e.code == ErrorCode::InvalidInput),
            "{result:?}"
        );
        // With the switch, a wrong type is still an input error (and `false` runs normally).
        let mut allowed = sleep_model(0.0);
        allowed.params.allow_crash_inputs = true;
        inputs.insert("abort_worker".into(), Value::from("yes"));
        assert_eq!(
            validate_sleep(&allowed.params, &inputs).unwrap_err().code,
            ErrorCode::InvalidInput
        );
        inputs.insert("abort_worker".into(), Value::from(false));
        assert!(validate_sleep(&allowed.params, &inputs).is_ok());
    }

    #[tokio::test]
    async fn sleep_fails_on_request_and_at_rate_one() {
        let mut inputs = ValueMap::new();
        inputs.insert("fail".into(), Value::from(true));
        let failed = |r: Result<ValueMap, RunError>| matches!(r, Err(RunError::Job(e)) if e.code == ErrorCode::ModelFailed);
        assert!(failed(
            sleep_model(0.0).run(inputs, LONG, no_progress()).await
        ));
        assert!(failed(
            sleep_model(1.0)
                .run(ValueMap::new(), LONG, no_progress())
                .await
        ));
    }

    #[tokio::test]
    async fn a_sleep_past_its_timeout_is_reported_stuck() {
        let mut inputs = ValueMap::new();
        inputs.insert("duration_ms".into(), Value::from(300));
        let result = sleep_model(0.0)
            .run(inputs, Duration::from_millis(20), no_progress())
            .await;
        assert_eq!(result, Err(RunError::TimedOut { stuck: true }));
    }
}
