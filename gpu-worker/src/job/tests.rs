use super::*;
use gpuq_common::{ConfigOverrides, ErrorCode, Value, ValueMap};

const CONFIG: &str = r#"
[jobs]
max_timeout_s = 1000
[[models]]
id = "a"
feature = "seg"
runtime = "echo"
vram_mib = 10
timeout_s = 30
[[models]]
id = "b"
feature = "seg"
runtime = "echo"
vram_mib = 10
[[models]]
id = "c"
feature = "rig"
runtime = "echo"
vram_mib = 10
"#;

fn setup() -> (Config, ModelConfig) {
    let config = Config::parse(CONFIG, None, &ConfigOverrides::default()).unwrap();
    let model_a = config.registry().model("a").unwrap().clone();
    (config, model_a)
}

fn job(feature: &str, model: Option<&str>) -> JobMessage {
    JobMessage {
        schema_version: 1,
        job_id: "j".into(),
        feature: feature.into(),
        model: model.map(str::to_owned),
        inputs: ValueMap::new(),
        priority: None,
        timeout_s: None,
        metadata: ValueMap::new(),
        submitted_at_ms: None,
        queue_timeout_s: None,
        submitted_by: None,
        tenant: None,
        webhook: None,
    }
}

#[test]
fn job_for_the_queue_model_runs_with_the_model_timeout() {
    let (config, a) = setup();
    assert_eq!(
        route(&job("seg", None), &a, &config),
        Ok(Route::Run {
            timeout: Duration::from_secs(30)
        })
    );
    assert_eq!(
        route(&job("seg", Some("a")), &a, &config),
        Ok(Route::Run {
            timeout: Duration::from_secs(30)
        })
    );
}

#[test]
fn job_timeout_overrides_model_timeout_within_limits() {
    let (config, a) = setup();
    let mut j = job("seg", None);
    j.timeout_s = Some(12);
    assert_eq!(
        route(&j, &a, &config),
        Ok(Route::Run {
            timeout: Duration::from_secs(12)
        })
    );
    for bad in [0, 1001] {
        j.timeout_s = Some(bad);
        assert_eq!(
            route(&j, &a, &config).unwrap_err().code,
            ErrorCode::InvalidParameter
        );
    }
}

#[test]
fn job_pinning_a_sibling_model_is_forwarded() {
    let (config, a) = setup();
    assert_eq!(
        route(&job("seg", Some("b")), &a, &config),
        Ok(Route::Forward {
            routing_key: "seg.b".into()
        })
    );
}

#[test]
fn job_pinning_an_unknown_or_foreign_model_fails() {
    let (config, a) = setup();
    assert_eq!(
        route(&job("seg", Some("zzz")), &a, &config)
            .unwrap_err()
            .code,
        ErrorCode::UnknownModel
    );
    assert_eq!(
        route(&job("seg", Some("c")), &a, &config).unwrap_err().code,
        ErrorCode::UnknownModel
    );
}

#[test]
fn feature_mismatch_and_unknown_feature_fail() {
    let (config, a) = setup();
    assert_eq!(
        route(&job("nope", None), &a, &config).unwrap_err().code,
        ErrorCode::UnknownFeature
    );
    assert_eq!(
        route(&job("rig", None), &a, &config).unwrap_err().code,
        ErrorCode::InvalidParameter
    );
}

#[test]
fn absurd_priority_fails() {
    let (config, a) = setup();
    let mut j = job("seg", None);
    j.priority = Some(200);
    assert_eq!(
        route(&j, &a, &config).unwrap_err().code,
        ErrorCode::InvalidParameter
    );
}

#[test]
fn an_invalid_tenant_fails_and_a_valid_one_runs() {
    let (config, a) = setup();
    let mut j = job("seg", None);
    j.tenant = Some("no spaces please".into());
    let error = route(&j, &a, &config).unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidParameter);
    assert!(error.message.contains("tenant"), "{}", error.message);
    j.tenant = Some("carol".into());
    assert!(route(&j, &a, &config).is_ok());
}

#[test]
fn a_job_timeout_below_the_model_floor_is_raised_to_it() {
    let (config, a) = setup();
    // Model "a": timeout_s = 30, no min_timeout_s: the default floor of 10 s.
    let mut j = job("seg", None);
    j.timeout_s = Some(1);
    assert_eq!(
        route(&j, &a, &config),
        Ok(Route::Run {
            timeout: Duration::from_secs(10)
        })
    );
    // An explicit floor.
    let floored = Config::parse(
        "[[models]]\nid = \"f\"\nfeature = \"seg\"\nruntime = \"echo\"\nvram_mib = 1\ntimeout_s = 60\nmin_timeout_s = 3",
        None,
        &ConfigOverrides::default(),
    )
    .unwrap();
    let f = floored.registry().model("f").unwrap().clone();
    for (asked, runs) in [(1, 3), (3, 3), (4, 4)] {
        j.timeout_s = Some(asked);
        assert_eq!(
            route(&j, &f, &floored),
            Ok(Route::Run {
                timeout: Duration::from_secs(runs)
            }),
            "timeout_s {asked}"
        );
    }
}

#[test]
fn the_default_floor_never_exceeds_a_short_model_timeout() {
    let short = Config::parse(
        "[[models]]\nid = \"s\"\nfeature = \"seg\"\nruntime = \"echo\"\nvram_mib = 1\ntimeout_s = 4",
        None,
        &ConfigOverrides::default(),
    )
    .unwrap();
    let s = short.registry().model("s").unwrap().clone();
    let mut j = job("seg", None);
    j.timeout_s = Some(1);
    assert_eq!(
        route(&j, &s, &short),
        Ok(Route::Run {
            timeout: Duration::from_secs(4)
        })
    );
}

#[test]
fn a_job_whose_size_class_needs_more_than_the_budget_is_given_back_to_its_vram_tier() {
    use gpuq_common::fair_share::Level;
    use gpuq_common::vram::ModelVram;
    let (config, model) = setup();
    let big_inputs = |job: &mut JobMessage| {
        job.inputs
            .insert("mesh".into(), Value::Binary(vec![0; 3 << 20]));
    };
    let mut small = job("seg", None);
    small.inputs.insert("text".into(), Value::from("hi"));
    let mut big = job("seg", None);
    big_inputs(&mut big);
    big.priority = Some(8);
    big.tenant = Some("acme".into());
    let mut learned = ModelVram::new("a", "w", 10);
    // Before anything is learned: nothing is given back.
    assert_eq!(
        give_back::decide(&big, &model, None, Some(8192), &config),
        None
    );
    learned.observe("bytes<=1KiB", 3_000, 1);
    learned.observe_out_of_memory("bytes<=4MiB", 8_193, 2);
    // The small class fits; no budget means nothing to give back for.
    assert_eq!(
        give_back::decide(&small, &model, Some(&learned), Some(8192), &config),
        None
    );
    assert_eq!(
        give_back::decide(&big, &model, Some(&learned), None, &config),
        None
    );
    // The big class needs its out_of_memory floor plus the margin.
    let back = give_back::decide(&big, &model, Some(&learned), Some(8192), &config).unwrap();
    assert_eq!(back.class, "bytes<=4MiB");
    assert_eq!(back.need_mib, 8_193 + config.gpu.vram_margin_mib);
    // Its tier keeps the job's level, not its tenant, and only a worker
    // with at least the need takes it.
    assert_eq!(back.sub.level, Level::High);
    assert_eq!(back.sub.tenant, gpuq_common::wire::DEFAULT_TENANT);
    let tier = back.sub.vram_mib.unwrap();
    assert!(tier >= back.need_mib);
    assert!(!back.sub.fits(Some(8192)) && back.sub.fits(Some(tier)));
    // A worker that big runs it.
    assert_eq!(
        give_back::decide(&big, &model, Some(&learned), Some(tier), &config),
        None
    );
}
