//! Trading main models to save a load. When a worker is given a model it
//! does not hold while another worker holds that model loaded beside a
//! different main one, the two trade: the holder takes the model at no
//! load, and the first worker takes the holder's main model, when that costs
//! it less than the load it saves (the same workers end up serving the same
//! models, for less loading). A holder that does not hold its own main model
//! yet (just given it) would load it anyway, so that load is no extra cost:
//! the trade then always saves the given model's load.

use super::{Planner, WorkerState};

impl<'a> Planner<'a> {
    /// Makes `id` the main model of `worker`, or trades (see the module).
    pub(super) fn give(&mut self, worker: &'a WorkerState, id: &'a str) {
        let own = self.load_ms(worker, id);
        let trade = if own > 0.0 {
            self.snapshot
                .workers
                .iter()
                .filter(|holder| holder.id != worker.id && !self.held_by_pin(holder))
                .filter(|holder| Self::resident(holder, id).is_some() && self.can_serve(holder, id))
                .filter_map(|holder| {
                    let theirs = *self.main.get(holder.id.as_str())?;
                    // What the trade adds: the worker's load of `theirs`,
                    // less the load the holder would have made of it.
                    let extra = self.load_ms(worker, theirs) - self.load_ms(holder, theirs);
                    (theirs != id && self.can_serve(worker, theirs) && extra < own)
                        .then_some((holder, theirs, extra))
                })
                .min_by(|a, b| a.2.total_cmp(&b.2).then(a.0.id.cmp(&b.0.id)))
        } else {
            None
        };
        match trade {
            Some((holder, theirs, _)) => {
                self.main.insert(&holder.id, id);
                self.main.insert(&worker.id, theirs);
            }
            None => {
                self.main.insert(&worker.id, id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::{model, policy, with_resident, worker, NOW};
    use super::super::{Planner, Policy, Snapshot};

    /// Each worker's main model after `id` is given to the worker at
    /// `index`, w0 being on m3 before.
    fn after_giving<'a>(
        snapshot: &'a Snapshot,
        policy: &'a Policy,
        index: usize,
        id: &'a str,
    ) -> BTreeMap<&'a str, &'a str> {
        let mut planner = Planner {
            snapshot,
            policy,
            models: snapshot.models.iter().map(|m| (m.id.as_str(), m)).collect(),
            main: [("w0", "m3")].into_iter().collect(),
        };
        planner.give(&snapshot.workers[index], id);
        planner.main
    }

    #[test]
    fn a_worker_given_a_model_another_holds_takes_that_workers_main_instead() {
        // w1 is to serve m1 (3 s load); w0 has m1 loaded beside its main m3,
        // which w1 loads in 1 s: w0 takes m1, w1 takes m3.
        let mut m1 = model("m1", 11, 300, 3000);
        m1.vram_mib = 9000;
        let m3 = model("m3", 160, 150, 1000);
        let eligible: &[&str] = &["m1", "m2", "m3"];
        let w0 = with_resident(
            with_resident(worker("w0", eligible), "m1", 13_000),
            "m3",
            2_000,
        );
        let w1 = with_resident(worker("w1", eligible), "m2", 20_000);
        let snapshot = Snapshot {
            now_ms: NOW,
            models: vec![m1, model("m2", 0, 200, 2000), m3],
            workers: vec![w0, w1],
        };
        let policy = policy();
        let main = after_giving(&snapshot, &policy, 1, "m1");
        assert_eq!(main.get("w0"), Some(&"m1"));
        assert_eq!(main.get("w1"), Some(&"m3"));
        // A worker that holds the model itself just takes it.
        let main = after_giving(&snapshot, &policy, 0, "m1");
        assert_eq!(main.get("w0"), Some(&"m1"));
        assert_eq!(main.get("w1"), None);
    }

    #[test]
    fn a_holder_not_yet_holding_its_own_main_model_trades_even_for_a_longer_load() {
        // w0 holds m1 and was just given m3, which it has not loaded; w1,
        // given m1 (1 s), would load m3 (2.5 s). Without the trade both load
        // (3.5 s); with it only w1 loads m3 (2.5 s).
        let eligible: &[&str] = &["m1", "m3"];
        let w0 = with_resident(worker("w0", eligible), "m1", 13_000);
        let snapshot = Snapshot {
            now_ms: NOW,
            models: vec![model("m1", 11, 300, 1000), model("m3", 40, 150, 2500)],
            workers: vec![w0, worker("w1", eligible)],
        };
        let policy = policy();
        let main = after_giving(&snapshot, &policy, 1, "m1");
        assert_eq!(main.get("w0"), Some(&"m1"));
        assert_eq!(main.get("w1"), Some(&"m3"));
        // Had w0 held m3 already, the trade would cost w1 2.5 s to save 1 s.
        let w0 = with_resident(
            with_resident(worker("w0", eligible), "m1", 13_000),
            "m3",
            5_000,
        );
        let held = Snapshot {
            workers: vec![w0, worker("w1", eligible)],
            ..snapshot.clone()
        };
        let main = after_giving(&held, &policy, 1, "m1");
        assert_eq!(main.get("w0"), Some(&"m3"));
        assert_eq!(main.get("w1"), Some(&"m1"));
    }
}
