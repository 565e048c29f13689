//! The host lease's Redis commands (`<ns>:host:<host_id>:lease`): take it
//! with `SET NX PX`, read who holds it, renew and release it with the
//! compare-and-set scripts of `gpuq_common::host_lease`. What the answers
//! mean for the dispatcher is decided in `crate::host_lease`.

use std::time::Duration;

use gpuq_common::host_lease::{self, Renewal};

use super::{Store, StoreError};

/// The lease as found when it could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundLease {
    /// The stored value; `None` when it vanished since the `SET NX`.
    pub value: Option<String>,
    /// Its remaining time to live; `None` when it has no expiry.
    pub remaining: Option<Duration>,
}

impl Store {
    /// The lease's key, for messages that tell an operator where to look.
    pub fn host_lease_key(&self, host_id: &str) -> String {
        self.names.host_lease(host_id)
    }

    /// Takes the lease with `value` unless someone holds it: `Ok(None)` when
    /// taken, else what is there.
    pub async fn take_host_lease(
        &self,
        host_id: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<FoundLease>, StoreError> {
        let mut connection = self.connection.clone();
        let key = self.names.host_lease(host_id);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut connection)
            .await?;
        if set.is_some() {
            return Ok(None);
        }
        let (value, remaining_ms): (Option<String>, i64) = redis::pipe()
            .atomic()
            .get(&key)
            .pttl(&key)
            .query_async(&mut connection)
            .await?;
        Ok(Some(FoundLease {
            value,
            remaining: u64::try_from(remaining_ms).ok().map(Duration::from_millis),
        }))
    }

    /// The lease's stored value, if any.
    pub async fn host_lease_value(&self, host_id: &str) -> Result<Option<String>, StoreError> {
        let mut connection = self.connection.clone();
        Ok(redis::cmd("GET")
            .arg(self.names.host_lease(host_id))
            .query_async(&mut connection)
            .await?)
    }

    /// Renews the lease if it still holds `value` (compare-and-extend).
    pub async fn renew_host_lease(
        &self,
        host_id: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Renewal, StoreError> {
        let mut connection = self.connection.clone();
        let code: i64 = redis::Script::new(host_lease::RENEW)
            .key(self.names.host_lease(host_id))
            .arg(value)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut connection)
            .await?;
        Ok(Renewal::from_code(code))
    }

    /// Deletes the lease if it still holds `value` (compare-and-delete);
    /// `true` when it did.
    pub async fn release_host_lease(&self, host_id: &str, value: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let released: i64 = redis::Script::new(host_lease::RELEASE)
            .key(self.names.host_lease(host_id))
            .arg(value)
            .invoke_async(&mut connection)
            .await?;
        Ok(released == 1)
    }
}
