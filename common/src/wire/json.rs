//! Values as JSON: for Redis records, JSON bodies and replies, and adapters.
//! Bytes, which JSON lacks, travel as `{"$bytes": "<base64>"}` both ways.

use super::{Value, ValueMap};

/// JSON key that carries bytes, base64-encoded: `{"$bytes": "<base64>"}`.
pub const BYTES_KEY: &str = "$bytes";

/// Renders a value as JSON for Redis, JSON replies and adapters: bytes become
/// `{"$bytes": "<base64>"}`.
pub fn value_to_json(value: &Value) -> serde_json::Value {
    use base64::Engine;
    match value {
        Value::Binary(bytes) => {
            serde_json::json!({ BYTES_KEY: base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
        Value::Array(items) => serde_json::Value::Array(items.iter().map(value_to_json).collect()),
        Value::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().map_or_else(|| k.to_string(), str::to_owned),
                        value_to_json(v),
                    )
                })
                .collect(),
        ),
        other => serde_json::to_value(other).unwrap_or(serde_json::Value::Null),
    }
}

/// Why JSON could not become a value.
#[derive(Debug, thiserror::Error)]
pub enum JsonValueError {
    #[error("'$bytes' must be a base64 string")]
    BytesNotAString,
    #[error("'$bytes' is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Reads JSON into a value, decoding `{"$bytes": "<base64>"}` into bytes.
pub fn value_from_json(json: &serde_json::Value) -> Result<Value, JsonValueError> {
    use base64::Engine;
    Ok(match json {
        serde_json::Value::Object(map) if map.len() == 1 && map.contains_key(BYTES_KEY) => {
            let encoded = map[BYTES_KEY]
                .as_str()
                .ok_or(JsonValueError::BytesNotAString)?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(encoded)?;
            Value::Binary(bytes)
        }
        serde_json::Value::Object(map) => Value::Map(
            map.iter()
                .map(|(k, v)| Ok((Value::from(k.as_str()), value_from_json(v)?)))
                .collect::<Result<_, JsonValueError>>()?,
        ),
        serde_json::Value::Array(items) => Value::Array(
            items
                .iter()
                .map(value_from_json)
                .collect::<Result<_, _>>()?,
        ),
        other => serde_json::from_value(other.clone())?,
    })
}

/// Renders a map of values as a JSON object string (bytes as `$bytes`).
pub fn value_map_to_json_string(map: &ValueMap) -> String {
    let object: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// Replaces `{"$bytes": …}` maps, as JSON publishers send bytes, with bytes.
pub(super) fn decode_bytes_markers(value: &mut Value) -> Result<(), JsonValueError> {
    let is_marker = matches!(value, Value::Map(entries) if entries.len() == 1 && entries[0].0.as_str() == Some(BYTES_KEY));
    if is_marker {
        *value = value_from_json(&serde_json::to_value(&*value)?)?;
        return Ok(());
    }
    match value {
        Value::Map(entries) => entries
            .iter_mut()
            .try_for_each(|(_, v)| decode_bytes_markers(v)),
        Value::Array(items) => items.iter_mut().try_for_each(decode_bytes_markers),
        _ => Ok(()),
    }
}
