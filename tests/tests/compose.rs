//! The shipped deployment files are secure by default: docker-compose.yml
//! publishes nothing beyond the host's loopback, every credential comes from
//! `.env` (with `.env.example` naming each one), and no shipped gpuq config
//! opens the gateway or lets clients crash workers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gpuq_common::registry::RuntimeParams;
use gpuq_common::{Config, ConfigOverrides};
use serde_yaml_ng::Value;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose() -> Value {
    serde_yaml_ng::from_str(&read("docker-compose.yml")).expect("docker-compose.yml parses")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service '{name}'"))
}

/// A service's `environment` as (name, value) pairs, map or list form.
fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_yaml_ng::to_string(other).unwrap().trim().to_owned(),
                };
                (k.as_str().unwrap().to_owned(), value)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let text = item.as_str().unwrap();
                let (k, v) = text.split_once('=').unwrap_or((text, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn env_value(service: &Value, name: &str) -> Option<String> {
    environment(service)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Whether `value` is exactly one `${NAME...}` interpolation (no literal text).
fn is_interpolation(value: &str) -> bool {
    value.starts_with("${") && value.ends_with('}') && value[2..].find("${").is_none()
}

/// Every variable named by a `${NAME}` / `${NAME:?...}` / `${NAME:-...}` in `text`.
fn interpolated_variables(text: &str) -> BTreeSet<String> {
    text.match_indices("${")
        .map(|(i, _)| {
            text[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn env_example() -> Vec<(String, String)> {
    read(".env.example")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (k, v) = line.split_once('=').expect("NAME=value lines");
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

#[test]
fn every_published_port_binds_the_loopback_address_only() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let mut published = 0;
    for (name, service) in services {
        let Some(ports) = service.get("ports").and_then(Value::as_sequence) else {
            continue;
        };
        for port in ports {
            published += 1;
            let host_ip = match port {
                Value::String(short) => short.split(':').next().unwrap().to_owned(),
                Value::Mapping(_) => port["host_ip"].as_str().unwrap_or("").to_owned(),
                other => panic!("{name:?}: port {other:?} binds every address"),
            };
            assert_eq!(
                host_ip, "127.0.0.1",
                "service {name:?} publishes {port:?} beyond the loopback address"
            );
        }
    }
    assert!(
        published >= 5,
        "rabbitmq, redis, gateway and prometheus publish ports"
    );
    assert!(service(&compose, "prometheus").get("ports").is_some());
}

#[test]
fn redis_requires_a_password_from_the_env_file() {
    let compose = compose();
    let command: Vec<String> = match &service(&compose, "redis")["command"] {
        Value::Sequence(args) => args
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect(),
        Value::String(line) => line.split_whitespace().map(str::to_owned).collect(),
        other => panic!("redis command {other:?}"),
    };
    let at = command
        .iter()
        .position(|a| a == "--requirepass")
        .expect("redis runs with --requirepass");
    let password = &command[at + 1];
    assert!(
        is_interpolation(password),
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
    let compose = compose();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for (key, value) in environment(service) {
            let upper = key.to_ascii_uppercase();
            if ["PASS", "TOKEN", "SECRET", "KEY", "AUTH"]
                .iter()
                .any(|w| upper.contains(w))
            {
                assert!(
                    is_interpolation(&value),
                    "{name:?} {key} = {value:?} is literal"
                );
            }
            // Credentials inside URLs: scheme://user:password@host.
            if let Some((_, rest)) = value.split_once("://") {
                if let Some((userinfo, _)) = rest.rsplit_once('@') {
                    for part in userinfo.split(':').filter(|p| !p.is_empty()) {
                        assert!(
                            is_interpolation(part),
                            "{name:?} {key} has a literal credential in its URL"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn env_example_names_every_variable_the_compose_file_uses_and_env_is_ignored() {
    let used = interpolated_variables(&read("docker-compose.yml"));
    assert!(used.contains("REDIS_PASSWORD") && used.contains("GPUQ_GATEWAY_TOKENS"));
    let example: BTreeSet<String> = env_example().into_iter().map(|(k, _)| k).collect();
    let missing: Vec<&String> = used.difference(&example).collect();
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
    let ignored = read(".gitignore")
        .lines()
        .any(|line| matches!(line.trim(), ".env" | "/.env"));
    assert!(ignored, ".env must be ignored by git");
}

/// Configs that ship: the example (also the Docker image's) and compose's.
const SHIPPED_CONFIGS: [&str; 2] = ["config/gpuq.example.toml", "deploy/gpuq.compose.toml"];

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
