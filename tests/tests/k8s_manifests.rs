//! The Kubernetes manifests in deploy/k8s (docs/deploy.md, "Kubernetes").
//! Nothing here talks to a cluster. The core resources pass the Kubernetes
//! OpenAPI schemas offline (`kubernetes-validate --strict` from the
//! repository's .venv, for one fixed Kubernetes version); the rules a schema
//! cannot express are checked field by field: the KEDA ScaledObject scales a
//! GPU Deployment on `gpuq_gpu_seconds_wanted`, the dispatcher pods outlast
//! their workers' drain and ask for GPUs, every credential comes from the
//! Secret, and the ConfigMap's gpuq.toml is a valid gpuq config.

mod compose_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};

use compose_support::{read, repo_file};
use gpuq_common::{Config, ConfigOverrides};
use serde_yaml_ng::Value;

const DIR: &str = "deploy/k8s";
/// The Kubernetes version whose schemas the manifests must pass (one that
/// kubernetes-validate ships strict schemas for).
const KUBERNETES_VERSION: &str = "1.30.0";
const SECRET: &str = "gpuq-credentials";

/// Every manifest file (all but kustomization.yaml), sorted.
fn manifest_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo_file(DIR))
        .unwrap_or_else(|e| panic!("{DIR}: {e}"))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    files.sort();
    files
}

fn yaml(file: &str) -> Value {
    let path = format!("{DIR}/{file}");
    serde_yaml_ng::from_str(&read(&path)).unwrap_or_else(|e| panic!("{path} parses: {e}"))
}

/// Every manifest as (file, resource), one resource per file.
fn manifests() -> Vec<(String, Value)> {
    manifest_files()
        .into_iter()
        .map(|file| {
            let resource = yaml(&file);
            (file, resource)
        })
        .collect()
}

fn resource(kind: &str, name: &str) -> Value {
    manifests()
        .into_iter()
        .map(|(_, resource)| resource)
        .find(|r| r["kind"] == kind && r["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{DIR} has no {kind} {name}"))
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value:?} is not a string"))
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

/// The workload's one container.
fn container(workload: &Value) -> &Value {
    let containers = pod_spec(workload)["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1, "one container per gpuq pod");
    &containers[0]
}

fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_sequence()
        .map(|args| args.iter().map(text).collect())
        .unwrap_or_default()
}

/// The (secret, key) an environment variable of `container` comes from;
/// none when it is not set or set otherwise than by a `secretKeyRef`.
fn secret_env(container: &Value, name: &str) -> Option<(String, String)> {
    let env = container["env"].as_sequence()?;
    let entry = env.iter().find(|e| e["name"] == name)?;
    let reference = entry["valueFrom"].get("secretKeyRef")?;
    Some((
        text(&reference["name"]).to_owned(),
        text(&reference["key"]).to_owned(),
    ))
}

/// The ConfigMap's gpuq.toml as text and as a validated config.
fn shipped_config() -> (String, Config) {
    let configmap = resource("ConfigMap", "gpuq-config");
    let toml = text(&configmap["data"]["gpuq.toml"]).to_owned();
    let config = Config::parse(&toml, None, &ConfigOverrides::default())
        .unwrap_or_else(|e| panic!("configmap.yaml gpuq.toml: {e}"));
    (toml, config)
}

fn run_kubernetes_validate(paths: &[PathBuf]) -> Output {
    let validator = repo_file(".venv/bin/kubernetes-validate");
    assert!(
        validator.is_file(),
        "{} missing: run scripts/python-env.sh (scripts/test.sh does)",
        validator.display()
    );
    Command::new("timeout")
        .arg("120")
        .arg(&validator)
        .args(["-k", KUBERNETES_VERSION, "--strict"])
        .args(paths)
        .output()
        .expect("running kubernetes-validate")
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_kustomization_lists_every_manifest_in_the_gpuq_namespace() {
    let kustomization = yaml("kustomization.yaml");
    assert_eq!(kustomization["namespace"], "gpuq");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .expect("a resources list")
        .iter()
        .map(|r| text(r).to_owned())
        .collect();
    let files: BTreeSet<String> = manifest_files().into_iter().collect();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");
    for (file, resource) in manifests() {
        if resource["kind"] == "Namespace" {
            assert_eq!(resource["metadata"]["name"], "gpuq", "{file}");
        } else {
            assert_eq!(resource["metadata"]["namespace"], "gpuq", "{file}");
        }
    }
}

#[test]
fn core_manifests_pass_the_kubernetes_schemas() {
    let core: Vec<String> = manifests()
        .into_iter()
        .filter(|(_, resource)| resource["kind"] != "ScaledObject")
        .map(|(file, _)| file)
        .collect();
    assert!(core.len() >= 7, "{core:?}");
    let paths: Vec<PathBuf> = core
        .iter()
        .map(|file| repo_file(&format!("{DIR}/{file}")))
        .collect();
    let output = run_kubernetes_validate(&paths);
    let report = output_text(&output);
    assert!(output.status.success(), "kubernetes-validate:\n{report}");
    // A kind without a schema only warns: each file must have really passed.
    for file in &core {
        assert!(
            report
                .lines()
                .any(|line| line.contains(file.as_str()) && line.contains(" passed ")),
            "{file} was not validated:\n{report}"
        );
    }
}

#[test]
fn the_validator_rejects_a_wrong_type_and_an_unknown_field() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = read(&format!("{DIR}/gateway-deployment.yaml"));
    let service = read(&format!("{DIR}/gateway-service.yaml"));
    let broken = [
        (
            "replicas.yaml",
            &deployment,
            "replicas: 2",
            "replicas: \"two\"",
            "spec.replicas",
        ),
        (
            "unknown.yaml",
            &service,
            "  type: ClusterIP",
            "  type: ClusterIP\n  replica: 2",
            "'replica' was unexpected",
        ),
    ];
    for (name, valid, from, to, expected) in broken {
        assert!(valid.contains(from), "{name}: {from:?} not found");
        let path = dir.path().join(name);
        std::fs::write(&path, valid.replacen(from, to, 1)).unwrap();
        let output = run_kubernetes_validate(&[path]);
        let report = output_text(&output);
        assert!(!output.status.success(), "{name} was accepted:\n{report}");
        assert!(report.contains(expected), "{name}:\n{report}");
    }
}

#[test]
fn the_scaled_object_scales_a_gpu_deployment_on_gpu_seconds_wanted() {
    let scaled = resource("ScaledObject", "gpuq-gpu-pool");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    let target = &scaled["spec"]["scaleTargetRef"];
    assert!(matches!(target["kind"].as_str(), None | Some("Deployment")));
    let deployment = resource("Deployment", text(&target["name"]));
    let limits = &container(&deployment)["resources"]["limits"];
    assert!(
        limits["nvidia.com/gpu"].as_u64().unwrap_or(0) >= 1,
        "the scaled Deployment runs on GPUs"
    );

    let triggers = scaled["spec"]["triggers"].as_sequence().unwrap();
    let prometheus = triggers
        .iter()
        .find(|t| t["type"] == "prometheus")
        .expect("a prometheus trigger");
    let metadata = &prometheus["metadata"];
    assert!(
        text(&metadata["query"]).contains("gpuq_gpu_seconds_wanted"),
        "{metadata:?}"
    );
    let threshold: f64 = text(&metadata["threshold"])
        .parse()
        .expect("a numeric threshold");
    assert!(threshold > 0.0);
    assert!(text(&metadata["serverAddress"]).starts_with("http"));

    let min = scaled["spec"]["minReplicaCount"].as_u64().unwrap();
    let max = scaled["spec"]["maxReplicaCount"].as_u64().unwrap();
    assert!(min <= max, "minReplicaCount {min} > maxReplicaCount {max}");
    assert!(
        scaled["spec"]["cooldownPeriod"].as_u64().is_some(),
        "cooldownPeriod is set"
    );
}

/// Both dispatcher workloads: the DaemonSet and the autoscaled pool.
fn dispatcher_workloads() -> [Value; 2] {
    [
        resource("DaemonSet", "gpuq-dispatcher"),
        resource("Deployment", "gpuq-gpu-pool"),
    ]
}

#[test]
fn dispatcher_pods_outlast_the_worker_drain() {
    let (toml, config) = shipped_config();
    assert!(
        toml.lines()
            .any(|line| line.trim_start().starts_with("shutdown_grace_s")),
        "worker.shutdown_grace_s is explicit in the ConfigMap"
    );
    // The dispatcher kills a worker still running shutdown_grace_s + 5 s
    // after its SIGTERM (dispatcher.rs, restart_policy), then cleans up.
    let drain_s = config.worker.shutdown_grace_s + 5;
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/gpuq-dispatcher\"]"));
    for workload in dispatcher_workloads() {
        let name = text(&workload["metadata"]["name"]);
        let grace = pod_spec(&workload)["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} sets terminationGracePeriodSeconds"));
        assert!(
            grace > drain_s,
            "{name}: terminationGracePeriodSeconds {grace} <= the dispatcher's drain {drain_s}"
        );
        // No command override: the image's ENTRYPOINT, gpuq-dispatcher, is
        // the main process and gets the kubelet's SIGTERM.
        let dispatcher = container(&workload);
        assert!(
            dispatcher["command"].is_null(),
            "{name} replaces the entrypoint"
        );
    }
}

#[test]
fn dispatcher_pods_run_on_gpu_nodes_with_their_config_and_metrics() {
    let (_, config) = shipped_config();
    let metrics_port: u16 = config
        .dispatcher
        .metrics_listen
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("dispatcher.metrics_listen has a port");
    assert!(
        config.placement.enabled,
        "the lease holder exports the gauge"
    );
    for workload in dispatcher_workloads() {
        let name = text(&workload["metadata"]["name"]);
        let pod = pod_spec(&workload);
        let dispatcher = container(&workload);
        let gpus = dispatcher["resources"]["limits"]["nvidia.com/gpu"].as_u64();
        assert!(gpus.unwrap_or(0) >= 1, "{name} requests nvidia.com/gpu");
        let placement = serde_yaml_ng::to_string(&pod["affinity"]).unwrap()
            + &serde_yaml_ng::to_string(&pod["nodeSelector"]).unwrap();
        assert!(
            placement.contains("nvidia.com/gpu.present"),
            "{name}: {placement}"
        );
        let tolerations = serde_yaml_ng::to_string(&pod["tolerations"]).unwrap();
        assert!(tolerations.contains("nvidia.com/gpu"), "{name}");

        assert!(args(dispatcher)
            .windows(2)
            .any(|w| w == ["--config", "/etc/gpuq/gpuq.toml"]));
        assert_config_mounted(name, pod, dispatcher);

        let ports = dispatcher["ports"].as_sequence().unwrap();
        assert!(ports
            .iter()
            .any(|p| p["containerPort"].as_u64() == Some(metrics_port.into())));
        let annotations = &workload["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{name}");
        assert_eq!(
            annotations["prometheus.io/port"],
            metrics_port.to_string().as_str()
        );
        let security = &dispatcher["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
    }
}

/// The ConfigMap is mounted so that its gpuq.toml is /etc/gpuq/gpuq.toml.
fn assert_config_mounted(name: &str, pod: &Value, container: &Value) {
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == "gpuq-config")
        .unwrap_or_else(|| panic!("{name} mounts the ConfigMap"));
    assert!(
        volume["configMap"]["items"].is_null(),
        "{name}: every key, gpuq.toml included"
    );
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let mount = mounts
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap_or_else(|| panic!("{name} mounts the config volume"));
    assert_eq!(mount["mountPath"], "/etc/gpuq", "{name}");
    assert!(mount["subPath"].is_null(), "{name}");
}

#[test]
fn the_gateway_takes_its_credentials_from_the_secret_and_probes_a_public_route() {
    let gateway = resource("Deployment", "gpuq-gateway");
    assert_eq!(gateway["spec"]["replicas"], 2);
    let server = container(&gateway);
    for variable in ["GPUQ_GATEWAY_TOKENS", "GPUQ_AMQP_URL", "GPUQ_REDIS_URL"] {
        let (secret, _) = secret_env(server, variable)
            .unwrap_or_else(|| panic!("the gateway's {variable} comes from a secretKeyRef"));
        assert_eq!(secret, SECRET);
    }
    assert_config_mounted("gpuq-gateway", pod_spec(&gateway), server);
    assert!(args(server).contains(&"serve"), "{:?}", args(server));
    assert!(
        !server["resources"]["requests"].is_null(),
        "resources requests"
    );

    // /healthz is the one route whose OpenAPI entry needs no token.
    let openapi: serde_json::Value =
        serde_json::from_str(&read("producer/src/gateway/openapi.json")).unwrap();
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = text(&server[probe]["httpGet"]["path"]);
        let security = &openapi["paths"][path]["get"]["security"];
        assert_eq!(
            security,
            &serde_json::json!([]),
            "{probe} {path} is not a token-free route"
        );
    }

    let service = resource("Service", "gpuq-gateway");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(
        service["spec"]["selector"],
        gateway["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn every_credential_is_a_placeholder_in_the_secret() {
    let secret = resource("Secret", SECRET);
    assert_eq!(secret["type"], "Opaque");
    let data = secret["stringData"].as_mapping().expect("stringData");
    for (key, value) in data {
        assert!(
            text(value).contains("change-me"),
            "{key:?} is not a placeholder"
        );
    }
    // Every secretKeyRef of every pod names a key the Secret has.
    for (file, resource) in manifests() {
        let Some(containers) = pod_spec(&resource)["containers"].as_sequence() else {
            continue;
        };
        for container in containers {
            for entry in container["env"].as_sequence().into_iter().flatten() {
                let name = text(&entry["name"]);
                if let Some((secret_name, key)) = secret_env(container, name) {
                    assert_eq!(secret_name, SECRET, "{file} {name}");
                    assert!(
                        data.contains_key(key.as_str()),
                        "{file}: the Secret lacks {key}"
                    );
                }
            }
        }
    }
    // The placeholder token is too short to be accepted: a gateway started
    // with it refuses to run instead of serving behind "change-me".
    let (toml, _) = shipped_config();
    let token = text(&secret["stringData"]["GPUQ_GATEWAY_TOKENS"]);
    let overrides = ConfigOverrides::from_lookup(|name| {
        (name == "GPUQ_GATEWAY_TOKENS").then(|| token.to_owned())
    });
    let error = Config::parse(&toml, None, &overrides).expect_err("the placeholder token");
    assert!(error.to_string().contains("GPUQ_GATEWAY_TOKENS"), "{error}");
}
