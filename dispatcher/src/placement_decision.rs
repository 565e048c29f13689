//! Backlog-aware placement: which model each worker serves, decided from the
//! backlog every host can see.
//!
//! Loading a model takes seconds to minutes, so a worker that follows every
//! queue swaps models per job. [`decide`] gives each worker at most one *main*
//! model (the backlog it works down), chosen so that every model with work has
//! a worker (no starvation), heavy backlogs get more workers when the extra
//! work outweighs a load, and warm workers keep their model. A pure function
//! over a [`Snapshot`], so every rule is unit-tested without brokers.
//!
//! The rules, in order:
//! 1. pinned models stay on their workers;
//! 2. a worker keeps the main model of the last decision, else the model it
//!    is on, while that model has jobs waiting (decisions do not flap);
//! 3. free workers go to the models with the most work per worker, a model
//!    without any worker first; a worker that would have to load the model is
//!    added only when it ends the model's work sooner by more than its load
//!    costs the fleet (a model another worker serves beside its main one,
//!    loaded there, counts as having half of that worker);
//! 4. a model without a worker takes one from a model that has two or more
//!    (one served beside another main model only while its work exceeds
//!    what half a worker does in one load time); a
//!    model whose backlog waited past `max_queue_wait_ms` takes one from any
//!    model that is not starving itself (min residency does not protect it);
//! 5. workers move from light to heavy backlogs when the gain beats the load,
//!    once they have held their model (loaded or assigned) for `min_residency_ms`.
//!
//! Each worker then consumes its main model, the models pinned to it, and
//! active models already loaded there that fit beside the main one (unless
//! they have less work per worker than the main: a worker alternates between
//! its queues, so a side model halves the main one's pace). A worker
//! without a main model consumes the models it has loaded, or, with none
//! loaded, every idle model it can serve (so a fresh system answers at once
//! and a burst is not loaded by every idle worker). Every model some worker
//! can serve is consumed by at least one worker.

use std::collections::{BTreeMap, BTreeSet};

pub use snapshot::{Decision, ModelState, Policy, Snapshot, WorkerState};

struct Planner<'a> {
    snapshot: &'a Snapshot,
    policy: &'a Policy,
    models: BTreeMap<&'a str, &'a ModelState>,
    main: BTreeMap<&'a str, &'a str>,
}

impl<'a> Planner<'a> {
    fn model(&self, id: &str) -> Option<&'a ModelState> {
        self.models.get(id).copied()
    }

    fn active(&self, id: &str) -> bool {
        self.model(id).is_some_and(|m| m.waiting + m.running > 0)
    }

    /// Jobs not started yet.
    fn waiting(&self, id: &str) -> bool {
        self.model(id).is_some_and(|m| m.waiting > 0)
    }

    fn starving(&self, id: &str) -> bool {
        self.model(id)
            .and_then(|m| m.unserved_since_ms)
            .is_some_and(|since| {
                self.snapshot.now_ms.saturating_sub(since) >= self.policy.max_queue_wait_ms
            })
    }

    /// Milliseconds of work the model has: its jobs, plus arrivals expected
    /// within the look-ahead.
    fn work_ms(&self, id: &str) -> f64 {
        self.model(id).map_or(0.0, |m| {
            let expected = m.arrivals_per_s * self.policy.lookahead_ms as f64 / 1000.0;
            ((m.waiting + m.running) as f64 + expected) * m.run_ms.max(1) as f64
        })
    }

    /// Most workers worth giving the model: no more than its jobs not started
    /// yet (a worker on its last job is free to move on), its `max_replicas`,
    /// and at least its `min_replicas`.
    fn cap(&self, id: &str) -> usize {
        self.model(id).map_or(0, |m| {
            let expected = m.arrivals_per_s * self.policy.lookahead_ms as f64 / 1000.0;
            let jobs = m.waiting as usize + expected.round() as usize;
            let limit = if m.max_replicas == 0 {
                usize::MAX
            } else {
                m.max_replicas as usize
            };
            jobs.max(m.min_replicas as usize).min(limit)
        })
    }

    fn replicas(&self, id: &str) -> usize {
        self.main.values().filter(|m| **m == id).count()
    }

    fn can_serve(&self, worker: &WorkerState, id: &str) -> bool {
        worker.eligible.iter().any(|m| m == id)
            && self
                .model(id)
                .is_some_and(|m| worker.budget_mib.is_none_or(|b| m.vram_mib <= b))
    }

    fn resident(worker: &WorkerState, id: &str) -> Option<u64> {
        worker
            .resident
            .iter()
            .find(|(m, _)| m == id)
            .map(|(_, at)| *at)
    }

    /// The model the worker is on: the one it runs, else its most recently
    /// loaded model that has work.
    fn current(&self, worker: &'a WorkerState) -> Option<&'a str> {
        if let Some(running) = worker
            .running
            .iter()
            .find(|m| self.models.contains_key(m.as_str()))
        {
            return Some(running);
        }
        worker
            .resident
            .iter()
            .filter(|(m, _)| self.active(m))
            .max_by_key(|(m, at)| (*at, std::cmp::Reverse(m.as_str())))
            .map(|(m, _)| m.as_str())
    }

    /// A worker still inside its model's minimum residency, or running it.
    fn settled(&self, worker: &WorkerState, id: &str) -> bool {
        let recent =
            |at: u64| self.snapshot.now_ms.saturating_sub(at) < self.policy.min_residency_ms;
        worker.running.iter().any(|m| m == id)
            || Self::resident(worker, id).is_some_and(recent)
            || worker
                .main
                .as_ref()
                .is_some_and(|(main, since)| main == id && recent(*since))
    }

    /// Work per worker if the model had `replicas` workers.
    fn share(&self, id: &str, replicas: usize) -> f64 {
        self.work_ms(id) / replicas.max(1) as f64
    }

    fn load_ms(&self, worker: &WorkerState, id: &str) -> f64 {
        if Self::resident(worker, id).is_some() {
            0.0
        } else {
            self.model(id).map_or(0.0, |m| m.load_ms as f64)
        }
    }

    /// Whether one more (free) worker, which may have to load the model, is
    /// worth its load `L`: with `r` workers on `W` ms of work it ends the
    /// work `(W − r·L) / (r·(r+1))` sooner, and must beat `L / workers` (what
    /// its load takes from the fleet) while other models wait or it would
    /// unload a model it holds. A model served beside another worker's main
    /// model has half that worker (the two alternate).
    fn worth_another(&self, worker: &WorkerState, id: &str) -> bool {
        let replicas = self.replicas(id);
        let min = self.model(id).map_or(0, |m| m.min_replicas as usize);
        let beside = replicas == 0 && min == 0 && self.served_beside(id);
        if replicas < min.max(1) && !beside {
            return true;
        }
        let r = if beside { 0.5 } else { replicas as f64 };
        let load = self.load_ms(worker, id);
        let sooner = (self.work_ms(id) - r * load) / (r * (r + 1.0));
        let other_work = self.models.keys().any(|&m| m != id && self.waiting(m));
        let cost = if other_work || self.evicts(worker, id) {
            load / self.snapshot.workers.len().max(1) as f64
        } else {
            0.0
        };
        sooner > cost
    }

    /// Workers a model keeps whatever happens: one while it has work, and its `min_replicas`.
    fn floor(&self, id: &str) -> usize {
        let min = self.model(id).map_or(0, |m| m.min_replicas as usize);
        min.max(usize::from(self.active(id)))
    }

    /// A worker whose main model is pinned to it.
    fn held_by_pin(&self, worker: &WorkerState) -> bool {
        self.main
            .get(worker.id.as_str())
            .is_some_and(|main| worker.pinned.iter().any(|p| p == main))
    }

    fn pin(&mut self) {
        for worker in &self.snapshot.workers {
            let pinned: Vec<&str> = worker
                .pinned
                .iter()
                .map(String::as_str)
                .filter(|m| self.models.contains_key(m))
                .collect();
            let choice = pinned
                .iter()
                .find(|m| self.active(m))
                .or(pinned.first())
                .copied();
            if let Some(model) = choice {
                self.main.insert(&worker.id, model);
            }
        }
    }

    /// Workers stay where the last decision put them, else on the model they
    /// are on, while that model has jobs waiting for them.
    fn keep(&mut self) {
        for worker in &self.snapshot.workers {
            if self.main.contains_key(worker.id.as_str()) {
                continue;
            }
            let previous = worker.main.as_ref().map(|(m, _)| m.as_str());
            let choice = [previous, self.current(worker)]
                .into_iter()
                .flatten()
                .filter_map(|id| self.models.get_key_value(id).map(|(k, _)| *k))
                .find(|id| self.can_serve(worker, id) && self.replicas(id) < self.cap(id));
            if let Some(model) = choice {
                self.main.insert(&worker.id, model);
            }
        }
    }

    fn free_workers(&self) -> impl Iterator<Item = &'a WorkerState> + '_ {
        self.snapshot
            .workers
            .iter()
            .filter(|w| !self.main.contains_key(w.id.as_str()))
    }

    /// Order of preference among workers for a model: already loaded there,
    /// then workers whose loaded models have no work, then workers with room
    /// for it beside what they hold, then by id.
    fn preference(&self, worker: &WorkerState, id: &str) -> (bool, usize, bool, String) {
        let busy_residents = worker
            .resident
            .iter()
            .filter(|(m, _)| m != id && self.active(m))
            .count();
        (
            Self::resident(worker, id).is_none(),
            busy_residents,
            self.evicts(worker, id),
            worker.id.clone(),
        )
    }

    /// Priority of a model for its next worker: starving, then without any
    /// worker (nor served beside another worker's main model), then below
    /// `min_replicas`, then the most work per worker.
    fn priority(&self, id: &str) -> (bool, bool, bool, f64) {
        let replicas = self.replicas(id);
        let min = self.model(id).map_or(0, |m| m.min_replicas as usize);
        (
            self.starving(id) && replicas == 0,
            self.active(id) && replicas == 0 && !self.served_beside(id),
            replicas < min,
            self.share(id, replicas + 1),
        )
    }

    fn wants_workers(&self, id: &str) -> bool {
        let min = self.model(id).map_or(0, |m| m.min_replicas as usize);
        (self.active(id) || min > 0) && self.replicas(id) < self.cap(id)
    }

    fn fill(&mut self) {
        let mut exhausted: BTreeSet<&str> = BTreeSet::new();
        loop {
            let mut best: Option<(&'a str, &'a WorkerState)> = None;
            let mut best_priority = None;
            for &id in self.models.keys() {
                if exhausted.contains(id) || !self.wants_workers(id) {
                    continue;
                }
                let Some(worker) = self
                    .free_workers()
                    .filter(|w| self.can_serve(w, id))
                    .min_by_key(|w| self.preference(w, id))
                else {
                    exhausted.insert(id);
                    continue;
                };
                if !self.worth_another(worker, id) {
                    exhausted.insert(id);
                    continue;
                }
                let priority = self.priority(id);
                if best_priority
                    .as_ref()
                    .is_none_or(|b| priority_gt(&priority, b))
                {
                    best_priority = Some(priority);
                    best = Some((id, worker));
                }
            }
            let Some((id, worker)) = best else { return };
            self.give(worker, id);
        }
    }

    /// Gives models without a worker (and starving ones) a worker taken from
    /// another model.
    fn preempt(&mut self) {
        let mut models: Vec<&'a str> = self
            .models
            .keys()
            .copied()
            .filter(|id| self.waiting(id) && self.replicas(id) == 0)
            .filter(|id| self.starving(id) || !self.beside_suffices(id))
            .collect();
        // The longest-starved first, then the most work.
        models.sort_by(|a, b| {
            let since = |id: &str| {
                self.model(id)
                    .and_then(|m| m.unserved_since_ms)
                    .unwrap_or(u64::MAX)
            };
            since(a)
                .cmp(&since(b))
                .then(self.work_ms(b).total_cmp(&self.work_ms(a)))
                .then(a.cmp(b))
        });
        for id in models {
            let starving = self.starving(id);
            let donor = self
                .snapshot
                .workers
                .iter()
                .filter(|w| self.can_serve(w, id) && !self.held_by_pin(w))
                .filter_map(|w| {
                    let from = *self.main.get(w.id.as_str())?;
                    let from_replicas = self.replicas(from);
                    let allowed = if from_replicas > self.floor(from) {
                        true
                    } else {
                        starving && !self.starving(from)
                    };
                    allowed.then_some((w, from, from_replicas))
                })
                // Take from the model with the most workers, then the least work.
                .min_by(|(wa, fa, ra), (wb, fb, rb)| {
                    rb.cmp(ra)
                        .then(self.share(fa, *ra).total_cmp(&self.share(fb, *rb)))
                        .then(self.preference(wa, id).cmp(&self.preference(wb, id)))
                });
            if let Some((worker, _, _)) = donor {
                self.give(worker, id);
            }
        }
    }

    /// Moves settled-out workers from light backlogs to heavy ones while the
    /// heavy model's gain outweighs its load.
    fn rebalance(&mut self) {
        let limit = self.snapshot.workers.len() * self.models.len().max(1);
        for _ in 0..limit {
            let mut best: Option<(&'a WorkerState, &'a str, f64)> = None;
            for worker in &self.snapshot.workers {
                let Some(&from) = self.main.get(worker.id.as_str()) else {
                    continue;
                };
                if self.held_by_pin(worker) || self.settled(worker, from) {
                    continue;
                }
                let from_replicas = self.replicas(from);
                if from_replicas <= self.floor(from) {
                    continue;
                }
                let left = if self.active(from) {
                    self.share(from, from_replicas - 1)
                } else {
                    0.0
                };
                for &to in self.models.keys() {
                    if to == from || !self.active(to) || !self.can_serve(worker, to) {
                        continue;
                    }
                    let to_replicas = self.replicas(to);
                    if to_replicas >= self.cap(to) {
                        continue;
                    }
                    let gain = self.share(to, to_replicas + 1) - self.load_ms(worker, to) - left;
                    if gain > 0.0 && best.as_ref().is_none_or(|(_, _, g)| gain > *g) {
                        best = Some((worker, to, gain));
                    }
                }
            }
            let Some((worker, to, _)) = best else { return };
            self.main.insert(&worker.id, to);
        }
    }
}

/// Compares model priorities; the bools first, then work per worker.
fn priority_gt(a: &(bool, bool, bool, f64), b: &(bool, bool, bool, f64)) -> bool {
    (a.0, a.1, a.2)
        .cmp(&(b.0, b.1, b.2))
        .then(a.3.total_cmp(&b.3))
        .is_gt()
}

/// Decides which model each worker serves and which queues it consumes.
pub fn decide(snapshot: &Snapshot, policy: &Policy) -> Decision {
    let mut planner = Planner {
        snapshot,
        policy,
        models: snapshot.models.iter().map(|m| (m.id.as_str(), m)).collect(),
        main: BTreeMap::new(),
    };
    planner.pin();
    planner.keep();
    planner.fill();
    planner.preempt();
    planner.rebalance();
    let assignments = planner.assignments();
    let unservable = snapshot
        .models
        .iter()
        .filter(|m| planner.active(&m.id))
        .filter(|m| !snapshot.workers.iter().any(|w| planner.can_serve(w, &m.id)))
        .map(|m| m.id.clone())
        .collect();
    Decision {
        assignments,
        main: planner
            .main
            .iter()
            .map(|(w, m)| ((*w).to_owned(), (*m).to_owned()))
            .collect(),
        unservable,
    }
}

mod consumption;
pub mod inputs;
mod snapshot;
#[cfg(test)]
mod tests;
mod trade;
