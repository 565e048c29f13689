//! The entries of `webhooks.allow_hosts` and the keys of `webhooks.secrets`:
//! `host`, `host:port`, `[ipv6]`, `[ipv6]:port`, `*.suffix` or `*`.
//!
//! Hosts compare case-insensitively, and IP addresses by value (`[::1]`
//! matches `[0:0::1]`). A host without a port matches every port.

use std::net::IpAddr;

use super::WebhookError;

/// One parsed host entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: any host (a public address only, see [`super::address_allowed`]).
    Any,
    /// `*.example.com`: any name under `example.com` (not `example.com`
    /// itself); stored with its leading dot, lowercase.
    Suffix(String),
    /// One host (lowercase; an IPv6 address in brackets), on one port or any.
    Exact { host: String, port: Option<u16> },
}

impl HostPattern {
    /// Parses an entry, refusing what could not match a URL's host.
    pub fn parse(entry: &str) -> Result<HostPattern, WebhookError> {
        let bad = |reason| WebhookError::BadHostEntry {
            entry: entry.to_owned(),
            reason,
        };
        let entry = entry.trim().to_ascii_lowercase();
        if entry == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(suffix) = entry.strip_prefix("*.") {
            if !is_name(suffix) {
                return Err(bad("a wildcard is '*' or '*.' followed by a domain name"));
            }
            return Ok(HostPattern::Suffix(format!(".{suffix}")));
        }
        let (host, port) = split_port(&entry).ok_or_else(|| {
            bad("write host, host:port, [ipv6] or [ipv6]:port, without scheme or path")
        })?;
        let valid = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => is_name(host),
        };
        if !valid {
            return Err(bad("the host is not a domain name or an IP address"));
        }
        Ok(HostPattern::Exact {
            host: host.to_owned(),
            port,
        })
    }

    /// Whether a URL's host (as `url::Url::host_str` gives it) and port match.
    pub fn matches(&self, host: &str, port: Option<u16>) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Suffix(suffix) => {
                let host = host.to_ascii_lowercase();
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
            HostPattern::Exact {
                host: listed,
                port: listed_port,
            } => same_host(listed, host) && listed_port.is_none_or(|p| Some(p) == port),
        }
    }

    /// An exact host (the only kind that opens a non-public address).
    pub fn is_exact(&self) -> bool {
        matches!(self, HostPattern::Exact { .. })
    }

    /// How specific the entry is, to pick the best matching secret.
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            HostPattern::Any => (0, 0),
            HostPattern::Suffix(suffix) => (1, suffix.len()),
            HostPattern::Exact { port: None, .. } => (2, 0),
            HostPattern::Exact { port: Some(_), .. } => (3, 0),
        }
    }
}

/// `host` and an optional port; `None` when a port is not a number or an
/// IPv6 address is not bracketed.
fn split_port(entry: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if entry.starts_with('[') {
        let end = entry.find(']')?;
        let (host, rest) = entry.split_at(end + 1);
        match rest {
            "" => (host, None),
            rest => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => None,
    };
    Some((host, port))
}

/// A domain name or IPv4 address: labels of letters, digits, `-` and `_`,
/// with at most one trailing dot.
fn is_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Equal names (case aside), or equal IP addresses however written.
fn same_host(listed: &str, host: &str) -> bool {
    if listed.eq_ignore_ascii_case(host) {
        return true;
    }
    let ip = |h: &str| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
    };
    matches!((ip(listed), ip(host)), (Some(a), Some(b)) if a == b)
}
