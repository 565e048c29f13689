//! Job webhooks: what a job asks for, what a worker publishes, and the rules
//! every process applies to a webhook URL.
//!
//! A job may name a URL (and the statuses it wants to hear about); when the
//! job reaches one, its worker publishes a [`WebhookDelivery`] to
//! `<ns>.webhooks`, and a dispatcher's sender POSTs the payload, signed per
//! the Standard Webhooks spec ([`signing`]), retrying through the tiered
//! queues of [`queues`] until `webhooks.max_age_s`.
//!
//! The URL rules ([`check_url`]) run at submit time and again before every
//! send: https only (http with `webhooks.allow_http`), no user info, a host
//! of `webhooks.allow_hosts`, and a signing secret for it. The address rule
//! ([`address_allowed`]) is the SSRF guard, applied by the sender to every
//! address the host resolves to at send time. This module does no IO.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::WebhooksConfig;
use crate::wire::JobStatus;

mod address;
mod hosts;
pub mod payload;
pub mod queues;
pub mod signing;

pub use address::{address_allowed, is_public_address};
pub use hosts::HostPattern;
pub use signing::{sign, signing_key};

/// Longest webhook URL accepted, characters.
pub const MAX_URL_LEN: usize = 2048;

/// A job's webhook, as the job carries it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WebhookRequest {
    /// Where to POST (https, or http with `webhooks.allow_http`).
    pub url: String,
    /// Job statuses to send (`processing`, `completed`, `failed`,
    /// `cancelled`, `timed_out`); empty means the final statuses only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

impl WebhookRequest {
    /// Whether a job reaching `status` should send this webhook.
    pub fn wants(&self, status: &str) -> bool {
        if self.events.is_empty() {
            return JobStatus::parse(status).is_some_and(JobStatus::is_final);
        }
        self.events.iter().any(|event| event == status)
    }
}

/// One webhook to send: what a worker publishes to `<ns>.webhooks` (JSON).
/// The sender never changes it; attempts and errors travel in headers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WebhookDelivery {
    /// The Standard Webhooks message id (`webhook-id`): `"{job_id}.{event}"`,
    /// so every retry and redelivery of one event carries the same id and a
    /// receiver can drop duplicates.
    pub id: String,
    pub job_id: String,
    /// The job status this delivery announces.
    pub event: String,
    pub url: String,
    /// The JSON body POSTed, as is.
    pub payload: serde_json::Value,
    /// When the event happened (unix ms); retries stop `webhooks.max_age_s`
    /// after it.
    pub created_ms: u64,
}

impl WebhookDelivery {
    /// The message id of one job's event: `"{job_id}.{event}"`.
    pub fn message_id(job_id: &str, event: &str) -> String {
        format!("{job_id}.{event}")
    }

    /// A delivery with its id derived from the job and event.
    pub fn new(
        job_id: &str,
        event: &str,
        url: &str,
        payload: serde_json::Value,
        created_ms: u64,
    ) -> WebhookDelivery {
        WebhookDelivery {
            id: Self::message_id(job_id, event),
            job_id: job_id.to_owned(),
            event: event.to_owned(),
            url: url.to_owned(),
            payload,
            created_ms,
        }
    }
}

/// Why a webhook URL, event, secret or address is refused. None of the
/// messages quotes the URL (its query may hold a token) or a secret.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum WebhookError {
    #[error("webhook url is not a valid url: {0}")]
    InvalidUrl(#[from] url::ParseError),
    #[error("webhook url is longer than {MAX_URL_LEN} characters")]
    UrlTooLong,
    #[error("webhook url scheme '{0}' is not allowed: use https:// (http:// only with webhooks.allow_http = true)")]
    SchemeNotAllowed(String),
    #[error("webhook url must not carry a user name or password")]
    UserInfo,
    #[error("webhook url has no host")]
    NoHost,
    #[error("webhooks are off (webhooks.allow_hosts is empty)")]
    WebhooksOff,
    #[error("webhook host '{0}' is not in webhooks.allow_hosts")]
    HostNotAllowed(String),
    #[error("no signing secret for webhook host '{0}': set webhooks.secret or webhooks.secrets")]
    NoSecret(String),
    #[error("a webhook secret must be 'whsec_' followed by non-empty base64 (the Standard Webhooks form)")]
    BadSecret,
    #[error("invalid webhooks.allow_hosts entry '{entry}': {reason}")]
    BadHostEntry { entry: String, reason: &'static str },
    #[error(
        "unknown webhook event '{0}': use processing, completed, failed, cancelled or timed_out"
    )]
    UnknownEvent(String),
    #[error("webhook host '{host}' has address {ip}, which is not public (loopback, private, link-local, ...); list the host exactly in webhooks.allow_hosts to allow it")]
    AddressRefused { host: String, ip: IpAddr },
}

/// Parses `url` and applies the URL rules: scheme, no user info, an allowed
/// host with a signing secret, and (for an IP literal) the address rule.
pub fn check_url(config: &WebhooksConfig, url: &str) -> Result<url::Url, WebhookError> {
    if url.len() > MAX_URL_LEN {
        return Err(WebhookError::UrlTooLong);
    }
    let parsed = url::Url::parse(url)?;
    match parsed.scheme() {
        "https" => {}
        "http" if config.allow_http => {}
        other => return Err(WebhookError::SchemeNotAllowed(other.to_owned())),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(WebhookError::UserInfo);
    }
    let host = parsed.host_str().filter(|h| !h.is_empty());
    let host = host.ok_or(WebhookError::NoHost)?.to_owned();
    if config.allow_hosts.is_empty() {
        return Err(WebhookError::WebhooksOff);
    }
    let port = parsed.port_or_known_default();
    let allowed = config
        .allow_hosts
        .iter()
        .filter_map(|entry| HostPattern::parse(entry).ok())
        .any(|pattern| pattern.matches(&host, port));
    if !allowed {
        return Err(WebhookError::HostNotAllowed(host));
    }
    if secret_for(config, &parsed).is_none() {
        return Err(WebhookError::NoSecret(host));
    }
    if let Some(ip) = ip_literal(&parsed) {
        if !address_allowed(config, listed_exactly(config, &parsed), ip) {
            return Err(WebhookError::AddressRefused { host, ip });
        }
    }
    Ok(parsed)
}

/// Refuses any event that is not a job status a webhook can announce.
pub fn check_events(events: &[String]) -> Result<(), WebhookError> {
    let known = |event: &str| JobStatus::parse(event).is_some_and(|s| s != JobStatus::Queued);
    match events.iter().find(|event| !known(event)) {
        Some(unknown) => Err(WebhookError::UnknownEvent(unknown.clone())),
        None => Ok(()),
    }
}

/// Whether the URL's host (with or without its port) is an exact entry of
/// `webhooks.allow_hosts`: only then may it reach a non-public address.
pub fn listed_exactly(config: &WebhooksConfig, url: &url::Url) -> bool {
    let (Some(host), port) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    config
        .allow_hosts
        .iter()
        .filter_map(|entry| HostPattern::parse(entry).ok())
        .any(|pattern| pattern.is_exact() && pattern.matches(host, port))
}

/// The signing secret for a URL: the most specific `webhooks.secrets` key
/// that matches its host (`host:port`, then `host`, then a `*.suffix` or
/// `*` key), else `webhooks.secret`; `None` when neither is set.
pub fn secret_for<'a>(config: &'a WebhooksConfig, url: &url::Url) -> Option<&'a str> {
    let host = url.host_str()?;
    let port = url.port_or_known_default();
    let specific = config
        .secrets
        .iter()
        .filter_map(|(key, secret)| Some((HostPattern::parse(key).ok()?, secret)))
        .filter(|(pattern, _)| pattern.matches(host, port))
        .max_by_key(|(pattern, _)| pattern.specificity())
        .map(|(_, secret)| secret.as_str());
    specific.or_else(|| Some(config.secret.as_str()).filter(|s| !s.is_empty()))
}

/// The URL's host when it is an IP address (no DNS to ask).
pub fn ip_literal(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

#[cfg(test)]
mod tests;
