use super::*;

fn load_fixture(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        Some(Path::new("fixture.toml")),
        &ConfigOverrides::default(),
    )
}

fn invalid_key(err: ConfigError) -> String {
    match err {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("expected an invalid-key error, got: {other}"),
    }
}

#[test]
fn shipped_example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gpuq.example.toml");
    let config = Config::load(&path, &ConfigOverrides::default()).unwrap();
    assert_eq!(config.namespace, "gpuq");
    assert_eq!(config.dispatcher.gpus.len(), 1);
    assert_eq!(config.registry().default_model("echo").unwrap().id, "echo");
    match config
        .registry()
        .model("sleep")
        .unwrap()
        .runtime_params()
        .unwrap()
    {
        crate::registry::RuntimeParams::Sleep(p) => assert_eq!(p.duration_ms, 20),
        other => panic!("unexpected params {other:?}"),
    }
}

#[test]
fn empty_file_gives_defaults() {
    let config = load_fixture("").unwrap();
    assert_eq!(config.namespace, "gpuq");
    assert_eq!(config.queues.queue_type, QueueType::Quorum);
    assert_eq!(config.worker.concurrency, 1);
    assert!(config.registry().is_empty());
}

#[test]
fn environment_overrides_replace_urls() {
    let overrides = ConfigOverrides::from_lookup(|name| match name {
        ENV_AMQP_URL => Some("amqp://u:p@broker:5672/%2f".into()),
        ENV_REDIS_URL => Some("redis://cache:6379/3".into()),
        _ => None,
    });
    let config = Config::parse("amqp_url = \"amqp://x\"", None, &overrides).unwrap();
    assert_eq!(config.amqp_url, "amqp://u:p@broker:5672/%2f");
    assert_eq!(config.redis_url, "redis://cache:6379/3");
}

#[test]
fn unknown_key_is_rejected_and_named() {
    let err = load_fixture(include_str!("../../fixtures/bad-unknown-key.toml")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("prefetch_count"), "{text}");
    assert!(text.contains("fixture.toml"), "{text}");
}

#[test]
fn unknown_runtime_is_rejected_and_named() {
    let err = load_fixture(include_str!("../../fixtures/bad-runtime.toml")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("tensorflow") && text.contains("runtime"),
        "{text}"
    );
}

#[test]
fn zero_vram_is_rejected_with_its_key() {
    let err = load_fixture(include_str!("../../fixtures/bad-zero-vram.toml")).unwrap_err();
    assert_eq!(invalid_key(err), "models[0].vram_mib");
}

#[test]
fn duplicate_model_id_is_rejected_with_its_key() {
    let err = load_fixture(include_str!("../../fixtures/bad-duplicate-model.toml")).unwrap_err();
    assert_eq!(invalid_key(err), "models[1].id");
}

#[test]
fn impossible_values_name_their_key() {
    let cases = [
        ("namespace = \"Has.Dots\"", "namespace"),
        ("amqp_url = \"http://x\"", "amqp_url"),
        ("redis_url = \"localhost:6379\"", "redis_url"),
        ("[queues]\ndelivery_limit = 0", "queues.delivery_limit"),
        ("[worker]\nconcurrency = 0", "worker.concurrency"),
        ("[worker]\nheartbeat_interval_ms = 1000\nheartbeat_ttl_ms = 1500", "worker.heartbeat_ttl_ms"),
        ("[dispatcher]\nworkers_per_gpu = 0", "dispatcher.workers_per_gpu"),
        (
            "[dispatcher]\nvram_reserve_mib = 1000\n[[dispatcher.gpus]]\nindex = 0\nmemory_mib = 800",
            "dispatcher.gpus[0].memory_mib",
        ),
        (
            "[[dispatcher.gpus]]\nindex = 0\nmemory_mib = 8000\n[[dispatcher.gpus]]\nindex = 0\nmemory_mib = 8000",
            "dispatcher.gpus[1].index",
        ),
        ("[dispatcher]\nmodels = [\"ghost\"]", "dispatcher.models"),
        ("[[dispatcher.slots]]\ngpu = 0\nmodels = [\"ghost\"]", "dispatcher.slots[0].models"),
        ("[[dispatcher.slots]]\ngpu = 0\nvram_mib = 0", "dispatcher.slots[0].vram_mib"),
        (
            "[[models]]\nid = \"a.b\"\nfeature = \"f\"\nruntime = \"echo\"\nvram_mib = 1",
            "models[0].id",
        ),
        (
            "[[models]]\nid = \"a\"\nfeature = \"f\"\nruntime = \"echo\"\nvram_mib = 1\ntimeout_s = 0",
            "models[0].timeout_s",
        ),
        (
            "[[models]]\nid = \"a\"\nfeature = \"f\"\nruntime = \"echo\"\nvram_mib = 1\ntimeout_s = 5\nmin_timeout_s = 6",
            "models[0].min_timeout_s",
        ),
        (
            "[[models]]\nid = \"a\"\nfeature = \"f\"\nruntime = \"echo\"\nvram_mib = 1\nmin_timeout_s = 0",
            "models[0].min_timeout_s",
        ),
        (
            "[[models]]\nid = \"a\"\nfeature = \"f\"\nruntime = \"sleep\"\nvram_mib = 1\n[models.params]\nallow_crash_inputs = \"yes\"",
            "models[0].params",
        ),
        (
            "[[models]]\nid = \"a\"\nfeature = \"f\"\nruntime = \"sleep\"\nvram_mib = 1\n[models.params]\nfail_rate = 2.0",
            "models[0].params",
        ),
        (
            "[[models]]\nid = \"a\"\nfeature = \"f\"\nruntime = \"echo\"\nvram_mib = 1\ndefault = true\n[[models]]\nid = \"b\"\nfeature = \"f\"\nruntime = \"echo\"\nvram_mib = 1\ndefault = true",
            "models[1].default",
        ),
    ];
    for (text, key) in cases {
        let err = load_fixture(text).expect_err(text);
        assert_eq!(invalid_key(err), key, "config: {text}");
    }
}

#[test]
fn invalid_url_error_does_not_leak_the_password() {
    let err = load_fixture("amqp_url = \"http://user:secret@host\"").unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn shipped_3d_model_catalogue_loads_with_the_expected_models() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/models.3d.example.toml");
    let config = Config::load(&path, &ConfigOverrides::default()).unwrap();
    let registry = config.registry();
    let expected = [
        (
            "trellis_text_to_textured_mesh",
            "text_to_textured_mesh",
            11776,
        ),
        (
            "trellis_image_to_textured_mesh",
            "image_to_textured_mesh",
            11776,
        ),
        ("hunyuan3dv21_image_to_raw_mesh", "image_to_raw_mesh", 8192),
        (
            "hunyuan3dv21_image_to_textured_mesh",
            "image_to_textured_mesh",
            19456,
        ),
        ("partfield_mesh_segmentation", "mesh_segmentation", 4096),
        ("unirig_auto_rig", "auto_rig", 9216),
        ("partuv_uv_unwrapping", "uv_unwrapping", 7168),
    ];
    assert_eq!(registry.models().len(), expected.len());
    for (id, feature, vram_mib) in expected {
        let model = registry.model(id).unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(
            (model.feature.as_str(), model.vram_mib),
            (feature, vram_mib),
            "{id}"
        );
        assert_eq!(model.runtime, crate::registry::RuntimeKind::Adapter, "{id}");
        assert!(
            matches!(
                model.runtime_params(),
                Ok(crate::registry::RuntimeParams::Adapter(_))
            ),
            "{id}"
        );
    }
    assert_eq!(
        registry.default_model("image_to_textured_mesh").unwrap().id,
        "trellis_image_to_textured_mesh"
    );
}

#[test]
fn runtime_params_are_checked_per_runtime() {
    let model = |runtime: &str, params: &str| {
        format!("[[models]]\nid = \"m\"\nfeature = \"f\"\nruntime = \"{runtime}\"\nvram_mib = 10\n[models.params]\n{params}")
    };
    let cases = [
        model("adapter", "command = []"),
        model("adapter", "command = [\"python3\"]\nload_timeout_s = 0"),
        model("adapter", "command = [\"python3\"]\nshell = true"),
        model("torchscript", "path = \"m.pt\"\ninputs = []"),
        model("torchscript", "path = \"m.pt\"\ninputs = [{name = \"x\", dtype = \"complex64\", shape = [2]}]"),
        model("torchscript", "path = \"m.pt\"\ninputs = [{name = \"x\", dtype = \"float32\", shape = [2]}]\ndevice = \"tpu\""),
        model("sleep", "load_ms = -1"),
    ];
    for text in cases {
        let err = load_fixture(&text).expect_err(&text);
        assert_eq!(invalid_key(err), "models[0].params", "{text}");
    }
    let ok = model(
        "torchscript",
        "path = \"m.pt\"\ninputs = [{name = \"x\", dtype = \"float32\", shape = [-1, 3]}]",
    );
    assert!(load_fixture(&ok).is_ok());
}

#[test]
fn docker_compose_config_loads_and_exposes_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gpuq.compose.toml");
    let config = Config::load(&path, &ConfigOverrides::default()).unwrap();
    assert_eq!(config.dispatcher.metrics_listen, "0.0.0.0:9464");
}

#[test]
fn placement_policy_is_checked_and_names_the_bad_key() {
    let model = "[[models]]\nid = \"m\"\nfeature = \"f\"\nruntime = \"echo\"\nvram_mib = 10\n";
    let defaults = load_fixture(model).unwrap();
    assert!(defaults.placement.enabled);
    assert!(defaults.placement.assignment_ttl_ms() >= 5 * defaults.placement.interval_ms);
    let cases = [
        ("[placement]\ninterval_ms = 10\n", "placement.interval_ms"),
        (
            "[placement]\ninterval_ms = 2000\nmax_queue_wait_ms = 1000\n",
            "placement.max_queue_wait_ms",
        ),
        (
            "[placement.models.nope]\nmax_replicas = 1\n",
            "placement.models.nope",
        ),
        (
            "[placement.models.m]\nmin_replicas = 3\nmax_replicas = 1\n",
            "placement.models.m.min_replicas",
        ),
        (
            "[placement.models.m]\npin = [\"\"]\n",
            "placement.models.m.pin",
        ),
    ];
    for (section, key) in cases {
        let text = format!("{model}{section}");
        let err = load_fixture(&text).expect_err(&text);
        assert_eq!(invalid_key(err), key, "{text}");
    }
    let ok = load_fixture(&format!(
        "{model}[placement]\nmin_residency_ms = 0\n[placement.models.m]\nmin_replicas = 1\npin = [\"h-gpu0-slot0\"]\n"
    ))
    .unwrap();
    assert_eq!(ok.placement.models["m"].pin, ["h-gpu0-slot0"]);
}

#[test]
fn artifact_lifetime_and_fetch_limits_default_and_name_their_key() {
    let config = load_fixture("[jobs]\nfinished_ttl_s = 600\n").unwrap();
    assert_eq!(
        config.artifacts.ttl_s,
        Some(600),
        "defaults to jobs.finished_ttl_s"
    );
    assert_eq!(config.jobs.max_artifact_refs, 16);
    assert_eq!(config.artifacts.max_fetch_bytes, 4 << 30);
    let config = load_fixture("[artifacts]\nttl_s = 2\n").unwrap();
    assert_eq!(config.artifacts.ttl(), std::time::Duration::from_secs(2));
    for (text, key) in [
        ("[artifacts]\nttl_s = 0\n", "artifacts.ttl_s"),
        (
            "[artifacts]\nmax_fetch_bytes = 0\n",
            "artifacts.max_fetch_bytes",
        ),
        (
            "[jobs]\nmax_artifact_refs = 10001\n",
            "jobs.max_artifact_refs",
        ),
    ] {
        assert_eq!(invalid_key(load_fixture(text).unwrap_err()), key, "{text}");
    }
}

#[test]
fn the_default_tenant_is_default_and_must_be_a_valid_tenant() {
    assert_eq!(load_fixture("").unwrap().jobs.default_tenant, "default");
    let config = load_fixture("[jobs]\ndefault_tenant = \"team-a\"\n").unwrap();
    assert_eq!(config.jobs.default_tenant, "team-a");
    let error = load_fixture("[jobs]\ndefault_tenant = \"team a\"\n").unwrap_err();
    assert_eq!(invalid_key(error), "jobs.default_tenant");
}

#[test]
fn a_cluster_is_named_by_a_list_or_a_comma_separated_url() {
    let config = load_fixture(
        "amqp_urls = [\"amqp://a:5672/%2f\", \"amqp://b:5672/%2f\", \"amqp://c:5672/%2f\"]\n\
         [amqp]\nshuffle_nodes = false\n",
    )
    .unwrap();
    assert_eq!(config.amqp_nodes().len(), 3);
    assert!(!config.amqp.shuffle_nodes);
    assert_eq!(config.amqp.publish_timeout_ms, 15_000);
    assert_eq!(config.queues.replicas, 3);
    // One URL keeps working; a comma-separated one (GPUQ_AMQP_URL) is a list,
    // and the environment replaces the file's list too.
    assert_eq!(load_fixture("").unwrap().amqp_nodes().len(), 1);
    let overrides = ConfigOverrides::from_lookup(|name| {
        (name == ENV_AMQP_URL).then(|| "amqp://x:5672/%2f, amqp://y:5672/%2f".to_owned())
    });
    let config = Config::parse("amqp_urls = [\"amqp://a/%2f\"]", None, &overrides).unwrap();
    assert_eq!(
        config.amqp_nodes(),
        ["amqp://x:5672/%2f", "amqp://y:5672/%2f"]
    );
    // Every node is checked, and an empty list names its key.
    let bad = load_fixture("amqp_urls = [\"amqp://a/%2f\", \"http://b\"]").unwrap_err();
    assert_eq!(invalid_key(bad), "amqp_urls");
    let none = load_fixture("amqp_url = \" , \"").unwrap_err();
    assert_eq!(invalid_key(none), "amqp_url");
    let zero = load_fixture("[amqp]\npublish_timeout_ms = 0").unwrap_err();
    assert_eq!(invalid_key(zero), "amqp.publish_timeout_ms");
}
