use std::net::IpAddr;

use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn allowing(allow_hosts: &[&str]) -> WebhooksConfig {
    WebhooksConfig {
        allow_hosts: allow_hosts.iter().map(|h| h.to_string()).collect(),
        secret: SECRET.into(),
        ..WebhooksConfig::default()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn webhook_urls_must_be_https_unless_http_is_allowed() {
    let mut config = allowing(&["hooks.example.com"]);
    assert!(check_url(&config, "https://hooks.example.com/gpuq?t=1").is_ok());
    assert_eq!(
        check_url(&config, "http://hooks.example.com/gpuq"),
        Err(WebhookError::SchemeNotAllowed("http".into()))
    );
    assert_eq!(
        check_url(&config, "ftp://hooks.example.com/"),
        Err(WebhookError::SchemeNotAllowed("ftp".into()))
    );
    config.allow_http = true;
    assert!(check_url(&config, "http://hooks.example.com/gpuq").is_ok());
    assert!(matches!(
        check_url(&config, "not a url"),
        Err(WebhookError::InvalidUrl(_))
    ));
    let long = format!("https://hooks.example.com/{}", "a".repeat(MAX_URL_LEN));
    assert_eq!(check_url(&config, &long), Err(WebhookError::UrlTooLong));
}

#[test]
fn webhook_urls_with_user_info_are_refused() {
    let config = allowing(&["hooks.example.com"]);
    for url in [
        "https://user:pass@hooks.example.com/",
        "https://user@hooks.example.com/",
        "https://:pass@hooks.example.com/",
    ] {
        assert_eq!(
            check_url(&config, url),
            Err(WebhookError::UserInfo),
            "{url}"
        );
    }
}

#[test]
fn webhook_hosts_must_be_listed() {
    let config = allowing(&["hooks.example.com", "api.example.net:8443", "*.example.org"]);
    assert!(check_url(&config, "https://HOOKS.example.com/").is_ok());
    assert!(check_url(&config, "https://api.example.net:8443/").is_ok());
    assert_eq!(
        check_url(&config, "https://api.example.net/"),
        Err(WebhookError::HostNotAllowed("api.example.net".into())),
        "the listed port only"
    );
    assert!(check_url(&config, "https://a.b.example.org/").is_ok());
    assert_eq!(
        check_url(&config, "https://example.org/"),
        Err(WebhookError::HostNotAllowed("example.org".into())),
        "a wildcard covers names under the domain, not the domain"
    );
    assert_eq!(
        check_url(&config, "https://evil-example.org/"),
        Err(WebhookError::HostNotAllowed("evil-example.org".into()))
    );
    let any = allowing(&["*"]);
    assert!(check_url(&any, "https://anything.example/").is_ok());
    assert_eq!(
        check_url(&WebhooksConfig::default(), "https://hooks.example.com/"),
        Err(WebhookError::WebhooksOff)
    );
}

#[test]
fn webhook_hosts_need_a_secret_and_the_most_specific_wins() {
    let mut config = allowing(&["a.example", "b.example:8443", "*.c.example"]);
    config.secret.clear();
    config
        .secrets
        .insert("a.example".into(), "whsec_AAEC".into());
    config
        .secrets
        .insert("b.example".into(), "whsec_AAED".into());
    config
        .secrets
        .insert("b.example:8443".into(), "whsec_AAEE".into());
    let url = |u: &str| url::Url::parse(u).unwrap();
    assert_eq!(
        secret_for(&config, &url("https://a.example/")),
        Some("whsec_AAEC")
    );
    assert_eq!(
        secret_for(&config, &url("https://b.example:8443/")),
        Some("whsec_AAEE")
    );
    assert_eq!(
        check_url(&config, "https://x.c.example/"),
        Err(WebhookError::NoSecret("x.c.example".into()))
    );
    config
        .secrets
        .insert("*.c.example".into(), "whsec_AAEF".into());
    assert_eq!(
        secret_for(&config, &url("https://x.c.example/")),
        Some("whsec_AAEF")
    );
}

#[test]
fn webhook_events_are_job_statuses_after_queued() {
    let events = |list: &[&str]| list.iter().map(|e| e.to_string()).collect::<Vec<_>>();
    assert!(check_events(&events(&["processing", "completed", "timed_out"])).is_ok());
    assert_eq!(
        check_events(&events(&["queued"])),
        Err(WebhookError::UnknownEvent("queued".into()))
    );
    assert_eq!(
        check_events(&events(&["done"])),
        Err(WebhookError::UnknownEvent("done".into()))
    );
    let finals = WebhookRequest {
        url: "https://a/".into(),
        events: Vec::new(),
    };
    assert!(finals.wants("completed") && finals.wants("cancelled") && finals.wants("timed_out"));
    assert!(!finals.wants("processing") && !finals.wants("queued"));
    let chosen = WebhookRequest {
        events: events(&["processing"]),
        ..finals
    };
    assert!(chosen.wants("processing") && !chosen.wants("completed"));
}

#[test]
fn webhook_private_addresses_are_refused_unless_listed_exactly() {
    let config = allowing(&["*"]);
    for refused in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "192.0.2.7",
        "::1",
        "::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
    ] {
        assert!(!address_allowed(&config, false, ip(refused)), "{refused}");
        assert!(address_allowed(&config, true, ip(refused)), "{refused}");
    }
    for public in [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
    ] {
        assert!(address_allowed(&config, false, ip(public)), "{public}");
    }
}

#[test]
fn webhook_ip_literals_are_checked_at_submit() {
    let wildcard = allowing(&["*"]);
    for url in [
        "https://127.0.0.1/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[fc00::1]:8443/",
        "https://169.254.169.254/latest/meta-data",
    ] {
        assert!(
            matches!(
                check_url(&wildcard, url),
                Err(WebhookError::AddressRefused { .. })
            ),
            "{url}"
        );
    }
    let listed = allowing(&["127.0.0.1:9000", "[::1]", "localhost"]);
    assert!(check_url(&listed, "https://127.0.0.1:9000/").is_ok());
    assert!(check_url(&listed, "https://[0:0::1]:1234/").is_ok());
    let url = url::Url::parse("https://localhost:8080/").unwrap();
    assert!(listed_exactly(&listed, &url));
    let url = url::Url::parse("https://localhost.example/").unwrap();
    assert!(!listed_exactly(&allowing(&["*.example"]), &url));
}

#[test]
fn webhook_host_entries_are_parsed() {
    assert_eq!(HostPattern::parse("*"), Ok(HostPattern::Any));
    assert_eq!(
        HostPattern::parse("*.Example.com"),
        Ok(HostPattern::Suffix(".example.com".into()))
    );
    assert_eq!(
        HostPattern::parse("[::1]:8080"),
        Ok(HostPattern::Exact {
            host: "[::1]".into(),
            port: Some(8080)
        })
    );
    for bad in [
        "",
        "https://a.example",
        "a.example/path",
        "a:b",
        "::1",
        "*.",
        "a..b",
        "a:0",
    ] {
        assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn webhook_delivery_round_trips_as_json() {
    let delivery = WebhookDelivery::new(
        "j-1",
        "completed",
        "https://a.example/",
        serde_json::json!({"job_id": "j-1"}),
        42,
    );
    assert_eq!(delivery.id, "j-1.completed");
    let json = serde_json::to_string(&delivery).unwrap();
    assert_eq!(
        serde_json::from_str::<WebhookDelivery>(&json).unwrap(),
        delivery
    );
    let request: WebhookRequest = serde_json::from_str(r#"{"url":"https://a/"}"#).unwrap();
    assert!(request.events.is_empty());
    assert_eq!(
        serde_json::to_string(&request).unwrap(),
        r#"{"url":"https://a/"}"#
    );
}
