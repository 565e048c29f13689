//! Several record scripts in one `EVALSHA`: a worker with many jobs in
//! flight claims some and records the outcomes of others in one Redis call
//! instead of one call each (issue 18).
//!
//! Every script's own body runs unchanged, as a Lua function of its `KEYS`
//! and `ARGV`, so a batch makes exactly the transitions its scripts would
//! make one by one, in order; `tests/tests/record_batch.rs` checks that
//! against [`crate::job_record::apply`], as `tests/tests/job_record.rs` does
//! for the single scripts. Each op
//! runs under `pcall`: an op that fails (a key of the wrong type, say) gets
//! its own error reply and the others still run, as separate calls would.
//! The whole batch is one atomic step in Redis, which is no weaker than its
//! parts. One exception to the isolation: an op refused because this server
//! takes no writes (`READONLY`, `MASTERDOWN`: a replica after a failover)
//! ends the batch with that error, so the caller's link sees it and follows
//! the primary, as it would for a single script.
//!
//! Layout: `KEYS` is every op's keys in order; `ARGV[1]` the op count `n`,
//! then `n` triples (script name, key count, arg count), then every op's
//! args in order. The reply is an array with one element per op: `{1,
//! reply}` with the reply its script would have given (`{1}` for a nil one),
//! or `{0, message}` for an op that failed. Not Redis error elements: a
//! client library may turn one error inside an array into an error for the
//! whole reply (redis-rs does), and the other ops' replies would be lost.

use super::{prelude, Script, ScriptCall};

/// Most ops one batch carries. A batch holds Redis for its whole run (about
/// 50 µs per op on the project's 2-core machine, so about 1 ms for a full
/// one), so a cap keeps other clients' waits short, as
/// `crate::job_index::LIST_PAGE` does for listings.
pub const MAX_BATCH: usize = 16;

/// Splits the keys and args and runs each op's function.
const BATCH: &str = r#"
local n = tonumber(ARGV[1])
local replies = {}
local key_at, arg_at = 1, 2 + 3 * n
for i = 1, n do
  local head = 2 + 3 * (i - 1)
  local op = gpuq_ops[ARGV[head]]
  local nkeys, nargs = tonumber(ARGV[head + 1]), tonumber(ARGV[head + 2])
  local keys = {unpack(KEYS, key_at, key_at + nkeys - 1)}
  local args = {unpack(ARGV, arg_at, arg_at + nargs - 1)}
  key_at, arg_at = key_at + nkeys, arg_at + nargs
  local ok, reply = pcall(op, keys, args)
  if ok then
    replies[i] = {1, reply}
  elseif type(reply) == 'table' and reply.err then
    -- This server takes no writes: the caller must see it as it would
    -- from one script (it follows the primary), so the batch ends here.
    if string.find(reply.err, '^READONLY') or string.find(reply.err, '^MASTERDOWN') then
      return redis.error_reply(reply.err)
    end
    replies[i] = {0, reply.err}
  else
    replies[i] = {0, 'gpuq batch op ' .. tostring(ARGV[head]) .. ': ' .. tostring(reply)}
  end
end
return replies
"#;

/// The batch script's source: the prelude, every script as a function in
/// `gpuq_ops`, then the loop.
pub fn batch_source() -> String {
    let mut source = prelude();
    source.push_str("\nlocal gpuq_ops = {}\n");
    for script in Script::ALL {
        source.push_str(&format!(
            "gpuq_ops['{}'] = function(KEYS, ARGV)\n{}\nend\n",
            script.name(),
            script.body()
        ));
    }
    source.push_str(BATCH);
    source
}

/// The keys and arguments of one batch run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCall {
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

/// `calls` as one batch, in order.
pub fn batch(calls: Vec<ScriptCall>) -> BatchCall {
    let mut keys = Vec::with_capacity(calls.iter().map(|c| c.keys.len()).sum());
    let mut args =
        Vec::with_capacity(1 + 3 * calls.len() + calls.iter().map(|c| c.args.len()).sum::<usize>());
    args.push(calls.len().to_string());
    for call in &calls {
        args.push(call.script.name().to_owned());
        args.push(call.keys.len().to_string());
        args.push(call.args.len().to_string());
    }
    for call in calls {
        keys.extend(call.keys);
        args.extend(call.args);
    }
    BatchCall { keys, args }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Names;

    #[test]
    fn a_batch_lays_out_headers_then_keys_and_args_in_order() {
        let names = Names::new("ns");
        let first = crate::job_record::scripts::progress(&names, "a", 0.5, "{}".into());
        let second = crate::job_record::scripts::forget(&names, "b");
        let call = batch(vec![first.clone(), second.clone()]);
        assert_eq!(call.keys, ["ns:job:a", "ns:events", "ns:job:b"]);
        assert_eq!(
            call.args,
            ["2", "progress", "2", "2", "forget", "1", "0", "0.5", "{}"]
        );
    }

    #[test]
    fn every_script_is_a_function_of_the_batch() {
        let source = batch_source();
        for script in Script::ALL {
            assert!(source.contains(&format!("gpuq_ops['{}']", script.name())));
        }
    }
}
