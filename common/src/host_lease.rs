//! The host lease: one dispatcher at a time runs under a host id, the one
//! whose [`HostLeaseHolder`] is in `<ns>:host:<host_id>:lease`.
//!
//! Two dispatchers with one host id (one config started twice, or cloned
//! machines whose hostname is the default host id) would run workers with the
//! same ids, overwrite each other's worker and host records and kill each
//! other's workers as "not heart-beating". The lease makes the second one
//! refuse to start instead.
//!
//! The lease is taken with `SET NX PX` (no script needed); renewing and
//! releasing compare the stored value with the holder's own, which Redis can
//! only do atomically in a script. The scripts live here beside the placement
//! lease's (`crate::placement_lease`) so every Lua gpuq runs is in `common`;
//! the dispatcher's store sends them and the dispatcher decides what to do
//! with their answers. This module does no IO.

use std::hash::{BuildHasher, Hasher};

use serde::{Deserialize, Serialize};

/// KEYS[1] the lease; ARGV[1] the holder's value, ARGV[2] time to live in
/// ms. `1`: ours, renewed. `2`: the key was gone (Redis lost or expired it)
/// and nobody else took it, so it is ours again. `0`: another value is there,
/// left untouched.
pub const RENEW: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"#;

/// KEYS[1] the lease; ARGV[1] the holder's value. Deletes the lease only if
/// it still holds that value; `1` when deleted (the placement lease's script).
pub use crate::placement_lease::RELEASE;

/// What [`RENEW`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours; its expiry is renewed.
    Renewed,
    /// The key had vanished and nobody had taken it: it is ours again.
    Retaken,
    /// Another holder's value is there: the lease is lost.
    HeldByAnother,
}

impl Renewal {
    /// The script's answer as a [`Renewal`]; anything unknown reads as lost,
    /// so a dispatcher never keeps running on a lease it cannot prove.
    pub fn from_code(code: i64) -> Renewal {
        match code {
            1 => Renewal::Renewed,
            2 => Renewal::Retaken,
            _ => Renewal::HeldByAnother,
        }
    }
}

/// Who holds a host id: the lease's value, JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLeaseHolder {
    /// The machine's hostname (not the host id, which is the key).
    pub hostname: String,
    /// The holding dispatcher's process id on that machine.
    pub pid: u32,
    /// When it took the lease, unix ms.
    pub since_ms: u64,
    /// Random per dispatcher process, so two holders never share a value even
    /// with one hostname and a reused pid.
    pub token: String,
}

impl HostLeaseHolder {
    /// A holder for this process, with a fresh random token.
    pub fn new(hostname: String, pid: u32, since_ms: u64) -> HostLeaseHolder {
        HostLeaseHolder {
            hostname,
            pid,
            since_ms,
            token: random_token(),
        }
    }

    /// The value stored in the lease key.
    pub fn to_value(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A stored value read back; `None` when it is no holder of ours.
    pub fn from_value(value: &str) -> Option<HostLeaseHolder> {
        serde_json::from_str(value).ok()
    }

    /// "hostname H, pid P, since unix ms S (N s ago)" for errors and logs.
    pub fn describe(&self, now_ms: u64) -> String {
        let age_s = now_ms.saturating_sub(self.since_ms) / 1000;
        format!(
            "hostname {}, pid {}, since unix ms {} ({age_s} s ago)",
            self.hostname, self.pid, self.since_ms
        )
    }
}

/// Describes a stored lease value: its holder, or the raw value when it is
/// not one a dispatcher wrote.
pub fn describe_value(value: &str, now_ms: u64) -> String {
    match HostLeaseHolder::from_value(value) {
        Some(holder) => holder.describe(now_ms),
        None => format!("an unreadable holder {value:?}"),
    }
}

/// 128 random bits as hex. Seeded by the standard library's per-process
/// random hash keys (from the operating system), mixed with the time: a
/// token only has to differ between processes, it guards nothing secret.
fn random_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    (0..2u8)
        .map(|half| {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(nanos);
            hasher.write_u32(std::process::id());
            hasher.write_u8(half);
            format!("{:016x}", hasher.finish())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_round_trips_through_its_value() {
        let holder = HostLeaseHolder::new("gpu-box".into(), 4242, 1_764_000_000_000);
        let value = holder.to_value();
        assert_eq!(HostLeaseHolder::from_value(&value), Some(holder.clone()));
        assert!(value.contains("\"hostname\":\"gpu-box\""), "{value}");
        assert!(value.contains("\"pid\":4242"), "{value}");
    }

    #[test]
    fn tokens_are_long_and_differ_between_holders() {
        let a = HostLeaseHolder::new("h".into(), 1, 0);
        let b = HostLeaseHolder::new("h".into(), 1, 0);
        assert_eq!(a.token.len(), 32);
        assert!(a.token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a.token, b.token);
        assert_ne!(a.to_value(), b.to_value());
    }

    #[test]
    fn the_description_names_hostname_pid_and_age() {
        let holder = HostLeaseHolder::new("gpu-box".into(), 4242, 10_000);
        assert_eq!(
            describe_value(&holder.to_value(), 75_500),
            "hostname gpu-box, pid 4242, since unix ms 10000 (65 s ago)"
        );
        assert_eq!(
            describe_value("host-a", 0),
            "an unreadable holder \"host-a\""
        );
    }

    #[test]
    fn unknown_renewal_answers_read_as_lost() {
        assert_eq!(Renewal::from_code(1), Renewal::Renewed);
        assert_eq!(Renewal::from_code(2), Renewal::Retaken);
        assert_eq!(Renewal::from_code(0), Renewal::HeldByAnother);
        assert_eq!(Renewal::from_code(-1), Renewal::HeldByAnother);
    }
}
