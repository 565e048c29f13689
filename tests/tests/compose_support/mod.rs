//! Helpers shared by the deployment-file tests (`compose.rs` for
//! docker-compose.yml, `compose_cluster.rs` for
//! deploy/docker-compose.cluster.yml): repository files, a compose file's
//! services, environments, commands and published ports, `${VAR}`
//! interpolation, and `.env.example`.

// Each test binary that includes this module uses only some of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A compose file, with YAML merge keys (`<<: *anchor`) applied as compose does.
pub fn compose_file(path: &str) -> Value {
    let mut compose: Value =
        serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} parses: {e}"));
    compose
        .apply_merge()
        .unwrap_or_else(|e| panic!("{path}: merge keys: {e}"));
    compose
}

pub fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("the compose file has no service '{name}'"))
}

/// The names of every service.
pub fn service_names(compose: &Value) -> Vec<String> {
    compose["services"]
        .as_mapping()
        .expect("a services mapping")
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

/// A service's `environment` as (name, value) pairs, map or list form.
pub fn environment(service: &Value) -> Vec<(String, String)> {
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

pub fn env_value(service: &Value, name: &str) -> Option<String> {
    environment(service)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// A service's `command` as arguments, list or string form (none when unset).
pub fn command_args(service: &Value) -> Vec<String> {
    match &service["command"] {
        Value::Sequence(args) => args
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect(),
        Value::String(line) => line.split_whitespace().map(str::to_owned).collect(),
        Value::Null => Vec::new(),
        other => panic!("command {other:?}"),
    }
}

/// The argument after `flag` in a service's command.
pub fn command_flag(service: &Value, flag: &str) -> Option<String> {
    let args = command_args(service);
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).cloned()
}

/// Every published port as (service, port as written, host address).
pub fn published_ports(compose: &Value) -> Vec<(String, String, String)> {
    let mut published = Vec::new();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap().to_owned();
        let Some(ports) = service.get("ports").and_then(Value::as_sequence) else {
            continue;
        };
        for port in ports {
            let host_ip = match port {
                // "IP:HOST:CONTAINER"; shorter forms bind every address.
                Value::String(short) if short.split(':').count() == 3 => {
                    short.split(':').next().unwrap().to_owned()
                }
                Value::String(_) => String::new(),
                Value::Mapping(_) => port["host_ip"].as_str().unwrap_or("").to_owned(),
                other => panic!("{name:?}: port {other:?} binds every address"),
            };
            published.push((name.clone(), format!("{port:?}"), host_ip));
        }
    }
    published
}

/// Whether `value` is exactly one `${NAME...}` interpolation (no literal text).
/// Every published port binds 127.0.0.1 only; the published ports.
pub fn assert_loopback_only(compose: &Value) -> Vec<(String, String, String)> {
    let published = published_ports(compose);
    for (name, port, host_ip) in &published {
        assert_eq!(
            host_ip, "127.0.0.1",
            "service {name:?} publishes {port} beyond the loopback address"
        );
    }
    published
}

pub fn is_interpolation(value: &str) -> bool {
    value.starts_with("${") && value.ends_with('}') && value[2..].find("${").is_none()
}

/// Every variable named by a `${NAME}` / `${NAME:?...}` / `${NAME:-...}` in `text`.
pub fn interpolated_variables(text: &str) -> BTreeSet<String> {
    text.match_indices("${")
        .map(|(i, _)| {
            text[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// `text` with every `${NAME...}` replaced by `value(NAME)`.
pub fn substitute(text: &str, value: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("an unclosed ${") + start;
        let inner = &rest[start + 2..end];
        let name: String = inner
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.push_str(&value(&name));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

pub fn env_example() -> Vec<(String, String)> {
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

/// The value `.env.example` gives `name`.
pub fn env_example_value(name: &str) -> String {
    env_example()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!(".env.example lacks {name}"))
}

/// No credential in any service's environment is written out: secret-looking
/// variables and the user info of every URL (one URL or a comma-separated
/// list) are `${VAR}` interpolations.
pub fn assert_no_literal_secret(compose: &Value) {
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for (key, value) in environment(service) {
            let upper = key.to_ascii_uppercase();
            if ["PASS", "TOKEN", "SECRET", "KEY", "AUTH", "COOKIE"]
                .iter()
                .any(|w| upper.contains(w))
            {
                assert!(
                    is_interpolation(&value),
                    "{name:?} {key} = {value:?} is literal"
                );
            }
            // Credentials inside URLs: scheme://user:password@host.
            for url in value.split(',') {
                let Some((_, rest)) = url.split_once("://") else {
                    continue;
                };
                let Some((userinfo, _)) = rest.rsplit_once('@') else {
                    continue;
                };
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

/// `.env.example` names every `${VAR}` the file at `path` uses.
pub fn assert_env_example_names_every_variable(path: &str) -> BTreeSet<String> {
    let used = interpolated_variables(&read(path));
    let example: BTreeSet<String> = env_example().into_iter().map(|(k, _)| k).collect();
    let missing: Vec<&String> = used.difference(&example).collect();
    assert!(
        missing.is_empty(),
        ".env.example lacks {missing:?} ({path})"
    );
    used
}
