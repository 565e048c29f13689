//! A live record's heartbeat (feature `redis`): a worker's or a host's hash
//! written, its expiry renewed and its id added to the set of live ones, in
//! one pipeline, so a reader never finds a record that will not expire.
//! Written once here because the worker and the dispatcher both beat.
//!
//! Also the script that removes a record on a clean exit only if the exiting
//! process wrote it ([`REMOVE_IF_WRITER`]): a process sharing an id by
//! mistake must not delete the live one's record.

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

/// KEYS[1] the record, KEYS[2] the set of live ids; ARGV[1] the exiting
/// process's pid, ARGV[2] its id. Deletes the record and the id when the
/// record's `pid` is that process's (or the record is gone already); `1` when
/// it did, `0` when another process's record was left alone.
pub const REMOVE_IF_WRITER: &str = r#"
local pid = redis.call('HGET', KEYS[1], 'pid')
if pid == false or pid == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"#;
