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

use gpuq_common::record::Assignment;

use crate::store::Store;

/// What a worker consumes, from its assignment (or its absence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queues {
    pub models: BTreeSet<String>,
    /// The model whose jobs go first, loaded or not.
    pub main: Option<String>,
}

/// The models to consume: the assignment's (those this worker can serve), or
/// every served model when there is no assignment.
pub fn desired_queues(assignment: Option<&Assignment>, served: &[String]) -> Queues {
    match assignment {
        Some(assignment) => {
            let models: BTreeSet<String> = assignment
                .models
                .iter()
                .filter(|m| served.contains(m))
                .cloned()
                .collect();
            let main = assignment.main.clone().filter(|m| models.contains(m));
            Queues { models, main }
        }
        None => Queues {
            models: served.iter().cloned().collect(),
            main: None,
        },
    }
}

/// Keeps `sender` equal to this worker's assignment: re-read when the placing
/// dispatcher announces a change for it, and every `poll` (so an expired
/// assignment falls back to "everything" within one poll).
pub async fn watch_assignment(
    store: Store,
    worker_id: String,
    poll: Duration,
    sender: watch::Sender<Option<Assignment>>,
    stop: CancellationToken,
) {
    let read = |store: Store, worker_id: String, sender: watch::Sender<Option<Assignment>>| async move {
        match store.assignment(&worker_id).await {
            Ok(assignment) => {
                let key =
                    |a: &Option<Assignment>| a.as_ref().map(|a| (a.models.clone(), a.main.clone()));
                sender.send_if_modified(|current| {
                    let changed = key(current) != key(&assignment);
                    if changed {
                        tracing::info!(
                            models = ?assignment.as_ref().map(|a| &a.models),
                            main = ?assignment.as_ref().and_then(|a| a.main.as_ref()),
                            "placement assignment changed"
                        );
                    }
                    // The decision time moves every round; keep it without waking anyone.
                    *current = assignment;
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
            if changes.is_none() {
                // Polling only: try to subscribe again (on the primary of now) each poll.
                break;
            }
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

/// Picks the next job among `held` (model, when received), oldest first: a
/// starving job, else a job of the main model (loading it if need be), else a
/// job of a loaded model, else, once the grace after `free_since` has passed
/// (at once when neither the main model nor a loaded one is consumed), the oldest.
pub fn choose(
    held: &[(&str, Instant)],
    loaded: &BTreeSet<String>,
    queues: &Queues,
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
    if let Some(main) = queues.main.as_deref() {
        if let Some(first) = held.iter().position(|(m, _)| *m == main) {
            return Choice::Run(first);
        }
    }
    if let Some(warm) = held.iter().position(|(m, _)| loaded.contains(*m)) {
        return Choice::Run(warm);
    }
    let deadline = free_since + affinity.grace;
    let worth_waiting = queues.main.is_some() || !loaded.is_disjoint(&queues.models);
    if !worth_waiting || now >= deadline {
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

    fn queues(models: &[&str], main: Option<&str>) -> Queues {
        Queues {
            models: set(models),
            main: main.map(str::to_owned),
        }
    }

    #[test]
    fn without_affinity_jobs_run_in_arrival_order() {
        let now = Instant::now();
        let held = [("b", now), ("a", now)];
        let choice = choose(
            &held,
            &set(&["a"]),
            &queues(&["a", "b"], None),
            None,
            now,
            now,
        );
        assert_eq!(choice, Choice::Run(0));
    }

    #[test]
    fn a_job_of_a_loaded_model_goes_first() {
        let now = Instant::now();
        let held = [("b", now), ("a", now)];
        let all = queues(&["a", "b"], None);
        assert_eq!(
            choose(&held, &set(&["a"]), &all, Some(AFFINITY), now, now),
            Choice::Run(1)
        );
    }

    #[test]
    fn the_main_model_goes_before_loaded_ones_even_when_it_needs_a_load() {
        // Placement moved this worker to b; a stays consumed because it is loaded
        // and fits beside b, but it must not keep b from ever loading.
        let now = Instant::now();
        let held = [("a", now), ("b", now)];
        let moved = queues(&["a", "b"], Some("b"));
        assert_eq!(
            choose(&held, &set(&["a"]), &moved, Some(AFFINITY), now, now),
            Choice::Run(1)
        );
    }

    #[test]
    fn a_load_waits_for_the_grace_then_runs() {
        let start = Instant::now();
        let held = [("b", start)];
        let loaded = set(&["a"]);
        let all = queues(&["a", "b"], None);
        assert_eq!(
            choose(&held, &loaded, &all, Some(AFFINITY), start, start),
            Choice::Wait(start + AFFINITY.grace)
        );
        let later = start + AFFINITY.grace;
        assert_eq!(
            choose(&held, &loaded, &all, Some(AFFINITY), start, later),
            Choice::Run(0)
        );
        // Nothing loaded is consumed and no main model: no better job can come.
        assert_eq!(
            choose(
                &held,
                &loaded,
                &queues(&["b"], None),
                Some(AFFINITY),
                start,
                start
            ),
            Choice::Run(0)
        );
    }

    #[test]
    fn a_starving_job_beats_the_main_and_loaded_models() {
        let now = Instant::now() + Duration::from_secs(60);
        let held = [("a", now), ("c", now - Duration::from_secs(31)), ("b", now)];
        let q = queues(&["a", "b", "c"], Some("b"));
        assert_eq!(
            choose(&held, &set(&["a"]), &q, Some(AFFINITY), now, now),
            Choice::Run(1)
        );
    }

    #[test]
    fn the_assignment_narrows_to_served_models_and_none_means_all() {
        let served = vec!["a".to_string(), "b".to_string()];
        let assignment = |models: &[&str], main: Option<&str>| Assignment {
            models: models.iter().map(|m| m.to_string()).collect(),
            main: main.map(str::to_owned),
            by: "h".into(),
            decided_ms: 0,
        };
        assert_eq!(
            desired_queues(Some(&assignment(&["b", "z"], Some("z"))), &served),
            queues(&["b"], None)
        );
        assert_eq!(
            desired_queues(Some(&assignment(&["a", "b"], Some("b"))), &served),
            queues(&["a", "b"], Some("b"))
        );
        assert_eq!(desired_queues(None, &served), queues(&["a", "b"], None));
        assert!(desired_queues(Some(&assignment(&[], None)), &served)
            .models
            .is_empty());
    }
}
