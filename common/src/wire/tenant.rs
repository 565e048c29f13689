//! Tenants: who a job belongs to. A tenant is a name, written into Redis keys
//! (`<ns>:jobs:tenant:<tenant>`) and records, so it is checked like an
//! identifier; a job without one belongs to [`DEFAULT_TENANT`].
//!
//! This module only names and checks tenants. Who may set one is the
//! gateway's rule (docs/gateway.md); quotas and fair share are not here.

use super::{ErrorCode, JobError, JobMessage};

/// The tenant of a job that names none.
pub const DEFAULT_TENANT: &str = "default";

/// Longest tenant name, in bytes.
pub const MAX_TENANT_LEN: usize = 64;

/// A tenant is 1 to 64 characters of `A-Z`, `a-z`, `0-9`, `.`, `_`, `-`;
/// anything else is `invalid_parameter`.
pub fn validate_tenant(tenant: &str) -> Result<(), JobError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= MAX_TENANT_LEN
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        return Ok(());
    }
    let shown: String = tenant.chars().take(MAX_TENANT_LEN + 1).collect();
    Err(JobError::new(
        ErrorCode::InvalidParameter,
        format!(
            "tenant {shown:?} is invalid: it must be 1 to {MAX_TENANT_LEN} characters of A-Z, a-z, 0-9, '.', '_' or '-'"
        ),
    ))
}

impl JobMessage {
    /// The job's tenant, [`DEFAULT_TENANT`] when it names none, or
    /// `invalid_parameter` when the name is not a valid tenant.
    pub fn tenant(&self) -> Result<&str, JobError> {
        let tenant = self.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
        validate_tenant(tenant)?;
        Ok(tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_valid_tenants() {
        for tenant in ["default", "alice", "team-a.prod_2", &"x".repeat(64)] {
            assert!(validate_tenant(tenant).is_ok(), "{tenant}");
        }
    }

    #[test]
    fn anything_else_is_an_invalid_parameter_naming_the_rule() {
        for tenant in ["", "a b", "a:b", "ops@corp", "é", &"x".repeat(65)] {
            let error = validate_tenant(tenant).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidParameter, "{tenant}");
            assert!(error.message.contains("tenant"), "{}", error.message);
            assert!(error.message.contains("1 to 64"), "{}", error.message);
        }
    }

    #[test]
    fn a_message_without_a_tenant_belongs_to_the_default_tenant() {
        let json = br#"{"job_id":"j1","feature":"echo"}"#;
        let job = JobMessage::decode(Some("application/json"), json, None).unwrap();
        assert_eq!(job.tenant, None);
        assert_eq!(job.tenant().unwrap(), DEFAULT_TENANT);
        let json = br#"{"job_id":"j1","feature":"echo","tenant":"carol"}"#;
        let job = JobMessage::decode(Some("application/json"), json, None).unwrap();
        assert_eq!(job.tenant().unwrap(), "carol");
        let json = br#"{"job_id":"j1","feature":"echo","tenant":"no way"}"#;
        let job = JobMessage::decode(Some("application/json"), json, None).unwrap();
        assert_eq!(job.tenant().unwrap_err().code, ErrorCode::InvalidParameter);
    }
}
