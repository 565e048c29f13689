//! The shipped deployment files are secure by default: docker-compose.yml
//! publishes nothing beyond the host's loopback, every credential comes from
//! `.env` (with `.env.example` naming each one), and no shipped gpuq config
//! opens the gateway or lets clients crash workers. The cluster layout,
//! deploy/docker-compose.cluster.yml, has its own checks in compose_cluster.rs.

mod compose_support;

use compose_support::*;
use gpuq_common::registry::RuntimeParams;
use gpuq_common::{Config, ConfigOverrides};
use serde_yaml_ng::Value;

fn compose() -> Value {
    compose_file("docker-compose.yml")
}

#[test]
fn every_published_port_binds_the_loopback_address_only() {
    let compose = compose();
    let published = assert_loopback_only(&compose);
    assert!(
        published.len() >= 5,
        "rabbitmq, redis, gateway and prometheus publish ports"
    );
    assert!(service(&compose, "prometheus").get("ports").is_some());
}

#[test]
fn redis_requires_a_password_from_the_env_file() {
    let compose = compose();
    let password = command_flag(service(&compose, "redis"), "--requirepass")
        .expect("redis runs with --requirepass");
    assert!(
        is_interpolation(&password),
        "literal redis password {password:?}"
    );
    assert!(password.starts_with("${REDIS_PASSWORD"), "{password}");
}

#[test]
fn rabbitmq_has_a_non_guest_user_from_the_env_file() {
    let compose = compose();
    let rabbitmq = service(&compose, "rabbitmq");
    for name in ["RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"] {
        let value = env_value(rabbitmq, name).unwrap_or_else(|| panic!("rabbitmq lacks {name}"));
        assert!(is_interpolation(&value), "{name} is literal: {value:?}");
    }
    let user_variable =
        interpolated_variables(&env_value(rabbitmq, "RABBITMQ_DEFAULT_USER").unwrap())
            .into_iter()
            .next()
            .unwrap();
    let example_user = env_example()
        .into_iter()
        .find(|(k, _)| *k == user_variable)
        .map(|(_, v)| v)
        .expect(".env.example sets the rabbitmq user");
    assert_ne!(example_user, "guest");
    let uses_guest = read("docker-compose.yml")
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .any(|line| line.contains("guest"));
    assert!(!uses_guest, "docker-compose.yml still uses the guest user");
}

#[test]
fn the_gateway_is_a_service_with_a_token_from_the_env_file() {
    let compose = compose();
    let gateway = service(&compose, "gateway");
    let command = serde_yaml_ng::to_string(&gateway["command"]).unwrap();
    assert!(
        command.contains("serve"),
        "the gateway runs `gpuq serve`: {command}"
    );
    let tokens =
        env_value(gateway, "GPUQ_GATEWAY_TOKENS").expect("gateway has GPUQ_GATEWAY_TOKENS");
    assert!(
        is_interpolation(&tokens),
        "literal gateway token {tokens:?}"
    );
}

#[test]
fn the_compose_file_holds_no_literal_secret() {
    assert_no_literal_secret(&compose());
}

#[test]
fn env_example_names_every_variable_the_compose_file_uses_and_env_is_ignored() {
    let used = assert_env_example_names_every_variable("docker-compose.yml");
    assert!(used.contains("REDIS_PASSWORD") && used.contains("GPUQ_GATEWAY_TOKENS"));
    let ignored = read(".gitignore")
        .lines()
        .any(|line| matches!(line.trim(), ".env" | "/.env"));
    assert!(ignored, ".env must be ignored by git");
}

/// Configs that ship: the example (also the Docker image's) and the two compose layouts'.
const SHIPPED_CONFIGS: [&str; 3] = [
    "config/gpuq.example.toml",
    "deploy/gpuq.compose.toml",
    "deploy/gpuq.cluster.toml",
];

#[test]
fn shipped_configs_allow_no_crash_inputs_and_no_open_gateway() {
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains("COPY config/gpuq.example.toml /etc/gpuq/gpuq.toml"),
        "the image ships the example config (checked below)"
    );
    for path in SHIPPED_CONFIGS {
        let text = read(path);
        assert!(
            !text
                .lines()
                .any(|l| l.trim_start().starts_with("allow_crash_inputs")),
            "{path} sets allow_crash_inputs"
        );
        let config = Config::parse(&text, Some(&repo_file(path)), &ConfigOverrides::default())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        for model in config.registry().models() {
            if let Ok(RuntimeParams::Sleep(params)) = model.runtime_params() {
                assert!(
                    !params.allow_crash_inputs,
                    "{path}: model {} crashes on request",
                    model.id
                );
            }
        }
        assert!(
            !config.gateway.allow_anonymous,
            "{path} allows an anonymous gateway"
        );
        let listen: std::net::SocketAddr = config.gateway.listen.parse().unwrap();
        assert!(
            listen.ip().is_loopback(),
            "{path}: the gateway listens beyond loopback by default"
        );
    }
}
