//! The claim-ahead decision: which held job, if any, to claim while every
//! slot is busy, so that it only waits for the slot (issue 18).
//!
//! Without it, a slot that frees waits for the session to wake, pick the
//! next job, decode it and claim it in Redis before the model runs again:
//! a Redis round trip and two task hand-offs per job, while the GPU idles.
//! Claimed ahead, the job shows `processing` a little early, so only a job
//! that will not wait long is claimed: one at a time, and only once the
//! first running model run is expected (by its model's run-time estimate,
//! `crate::fair::RunTimes`) to end within [`CLAIM_AHEAD_WINDOW`]. It is the job the
//! freed slot would run anyway (placement's choice, then fair share's), and
//! it is never one that would change by waiting: with placement, only a
//! job of a loaded model; never one of a tenant with a `max_running` (its
//! claim counts as running across the fleet).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::fair_pick;
use crate::consumers::Held;
use crate::fair::{lock, FairScheduler, Pick};
use crate::placement::{choose, Affinity, Choice, Queues};

/// How long before a running job's expected end the next one is claimed: a
/// job claimed ahead waits about this long for its slot when estimates hold.
pub const CLAIM_AHEAD_WINDOW: Duration = Duration::from_millis(100);

/// What to do while every slot is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ahead {
    /// Claim the held job at this index now.
    Claim(usize),
    /// Look again then: a running job is expected to end soon after.
    At(Instant),
    /// Nothing to claim ahead.
    No,
}

/// The held job to claim ahead while every slot is busy (see the module).
/// `loaded` is asked for the pool's models only when placement needs them.
pub fn ahead_pick(
    held: &VecDeque<Held>,
    loaded: impl FnOnce() -> BTreeSet<String>,
    queues: &Queues,
    affinity: Option<Affinity>,
    scheduler: &Mutex<FairScheduler>,
    now: Instant,
) -> Ahead {
    if held.is_empty() {
        return Ahead::No;
    }
    let Some(soonest) = lock(scheduler).soonest_end() else {
        return Ahead::No;
    };
    if soonest > now + CLAIM_AHEAD_WINDOW {
        return Ahead::At(soonest - CLAIM_AHEAD_WINDOW);
    }
    let index = match affinity {
        None => 0,
        Some(_) => {
            let loaded = loaded();
            let waiting: Vec<(&str, Instant)> = held
                .iter()
                .map(|h| (h.model.as_str(), h.received))
                .collect();
            match choose(&waiting, &loaded, queues, affinity, now, now) {
                Choice::Run(index) if loaded.contains(&held[index].model) => index,
                _ => return Ahead::No,
            }
        }
    };
    match fair_pick(held, index, affinity.is_some(), scheduler, now, false) {
        Pick::Run(pick) if !lock(scheduler).is_limited(&held[pick].sub.tenant) => {
            Ahead::Claim(pick)
        }
        _ => Ahead::No,
    }
}
