//! The decision's limits: VRAM, hosts, pins, replica bounds, expected
//! arrivals, and that every servable model is consumed somewhere.

use super::*;

#[test]
fn vram_limits_decide_who_can_serve_and_what_is_kept_beside() {
    let mut big = model("big", 10, 1000, 3000);
    big.vram_mib = 20_000;
    let mut small = model("small", 10, 1000, 3000);
    small.vram_mib = 10_000;
    let mut other = model("other", 10, 1000, 3000);
    other.vram_mib = 8_000;
    let both = ["big", "small", "other"];
    let w1 = with_resident(
        with_resident(worker("w1", &both), "other", 60_000),
        "small",
        60_000,
    );
    let decision = decide(&snapshot(vec![big, small, other], vec![w1]), &policy());
    assert_eq!(decision.unservable, ["big"]);
    assert!(!consumes(&decision, "w1", "big"));
    // small (10 GiB) and other (8 GiB) do not both fit 16 GiB: only the main
    // model's queue is consumed among the two... plus coverage of the other,
    // which has no other worker.
    let main = main_of(&decision, "w1").unwrap();
    assert!(main == "small" || main == "other");
    assert_eq!(decision.assignments["w1"].len(), 2, "{decision:?}");
}

#[test]
fn a_loaded_model_that_fits_beside_the_main_one_stays_consumed() {
    let w1 = with_resident(with_resident(worker("w1", ABC), "a", 60_000), "b", 50_000);
    let w2 = worker("w2", ABC);
    let decision = decide(
        &snapshot(
            vec![model("a", 50, 1000, 3000), model("b", 50, 1000, 3000)],
            vec![w1, w2],
        ),
        &policy(),
    );
    assert_eq!(decision.replicas("a"), 1);
    assert_eq!(decision.replicas("b"), 1);
    // 6 + 6 GiB fit 16 GiB: w1 serves both without loading.
    assert!(consumes(&decision, "w1", "a") && consumes(&decision, "w1", "b"));
}

#[test]
fn models_whose_measured_needs_fit_together_are_kept_beside_despite_their_declarations() {
    let decide_with = |packed_mib: u64| {
        let mut a = model("a", 50, 1000, 3000);
        let mut b = model("b", 50, 1000, 3000);
        for m in [&mut a, &mut b] {
            m.vram_mib = 10_000; // declared (and admitted): 20 GiB together
            m.packed_mib = packed_mib;
        }
        let w1 = with_resident(with_resident(worker("w1", ABC), "a", 60_000), "b", 50_000);
        decide(
            &snapshot(vec![a, b], vec![w1, worker("w2", ABC)]),
            &policy(),
        )
    };
    // By declaration 10 + 10 GiB do not fit 16 GiB: w1 keeps only its main model.
    let declared = decide_with(10_000);
    assert!(!(consumes(&declared, "w1", "a") && consumes(&declared, "w1", "b")));
    // Measured at 4 GiB each, they fit: w1 serves both without a load.
    let measured = decide_with(4_000);
    assert!(consumes(&measured, "w1", "a") && consumes(&measured, "w1", "b"));
}

#[test]
fn hosts_do_not_trade_models_and_the_result_ignores_snapshot_order() {
    let mut h2 = with_resident(worker("h2-w1", ABC), "a", 60_000);
    h2.host = "h2".into();
    let h1 = with_resident(worker("h1-w1", ABC), "b", 60_000);
    let models = vec![model("a", 40, 1000, 3000), model("b", 40, 1000, 3000)];
    let forward = decide(
        &snapshot(models.clone(), vec![h1.clone(), h2.clone()]),
        &policy(),
    );
    let backward = decide(&snapshot(models, vec![h2, h1]), &policy());
    assert_eq!(forward, backward);
    assert_eq!(main_of(&forward, "h1-w1"), Some("b"));
    assert_eq!(main_of(&forward, "h2-w1"), Some("a"));
}

#[test]
fn a_heavy_backlog_spreads_over_both_hosts() {
    let mut workers = Vec::new();
    for host in ["h1", "h2"] {
        for slot in 0..2 {
            let mut w = worker(&format!("{host}-w{slot}"), ABC);
            w.host = host.into();
            workers.push(w);
        }
    }
    let decision = decide(
        &snapshot(vec![model("a", 400, 1000, 3000)], workers),
        &policy(),
    );
    assert_eq!(decision.replicas("a"), 4, "{decision:?}");
}

#[test]
fn a_host_that_cannot_serve_a_model_never_gets_it() {
    let mut only_b = worker("h2-w1", &["b"]);
    only_b.host = "h2".into();
    let decision = decide(
        &snapshot(
            vec![model("a", 400, 1000, 3000), model("b", 0, 100, 1000)],
            vec![worker("h1-w1", ABC), only_b],
        ),
        &policy(),
    );
    assert_eq!(main_of(&decision, "h1-w1"), Some("a"));
    assert!(!consumes(&decision, "h2-w1", "a"));
    assert!(consumes(&decision, "h2-w1", "b"));
}

#[test]
fn pinned_models_stay_and_their_workers_are_never_taken() {
    let mut pinned = worker("w1", ABC);
    pinned.pinned = vec!["c".into()];
    let mut b = model("b", 10, 1000, 3000);
    b.unserved_since_ms = Some(NOW - 60_000);
    let decision = decide(
        &snapshot(
            vec![model("a", 0, 100, 1000), b, model("c", 0, 100, 1000)],
            vec![pinned],
        ),
        &policy(),
    );
    assert_eq!(main_of(&decision, "w1"), Some("c"));
    // b starves but is still consumed by the only worker that can serve it.
    assert!(consumes(&decision, "w1", "b"));
}

#[test]
fn replica_bounds_are_honoured() {
    let mut a = model("a", 400, 1000, 3000);
    a.max_replicas = 2;
    let mut c = model("c", 0, 100, 1000);
    c.min_replicas = 1;
    let decision = decide(&snapshot(vec![a, c], workers(4)), &policy());
    assert_eq!(decision.replicas("a"), 2, "{decision:?}");
    assert_eq!(decision.replicas("c"), 1, "{decision:?}");
}

#[test]
fn expected_arrivals_count_as_work() {
    let mut a = model("a", 1, 1000, 3000);
    a.arrivals_per_s = 4.0;
    let ws = workers(3);
    let no_lookahead = decide(&snapshot(vec![a.clone()], ws.clone()), &policy());
    assert_eq!(no_lookahead.replicas("a"), 1);
    a.waiting = 5;
    let lookahead = Policy {
        lookahead_ms: 5_000,
        ..policy()
    };
    // 5 waiting + 20 expected jobs of 1 s: worth three workers.
    assert_eq!(decide(&snapshot(vec![a], ws), &lookahead).replicas("a"), 3);
}

#[test]
fn every_servable_model_is_consumed_somewhere() {
    let decision = decide(
        &snapshot(
            vec![
                model("a", 100, 1000, 3000),
                model("b", 100, 1000, 3000),
                model("c", 0, 10, 10),
            ],
            workers(2),
        ),
        &policy(),
    );
    for id in ["a", "b", "c"] {
        assert!(
            decision
                .assignments
                .values()
                .any(|set| set.iter().any(|m| m == id)),
            "{id}: {decision:?}"
        );
    }
}
