//! A live record's heartbeat (feature `redis`): a worker's or a host's hash
//! written, its expiry renewed and its id added to the set of live ones, in
//! one pipeline, so a reader never finds a record that will not expire.
//! Written once here because the worker and the dispatcher both beat.

use std::time::Duration;

/// The pipeline of one heartbeat of `key` (listed in `live_set` as `id`).
pub fn pipeline(
    key: &str,
    fields: &[(&'static str, String)],
    ttl: Duration,
    live_set: &str,
    id: &str,
) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.hset_multiple(key, fields)
        .ignore()
        .pexpire(key, i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
        .ignore()
        .sadd(live_set, id)
        .ignore();
    pipe
}
