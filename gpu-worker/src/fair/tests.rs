use super::*;
use gpuq_common::config::TenantLimits;

fn scheduler(weights: &[(&str, f64)]) -> FairScheduler {
    let mut tenants = TenantsConfig::default();
    for (name, weight) in weights {
        let limits = TenantLimits {
            weight: *weight,
            ..TenantLimits::default()
        };
        tenants.named.insert((*name).to_owned(), limits);
    }
    FairScheduler::new(tenants)
}

fn job(tenant: &str, level: Level) -> Candidate<'_> {
    Candidate {
        tenant,
        level,
        model: "m",
    }
}

/// Long after any job ended: the pick among held jobs alone.
fn later() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// The candidate run now (no lookahead), if any.
fn run(s: &FairScheduler, held: &[Candidate<'_>]) -> Option<usize> {
    match s.pick(held, later(), true) {
        Pick::Run(index) => Some(index),
        _ => None,
    }
}

fn ran(s: &mut FairScheduler, tenant: &str, model: &str, run: Duration) {
    let charge = s.started(tenant, Level::Normal, model);
    s.finished(charge, run, Instant::now());
}

fn run_now(s: &FairScheduler, held: &[Candidate<'_>]) -> usize {
    run(s, held).expect("a job to run")
}

/// Runs `rounds` jobs of `run` each, one slot, both tenants always
/// backlogged; returns how many each ran.
fn share(s: &mut FairScheduler, rounds: usize, run: Duration) -> HashMap<String, usize> {
    let mut ran = HashMap::new();
    for _ in 0..rounds {
        let held = [job("a", Level::Normal), job("b", Level::Normal)];
        let chosen = held[run_now(s, &held)].tenant;
        *ran.entry(chosen.to_owned()).or_default() += 1;
        self::ran(s, chosen, "m", run);
    }
    ran
}

#[test]
fn backlogged_tenants_share_by_weight() {
    let mut equal = scheduler(&[]);
    let ran = share(&mut equal, 100, Duration::from_millis(200));
    assert_eq!((ran["a"], ran["b"]), (50, 50));
    let mut weighted = scheduler(&[("a", 3.0)]);
    let ran = share(&mut weighted, 100, Duration::from_millis(200));
    assert!((74..=76).contains(&ran["a"]), "{ran:?}");
}

#[test]
fn shares_are_of_gpu_time_not_job_count() {
    // a's jobs take 3x as long: it gets a quarter of the jobs, half the time.
    let mut s = scheduler(&[]);
    let mut time = HashMap::<&str, f64>::new();
    for _ in 0..400 {
        let held = [job("a", Level::Normal), job("b", Level::Normal)];
        let chosen = held[run_now(&s, &held)].tenant;
        let run = if chosen == "a" { 0.3 } else { 0.1 };
        ran(&mut s, chosen, chosen, Duration::from_secs_f64(run));
        *time.entry(chosen).or_default() += run;
    }
    let a_share = time["a"] / (time["a"] + time["b"]);
    assert!((0.45..=0.55).contains(&a_share), "{a_share}");
}

#[test]
fn a_tenant_arriving_late_runs_next_and_does_not_cash_in_idle_time() {
    let mut s = scheduler(&[]);
    share(&mut s, 1, Duration::from_millis(200));
    for _ in 0..50 {
        ran(&mut s, "a", "m", Duration::from_millis(200));
    }
    // b held behind a's backlog: b runs next, then they alternate.
    let held = [
        job("a", Level::Normal),
        job("a", Level::Normal),
        job("b", Level::Normal),
    ];
    assert_eq!(run(&s, &held), Some(2));
    let ran = share(&mut s, 20, Duration::from_millis(200));
    assert_eq!((ran["a"], ran["b"]), (10, 10));
}

#[test]
fn a_tenant_at_its_max_running_is_passed_over_until_a_job_ends() {
    let mut s = scheduler(&[]);
    s.tenants.named.insert(
        "a".into(),
        TenantLimits {
            max_running: Some(2),
            ..TenantLimits::default()
        },
    );
    assert_eq!(s.limited_tenants(), ["a"]);
    // Another worker runs one of a's jobs.
    s.set_running([("a".to_owned(), 1)].into());
    let held = [job("a", Level::High), job("b", Level::Low)];
    assert_eq!(run(&s, &held), Some(0));
    let charge = s.started("a", Level::High, "m");
    assert_eq!(run(&s, &held), Some(1), "a is at 2 running");
    assert_eq!(s.pick(&held[..1], later(), true), Pick::Blocked);
    s.finished(charge, Duration::from_millis(10), Instant::now());
    assert_eq!(run(&s, &held[..1]), Some(0));
}

#[test]
fn within_a_tenant_the_highest_level_then_arrival_order() {
    let s = scheduler(&[]);
    let held = [
        job("a", Level::Low),
        job("a", Level::Normal),
        job("a", Level::High),
        job("a", Level::High),
    ];
    assert_eq!(run(&s, &held), Some(2));
    assert_eq!(run(&s, &held[..2]), Some(1));
    assert_eq!(s.pick(&[], later(), true), Pick::Blocked);
}

#[test]
fn a_free_slot_waits_briefly_for_the_queue_that_comes_first() {
    // heavy (weight 3) just ended a job; only light's is held: heavy's
    // next delivery is on its way and comes first.
    let mut s = scheduler(&[("heavy", 3.0)]);
    ran(&mut s, "light", "m", Duration::from_millis(200));
    ran(&mut s, "heavy", "m", Duration::from_millis(200));
    let ended = Instant::now();
    let light = [job("light", Level::Normal)];
    assert!(matches!(s.pick(&light, ended, true), Pick::Wait(until) if until <= ended + LOOKAHEAD));
    let both = [job("light", Level::Normal), job("heavy", Level::Normal)];
    assert_eq!(s.pick(&both, ended, true), Pick::Run(1), "it arrived");
    assert_eq!(
        s.pick(&light, ended + LOOKAHEAD, true),
        Pick::Run(0),
        "it did not"
    );
    // Another model's jobs never wait for it.
    let other = [Candidate {
        tenant: "light",
        level: Level::Normal,
        model: "n",
    }];
    assert_eq!(s.pick(&other, ended, true), Pick::Run(0));
    // Equal weights: the tenant that just ran does not go first.
    let mut equal = scheduler(&[]);
    ran(&mut equal, "b", "m", Duration::from_millis(200));
    ran(&mut equal, "a", "m", Duration::from_millis(200));
    let b = [job("b", Level::Normal)];
    assert_eq!(equal.pick(&b, Instant::now(), true), Pick::Run(0));
    // Levels: a high job just ended; the normal one held waits for the next high.
    let mut levels = scheduler(&[]);
    let charge = levels.started("a", Level::High, "m");
    levels.finished(charge, Duration::from_millis(200), ended);
    let normal = [job("a", Level::Normal)];
    assert_eq!(
        levels.pick(&normal, ended, true),
        Pick::Wait(ended + LOOKAHEAD)
    );
}

#[test]
fn without_lookahead_a_free_slot_never_waits() {
    // As above, heavy's next job comes first, but in pull mode it is not
    // on its way: the held one runs.
    let mut s = scheduler(&[("heavy", 3.0)]);
    ran(&mut s, "light", "m", Duration::from_millis(200));
    ran(&mut s, "heavy", "m", Duration::from_millis(200));
    let light = [job("light", Level::Normal)];
    assert_eq!(s.pick(&light, Instant::now(), false), Pick::Run(0));
}

#[test]
fn the_pull_order_is_tenants_by_share_then_levels() {
    let mut s = scheduler(&[]);
    s.tenants.named.insert(
        "capped".into(),
        TenantLimits {
            max_running: Some(1),
            ..TenantLimits::default()
        },
    );
    s.set_running([("capped".to_owned(), 1)].into());
    ran(&mut s, "a", "m", Duration::from_millis(200));
    // a has run: b (never ran) comes first, then a; capped is at its limit.
    let queues = [
        job("a", Level::High),
        job("capped", Level::High),
        job("a", Level::Normal),
        job("b", Level::Low),
        job("b", Level::High),
    ];
    assert_eq!(s.order(&queues), [4, 3, 0, 2]);
    // Its first is the job `pick` runs.
    let first = s.order(&queues)[0];
    assert_eq!(s.pick(&queues, later(), false), Pick::Run(first));
    // Over many rounds the order gives each tenant its share, as pick does.
    let mut ran_a = 0;
    for _ in 0..100 {
        let both = [job("a", Level::Normal), job("b", Level::Normal)];
        let chosen = both[s.order(&both)[0]].tenant;
        ran_a += usize::from(chosen == "a");
        ran(&mut s, chosen, "m", Duration::from_millis(200));
    }
    assert_eq!(ran_a, 50);
}

#[test]
fn the_soonest_end_is_the_first_running_job_by_its_model_estimate() {
    let mut s = scheduler(&[("a", 1.0), ("b", 1.0)]);
    assert_eq!(s.soonest_end(), None, "nothing runs");
    // The model's first job is assumed to take FIRST_ESTIMATE_S; a run of
    // 200 ms teaches the estimate that figure.
    ran(&mut s, "a", "fast", Duration::from_millis(200));
    let before = Instant::now();
    let slow = s.started("a", Level::Normal, "slow");
    let fast = s.started("b", Level::Normal, "fast");
    let after = Instant::now();
    let within = |end: Option<Instant>, estimate: Duration| {
        let end = end.expect("a job runs");
        before + estimate <= end && end <= after + estimate
    };
    assert!(within(s.soonest_end(), Duration::from_millis(200)));
    s.finished(fast, Duration::from_millis(200), Instant::now());
    let first = Duration::from_secs_f64(FIRST_ESTIMATE_S);
    assert!(within(s.soonest_end(), first), "the slow one is left");
    s.given_back(slow);
    assert_eq!(s.soonest_end(), None, "a job given back no longer runs");
}

#[test]
fn a_run_that_ended_frees_its_slot_before_its_outcome_is_recorded() {
    let shared = Arc::new(Mutex::new(scheduler(&[("a", 1.0)])));
    let charge = lock(&shared).started("a", Level::Normal, "m");
    let times = RunTimes::new(&shared, &charge);
    // Claimed ahead, it waited; its run begins later and is counted from then.
    let claimed_end = lock(&shared).soonest_end().expect("in flight");
    std::thread::sleep(Duration::from_millis(5));
    times.began();
    let end = lock(&shared).soonest_end().expect("in flight");
    assert!(
        end >= claimed_end + Duration::from_millis(5),
        "counted from its run"
    );
    times.ended();
    assert_eq!(lock(&shared).soonest_end(), None, "its slot is free");
    lock(&shared).finished(charge, Duration::from_millis(10), Instant::now());
    assert_eq!(lock(&shared).soonest_end(), None);
}
