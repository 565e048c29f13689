//! Which Redis a process talks to, and how durable a job's outcome must be
//! before a worker acks it: `redis_url` and the `[redis]` section, checked
//! at load and resolved into a [`RedisTarget`].
//!
//! Two ways to name a Sentinel-managed primary, one of them at a time:
//! `redis_url = "redis+sentinel://h1:26379,h2:26379/mymaster/0"` (or
//! `rediss+sentinel://` for TLS), or `[redis] sentinels = ["h1:26379", ...]`
//! with `master_name`, `db`, `username`, `password` and `tls`. A plain
//! `redis://` or `rediss://` URL is one server, as before. Connecting is
//! `redis_link`'s (feature `redis`); this module only parses.

use std::fmt;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// Port of a sentinel given without one.
const SENTINEL_PORT: u16 = 26379;

/// `[redis]`: the Sentinel form of the target, and write durability.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Sentinel addresses, `host:port` (port default 26379). Non-empty means
    /// the primary is found through these sentinels; `redis_url` must then
    /// be left unset. Default none.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under (`sentinel monitor
    /// <name> ...`). Required with `sentinels`.
    pub master_name: Option<String>,
    /// Database number on the primary. With `sentinels` only. Default 0.
    pub db: Option<i64>,
    /// ACL user on the primary. With `sentinels` only. Default none.
    pub username: Option<String>,
    /// Password on the primary. With `sentinels` only. Default none.
    pub password: Option<String>,
    /// Password of the sentinels themselves (`requirepass` in their config),
    /// with either Sentinel form. Default none.
    pub sentinel_password: Option<String>,
    /// TLS to the sentinels and the primary. With `sentinels` only (a URL
    /// says `rediss+sentinel://`). Default `false`.
    pub tls: Option<bool>,
    /// Replicas that must confirm a job's outcome (Redis `WAIT`) before a
    /// worker acks the job; a shortfall is retried like a Redis outage.
    /// Default 1 with Sentinel, 0 (no `WAIT`) otherwise.
    pub min_replicas_acked: Option<u32>,
    /// How long one `WAIT` waits for those replicas, milliseconds. 1 to
    /// 60000. Default 1000.
    pub wait_timeout_ms: u64,
    /// Resolved by `Config::load`.
    #[serde(skip)]
    target: RedisTarget,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            sentinels: Vec::new(),
            master_name: None,
            db: None,
            username: None,
            password: None,
            sentinel_password: None,
            tls: None,
            min_replicas_acked: None,
            wait_timeout_ms: 1000,
            target: RedisTarget::Direct(super::default_redis_url()),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("target", &self.target.to_string())
            .field("min_replicas_acked", &self.min_replicas_acked())
            .field("wait_timeout_ms", &self.wait_timeout_ms)
            .finish()
    }
}

/// Where the primary is.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: a `redis://`, `rediss://` or unix-socket URL, as given.
    Direct(String),
    /// The primary the sentinels name.
    Sentinel(SentinelTarget),
}

/// A Sentinel-managed primary.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// `(host, port)` of each sentinel, in the order given.
    pub sentinels: Vec<(String, u16)>,
    pub master_name: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sentinel_password: Option<String>,
    pub tls: bool,
}

/// Shown in logs: never a password.
impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Direct(url) => f.write_str(&crate::redact_url(url)),
            RedisTarget::Sentinel(target) => {
                let sentinels: Vec<String> = target
                    .sentinels
                    .iter()
                    .map(|(host, port)| format!("{host}:{port}"))
                    .collect();
                write!(
                    f,
                    "sentinel master '{}' db {} via {}{}",
                    target.master_name,
                    target.db,
                    sentinels.join(","),
                    if target.tls { " (tls)" } else { "" }
                )
            }
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

impl RedisConfig {
    /// Where the primary is (resolved at load).
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// `min_replicas_acked` with its default applied.
    pub fn min_replicas_acked(&self) -> u32 {
        self.min_replicas_acked.unwrap_or(match self.target {
            RedisTarget::Sentinel(_) => 1,
            RedisTarget::Direct(_) => 0,
        })
    }

    /// Checks `[redis]` against `redis_url` and resolves the target.
    /// `url_from_env`: `redis_url` came from `GPUQ_REDIS_URL`, which then
    /// wins over `redis.sentinels`.
    pub(super) fn resolve(
        &mut self,
        redis_url: &str,
        url_from_env: bool,
    ) -> Result<(), ConfigError> {
        if !(1..=60_000).contains(&self.wait_timeout_ms) {
            return Err(invalid(
                "redis.wait_timeout_ms",
                "must be between 1 and 60000 (WAIT 0 would wait forever)",
            ));
        }
        if self.min_replicas_acked.is_some_and(|n| n > 100) {
            return Err(invalid("redis.min_replicas_acked", "must be at most 100"));
        }
        let use_table = !self.sentinels.is_empty() && !url_from_env;
        if use_table && redis_url != super::default_redis_url() {
            return Err(invalid(
                "redis.sentinels",
                "set either redis_url or redis.sentinels, not both",
            ));
        }
        // `GPUQ_REDIS_URL` over a sentinel table: the table is set aside whole.
        let table_set_aside = url_from_env && !self.sentinels.is_empty();
        if self.sentinels.is_empty() {
            self.reject_table_only_keys()?;
        }
        self.target = if use_table {
            RedisTarget::Sentinel(self.table_target()?)
        } else if let Some(url) = SentinelUrl::parse(redis_url) {
            let url = url.map_err(|message| {
                invalid(
                    "redis_url",
                    format!("'{}': {message}", crate::redact_url(redis_url)),
                )
            })?;
            RedisTarget::Sentinel(SentinelTarget {
                sentinel_password: self.sentinel_password.clone(),
                ..url.0
            })
        } else {
            if self.sentinel_password.is_some() && !table_set_aside {
                return Err(invalid(
                    "redis.sentinel_password",
                    "applies only with Sentinel (redis+sentinel:// or redis.sentinels)",
                ));
            }
            RedisTarget::Direct(redis_url.to_owned())
        };
        Ok(())
    }

    /// Keys that describe the primary apply only with `redis.sentinels` (a
    /// URL carries its own).
    fn reject_table_only_keys(&self) -> Result<(), ConfigError> {
        let set = [
            ("redis.master_name", self.master_name.is_some()),
            ("redis.db", self.db.is_some()),
            ("redis.username", self.username.is_some()),
            ("redis.password", self.password.is_some()),
            ("redis.tls", self.tls.is_some()),
        ];
        match set.iter().find(|(_, is_set)| *is_set) {
            Some((key, _)) => Err(invalid(
                *key,
                "applies only with redis.sentinels (redis_url carries its own)",
            )),
            None => Ok(()),
        }
    }

    fn table_target(&self) -> Result<SentinelTarget, ConfigError> {
        let sentinels = self
            .sentinels
            .iter()
            .enumerate()
            .map(|(i, address)| {
                host_port(address).map_err(|message| {
                    invalid(
                        format!("redis.sentinels[{i}]"),
                        format!("'{address}': {message}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let master_name = match self.master_name.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => {
                return Err(invalid(
                    "redis.master_name",
                    "is required with redis.sentinels: the name the sentinels monitor",
                ))
            }
        };
        let db = self.db.unwrap_or(0);
        if db < 0 {
            return Err(invalid("redis.db", "must be 0 or more"));
        }
        Ok(SentinelTarget {
            sentinels,
            master_name,
            db,
            username: self.username.clone(),
            password: self.password.clone(),
            sentinel_password: self.sentinel_password.clone(),
            tls: self.tls.unwrap_or(false),
        })
    }
}

/// A parsed `redis+sentinel://[[user]:password@]h1:p1,h2:p2/master[/db]`.
struct SentinelUrl(SentinelTarget);

impl SentinelUrl {
    /// `None`: not a Sentinel URL at all.
    fn parse(url: &str) -> Option<Result<SentinelUrl, String>> {
        let (rest, tls) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            (rest, false)
        } else {
            (url.strip_prefix("rediss+sentinel://")?, true)
        };
        Some(Self::parse_rest(rest, tls))
    }

    fn parse_rest(rest: &str, tls: bool) -> Result<SentinelUrl, String> {
        if rest.contains('?') || rest.contains('#') {
            return Err("query parameters are not supported; use the [redis] table".into());
        }
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let (hosts, path) = rest
            .split_once('/')
            .ok_or("needs a master name: redis+sentinel://host:port,.../<master_name>[/<db>]")?;
        let sentinels = hosts
            .split(',')
            .map(|address| host_port(address).map_err(|e| format!("sentinel '{address}': {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let (master_name, db) = match path.split_once('/') {
            Some((name, "")) => (name, 0),
            Some((name, db)) => (
                name,
                db.parse::<i64>()
                    .ok()
                    .filter(|db| *db >= 0)
                    .ok_or_else(|| format!("database '{db}' is not a number of 0 or more"))?,
            ),
            None => (path, 0),
        };
        if master_name.is_empty() {
            return Err(
                "needs a master name: redis+sentinel://host:port,.../<master_name>[/<db>]".into(),
            );
        }
        let (username, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
            Some((user, password)) => (
                Some(percent_decode(user)?).filter(|u| !u.is_empty()),
                Some(percent_decode(password)?).filter(|p| !p.is_empty()),
            ),
            None => (None, None),
        };
        Ok(SentinelUrl(SentinelTarget {
            sentinels,
            master_name: percent_decode(master_name)?,
            db,
            username,
            password,
            sentinel_password: None,
            tls,
        }))
    }
}

/// `host:port`, `host` (port 26379) or `[v6]:port`.
fn host_port(address: &str) -> Result<(String, u16), String> {
    let address = address.trim();
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("unclosed '[' in an IPv6 address")?;
        (host, after.strip_prefix(':'))
    } else {
        match address.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err("expected host:port".into());
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("port '{port}' is not a number from 1 to 65535"))?,
    };
    Ok((host.to_owned(), port))
}

/// `%XX` escapes decoded (URL user info and names).
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or("a '%' must start a %XX escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "escapes must decode to UTF-8".into())
}

#[cfg(test)]
mod tests;
