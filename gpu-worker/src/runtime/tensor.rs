//! Tensors in the wire format, independent of any ML library.
//!
//! A tensor value is a map `{dtype, shape, data}`: `data` is either raw
//! little-endian bytes (msgpack `bin`) or numbers, flat or nested (JSON).
//! Inputs are parsed into raw little-endian bytes of their dtype, and checked
//! against the model's declared specs before a job is claimed. Outputs are
//! written with flat number arrays, so they read well as JSON in Redis.

use gpuq_common::registry::TensorSpec;
use gpuq_common::{ErrorCode, JobError, Value, ValueMap};

/// Element types of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    I64,
    I32,
    U8,
    Bool,
}

impl DType {
    pub fn parse(name: &str) -> Option<DType> {
        Some(match name {
            "float32" => DType::F32,
            "float64" => DType::F64,
            "float16" => DType::F16,
            "int64" => DType::I64,
            "int32" => DType::I32,
            "uint8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 => 2,
            DType::U8 | DType::Bool => 1,
        }
    }
}

/// A parsed input tensor: raw little-endian bytes of `dtype`.
#[derive(Debug, Clone, PartialEq)]
pub struct WireTensor {
    pub dtype: DType,
    pub shape: Vec<i64>,
    pub bytes: Vec<u8>,
}

fn invalid(message: String) -> JobError {
    JobError::new(ErrorCode::InvalidInput, message)
}

fn field<'a>(map: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v)
}

fn flatten(value: &Value, out: &mut Vec<f64>, name: &str) -> Result<(), JobError> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|item| flatten(item, out, name)),
        Value::Boolean(b) => {
            out.push(f64::from(u8::from(*b)));
            Ok(())
        }
        other => match other
            .as_f64()
            .or_else(|| other.as_i64().map(|i| i as f64))
            .or_else(|| other.as_u64().map(|u| u as f64))
        {
            Some(number) => {
                out.push(number);
                Ok(())
            }
            None => Err(invalid(format!(
                "tensor '{name}': data holds a non-number: {other}"
            ))),
        },
    }
}

fn encode_numbers(dtype: DType, numbers: &[f64], name: &str) -> Result<Vec<u8>, JobError> {
    let mut bytes = Vec::with_capacity(numbers.len() * dtype.size());
    for &n in numbers {
        match dtype {
            DType::F32 => bytes.extend_from_slice(&(n as f32).to_le_bytes()),
            DType::F64 => bytes.extend_from_slice(&n.to_le_bytes()),
            DType::I64 => bytes.extend_from_slice(&(n as i64).to_le_bytes()),
            DType::I32 => bytes.extend_from_slice(&(n as i32).to_le_bytes()),
            DType::U8 => bytes.push(n as u8),
            DType::Bool => bytes.push(u8::from(n != 0.0)),
            DType::F16 => {
                return Err(invalid(format!(
                    "tensor '{name}': float16 data must be raw little-endian bytes"
                )));
            }
        }
    }
    Ok(bytes)
}

impl WireTensor {
    /// Parses a tensor value; errors name the input.
    pub fn parse(name: &str, value: &Value) -> Result<WireTensor, JobError> {
        let Value::Map(map) = value else {
            return Err(invalid(format!(
                "input '{name}' must be a tensor map {{dtype, shape, data}}, got {value}"
            )));
        };
        let dtype_name = field(map, "dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("tensor '{name}': missing string 'dtype'")))?;
        let dtype = DType::parse(dtype_name)
            .ok_or_else(|| invalid(format!("tensor '{name}': unknown dtype '{dtype_name}'")))?;
        let shape: Vec<i64> = match field(map, "shape") {
            Some(Value::Array(dims)) => dims
                .iter()
                .map(|d| d.as_i64().filter(|d| *d >= 0))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    invalid(format!(
                        "tensor '{name}': shape must be non-negative integers"
                    ))
                })?,
            _ => return Err(invalid(format!("tensor '{name}': missing 'shape' array"))),
        };
        let numel: i64 = shape.iter().product();
        let bytes = match field(map, "data") {
            Some(Value::Binary(bytes)) => bytes.clone(),
            Some(data @ Value::Array(_)) => {
                let mut numbers = Vec::new();
                flatten(data, &mut numbers, name)?;
                encode_numbers(dtype, &numbers, name)?
            }
            _ => {
                return Err(invalid(format!(
                    "tensor '{name}': 'data' must be bytes or a number array"
                )))
            }
        };
        let expected = numel as usize * dtype.size();
        if bytes.len() != expected {
            return Err(invalid(format!(
                "tensor '{name}': shape {shape:?} of {} needs {expected} bytes of data, got {}",
                dtype.name(),
                bytes.len()
            )));
        }
        Ok(WireTensor {
            dtype,
            shape,
            bytes,
        })
    }

    /// Checks dtype and shape against a declared spec (`-1` matches any size).
    pub fn check(&self, spec: &TensorSpec) -> Result<(), JobError> {
        if self.dtype.name() != spec.dtype {
            return Err(invalid(format!(
                "tensor '{}' must be {}, got {}",
                spec.name,
                spec.dtype,
                self.dtype.name()
            )));
        }
        let fits = self.shape.len() == spec.shape.len()
            && self
                .shape
                .iter()
                .zip(&spec.shape)
                .all(|(d, s)| *s == -1 || d == s);
        if !fits {
            return Err(invalid(format!(
                "tensor '{}' must have shape {:?} (-1: any), got {:?}",
                spec.name, spec.shape, self.shape
            )));
        }
        Ok(())
    }
}

/// Parses and checks every declared input; unknown extra inputs are refused too.
pub fn parse_inputs(specs: &[TensorSpec], inputs: &ValueMap) -> Result<Vec<WireTensor>, JobError> {
    if let Some(extra) = inputs.keys().find(|k| !specs.iter().any(|s| &s.name == *k)) {
        let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(invalid(format!(
            "unknown input '{extra}'; this model takes: {}",
            known.join(", ")
        )));
    }
    specs
        .iter()
        .map(|spec| {
            let value = inputs
                .get(&spec.name)
                .ok_or_else(|| invalid(format!("missing input tensor '{}'", spec.name)))?;
            let tensor = WireTensor::parse(&spec.name, value)?;
            tensor.check(spec)?;
            Ok(tensor)
        })
        .collect()
}

/// Input checks of the `torchscript` runtime.
pub fn validate_inputs(specs: &[TensorSpec], inputs: &ValueMap) -> Result<(), JobError> {
    parse_inputs(specs, inputs).map(|_| ())
}

/// An output tensor as a wire value with flat numbers.
#[cfg_attr(not(feature = "torch"), allow(dead_code))]
pub fn output_value(dtype: &str, shape: &[i64], data: Vec<Value>) -> Value {
    Value::Map(vec![
        (Value::from("dtype"), Value::from(dtype)),
        (
            Value::from("shape"),
            Value::Array(shape.iter().map(|d| Value::from(*d)).collect()),
        ),
        (Value::from("data"), Value::Array(data)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
        }
    }

    fn tensor(dtype: &str, shape: &[i64], data: Value) -> Value {
        Value::Map(vec![
            (Value::from("dtype"), Value::from(dtype)),
            (
                Value::from("shape"),
                Value::Array(shape.iter().map(|d| Value::from(*d)).collect()),
            ),
            (Value::from("data"), data),
        ])
    }

    #[test]
    fn nested_numbers_and_raw_bytes_give_the_same_tensor() {
        let nested = Value::Array(vec![
            Value::Array(vec![Value::from(1.0), Value::from(2.0)]),
            Value::Array(vec![Value::from(3), Value::from(4.5)]),
        ]);
        let from_numbers = WireTensor::parse("x", &tensor("float32", &[2, 2], nested)).unwrap();
        let raw: Vec<u8> = [1.0f32, 2.0, 3.0, 4.5]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let from_bytes =
            WireTensor::parse("x", &tensor("float32", &[2, 2], Value::Binary(raw))).unwrap();
        assert_eq!(from_numbers, from_bytes);
    }

    #[test]
    fn declared_specs_check_dtype_shape_and_names() {
        let specs = [spec("x", "float32", &[-1, 3])];
        let ok = |shape: &[i64], n: usize| {
            let mut inputs = ValueMap::new();
            inputs.insert(
                "x".into(),
                tensor("float32", shape, Value::Array(vec![Value::from(0.0); n])),
            );
            inputs
        };
        assert!(validate_inputs(&specs, &ok(&[4, 3], 12)).is_ok());
        let message = |inputs: &ValueMap| validate_inputs(&specs, inputs).unwrap_err().message;
        assert!(message(&ok(&[4, 2], 8)).contains("must have shape [-1, 3]"));
        assert!(message(&ok(&[4, 3], 11)).contains("needs 48 bytes"));
        assert!(message(&ValueMap::new()).contains("missing input tensor 'x'"));
        let mut wrong_dtype = ValueMap::new();
        wrong_dtype.insert(
            "x".into(),
            tensor("int64", &[1, 3], Value::Array(vec![Value::from(1); 3])),
        );
        assert!(message(&wrong_dtype).contains("must be float32, got int64"));
        let mut extra = ok(&[1, 3], 3);
        extra.insert("y".into(), Value::from(1));
        assert!(message(&extra).contains("unknown input 'y'"));
        let mut not_a_tensor = ValueMap::new();
        not_a_tensor.insert("x".into(), Value::from("hello"));
        assert!(message(&not_a_tensor).contains("must be a tensor map"));
        let mut bad_data = ValueMap::new();
        bad_data.insert(
            "x".into(),
            tensor("float32", &[1, 3], Value::Array(vec![Value::from("a"); 3])),
        );
        assert!(message(&bad_data).contains("non-number"));
    }

    #[test]
    fn integer_and_bool_tensors_encode_little_endian() {
        let t = WireTensor::parse(
            "i",
            &tensor(
                "int32",
                &[2],
                Value::Array(vec![Value::from(1), Value::from(-2)]),
            ),
        )
        .unwrap();
        assert_eq!(t.bytes, [1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff]);
        let b = WireTensor::parse(
            "b",
            &tensor(
                "bool",
                &[2],
                Value::Array(vec![Value::from(true), Value::from(false)]),
            ),
        )
        .unwrap();
        assert_eq!(b.bytes, [1, 0]);
    }
}
