//! The job indexes: sorted sets of job ids by creation time, one per status,
//! per feature, per submitter and per tenant (`<ns>:jobs:status:<status>`,
//! `<ns>:jobs:feature:<feature>`, `<ns>:jobs:by:<name>`,
//! `<ns>:jobs:tenant:<tenant>`), beside the all-jobs index `<ns>:jobs`.
//!
//! They exist so that a filtered listing reads only the jobs it returns: with
//! one all-jobs index, `?feature=nomatch` had to read every record of the last
//! 24 h, and eight such requests stalled every other Redis client. An index is
//! only useful if it is never stale, so it is written in the same Lua script
//! as the status it reflects: every record script (`crate::job_record::scripts`)
//! includes [`REINDEX_LUA`] and calls `gpuq_reindex` after its `HSET`.
//!
//! The same step keeps each tenant's load counts (jobs queued and processing,
//! `<ns>:tenant_load:<tenant>`), for the same reason: a quota check that
//! reads a stale count lets a tenant past `max_queued`, or refuses it forever.
//!
//! What this module does not do: read the indexes (the producer's store does)
//! or decide transitions (`crate::job_record` does).

/// Lua prelude defining `gpuq_reindex(job_key, old_status, new_status,
/// cutoff_ms, old_tenant, before)` and the `gpuq_tenant_load` it calls.
///
/// - `job_key` is `<ns>:job:<id>`; the namespace and id are taken from it
///   (a namespace has no `:`, see `Config` validation).
/// - `old_status` is what `HGET status` returned before the write (`false`
///   for a new record); the id leaves that status's index.
/// - the id enters the new status's index and, when the record has them, its
///   feature's, submitter's and tenant's, scored by the record's `created_ms`.
/// - `cutoff_ms` (or `nil`): ids created before it are trimmed from every
///   index touched, which keeps them within the finished-job lifetime.
/// - `old_tenant`: the record's tenant before the write (`false`: none), for
///   a script that may record the tenant in the same step (a claim, an
///   ending); `nil` (left out): the tenant did not change.
/// - `before` (or `nil`): the record's `feature`, `by` (`submitted_by`) and
///   `tenant` before the write, as `HMGET` gave them. With it, an existing
///   record's id is added to a feature, submitter or tenant index only when
///   that field changed: every earlier write of the record added it to the
///   indexes of the values it had, so the same `ZADD` again would change
///   nothing (issue 18: these were 4 of a job's 10 `ZADD`s). The trim still
///   runs on every index of the record's values. Without it, every index is
///   written, as a first write must.
///
/// It also keeps the tenant load counts (`<ns>:tenant_load:<tenant>`, fields
/// `queued` and `processing`): when the status changes, the job leaves the
/// count of its old status under its old tenant and enters the count of its
/// new status under its tenant now. Only `queued` and `processing` are
/// counted, and a count never goes below 0. A record with no tenant when it
/// was queued was never counted, so a claim that records the tenant then
/// takes nothing from it (hence `old_tenant`). These counts are what the
/// `queued` record's quota check reads (`tenants.<name>.max_queued`): being
/// kept in the same step as the status, they always match the records.
pub const REINDEX_LUA: &str = r#"
local gpuq_load_counted = {queued = true, processing = true}
local function gpuq_tenant_load(ns, old_tenant, new_tenant, old_status, new_status)
  if old_tenant == new_tenant and old_status == new_status then return end
  if old_tenant and old_status and gpuq_load_counted[old_status] then
    local key = ns .. ':tenant_load:' .. old_tenant
    if redis.call('HINCRBY', key, old_status, -1) < 0 then
      redis.call('HSET', key, old_status, 0)
    end
  end
  if new_tenant and new_status and gpuq_load_counted[new_status] then
    redis.call('HINCRBY', ns .. ':tenant_load:' .. new_tenant, new_status, 1)
  end
end
local function gpuq_reindex(job_key, old_status, new_status, cutoff_ms, old_tenant, before)
  local ns, id = string.match(job_key, '^([^:]+):job:(.+)$')
  if not ns then return end
  local fields = redis.call('HMGET', job_key, 'created_ms', 'feature', 'submitted_by', 'tenant')
  local score = tonumber(fields[1]) or 0
  if old_status and old_status ~= new_status then
    redis.call('ZREM', ns .. ':jobs:status:' .. old_status, id)
  end
  if old_tenant == nil then old_tenant = fields[4] end
  gpuq_tenant_load(ns, old_tenant, fields[4], old_status, new_status)
  local known = old_status and before
  local indexes = {{ns .. ':jobs:status:' .. new_status, true}}
  local function by_field(prefix, value, was)
    if value then indexes[#indexes + 1] = {ns .. prefix .. value, not known or value ~= was} end
  end
  by_field(':jobs:feature:', fields[2], known and before.feature)
  by_field(':jobs:by:', fields[3], known and before.by)
  by_field(':jobs:tenant:', fields[4], known and before.tenant)
  for _, index in ipairs(indexes) do
    if index[2] then redis.call('ZADD', index[1], score, id) end
    if cutoff_ms then redis.call('ZREMRANGEBYSCORE', index[1], '-inf', '(' .. cutoff_ms) end
  end
end
"#;

/// Fields a listing reads for each job: everything but the result and the
/// metadata, whose size a client controls (fetch one job for its result).
pub const LIST_FIELDS: [&str; 15] = [
    crate::names::job_field::STATUS,
    crate::names::job_field::FEATURE,
    crate::names::job_field::MODEL,
    crate::names::job_field::WORKER,
    crate::names::job_field::HOST,
    crate::names::job_field::GPU,
    crate::names::job_field::ATTEMPTS,
    crate::names::job_field::PROGRESS,
    crate::names::job_field::CREATED_MS,
    crate::names::job_field::STARTED_MS,
    crate::names::job_field::FINISHED_MS,
    crate::names::job_field::ERROR_CODE,
    crate::names::job_field::ERROR_MESSAGE,
    crate::names::job_field::SUBMITTED_BY,
    crate::names::job_field::TENANT,
];

/// Most job records one listing request reads, whatever its filters: the
/// bound on the Redis work a single request can cause.
pub const MAX_RECORDS_READ_PER_LIST: usize = 2_000;

/// Records read per round trip while listing: small enough that one
/// pipeline never holds Redis for long. With 100, eight clients listing full
/// pages back to back pushed another client's PING p99 to 2.1-2.9 ms; with
/// 50, 1.2 ms (`gpuq-bench --listing`, docs/benchmarks.md).
pub const LIST_PAGE: usize = 50;

#[cfg(test)]
mod tests {
    #[test]
    fn list_fields_leave_out_the_result_and_metadata() {
        use crate::names::job_field;
        assert!(!super::LIST_FIELDS.contains(&job_field::RESULT));
        assert!(!super::LIST_FIELDS.contains(&job_field::METADATA));
        assert!(super::LIST_FIELDS.contains(&job_field::SUBMITTED_BY));
        assert!(super::LIST_FIELDS.contains(&job_field::TENANT));
    }
}
