//! Who is calling, and what they may see.
//!
//! The middleware turns a bearer token (header, or `?access_token=` for the
//! dashboard's EventSource) into an [`Identity`] in the request's extensions;
//! handlers then ask the small checks below. Tokens are compared in constant
//! time against every configured token, without early exit. With no tokens
//! configured every caller is an anonymous admin: [`exposure`] lets that happen
//! only on a loopback address or with `gateway.allow_anonymous`.
//!
//! The rules: `admin` sees everything; `submit` sees only the jobs recorded as
//! submitted by its name and the artifacts it owns, and anything else answers
//! exactly as a missing job or artifact would (404), so a `submit` token cannot
//! even learn that another's job exists. Admin-only routes answer 403.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use gpuq_common::config::{AccessToken, GatewayConfig, Role};
use gpuq_common::record::JobRecord;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::{ApiError, AppState};

/// The caller of one request, put in its extensions by [`authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name; `None` when no tokens are configured.
    pub name: Option<String>,
    pub role: Role,
}

impl Identity {
    /// Everyone, when the gateway runs without tokens.
    pub fn anonymous() -> Identity {
        Identity {
            name: None,
            role: Role::Admin,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The name recorded as a job's `submitted_by` and an artifact's owner.
    pub fn submitter(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

/// The configured tokens, compared in constant time.
pub struct Tokens(Vec<AccessToken>);

impl Tokens {
    pub fn new(tokens: &[AccessToken]) -> Tokens {
        Tokens(tokens.to_vec())
    }

    /// No tokens: every request is an anonymous admin.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// The identity `presented` belongs to. Every configured token is
    /// compared, whatever matched before, so the time taken does not say
    /// which token (or how much of one) matched.
    pub fn identify(&self, presented: &str) -> Option<Identity> {
        const NONE: u32 = u32::MAX;
        let mut found = NONE;
        for (index, token) in self.0.iter().enumerate() {
            let equal = token.token.as_bytes().ct_eq(presented.as_bytes());
            let first = found.ct_eq(&NONE);
            found = u32::conditional_select(&found, &(index as u32), equal & first);
        }
        self.0.get(found as usize).map(|token| Identity {
            name: Some(token.name.clone()),
            role: token.role,
        })
    }
}

/// The `access_token` query parameter, percent-decoded. A literal `+` stays a
/// `+` (tokens never contain whitespace, so it cannot mean a space), so
/// tokens with `+`, `/` or `=` work encoded or not.
pub fn token_from_query(query: &str) -> Option<String> {
    let query = query.replace('+', "%2B");
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value.into_owned())
}

/// Middleware: 401 without a valid token (when tokens are configured), else
/// the caller's [`Identity`] in the request's extensions.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let identity = if state.tokens.is_open() {
        Identity::anonymous()
    } else {
        let from_header = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        // Browsers cannot set headers on EventSource: the dashboard passes ?access_token=.
        let presented = from_header.or_else(|| request.uri().query().and_then(token_from_query));
        presented
            .and_then(|token| state.tokens.identify(&token))
            .ok_or_else(ApiError::unauthorized)?
    };
    request.extensions_mut().insert(identity);
    Ok(next.run(request).await)
}

/// 403 `forbidden` unless the caller is an admin.
pub fn require_admin(identity: &Identity) -> Result<(), ApiError> {
    if identity.is_admin() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route needs an admin token",
        ))
    }
}

/// Whether the caller may see this job: admins all, others their own.
pub fn may_see(identity: &Identity, record: &JobRecord) -> bool {
    identity.is_admin()
        || (identity.name.is_some() && record.submitted_by.as_deref() == identity.submitter())
}

/// The tenant a submission belongs to: the token's name, never the body's,
/// for a `submit` token (a body `tenant` from one is refused, 400
/// `invalid_request` naming the field, so a token cannot submit as another
/// tenant); an admin token's (or an anonymous gateway's) body `tenant` when
/// it names one, else its name, else `default`.
pub fn submission_tenant(
    identity: &Identity,
    requested: Option<String>,
) -> Result<String, ApiError> {
    match requested {
        Some(_) if !identity.is_admin() => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "field 'tenant' is not allowed with a submit token: its jobs belong to tenant '{}' (only admin tokens may name a tenant)",
                identity.submitter().unwrap_or_default()
            ),
        )),
        Some(tenant) => Ok(tenant),
        None => Ok(identity
            .submitter()
            .unwrap_or(gpuq_common::wire::DEFAULT_TENANT)
            .to_owned()),
    }
}

/// The `submitted_by` a listing is limited to: none for admins, the
/// token's own name for `submit` tokens.
pub fn listing_scope(identity: &Identity) -> Option<String> {
    if identity.is_admin() {
        None
    } else {
        Some(identity.name.clone().unwrap_or_default())
    }
}

/// The job's record if the caller may see it; 404 `job_not_found` otherwise,
/// exactly as for a job that does not exist.
pub fn visible_job(
    identity: &Identity,
    id: &str,
    record: Option<JobRecord>,
) -> Result<JobRecord, ApiError> {
    match record {
        Some(record) if may_see(identity, &record) => Ok(record),
        _ => Err(ApiError::not_found(id)),
    }
}

/// The answer to a retried submission whose job id exists: the record for
/// its submitter (200, the idempotent retry), 409 `duplicate_job_id` for
/// anyone else, never their record.
pub fn retried_job(
    identity: &Identity,
    id: &str,
    record: JobRecord,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if may_see(identity, &record) {
        return Ok((
            StatusCode::OK,
            Json(serde_json::to_value(record).unwrap_or_default()),
        ));
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "duplicate_job_id",
        format!("job id '{id}' is already taken; choose another Idempotency-Key or job_id"),
    ))
}

/// Whether the caller may download an artifact whose recorded owner is `owner`.
pub fn may_download(identity: &Identity, owner: Option<&str>) -> bool {
    identity.is_admin() || (owner.is_some() && owner == identity.submitter())
}

/// 404 `artifact_not_found` unless the caller may download artifact `id`.
pub async fn check_artifact_access(
    state: &AppState,
    identity: &Identity,
    id: &str,
) -> Result<(), ApiError> {
    if identity.is_admin() {
        return Ok(());
    }
    let owner = state.producer.artifact_owner(id).await?;
    if may_download(identity, owner.as_deref()) {
        Ok(())
    } else {
        Err(ApiError::artifact_not_found(id))
    }
}

/// 422 `invalid_input` unless the caller may read every artifact the inputs
/// reference: a job must not become a way to read another's upload. A
/// `submit` token gets the same answer for a missing artifact and another's.
pub async fn check_input_artifacts(
    state: &AppState,
    identity: &Identity,
    inputs: &gpuq_common::ValueMap,
) -> Result<(), ApiError> {
    if identity.is_admin() {
        return Ok(());
    }
    // The count first: one owner lookup per reference, so a body full of
    // references must be refused before it costs Redis anything.
    let limits = gpuq_common::artifacts::FetchLimits::from_config(state.producer.config());
    let mut ids = gpuq_common::artifacts::check_reference_count(inputs, &limits).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            e.to_string(),
        )
    })?;
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let owner = state.producer.artifact_owner(&id).await?;
        if !may_download(identity, owner.as_deref()) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                format!("no artifact '{id}' (unknown, expired, or not yours)"),
            ));
        }
    }
    Ok(())
}

/// Why the gateway refuses to listen.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to listen on {address} without authentication: it is not a loopback address \
     and gateway.tokens is empty; configure gateway.tokens (or GPUQ_GATEWAY_TOKENS), or set \
     gateway.allow_anonymous = true to let anyone who reaches the port do anything"
)]
pub struct AnonymousExposure {
    pub address: String,
}

/// Whether the gateway may listen on `addresses` (what `listen` resolved to):
/// with tokens always; without, only when every address is loopback, or with
/// `allow_anonymous`, which gives the warning to log and show on `/readyz`.
pub fn exposure(
    config: &GatewayConfig,
    address: &str,
    addresses: &[SocketAddr],
) -> Result<Option<String>, AnonymousExposure> {
    let loopback = !addresses.is_empty() && addresses.iter().all(|a| a.ip().is_loopback());
    if !config.access_tokens().is_empty() || loopback {
        return Ok(None);
    }
    if config.allow_anonymous {
        return Ok(Some(format!(
            "anonymous access: the gateway listens on {address} without tokens \
             (gateway.allow_anonymous = true); anyone who reaches it is admin"
        )));
    }
    Err(AnonymousExposure {
        address: address.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuq_common::{Config, ConfigOverrides};

    fn config(gateway: &str) -> Config {
        Config::parse(gateway, None, &ConfigOverrides::default()).unwrap()
    }

    #[test]
    fn identify_finds_the_token_its_name_and_role() {
        let config = config(
            "[[gateway.tokens]]\ntoken = \"alice-token-0123456789\"\nrole = \"submit\"\nname = \"alice\"\n\
             [[gateway.tokens]]\ntoken = \"ops-token-+/=0123456789\"\nrole = \"admin\"\nname = \"ops\"\n",
        );
        let tokens = Tokens::new(config.gateway.access_tokens());
        let alice = tokens.identify("alice-token-0123456789").unwrap();
        assert_eq!(
            (alice.submitter(), alice.role),
            (Some("alice"), Role::Submit)
        );
        let ops = tokens.identify("ops-token-+/=0123456789").unwrap();
        assert!(ops.is_admin());
        assert_eq!(tokens.identify("alice-token-012345678"), None);
        assert_eq!(tokens.identify(""), None);
    }

    #[test]
    fn a_submission_belongs_to_the_token_and_only_admins_may_name_a_tenant() {
        let alice = Identity {
            name: Some("alice".into()),
            role: Role::Submit,
        };
        assert_eq!(submission_tenant(&alice, None).unwrap(), "alice");
        let refused = submission_tenant(&alice, Some("bob".into())).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(refused.message.contains("'tenant'"), "{}", refused.message);
        let ops = Identity {
            name: Some("ops".into()),
            role: Role::Admin,
        };
        assert_eq!(submission_tenant(&ops, None).unwrap(), "ops");
        assert_eq!(submission_tenant(&ops, Some("bob".into())).unwrap(), "bob");
        let anonymous = Identity::anonymous();
        assert_eq!(submission_tenant(&anonymous, None).unwrap(), "default");
        assert_eq!(
            submission_tenant(&anonymous, Some("bob".into())).unwrap(),
            "bob"
        );
    }

    #[test]
    fn the_query_token_is_percent_decoded_and_a_plus_stays_a_plus() {
        assert_eq!(
            token_from_query("a=1&access_token=ab%2Bc%2Fd%3D%3D").as_deref(),
            Some("ab+c/d==")
        );
        assert_eq!(
            token_from_query("access_token=ab+c/d==").as_deref(),
            Some("ab+c/d==")
        );
        assert_eq!(token_from_query("other=1"), None);
    }

    #[test]
    fn only_loopback_may_listen_without_tokens() {
        let open = config("");
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let local6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert_eq!(
            exposure(&open.gateway, "l", &[local, local6]).unwrap(),
            None
        );
        let error = exposure(&open.gateway, "0.0.0.0:8080", &[any]).unwrap_err();
        assert!(error.to_string().contains("gateway.allow_anonymous"));
        assert!(error.to_string().contains("gateway.tokens"));
        assert!(exposure(&open.gateway, "l", &[local, any]).is_err());
        let anonymous = config("[gateway]\nallow_anonymous = true\n");
        let warning = exposure(&anonymous.gateway, "0.0.0.0:8080", &[any]).unwrap();
        assert!(warning.unwrap().starts_with("anonymous access"));
        let with_tokens = config("[gateway]\ntokens = [\"0123456789abcdef\"]\n");
        assert_eq!(exposure(&with_tokens.gateway, "x", &[any]).unwrap(), None);
    }

    #[test]
    fn submit_tokens_see_only_their_own_jobs_and_artifacts() {
        let alice = Identity {
            name: Some("alice".into()),
            role: Role::Submit,
        };
        assert!(may_download(&alice, Some("alice")));
        assert!(!may_download(&alice, Some("bob")));
        assert!(!may_download(&alice, None));
        assert!(may_download(&Identity::anonymous(), None));
        assert!(require_admin(&alice).is_err());
        assert!(require_admin(&Identity::anonymous()).is_ok());
    }
}
