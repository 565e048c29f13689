//! Which held job a free slot runs: fair share across tenants by GPU time,
//! then priority within a tenant.
//!
//! A worker holds jobs from several sub-queues of a model (one per tenant
//! and priority level; `gpuq_common::fair_share`). Run in arrival order,
//! they would give a tenant with 2,000 jobs nearly every slot, so picking is
//! start-time fair queueing on measured run time: each tenant has a virtual
//! finish time that grows by the GPU time its jobs use divided by its
//! weight; the next job is the tenant's with the smallest start tag
//! `max(its finish time, the virtual clock)`, where the clock is the start
//! tag of the last job started. A tenant that was idle starts level with
//! the busiest instead of cashing in its idle time, and ties go to the
//! tenant served least recently. Within the chosen tenant, the highest
//! priority level first, then arrival order.
//!
//! A job is charged its model's estimated run time when it starts (so
//! concurrent slots do not all pick the same tenant), then corrected by what
//! it really took. Each worker keeps its own clock: workers that all hold
//! jobs of the same tenants each give them their shares, so the fleet does.
//! Nothing here delays a job, except one whose tenant is at its
//! `tenants.<name>.max_running`: the fleet's count of the tenant's running
//! jobs is read from Redis every second (`crate::sub_queues`), this
//! worker's own starts and ends adjust it in between, and a tenant at its
//! limit is passed over (its jobs stay held) until the count drops. Two
//! workers starting a job of the same tenant within one read of each other
//! can exceed the limit by one each until the next read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use gpuq_common::config::TenantsConfig;
use gpuq_common::fair_share::Level;

/// A held job as the scheduler sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub tenant: &'a str,
    pub level: Level,
    pub model: &'a str,
}

/// What to do with a free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Run this candidate.
    Run(usize),
    /// Wait until then for the next job of the queue whose job just ended
    /// here: it comes first, and its delivery is on its way.
    Wait(Instant),
    /// Every candidate's tenant is at its `max_running`.
    Blocked,
}

/// What a started job was charged, settled when it ends.
#[derive(Debug, Clone)]
pub struct Charge {
    /// Its key in the scheduler's in-flight ends.
    id: u64,
    tenant: String,
    level: Level,
    model: String,
    estimate_s: f64,
    weight: f64,
}

/// The queue of the job that ended last here, and when.
struct Recent {
    tenant: String,
    level: Level,
    model: String,
    at: Instant,
}

/// How long a free slot waits for the next job of the queue whose job just
/// ended, when that queue comes first: a worker holds `worker.prefetch`
/// deliveries per queue, running ones included, so when a job ends its
/// queue's next delivery is still a broker round trip away (about a
/// millisecond), and without the wait tenants would take turns whatever
/// their weights, and levels too.
pub const LOOKAHEAD: Duration = Duration::from_millis(20);

/// Run time assumed for a model before any of its jobs has ended.
const FIRST_ESTIMATE_S: f64 = 1.0;
/// Weight of the newest run time in a model's estimate.
const ESTIMATE_SMOOTHING: f64 = 0.2;

pub struct FairScheduler {
    tenants: TenantsConfig,
    /// Virtual finish time per tenant, seconds of GPU time per weight.
    finish: HashMap<String, f64>,
    /// Start tag of the last job started.
    clock: f64,
    /// When each tenant last started a job (a counter), for ties.
    last_start: HashMap<String, u64>,
    starts: u64,
    /// Estimated run time per model, seconds.
    estimates: HashMap<String, f64>,
    /// Running jobs across the fleet of each tenant with `max_running`.
    running: HashMap<String, u64>,
    recent: Option<Recent>,
    /// When each started job here is expected to end its run (start +
    /// estimate) and its estimate, by charge id, until its run ends: how
    /// soon a slot frees (`soonest_end`; kept by [`RunTimes`]).
    in_flight: HashMap<u64, (Instant, Duration)>,
}

impl FairScheduler {
    pub fn new(tenants: TenantsConfig) -> FairScheduler {
        FairScheduler {
            tenants,
            finish: HashMap::new(),
            clock: 0.0,
            last_start: HashMap::new(),
            starts: 0,
            estimates: HashMap::new(),
            running: HashMap::new(),
            recent: None,
            in_flight: HashMap::new(),
        }
    }

    /// Tenants with a `max_running`: the ones whose counts to read.
    pub fn limited_tenants(&self) -> Vec<String> {
        let limited = self.tenants.named.iter();
        limited
            .filter(|(_, limits)| limits.max_running.is_some())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The fleet's running jobs of the limited tenants, as just read.
    pub fn set_running(&mut self, running: HashMap<String, u64>) {
        self.running = running;
    }

    /// The tenant has a `max_running` (its starts count against the fleet's).
    pub fn is_limited(&self, tenant: &str) -> bool {
        self.limit(tenant).is_some()
    }

    /// When the first of the jobs started here is expected to end, by its
    /// model's estimate; `None` when none is in flight.
    pub fn soonest_end(&self) -> Option<Instant> {
        self.in_flight.values().map(|(end, _)| *end).min()
    }

    fn limit(&self, tenant: &str) -> Option<u64> {
        self.tenants.named.get(tenant).and_then(|t| t.max_running)
    }

    /// The tenant may start another job (it is under its `max_running`).
    fn may_start(&self, tenant: &str) -> bool {
        let running = self.running.get(tenant).copied().unwrap_or(0);
        self.limit(tenant).is_none_or(|max| running < max)
    }

    fn start_tag(&self, tenant: &str) -> f64 {
        self.finish
            .get(tenant)
            .copied()
            .unwrap_or(0.0)
            .max(self.clock)
    }

    /// The index of the best candidate; `None` when there are none (or
    /// every one's tenant is at its `max_running`).
    fn best(&self, candidates: &[Candidate<'_>]) -> Option<usize> {
        let startable = candidates.iter().map(|c| c.tenant);
        let tenant = startable.filter(|t| self.may_start(t)).min_by(|a, b| {
            self.start_tag(a)
                .total_cmp(&self.start_tag(b))
                .then_with(|| self.last_start.get(*a).cmp(&self.last_start.get(*b)))
        })?;
        // Highest level first; among equals, the first held (max_by_key
        // would return the last of equals, so compare on reversed index).
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.tenant == tenant)
            .max_by_key(|(index, c)| (c.level, std::cmp::Reverse(*index)))
            .map(|(index, _)| index)
    }

    /// What a free slot does with these held jobs (of one model, or of
    /// all without placement) at `now`: run the best, or wait
    /// [`LOOKAHEAD`] for the next job of the queue whose job just ended
    /// here when that queue would come before the best held one.
    ///
    /// Without `lookahead` (the queue's next job will not be pushed: pull
    /// mode, `crate::pull`) it never waits.
    pub fn pick(&self, candidates: &[Candidate<'_>], now: Instant, lookahead: bool) -> Pick {
        let Some(best) = self.best(candidates) else {
            return Pick::Blocked;
        };
        let Some(recent) = self.recent.as_ref().filter(|_| lookahead) else {
            return Pick::Run(best);
        };
        let until = recent.at + LOOKAHEAD;
        let held_already = candidates.iter().any(|c| {
            c.tenant == recent.tenant && c.level == recent.level && c.model == recent.model
        });
        let same_model = candidates.iter().any(|c| c.model == recent.model);
        if now >= until || held_already || !same_model || !self.may_start(&recent.tenant) {
            return Pick::Run(best);
        }
        let held = &candidates[best];
        let first = if held.tenant == recent.tenant {
            recent.level > held.level
        } else {
            // A tie goes to the held job: the recent tenant has just run.
            self.start_tag(&recent.tenant) < self.start_tag(held.tenant)
        };
        if first {
            Pick::Wait(until)
        } else {
            Pick::Run(best)
        }
    }

    /// The candidates whose tenants may start, best first: tenants by start
    /// tag (ties to the one served least recently, then by name), and
    /// within a tenant the highest level first, then arrival order. The
    /// order in which a worker in pull mode tries its queues.
    pub fn order(&self, candidates: &[Candidate<'_>]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..candidates.len())
            .filter(|&index| self.may_start(candidates[index].tenant))
            .collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&candidates[a], &candidates[b]);
            let last = |tenant: &str| self.last_start.get(tenant).copied();
            self.start_tag(x.tenant)
                .total_cmp(&self.start_tag(y.tenant))
                .then_with(|| last(x.tenant).cmp(&last(y.tenant)))
                .then_with(|| x.tenant.cmp(y.tenant))
                .then_with(|| y.level.cmp(&x.level))
                .then(a.cmp(&b))
        });
        order
    }

    /// Charges a job's tenant its model's estimated run time.
    pub fn started(&mut self, tenant: &str, level: Level, model: &str) -> Charge {
        let weight = self.tenants.weight(tenant);
        let estimate_s = self
            .estimates
            .get(model)
            .copied()
            .unwrap_or(FIRST_ESTIMATE_S);
        let start = self.start_tag(tenant);
        self.clock = start;
        self.finish
            .insert(tenant.to_owned(), start + estimate_s / weight);
        self.starts += 1;
        self.last_start.insert(tenant.to_owned(), self.starts);
        let estimate = Duration::try_from_secs_f64(estimate_s).unwrap_or_default();
        let estimate = estimate.min(Duration::from_secs(86_400));
        let expected_end = Instant::now() + estimate;
        self.in_flight.insert(self.starts, (expected_end, estimate));
        if self.limit(tenant).is_some() {
            *self.running.entry(tenant.to_owned()).or_default() += 1;
        }
        Charge {
            id: self.starts,
            tenant: tenant.to_owned(),
            level,
            model: model.to_owned(),
            estimate_s,
            weight,
        }
    }

    /// Undoes the start of a job its tenant's `max_running` refused (at the
    /// claim): the tenant counts as at its limit until the next read.
    pub fn given_back(&mut self, charge: Charge) {
        self.in_flight.remove(&charge.id);
        if let Some(finish) = self.finish.get_mut(&charge.tenant) {
            *finish -= charge.estimate_s / charge.weight;
        }
        if let Some(limit) = self.limit(&charge.tenant) {
            self.running.insert(charge.tenant, limit);
        }
    }

    /// Settles a job's charge with the time it really ran (ended at
    /// `now`), and learns the model's run time from it.
    pub fn finished(&mut self, charge: Charge, ran: Duration, now: Instant) {
        let ran_s = ran.as_secs_f64();
        self.in_flight.remove(&charge.id);
        if let Some(running) = self.running.get_mut(&charge.tenant) {
            *running = running.saturating_sub(1);
        }
        if let Some(finish) = self.finish.get_mut(&charge.tenant) {
            *finish += (ran_s - charge.estimate_s) / charge.weight;
        }
        let estimate = self.estimates.entry(charge.model.clone()).or_insert(ran_s);
        *estimate += ESTIMATE_SMOOTHING * (ran_s - *estimate);
        self.recent = Some(Recent {
            tenant: charge.tenant,
            level: charge.level,
            model: charge.model,
            at: now,
        });
    }
}

/// Keeps a started job's expected end current in its scheduler: counted
/// from the start of its run (a job claimed ahead waits for its slot
/// first), forgotten when the run ends (its outcome is still being
/// recorded then, but its slot is free).
pub struct RunTimes {
    scheduler: Arc<Mutex<FairScheduler>>,
    id: u64,
}

impl RunTimes {
    pub fn new(scheduler: &Arc<Mutex<FairScheduler>>, charge: &Charge) -> RunTimes {
        RunTimes {
            scheduler: Arc::clone(scheduler),
            id: charge.id,
        }
    }

    /// The run begins now.
    pub fn began(&self) {
        let mut scheduler = lock(&self.scheduler);
        if let Some((end, estimate)) = scheduler.in_flight.get_mut(&self.id) {
            *end = Instant::now() + *estimate;
        }
    }

    /// The run ended: the slot is free.
    pub fn ended(&self) {
        lock(&self.scheduler).in_flight.remove(&self.id);
    }
}

/// The scheduler's lock; its state stays usable even if a holder panicked
/// (it only orders jobs).
pub fn lock(scheduler: &Mutex<FairScheduler>) -> std::sync::MutexGuard<'_, FairScheduler> {
    scheduler
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
