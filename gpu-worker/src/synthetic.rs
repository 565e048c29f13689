//! Synthetic models for tests, demos and benchmarks. They do no GPU work and
//! are named as such everywhere they appear.
//!
//! - `echo` returns its inputs as outputs.
//! - `sleep` stands for a GPU-bound model: it holds its slot (and, by the
//!   planner's accounting, its declared VRAM) for `duration_ms`, and can fail on
//!   purpose (`fail: true` input, or the model's `fail_rate`).

use std::time::Duration;

use gpuq_common::registry::SleepParams;
use gpuq_common::{ErrorCode, JobError, Value, ValueMap};

pub struct EchoModel;

impl crate::models::Model for EchoModel {
    fn validate(&self, _inputs: &ValueMap) -> Result<(), JobError> {
        Ok(())
    }

    fn run(&self, inputs: &ValueMap) -> Result<ValueMap, JobError> {
        Ok(inputs.clone())
    }
}

pub struct SleepModel {
    params: SleepParams,
}

/// Longest sleep a job may ask for; longer requests are input errors, not hangs.
const MAX_SLEEP_MS: u64 = 3_600_000;

impl SleepModel {
    pub fn new(params: SleepParams) -> Self {
        Self { params }
    }

    fn duration_ms(&self, inputs: &ValueMap) -> Result<u64, JobError> {
        match inputs.get("duration_ms") {
            None => Ok(self.params.duration_ms),
            Some(value) => value
                .as_u64()
                .filter(|ms| *ms <= MAX_SLEEP_MS)
                .ok_or_else(|| {
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
}

impl crate::models::Model for SleepModel {
    fn validate(&self, inputs: &ValueMap) -> Result<(), JobError> {
        self.duration_ms(inputs)?;
        Self::forced_failure(inputs)?;
        Ok(())
    }

    fn run(&self, inputs: &ValueMap) -> Result<ValueMap, JobError> {
        let duration_ms = self.duration_ms(inputs)?;
        std::thread::sleep(Duration::from_millis(duration_ms));
        let unlucky = self.params.fail_rate > 0.0 && rand::random::<f64>() < self.params.fail_rate;
        if Self::forced_failure(inputs)? || unlucky {
            return Err(JobError::new(
                ErrorCode::ModelFailed,
                format!("synthetic sleep model failed on purpose after {duration_ms} ms"),
            ));
        }
        let mut outputs = ValueMap::new();
        outputs.insert("slept_ms".into(), Value::from(duration_ms));
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Model;

    fn sleep_model(fail_rate: f64) -> SleepModel {
        SleepModel::new(SleepParams {
            duration_ms: 1,
            fail_rate,
        })
    }

    #[test]
    fn echo_returns_its_inputs() {
        let mut inputs = ValueMap::new();
        inputs.insert("text".into(), Value::from("hello"));
        inputs.insert("bytes".into(), Value::Binary(vec![1, 2, 3]));
        assert_eq!(EchoModel.run(&inputs).unwrap(), inputs);
    }

    #[test]
    fn sleep_reports_how_long_it_slept() {
        let mut inputs = ValueMap::new();
        inputs.insert("duration_ms".into(), Value::from(2));
        let outputs = sleep_model(0.0).run(&inputs).unwrap();
        assert_eq!(outputs["slept_ms"], Value::from(2));
    }

    #[test]
    fn sleep_rejects_wrong_input_types() {
        let model = sleep_model(0.0);
        for (name, value) in [
            ("duration_ms", Value::from("soon")),
            ("duration_ms", Value::from(-5)),
            ("fail", Value::from(1)),
        ] {
            let mut inputs = ValueMap::new();
            inputs.insert(name.into(), value);
            assert_eq!(
                model.validate(&inputs).unwrap_err().code,
                ErrorCode::InvalidInput
            );
        }
    }

    #[test]
    fn sleep_fails_on_request_and_at_rate_one() {
        let mut inputs = ValueMap::new();
        inputs.insert("fail".into(), Value::from(true));
        assert_eq!(
            sleep_model(0.0).run(&inputs).unwrap_err().code,
            ErrorCode::ModelFailed
        );
        assert_eq!(
            sleep_model(1.0).run(&ValueMap::new()).unwrap_err().code,
            ErrorCode::ModelFailed
        );
    }
}
