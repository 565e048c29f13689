//! Job listings with bounded Redis work: the smallest index that covers a
//! filter, read a page at a time, never more than
//! [`MAX_RECORDS_READ_PER_LIST`] records, never the results.
//!
//! Why: with one all-jobs index, a filter that matched nothing read every
//! record of the day, and eight such requests stalled every Redis client,
//! workers included. `gpuq_common::job_index` keeps the indexes; this module
//! only reads them.

use std::collections::HashMap;

use gpuq_common::job_index::{LIST_FIELDS, LIST_PAGE, MAX_RECORDS_READ_PER_LIST};
use gpuq_common::record::JobRecord;
use gpuq_common::redis_link::RedisLink;
use gpuq_common::JobStatus;
use redis::AsyncCommands;

use super::{Store, StoreError};

/// Which jobs a listing returns; every term given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub feature: Option<String>,
    /// The name of the gateway token that submitted the job.
    pub submitted_by: Option<String>,
    /// The tenant the job belongs to.
    pub tenant: Option<String>,
}

impl JobFilter {
    pub fn matches(&self, record: &JobRecord) -> bool {
        self.status.is_none_or(|s| record.status == Some(s))
            && self
                .feature
                .as_ref()
                .is_none_or(|f| record.feature.as_ref() == Some(f))
            && self
                .submitted_by
                .as_ref()
                .is_none_or(|n| record.submitted_by.as_ref() == Some(n))
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| record.tenant.as_ref() == Some(t))
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JobListing {
    pub jobs: Vec<JobRecord>,
    /// The listing stopped at the cap on records read per request before
    /// finding `limit` jobs: older matching jobs may exist.
    pub truncated: bool,
}

impl Store {
    /// The most recent jobs matching `filter`, newest first, without their
    /// results. Reads the smallest index that covers a filter, a page at a
    /// time, and never more than [`MAX_RECORDS_READ_PER_LIST`] records: a
    /// listing that stops there says so with `truncated`.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: usize,
    ) -> Result<JobListing, StoreError> {
        let mut connection = self.connection.clone();
        let index = self.smallest_index(filter, &mut connection).await?;
        let mut listing = JobListing::default();
        let mut read = 0usize;
        let mut start = 0usize;
        while listing.jobs.len() < limit {
            if read >= MAX_RECORDS_READ_PER_LIST {
                listing.truncated = true;
                break;
            }
            let page = LIST_PAGE.min(MAX_RECORDS_READ_PER_LIST - read);
            let ids: Vec<String> = connection
                .zrevrange(&index, start as isize, (start + page - 1) as isize)
                .await?;
            if ids.is_empty() {
                break;
            }
            start += ids.len();
            read += ids.len();
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HMGET")
                    .arg(self.names.job_key(id))
                    .arg(&LIST_FIELDS[..]);
            }
            let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut connection).await?;
            let mut expired = Vec::new();
            for (id, row) in ids.iter().zip(rows) {
                let hash: HashMap<String, String> = LIST_FIELDS
                    .iter()
                    .zip(row)
                    .filter_map(|(field, value)| value.map(|v| ((*field).to_owned(), v)))
                    .collect();
                let Some(record) = JobRecord::from_hash(id, &hash) else {
                    expired.push(id.clone());
                    continue;
                };
                if filter.matches(&record) && listing.jobs.len() < limit {
                    listing.jobs.push(record);
                }
            }
            if !expired.is_empty() {
                // Records past their lifetime leave the index as they are met.
                let _: () = connection.zrem(&index, &expired).await?;
                start -= expired.len();
            }
        }
        Ok(listing)
    }

    /// The index with the fewest ids among those that cover one of the
    /// filter's terms (`ZCARD` is O(1)); the all-jobs index without filters.
    async fn smallest_index(
        &self,
        filter: &JobFilter,
        connection: &mut RedisLink,
    ) -> Result<String, StoreError> {
        let candidates: Vec<String> = [
            filter.status.map(|s| self.names.jobs_by_status(s.as_str())),
            filter
                .feature
                .as_deref()
                .map(|f| self.names.jobs_by_feature(f)),
            filter
                .submitted_by
                .as_deref()
                .map(|n| self.names.jobs_by_submitter(n)),
            filter
                .tenant
                .as_deref()
                .map(|t| self.names.jobs_by_tenant(t)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if candidates.is_empty() {
            return Ok(self.names.jobs_index());
        }
        let mut pipe = redis::pipe();
        for key in &candidates {
            pipe.zcard(key);
        }
        let sizes: Vec<u64> = pipe.query_async(connection).await?;
        let smallest = candidates
            .into_iter()
            .zip(sizes)
            .min_by_key(|(_, size)| *size)
            .map(|(key, _)| key);
        Ok(smallest.unwrap_or_else(|| self.names.jobs_index()))
    }
}
