//! Which queues each worker consumes once main models are decided: its main
//! model, models pinned to it, loaded models with work that fit beside the main
//! one (unless they would slow a busier main model), everything idle for
//! workers without a main model, and every servable model somewhere. Also
//! the questions the rules ask of what a worker holds: whether a model is
//! served beside another main one, and whether a load would unload one.

use std::collections::{BTreeMap, BTreeSet};

use super::{Planner, WorkerState};

impl Planner<'_> {
    /// Whether a worker with another main model will consume this one too
    /// (it is loaded there and fits beside the main): the model is served,
    /// at no load, though it has no worker of its own.
    pub(super) fn served_beside(&self, id: &str) -> bool {
        self.snapshot.workers.iter().any(|worker| {
            Self::resident(worker, id).is_some()
                && self.can_serve(worker, id)
                && self
                    .main
                    .get(worker.id.as_str())
                    .is_some_and(|&main| main != id && self.fits_beside(worker, main, id))
        })
    }

    /// Whether a worker on `main` should also take jobs of `other`, loaded
    /// there. A worker alternates between the queues it consumes, so a side
    /// model halves its main model's pace: worth it for a model no worker
    /// has as its main, or one with at least as much work per worker as the
    /// main (the busier of the two gains). A side model the worker consumes
    /// already keeps it until the main has twice its work per worker, so
    /// the choice does not flip at every round as both backlogs drain.
    fn side_helps(&self, worker: &WorkerState, main: &str, other: &str) -> bool {
        let others = self.replicas(other);
        let kept = if worker.consuming.iter().any(|m| m == other) {
            2.0
        } else {
            1.0
        };
        others == 0 || self.share(main, self.replicas(main)) <= kept * self.share(other, others)
    }

    /// Whether serving the model beside another worker's main model is
    /// enough: it is, while its work is less than half a worker (the two
    /// models alternate) does in one load time.
    pub(super) fn beside_suffices(&self, id: &str) -> bool {
        let load = self.model(id).map_or(0, |m| m.load_ms) as f64;
        self.served_beside(id) && 2.0 * self.work_ms(id) <= load
    }

    /// Whether loading the model on the worker would unload one it holds
    /// (it holds its most models already, or they and this one exceed its budget).
    pub(super) fn evicts(&self, worker: &WorkerState, id: &str) -> bool {
        if worker.resident.is_empty() || Self::resident(worker, id).is_some() {
            return false;
        }
        let vram = |id: &str| self.model(id).map_or(0, |m| m.packed_mib);
        let held: u64 = worker.resident.iter().map(|(m, _)| vram(m)).sum();
        worker.resident.len() >= worker.max_models
            || worker.budget_mib.is_some_and(|b| held + vram(id) > b)
    }

    fn fits_beside(&self, worker: &WorkerState, main: &str, other: &str) -> bool {
        // Measured needs where known: two models whose measured peaks fit
        // together share a worker even if their declarations do not.
        let vram = |id: &str| self.model(id).map_or(0, |m| m.packed_mib);
        worker.max_models >= 2
            && worker
                .budget_mib
                .is_none_or(|b| vram(main) + vram(other) <= b)
    }

    pub(super) fn assignments(&self) -> BTreeMap<String, Vec<String>> {
        let mut assignments: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for worker in &self.snapshot.workers {
            let set = assignments.entry(worker.id.clone()).or_default();
            set.extend(
                worker
                    .pinned
                    .iter()
                    .map(String::as_str)
                    .filter(|m| self.models.contains_key(m)),
            );
            match self.main.get(worker.id.as_str()) {
                Some(&main) => {
                    set.insert(main);
                    for (other, _) in &worker.resident {
                        if other != main
                            && self.active(other)
                            && self.can_serve(worker, other)
                            && self.fits_beside(worker, main, other)
                            && self.side_helps(worker, main, other)
                        {
                            set.insert(other);
                        }
                    }
                }
                // An idle worker takes the models it has loaded, and, when it has
                // none loaded (nothing to evict), every idle model it can serve.
                None => set.extend(
                    self.models
                        .keys()
                        .copied()
                        .filter(|id| self.can_serve(worker, id))
                        .filter(|id| {
                            Self::resident(worker, id).is_some()
                                || (worker.resident.is_empty() && !self.active(id))
                        }),
                ),
            }
        }
        // Every model some worker can serve is consumed somewhere: by an idle
        // worker if there is one, the one that consumed it already, else one
        // that has it loaded, else the one with the least work on its main model.
        for &id in self.models.keys() {
            if assignments.values().any(|set| set.contains(id)) {
                continue;
            }
            let fallback = self
                .snapshot
                .workers
                .iter()
                .filter(|w| self.can_serve(w, id))
                .min_by(|a, b| {
                    let load = |w: &WorkerState| {
                        self.main
                            .get(w.id.as_str())
                            .map_or(0.0, |m| self.share(m, self.replicas(m)))
                    };
                    let cold = |w: &WorkerState| Self::resident(w, id).is_none();
                    let new = |w: &WorkerState| !w.consuming.iter().any(|m| m == id);
                    let busy = |w: &WorkerState| self.main.contains_key(w.id.as_str());
                    busy(a)
                        .cmp(&busy(b))
                        .then(new(a).cmp(&new(b)))
                        .then(cold(a).cmp(&cold(b)))
                        .then(load(a).total_cmp(&load(b)))
                        .then(a.id.cmp(&b.id))
                });
            if let Some(worker) = fallback {
                assignments.entry(worker.id.clone()).or_default().insert(id);
            }
        }
        assignments
            .into_iter()
            .map(|(worker, set)| (worker, set.into_iter().map(str::to_owned).collect()))
            .collect()
    }
}
