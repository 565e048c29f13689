//! deploy/docker-compose.cluster.yml, the production layout as containers,
//! read as a file (nothing here starts a container): three clustered RabbitMQ
//! nodes, a Redis primary and replica watched by three Sentinels, and gpuq
//! services that name every broker node and every sentinel; secure like
//! docker-compose.yml (loopback only, credentials from `.env`), with a gpuq
//! config that parses with the environment the file gives it.

mod compose_support;

use std::collections::BTreeSet;

use compose_support::*;
use gpuq_common::config::RedisTarget;
use gpuq_common::{Config, ConfigOverrides};
use serde_yaml_ng::Value;

const COMPOSE: &str = "deploy/docker-compose.cluster.yml";
/// Relative paths in the compose file are relative to its directory.
const COMPOSE_DIR: &str = "deploy";

fn compose() -> Value {
    compose_file(COMPOSE)
}

/// Services whose image starts with `prefix`.
fn services_of_image(compose: &Value, prefix: &str) -> Vec<String> {
    service_names(compose)
        .into_iter()
        .filter(|name| {
            service(compose, name)["image"]
                .as_str()
                .is_some_and(|image| image.starts_with(prefix))
        })
        .collect()
}

fn rabbit_nodes(compose: &Value) -> Vec<String> {
    services_of_image(compose, "rabbitmq:")
}

fn gpuq_services(compose: &Value) -> Vec<String> {
    services_of_image(compose, "gpuq:")
}

fn sentinels(compose: &Value) -> Vec<String> {
    service_names(compose)
        .into_iter()
        .filter(|name| {
            command_args(service(compose, name))
                .join(" ")
                .contains("--sentinel")
        })
        .collect()
}

/// The source of the volume a service mounts at `target` (short syntax),
/// as a repository path when it is a relative file path.
fn mount_source(service: &Value, target: &str) -> Option<String> {
    service["volumes"].as_sequence()?.iter().find_map(|volume| {
        let mut parts = volume.as_str()?.split(':');
        let source = parts.next()?;
        (parts.next()? == target).then(|| match source.strip_prefix("./") {
            Some(file) => format!("{COMPOSE_DIR}/{file}"),
            None => source.to_owned(),
        })
    })
}

/// The host of each URL in a comma-separated list (`scheme://[userinfo@]host:port/...`).
fn url_hosts(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(|url| {
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
            rest.split([':', '/']).next().unwrap().to_owned()
        })
        .collect()
}

fn sorted(names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    names.into_iter().collect()
}

/// `${VAR}`s replaced with `.env.example`'s values, as compose would with that `.env`.
fn with_example_env(text: &str) -> String {
    substitute(text, env_example_value)
}

#[test]
fn three_rabbitmq_nodes_cluster_through_the_mounted_conf_and_a_shared_cookie() {
    let compose = compose();
    let nodes = rabbit_nodes(&compose);
    assert_eq!(nodes.len(), 3, "three RabbitMQ nodes: {nodes:?}");
    let conf_path = mount_source(
        service(&compose, &nodes[0]),
        "/etc/rabbitmq/conf.d/20-gpuq-cluster.conf",
    )
    .expect("the nodes mount the cluster conf into conf.d");
    let conf = read(&conf_path);
    let setting = |key: &str| {
        conf.lines()
            .filter_map(|line| line.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_owned())
    };
    assert_eq!(
        setting("cluster_formation.peer_discovery_backend").as_deref(),
        Some("classic_config")
    );
    let consumer_timeout: u64 = setting("consumer_timeout")
        .expect("consumer_timeout is set")
        .parse()
        .unwrap();
    assert!(consumer_timeout >= 86_400_000, "{consumer_timeout} ms");
    let mut listed = BTreeSet::new();
    for (i, name) in nodes.iter().enumerate() {
        let node = service(&compose, name);
        let image = node["image"].as_str().unwrap();
        assert!(
            image.starts_with("rabbitmq:3.13") || image.starts_with("rabbitmq:3.12"),
            "{name}: {image}"
        );
        // The node name is rabbit@<hostname>: fixed per service.
        let hostname = node["hostname"].as_str().expect("a fixed hostname");
        assert_eq!(hostname, name);
        let key = format!("cluster_formation.classic_config.nodes.{}", i + 1);
        listed.insert(setting(&key).unwrap_or_else(|| panic!("{conf_path} lacks {key}")));
        assert_eq!(
            mount_source(node, "/etc/rabbitmq/conf.d/20-gpuq-cluster.conf").as_deref(),
            Some(conf_path.as_str()),
            "{name} mounts the same cluster conf"
        );
        let cookie = env_value(node, "RABBITMQ_ERLANG_COOKIE").expect("an Erlang cookie");
        assert!(
            is_interpolation(&cookie) && cookie.starts_with("${RABBITMQ_ERLANG_COOKIE"),
            "{name}: cookie {cookie:?}"
        );
    }
    let expected = sorted(nodes.iter().map(|n| format!("rabbit@{n}")));
    assert_eq!(listed, expected, "the conf lists every node");
}

#[test]
fn every_gpuq_service_names_every_rabbitmq_node_and_every_sentinel() {
    let compose = compose();
    let gpuq = sorted(gpuq_services(&compose));
    assert_eq!(gpuq, sorted(["dispatcher".into(), "gateway".into()]));
    let nodes = sorted(rabbit_nodes(&compose));
    let sentinels = sorted(sentinels(&compose));
    assert!(
        sentinels.len() == 3 && nodes.len() == 3,
        "{sentinels:?} {nodes:?}"
    );
    for name in &gpuq {
        let gpuq = service(&compose, name);
        let amqp = env_value(gpuq, "GPUQ_AMQP_URL").expect("GPUQ_AMQP_URL");
        assert_eq!(sorted(url_hosts(&amqp)), nodes, "{name}: {amqp}");
        let redis = env_value(gpuq, "GPUQ_REDIS_URL").expect("GPUQ_REDIS_URL");
        let (_, path) = redis
            .strip_prefix("redis+sentinel://")
            .unwrap_or_else(|| panic!("{name}: {redis} is not a Sentinel URL"))
            .split_once('/')
            .unwrap();
        let hosts = &redis[..redis.len() - path.len() - 1];
        assert_eq!(sorted(url_hosts(hosts)), sentinels, "{name}: {redis}");
    }
}

#[test]
fn the_mounted_gpuq_config_parses_with_the_environment_compose_gives_it() {
    let compose = compose();
    let rabbit_nodes = rabbit_nodes(&compose);
    for name in gpuq_services(&compose) {
        let gpuq = service(&compose, &name);
        let path = mount_source(gpuq, "/etc/gpuq/gpuq.toml").expect("a mounted gpuq config");
        let environment: Vec<(String, String)> = environment(gpuq)
            .into_iter()
            .map(|(k, v)| (k, with_example_env(&v)))
            .collect();
        let overrides = ConfigOverrides::from_lookup(|key| {
            environment
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        });
        let config = Config::parse(&read(&path), Some(&repo_file(&path)), &overrides)
            .unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
        assert_eq!(config.queues.replicas, 3, "{path}: queues.replicas");
        let amqp_hosts: Vec<String> = url_hosts(&config.amqp_nodes().join(","));
        assert_eq!(sorted(amqp_hosts), sorted(rabbit_nodes.clone()));
        let RedisTarget::Sentinel(target) = config.redis.target() else {
            panic!("{name}: Redis is not reached through Sentinel");
        };
        assert_eq!(target.sentinels.len(), 3);
        assert_eq!(target.master_name, monitored_master().0);
        assert_eq!(
            target.password.as_deref(),
            Some(env_example_value("REDIS_PASSWORD").as_str()),
            "the URL carries the primary's password"
        );
        assert!(
            config.redis.min_replicas_acked() >= 1,
            "a job's outcome waits for the replica"
        );
        let build = gpuq["build"].as_str().expect("build: <context>");
        let context = repo_file(COMPOSE_DIR).join(build);
        assert!(
            context.join("Dockerfile").is_file(),
            "{name}: build {build}"
        );
    }
}

#[test]
fn the_redis_replica_follows_the_primary_and_both_persist_with_passwords() {
    let compose = compose();
    let replica = service(&compose, "redis-replica");
    let args = command_args(replica);
    let at = args
        .iter()
        .position(|a| a == "--replicaof")
        .expect("the replica runs with --replicaof");
    assert_eq!(args[at + 1..at + 3], ["redis-primary", "6379"]);
    for name in ["redis-primary", "redis-replica"] {
        let redis = service(&compose, name);
        assert_eq!(
            command_flag(redis, "--appendonly").as_deref(),
            Some("yes"),
            "{name} appendonly"
        );
        // Either may be the primary after a failover: both take the password
        // from clients and give it to their primary.
        for flag in ["--requirepass", "--masterauth"] {
            let password = command_flag(redis, flag).unwrap_or_else(|| panic!("{name} {flag}"));
            assert!(
                is_interpolation(&password) && password.starts_with("${REDIS_PASSWORD"),
                "{name} {flag} {password:?}"
            );
        }
    }
}

/// (master name, host, port, quorum) of the sentinel template's `sentinel monitor`.
fn monitored_master() -> (String, String, String, u32) {
    let template = read("deploy/redis-sentinel.conf");
    let line = template
        .lines()
        .find(|l| l.starts_with("sentinel monitor "))
        .expect("the template monitors a primary");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 6, "{line}");
    let quorum = words[5].parse().unwrap();
    (words[2].into(), words[3].into(), words[4].into(), quorum)
}

#[test]
fn three_sentinels_monitor_the_primary_with_quorum_two_from_a_writable_copy() {
    let compose = compose();
    let sentinels = sentinels(&compose);
    assert_eq!(sentinels.len(), 3, "{sentinels:?}");
    let (master, host, port, quorum) = monitored_master();
    assert_eq!(
        (master.as_str(), host.as_str(), port.as_str(), quorum),
        ("gpuq", "redis-primary", "6379", 2)
    );
    let template = read("deploy/redis-sentinel.conf");
    let directive = |prefix: &str| template.lines().position(|l| l.starts_with(prefix));
    for line in [
        "sentinel down-after-milliseconds gpuq 5000",
        "sentinel failover-timeout gpuq 30000",
    ] {
        assert!(directive(line).is_some(), "the template lacks `{line}`");
    }
    // Host names resolve only if the template says so before it names one.
    let resolve = directive("sentinel resolve-hostnames yes").expect("resolve-hostnames");
    assert!(Some(resolve) < directive("sentinel monitor"));
    assert!(
        directive("sentinel auth-pass").is_none(),
        "no password in the template"
    );
    for name in &sentinels {
        let sentinel = service(&compose, name);
        let template_at = "/etc/redis/sentinel.template.conf";
        assert_eq!(
            mount_source(sentinel, template_at).as_deref(),
            Some("deploy/redis-sentinel.conf"),
            "{name} mounts the template"
        );
        assert!(
            mount_source(sentinel, "/data").is_some_and(|v| !v.contains('/')),
            "{name} keeps its rewritten config in a volume of its own"
        );
        let script = command_args(sentinel).join(" ");
        assert!(
            script.contains(&format!("cp {template_at} /data/sentinel.conf"))
                && script.contains("sentinel auth-pass gpuq")
                && script.contains("$$REDIS_PASSWORD")
                && script.contains("redis-server /data/sentinel.conf --sentinel"),
            "{name} runs from a writable copy with the password added: {script}"
        );
    }
}

#[test]
fn nothing_is_published_beyond_loopback_and_no_credential_is_literal() {
    let compose = compose();
    let published = assert_loopback_only(&compose);
    assert!(published.iter().any(|(name, _, _)| name == "gateway"));
    assert_no_literal_secret(&compose);
    let used = assert_env_example_names_every_variable(COMPOSE);
    for name in [
        "RABBITMQ_ERLANG_COOKIE",
        "REDIS_PASSWORD",
        "GPUQ_GATEWAY_TOKENS",
    ] {
        assert!(used.contains(name), "{COMPOSE} does not use {name}");
    }
    let gateway = service(&compose, "gateway");
    let tokens = env_value(gateway, "GPUQ_GATEWAY_TOKENS").expect("gateway tokens");
    assert!(
        is_interpolation(&tokens),
        "literal gateway token {tokens:?}"
    );
    let head: String = read(COMPOSE).lines().take(12).collect();
    assert!(
        head.contains("tests/tests/compose_cluster.rs") && head.contains("not run in CI"),
        "the header says what checks the file and that CI does not run it"
    );
}
