//! The placement lease's two scripts: one dispatcher at a time decides
//! placement for every host, the one holding `<ns>:placement:lease`.
//!
//! Both are compare-and-set on the holder's id, which Redis can only do
//! atomically in a script; they live here with the job record's scripts
//! (`crate::job_record::scripts`) so every Lua gpuq runs is in `common`. The
//! dispatcher's store sends them.

/// KEYS[1] the lease; ARGV[1] host id, ARGV[2] time to live in ms. Takes the
/// lease when free or already ours (renewing it); `1` when held after.
pub const HOLD: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// KEYS[1] a lease; ARGV[1] the holder's value. Deletes the lease only if
/// it still holds that value; `1` when deleted. The host lease
/// (`crate::host_lease`) is given up with it too.
pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;
