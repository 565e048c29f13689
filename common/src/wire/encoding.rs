//! How a body is encoded: msgpack or JSON, chosen by the AMQP
//! `content_type` (or, without one, by the body's first byte), and our own
//! messages encoded back the same way.

use serde::Serialize;

use super::{ErrorCode, JobError, CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK};

/// Body encoding, chosen by the AMQP `content_type` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Msgpack,
    Json,
}

impl Encoding {
    /// Maps a `content_type` to an encoding. Without one, the body is sniffed:
    /// a JSON object starts with `{`, a msgpack map never does.
    pub fn detect(content_type: Option<&str>, body: &[u8]) -> Result<Encoding, JobError> {
        let Some(content_type) = content_type.filter(|ct| !ct.is_empty()) else {
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            return Ok(if first == Some(&b'{') {
                Encoding::Json
            } else {
                Encoding::Msgpack
            });
        };
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        let is = |names: &[&str]| names.iter().any(|n| essence.eq_ignore_ascii_case(n));
        const MSGPACK: [&str; 3] = [
            "application/msgpack",
            "application/x-msgpack",
            "application/vnd.msgpack",
        ];
        if is(&MSGPACK) {
            Ok(Encoding::Msgpack)
        } else if is(&["application/json", "text/json"]) {
            Ok(Encoding::Json)
        } else {
            Err(JobError::new(
                ErrorCode::UnsupportedContentType,
                format!(
                    "content_type '{content_type}' is not supported; use '{CONTENT_TYPE_MSGPACK}' or '{CONTENT_TYPE_JSON}'"
                ),
            ))
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Msgpack => CONTENT_TYPE_MSGPACK,
            Encoding::Json => CONTENT_TYPE_JSON,
        }
    }

    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, EncodeError> {
        match self {
            Encoding::Msgpack => Ok(rmp_serde::to_vec_named(value)?),
            Encoding::Json => Ok(serde_json::to_vec(value)?),
        }
    }
}

/// Serialization of our own types failed (a bug or a non-string map key).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("msgpack encoding failed: {0}")]
    Msgpack(#[from] rmp_serde::encode::Error),
    #[error("json encoding failed: {0}")]
    Json(#[from] serde_json::Error),
}
