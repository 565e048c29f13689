//! The worker's side of placement: which queues to consume (the assignment a
//! dispatcher publishes in Redis) and which held job to run next (affinity).
//!
//! Without an assignment (placement off, no placing dispatcher, or one that
//! stopped renewing it) a worker consumes every model it can serve, so a
//! placement outage degrades to on-demand loading, never to idle workers.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The models to consume: the assignment's (those this worker can serve), or
/// every served model when there is no assignment.
pub fn desired_models(assignment: Option<&[String]>, served: &[String]) -> BTreeSet<String> {
    match assignment {
        Some(models) => models
            .iter()
            .filter(|m| served.contains(m))
            .cloned()
            .collect(),
        None => served.iter().cloned().collect(),
    }
}

/// Keeps `sender` equal to this worker's assignment: re-read when the placing
/// dispatcher announces a change for it, and every `poll` (so an expired
/// assignment falls back to "everything" within one poll).
pub async fn watch_assignment(
    store: Store,
    worker_id: String,
    poll: Duration,
    sender: watch::Sender<Option<Vec<String>>>,
    stop: CancellationToken,
) {
    let read = |store: Store, worker_id: String, sender: watch::Sender<Option<Vec<String>>>| async move {
        match store.assignment(&worker_id).await {
            Ok(assignment) => {
                let models = assignment.map(|a| a.models);
                sender.send_if_modified(|current| {
                    let changed = *current != models;
                    if changed {
                        tracing::info!(assignment = ?models, "placement assignment changed");
                        *current = models;
                    }
                    changed
                });
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the placement assignment; keeping the current one")
            }
        }
    };
    let mut ticker = tokio::time::interval(poll);
    loop {
        let mut changes = match store.assignment_changes().await {
            Ok(changes) => Some(Box::pin(changes)),
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to placement changes; polling only");
                None
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
                change = async { changes.as_mut()?.next().await }, if changes.is_some() => match change {
                    Some(id) if id == worker_id => {}
                    Some(_) => continue,
                    None => break,
                },
            }
            read(store.clone(), worker_id.clone(), sender.clone()).await;
        }
    }
}

/// How a worker picks among the jobs delivered to it; `None` means in order of arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Affinity {
    /// A job held this long runs next, loaded model or not.
    pub starve_after: Duration,
    /// How long a free worker waits for a job of a loaded model before it
    /// starts one that needs a load.
    pub grace: Duration,
}

/// What to do with a free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Run the held job at this index.
    Run(usize),
    /// Wait until then for a job of a loaded model.
    Wait(Instant),
}

/// Picks the next job among `held` (model, when received), oldest first:
/// a starving job, else a job of a loaded model, else, once the grace after
/// `free_since` has passed (or when no loaded model is consumed), the oldest.
pub fn choose(
    held: &[(&str, Instant)],
    loaded: &BTreeSet<String>,
    consumed: &BTreeSet<String>,
    affinity: Option<Affinity>,
    free_since: Instant,
    now: Instant,
) -> Choice {
    let Some(affinity) = affinity else {
        return Choice::Run(0);
    };
    if let Some(starving) = held
        .iter()
        .enumerate()
        .filter(|(_, (_, at))| now.duration_since(*at) >= affinity.starve_after)
        .min_by_key(|(_, (_, at))| *at)
    {
        return Choice::Run(starving.0);
    }
    if let Some(warm) = held.iter().position(|(m, _)| loaded.contains(*m)) {
        return Choice::Run(warm);
    }
    let deadline = free_since + affinity.grace;
    if loaded.is_disjoint(consumed) || now >= deadline {
        Choice::Run(0)
    } else {
        Choice::Wait(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const AFFINITY: Affinity = Affinity {
        starve_after: Duration::from_secs(30),
        grace: Duration::from_millis(50),
    };

    #[test]
    fn without_affinity_jobs_run_in_arrival_order() {
        let now = Instant::now();
        let held = [("b", now), ("a", now)];
        let choice = choose(&held, &set(&["a"]), &set(&["a", "b"]), None, now, now);
        assert_eq!(choice, Choice::Run(0));
    }

    #[test]
    fn a_job_of_a_loaded_model_goes_first() {
        let now = Instant::now();
        let held = [("b", now), ("a", now)];
        let choice = choose(
            &held,
            &set(&["a"]),
            &set(&["a", "b"]),
            Some(AFFINITY),
            now,
            now,
        );
        assert_eq!(choice, Choice::Run(1));
    }

    #[test]
    fn a_load_waits_for_the_grace_then_runs() {
        let start = Instant::now();
        let held = [("b", start)];
        let loaded = set(&["a"]);
        let consumed = set(&["a", "b"]);
        assert_eq!(
            choose(&held, &loaded, &consumed, Some(AFFINITY), start, start),
            Choice::Wait(start + AFFINITY.grace)
        );
        let later = start + AFFINITY.grace;
        assert_eq!(
            choose(&held, &loaded, &consumed, Some(AFFINITY), start, later),
            Choice::Run(0)
        );
        // Nothing loaded is consumed: no job of a loaded model can come.
        assert_eq!(
            choose(&held, &loaded, &set(&["b"]), Some(AFFINITY), start, start),
            Choice::Run(0)
        );
    }

    #[test]
    fn a_starving_job_beats_loaded_models() {
        let now = Instant::now() + Duration::from_secs(60);
        let held = [("a", now), ("b", now - Duration::from_secs(31))];
        let choice = choose(
            &held,
            &set(&["a"]),
            &set(&["a", "b"]),
            Some(AFFINITY),
            now,
            now,
        );
        assert_eq!(choice, Choice::Run(1));
    }

    #[test]
    fn the_assignment_narrows_to_served_models_and_none_means_all() {
        let served = vec!["a".to_string(), "b".to_string()];
        let assigned = vec!["b".to_string(), "z".to_string()];
        assert_eq!(desired_models(Some(&assigned), &served), set(&["b"]));
        assert_eq!(desired_models(None, &served), set(&["a", "b"]));
        assert!(desired_models(Some(&[]), &served).is_empty());
    }
}
