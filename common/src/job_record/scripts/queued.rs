//! The `queued` record script and its quota check: a new job's record is
//! written only if its tenant is within `tenants.<name>.max_queued` and has a
//! token in its `rate_per_s` bucket, decided in the same step as the write.
//!
//! The check lives in the record script, not in the producer, so that every
//! gateway and producer of a namespace shares one count and one bucket with
//! no race between reading them and writing: two gateways each at
//! `max_queued - 1` cannot both get in, and a bucket's last token goes to one
//! submit. The count is the tenant's `queued` load, kept by every record
//! script (`crate::job_index::REINDEX_LUA`); the bucket's clock is Redis's
//! `TIME`, so gateways with skewed clocks still agree.

use crate::config::TenantLimits;
use crate::names::{job_field, Names};

use super::{Script, ScriptCall};

/// KEYS[1] job, KEYS[2] events channel, KEYS[3] all-jobs index, KEYS[4]
/// tenant load, KEYS[5] tenant bucket (KEYS[4] and KEYS[5] only when the
/// record has a tenant); ARGV[1] event, ARGV[2] created ms, ARGV[3] job id,
/// ARGV[4] index cutoff ms, ARGV[5] max queued or '', ARGV[6] rate per
/// second or '', ARGV[7] bucket size or '', ARGV[8..] field, value pairs.
///
/// An existing id answers 0 before any check (a re-send takes no token).
/// The bucket (`tokens`, `ts_us`) is full when absent; it expires once it
/// would be full again, plus a second.
pub(super) const QUEUED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if KEYS[4] and ARGV[5] ~= '' then
  local queued = tonumber(redis.call('HGET', KEYS[4], 'queued')) or 0
  if queued >= tonumber(ARGV[5]) then return {'max_queued', queued} end
end
if KEYS[5] and ARGV[6] ~= '' then
  local rate, size = tonumber(ARGV[6]), tonumber(ARGV[7])
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local bucket = redis.call('HMGET', KEYS[5], 'tokens', 'ts_us')
  local tokens, since = tonumber(bucket[1]), tonumber(bucket[2])
  if not tokens or not since then tokens, since = size, now end
  if now > since then
    tokens = math.min(size, tokens + (now - since) * rate / 1000000)
    since = now
  end
  if tokens < 1 then return {'rate_per_s', math.ceil((1 - tokens) * 1000 / rate)} end
  redis.call('HSET', KEYS[5], 'tokens', string.format('%.17g', tokens - 1),
    'ts_us', string.format('%.0f', since))
  redis.call('PEXPIRE', KEYS[5], math.ceil(size * 1000 / rate) + 1000)
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[4])
gpuq_reindex(KEYS[1], false, 'queued', ARGV[4])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"#;

/// A tenant's submit rate: a token bucket refilled at `per_s` tokens a
/// second, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_s: f64,
    pub burst: u64,
}

/// The limits a new job's tenant is held to when its record is written.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quota {
    /// Jobs the tenant may have `queued`; a submit at this count is refused.
    pub max_queued: Option<u64>,
    pub rate: Option<Rate>,
}

impl Quota {
    /// No limit.
    pub const NONE: Quota = Quota {
        max_queued: None,
        rate: None,
    };

    /// A tenant's `[tenants.<name>]` limits.
    pub fn of(limits: &TenantLimits) -> Quota {
        Quota {
            max_queued: limits.max_queued,
            rate: limits
                .rate_per_s
                .zip(limits.bucket_size())
                .map(|(per_s, burst)| Rate { per_s, burst }),
        }
    }
}

/// What the `queued` script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuedReply {
    /// The record is written and its event published.
    Written,
    /// A record with this id exists; nothing changed.
    Exists,
    /// The tenant has `queued` jobs waiting, at or past its `max_queued`.
    OverMaxQueued { queued: u64 },
    /// The tenant's bucket is empty; the next token comes in this long.
    OverRate { retry_after_ms: u64 },
}

impl QueuedReply {
    /// The script's reply: `1`, `0`, or `{kind, number}` for a refusal;
    /// `None` for anything else.
    pub fn from_parts(code: Option<i64>, refusal: Option<(&str, u64)>) -> Option<QueuedReply> {
        match (code, refusal) {
            (Some(1), None) => Some(QueuedReply::Written),
            (Some(0), None) => Some(QueuedReply::Exists),
            (None, Some(("max_queued", queued))) => Some(QueuedReply::OverMaxQueued { queued }),
            (None, Some(("rate_per_s", retry_after_ms))) => {
                Some(QueuedReply::OverRate { retry_after_ms })
            }
            _ => None,
        }
    }
}

/// A new job's `queued` record (fields beyond the status: feature, model,
/// ...), written only within `quota` of the tenant named in `fields` (no
/// tenant field: no check).
pub fn queued(
    names: &Names,
    job_id: &str,
    created_ms: u64,
    index_cutoff_ms: u64,
    fields: &[(&str, String)],
    event_json: String,
    quota: Quota,
) -> ScriptCall {
    let limit = |value: Option<String>| value.unwrap_or_default();
    let mut args = vec![
        event_json,
        created_ms.to_string(),
        job_id.to_owned(),
        index_cutoff_ms.to_string(),
        limit(quota.max_queued.map(|n| n.to_string())),
        limit(quota.rate.map(|r| r.per_s.to_string())),
        limit(quota.rate.map(|r| r.burst.to_string())),
    ];
    for (field, value) in fields {
        args.push((*field).to_owned());
        args.push(value.clone());
    }
    let mut keys = vec![
        names.job_key(job_id),
        names.events_channel(),
        names.jobs_index(),
    ];
    if let Some((_, tenant)) = fields.iter().find(|(f, _)| *f == job_field::TENANT) {
        keys.push(names.tenant_load_key(tenant));
        keys.push(names.tenant_bucket_key(tenant));
    }
    ScriptCall {
        script: Script::Queued,
        keys,
        args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TenantLimits;

    fn fields(tenant: Option<&str>) -> Vec<(&'static str, String)> {
        let mut fields = vec![(job_field::STATUS, "queued".to_owned())];
        if let Some(tenant) = tenant {
            fields.push((job_field::TENANT, tenant.to_owned()));
        }
        fields
    }

    #[test]
    fn the_tenant_s_keys_follow_the_tenant_field() {
        let names = Names::new("ns");
        let quota = Quota {
            max_queued: Some(10),
            rate: Some(Rate {
                per_s: 0.5,
                burst: 4,
            }),
        };
        let call = queued(&names, "j", 5, 1, &fields(Some("acme")), "{}".into(), quota);
        assert_eq!(
            call.keys,
            [
                "ns:job:j",
                "ns:events",
                "ns:jobs",
                "ns:tenant_load:acme",
                "ns:tenant_bucket:acme"
            ]
        );
        assert_eq!(call.args[4..7], ["10", "0.5", "4"]);
        assert_eq!(call.args[7..], ["status", "queued", "tenant", "acme"]);
        let call = queued(&names, "j", 5, 1, &fields(None), "{}".into(), Quota::NONE);
        assert_eq!(call.keys.len(), 3);
        assert_eq!(call.args[4..7], ["", "", ""]);
    }

    #[test]
    fn a_quota_is_the_tenant_s_limits() {
        let limits = TenantLimits {
            max_queued: Some(3),
            rate_per_s: Some(2.5),
            ..TenantLimits::default()
        };
        let quota = Quota::of(&limits);
        assert_eq!(quota.max_queued, Some(3));
        assert_eq!(
            quota.rate,
            Some(Rate {
                per_s: 2.5,
                burst: 3
            })
        );
        assert_eq!(Quota::of(&TenantLimits::default()), Quota::NONE);
    }

    #[test]
    fn replies_parse_and_anything_else_is_none() {
        assert_eq!(
            QueuedReply::from_parts(Some(1), None),
            Some(QueuedReply::Written)
        );
        assert_eq!(
            QueuedReply::from_parts(Some(0), None),
            Some(QueuedReply::Exists)
        );
        assert_eq!(
            QueuedReply::from_parts(None, Some(("max_queued", 3))),
            Some(QueuedReply::OverMaxQueued { queued: 3 })
        );
        assert_eq!(
            QueuedReply::from_parts(None, Some(("rate_per_s", 250))),
            Some(QueuedReply::OverRate {
                retry_after_ms: 250
            })
        );
        assert_eq!(QueuedReply::from_parts(Some(2), None), None);
        assert_eq!(QueuedReply::from_parts(None, Some(("other", 1))), None);
    }
}
