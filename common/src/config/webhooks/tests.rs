use crate::config::{Config, ConfigError, ConfigOverrides};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn parse(webhooks: &str) -> Result<Config, ConfigError> {
    Config::parse(
        &format!("[webhooks]\n{webhooks}"),
        None,
        &ConfigOverrides::default(),
    )
}

/// The key and message of a refused config.
fn refused(webhooks: &str) -> (String, String) {
    match parse(webhooks).unwrap_err() {
        ConfigError::Invalid { key, message } => (key, message),
        other => panic!("expected an invalid key, got: {other}"),
    }
}

#[test]
fn webhooks_are_off_by_default() {
    let config = Config::parse("", None, &ConfigOverrides::default()).unwrap();
    assert!(!config.webhooks.enabled());
    assert_eq!(config.webhooks.max_age_s, 86_400);
    assert_eq!(config.webhooks.timeout_ms, 10_000);
    assert_eq!(config.webhooks.max_response_bytes, 65_536);
    assert!(config.webhooks.default.is_none());
}

#[test]
fn a_full_webhooks_section_loads() {
    let config = parse(&format!(
        "allow_hosts = [\"hooks.example.com\", \"*.example.org\"]\nsecret = \"{SECRET}\"\n\
         max_age_s = 60\n[webhooks.secrets]\n\"hooks.example.com\" = \"whsec_AAEC\"\n\
         [webhooks.default]\nurl = \"https://hooks.example.com/gpuq\"\nevents = [\"completed\", \"failed\"]\n"
    ))
    .unwrap();
    let webhooks = &config.webhooks;
    assert!(webhooks.enabled());
    assert_eq!(webhooks.max_age_s, 60);
    let default = webhooks.default.as_ref().unwrap();
    assert_eq!(default.events, ["completed", "failed"]);
    let debug = format!("{webhooks:?}");
    assert!(
        !debug.contains("MfKQ9r8G") && !debug.contains("AAEC"),
        "{debug}"
    );
    assert!(debug.contains("hooks.example.com"), "{debug}");
}

#[test]
fn webhook_secrets_must_be_whsec_base64_and_are_never_shown() {
    let (key, message) = refused("secret = \"hunter2-not-whsec\"");
    assert_eq!(key, "webhooks.secret");
    assert!(
        message.contains("whsec_") && !message.contains("hunter2"),
        "{message}"
    );
    let (key, message) = refused("[webhooks.secrets]\n\"a.example\" = \"whsec_!!not-base64!!\"");
    assert_eq!(key, "webhooks.secrets.\"a.example\"");
    assert!(!message.contains("not-base64"), "{message}");
    let (key, _) = refused("[webhooks.secrets]\n\"http://a.example\" = \"whsec_AAEC\"");
    assert_eq!(key, "webhooks.secrets.\"http://a.example\"");
}

#[test]
fn every_allowed_webhook_host_needs_a_secret() {
    let (key, message) = refused("allow_hosts = [\"a.example\", \"b.example:8443\"]\n[webhooks.secrets]\n\"a.example\" = \"whsec_AAEC\"");
    assert_eq!(key, "webhooks.allow_hosts[1]");
    assert!(message.contains("b.example:8443"), "{message}");
    // A host's secret covers each of its ports; the default covers all.
    parse("allow_hosts = [\"b.example:8443\"]\n[webhooks.secrets]\n\"b.example\" = \"whsec_AAEC\"")
        .unwrap();
    parse(&format!("allow_hosts = [\"*\"]\nsecret = \"{SECRET}\"")).unwrap();
    let (key, _) = refused(&format!(
        "allow_hosts = [\"https://a.example/x\"]\nsecret = \"{SECRET}\""
    ));
    assert_eq!(key, "webhooks.allow_hosts[0]");
}

#[test]
fn webhook_limits_and_the_default_webhook_are_checked() {
    let (key, _) = refused("max_age_s = 0");
    assert_eq!(key, "webhooks.max_age_s");
    let (key, _) = refused("timeout_ms = 0");
    assert_eq!(key, "webhooks.timeout_ms");
    for delays in ["[]", "[0, 4]", "[4, 4]", "[16, 4]", "[100000]"] {
        let (key, _) = refused(&format!("retry_delays_s = {delays}"));
        assert_eq!(key, "webhooks.retry_delays_s", "{delays}");
    }
    let config = parse("retry_delays_s = [1, 2]").unwrap();
    assert_eq!(config.webhooks.retry_delays_s, [1, 2]);
    let (key, message) = refused("[webhooks.default]\nurl = \"https://a.example/\"");
    assert_eq!(key, "webhooks.default.url");
    assert!(message.contains("allow_hosts is empty"), "{message}");
    let on = format!("allow_hosts = [\"a.example\"]\nsecret = \"{SECRET}\"\n");
    let (key, message) = refused(&format!(
        "{on}[webhooks.default]\nurl = \"http://a.example/\""
    ));
    assert_eq!(key, "webhooks.default.url");
    assert!(message.contains("allow_http"), "{message}");
    let (key, _) = refused(&format!(
        "{on}[webhooks.default]\nurl = \"https://a.example/\"\nevents = [\"queued\"]"
    ));
    assert_eq!(key, "webhooks.default.events");
    let unknown = parse(&format!(
        "{on}[webhooks.default]\nurl = \"https://a.example/\"\nevent = []"
    ));
    assert!(
        matches!(unknown, Err(ConfigError::Parse { .. })),
        "{unknown:?}"
    );
    parse(&format!(
        "{on}[webhooks.default]\nurl = \"https://a.example/hook\""
    ))
    .unwrap();
}

#[test]
fn webhook_secrets_are_hidden_in_parse_errors() {
    let text = "[webhooks.secrets]\n\"hooks.example.com\" = \"whsec_c2VjcmV0LXZhbHVl\" junk\n";
    let error = Config::parse(text, None, &ConfigOverrides::default())
        .unwrap_err()
        .to_string();
    assert!(!error.contains("c2VjcmV0LXZhbHVl"), "{error}");
}
