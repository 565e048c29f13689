//! `redis_url` and `[redis]` parsed, defaulted and refused with the key named.

use super::*;
use crate::{Config, ConfigOverrides};

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, None, &ConfigOverrides::default())
}

fn sentinel(config: &Config) -> &SentinelTarget {
    match config.redis.target() {
        RedisTarget::Sentinel(target) => target,
        other => panic!("expected a sentinel target, got {other}"),
    }
}

fn invalid_key(text: &str) -> String {
    match load(text) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid key for {text:?}, got {other:?}"),
    }
}

#[test]
fn a_sentinel_url_names_sentinels_master_db_and_credentials() {
    let config = load(
        "redis_url = \"redis+sentinel://:p%40ss@h1:26379,[::1]:26380,h3/mymaster/2\"\n\
         [redis]\nsentinel_password = \"sp\"",
    )
    .unwrap();
    let target = sentinel(&config);
    assert_eq!(
        target.sentinels,
        [
            ("h1".into(), 26379),
            ("::1".into(), 26380),
            ("h3".into(), 26379)
        ]
    );
    assert_eq!((target.master_name.as_str(), target.db), ("mymaster", 2));
    assert_eq!(
        (target.username.as_deref(), target.password.as_deref()),
        (None, Some("p@ss"))
    );
    assert_eq!(target.sentinel_password.as_deref(), Some("sp"));
    assert!(!target.tls);
    assert_eq!(config.redis.min_replicas_acked(), 1);
    assert_eq!(config.redis.wait_timeout_ms, 1000);
    let shown = format!("{:?}", config.redis);
    assert!(
        !shown.contains("p@ss") && !shown.contains("sp\""),
        "{shown}"
    );
}

#[test]
fn the_redis_table_names_a_sentinel_primary() {
    let config = load(
        "[redis]\nsentinels = [\"10.0.0.1:26379\", \"10.0.0.2\"]\nmaster_name = \"gpuq\"\n\
         db = 3\nusername = \"gpuq\"\npassword = \"pw\"\ntls = true\nmin_replicas_acked = 2\n\
         wait_timeout_ms = 250",
    )
    .unwrap();
    let target = sentinel(&config);
    assert_eq!(target.sentinels[1], ("10.0.0.2".into(), 26379));
    assert_eq!(
        (target.master_name.as_str(), target.db, target.tls),
        ("gpuq", 3, true)
    );
    assert_eq!(target.username.as_deref(), Some("gpuq"));
    assert_eq!(config.redis.min_replicas_acked(), 2);
    assert_eq!(config.redis.wait_timeout_ms, 250);
    let url = load("redis_url = \"rediss+sentinel://u:p@h:1/m\"").unwrap();
    assert!(sentinel(&url).tls);
    assert_eq!(sentinel(&url).username.as_deref(), Some("u"));
}

#[test]
fn plain_urls_stay_one_server_without_wait() {
    let config = load("redis_url = \"rediss://:pw@cache:6380/1\"").unwrap();
    assert_eq!(
        config.redis.target(),
        &RedisTarget::Direct("rediss://:pw@cache:6380/1".into())
    );
    assert_eq!(config.redis.min_replicas_acked(), 0);
    assert_eq!(
        config.redis.target().to_string(),
        "rediss://:***@cache:6380/1"
    );
}

#[test]
fn the_environment_url_wins_over_the_sentinel_table() {
    let overrides = ConfigOverrides {
        redis_url: Some("redis://other:6379/0".into()),
        ..ConfigOverrides::default()
    };
    let text = "[redis]\nsentinels = [\"h:26379\"]\nmaster_name = \"m\"";
    let config = Config::parse(text, None, &overrides).unwrap();
    assert_eq!(
        config.redis.target(),
        &RedisTarget::Direct("redis://other:6379/0".into())
    );
}

#[test]
fn bad_sentinel_settings_name_their_key() {
    for (text, key) in [
        ("redis_url = \"redis+sentinel://h:26379\"", "redis_url"),
        ("redis_url = \"redis+sentinel://h:26379/\"", "redis_url"),
        ("redis_url = \"redis+sentinel://h:0/m\"", "redis_url"),
        ("redis_url = \"redis+sentinel://h:1,/m\"", "redis_url"),
        ("redis_url = \"redis+sentinel://h:1/m/x\"", "redis_url"),
        ("redis_url = \"redis+sentinel://h:1/m?db=1\"", "redis_url"),
        ("redis_url = \"sentinel://h:1/m\"", "redis_url"),
        ("[redis]\nsentinels = [\"h:1\"]", "redis.master_name"),
        (
            "[redis]\nsentinels = [\"h:x\"]\nmaster_name = \"m\"",
            "redis.sentinels[0]",
        ),
        (
            "[redis]\nsentinels = [\"h:1\"]\nmaster_name = \"m\"\ndb = -1",
            "redis.db",
        ),
        (
            "redis_url = \"redis://a:6379/0\"\n[redis]\nsentinels = [\"h:1\"]\nmaster_name = \"m\"",
            "redis.sentinels",
        ),
        ("[redis]\nmaster_name = \"m\"", "redis.master_name"),
        (
            "redis_url = \"redis+sentinel://h/m\"\n[redis]\ndb = 1",
            "redis.db",
        ),
        (
            "[redis]\nsentinel_password = \"x\"",
            "redis.sentinel_password",
        ),
        ("[redis]\nwait_timeout_ms = 0", "redis.wait_timeout_ms"),
        (
            "[redis]\nmin_replicas_acked = 101",
            "redis.min_replicas_acked",
        ),
    ] {
        assert_eq!(invalid_key(text), key, "{text}");
    }
}

#[test]
fn a_bad_sentinel_url_error_hides_its_password() {
    let error = load("redis_url = \"redis+sentinel://:hunter2@h:1\"").unwrap_err();
    let shown = error.to_string();
    assert!(
        shown.contains("redis_url") && !shown.contains("hunter2"),
        "{shown}"
    );
}
