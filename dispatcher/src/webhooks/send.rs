//! One attempt of one webhook: owns reqwest in the dispatcher.
//!
//! Before each attempt the URL is checked again (the config may have
//! changed since the job was submitted), the host is resolved and every
//! address it resolves to must pass the SSRF rule; the request then goes
//! only to those addresses (the client's DNS is pinned to them), so a DNS
//! answer that changes between the check and the connect cannot swap them.
//! Redirects are not followed and no proxy is used. Each attempt builds its
//! own client (and so its own connection) for that reason.

use std::net::SocketAddr;
use std::time::Duration;

use gpuq_common::config::WebhooksConfig;
use gpuq_common::webhook::signing::header;
use gpuq_common::webhook::{
    address_allowed, check_url, ip_literal, listed_exactly, secret_for, sign, WebhookDelivery,
    WebhookError,
};

/// Most bytes of a refusing receiver's answer kept in the error.
const ERROR_BODY_BYTES: usize = 200;

/// Why an attempt failed: permanent ones are dead-lettered at once, the
/// others retried. No message quotes the URL (its query may hold a token).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The URL, its secret or one of its addresses is not allowed: permanent.
    #[error(transparent)]
    Refused(#[from] WebhookError),
    /// The payload could not be serialized: permanent.
    #[error("the webhook payload could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("resolving '{host}' failed: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("resolving '{host}' took longer than webhooks.timeout_ms")]
    ResolveTimeout { host: String },
    #[error("'{host}' resolved to no address")]
    NoAddress { host: String },
    /// Connect, TLS, timeout or protocol failure, with its causes.
    #[error("the webhook request failed: {0}")]
    Http(String),
    #[error("the receiver answered {status}: {body}")]
    Status { status: u16, body: String },
}

impl SendError {
    /// Trying again cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Refused(_) | SendError::Encode(_))
    }
}

impl From<reqwest::Error> for SendError {
    fn from(error: reqwest::Error) -> Self {
        // Without the URL; with the causes (reqwest's own text is terse).
        let error = error.without_url();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        SendError::Http(text)
    }
}

/// POSTs `delivery.payload`, signed, to `delivery.url`; `Ok` on a 2xx answer.
pub async fn post(config: &WebhooksConfig, delivery: &WebhookDelivery) -> Result<(), SendError> {
    let url = check_url(config, &delivery.url)?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses = match ip_literal(&url) {
        // check_url applied the address rule to a literal already.
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => resolve(&host, port, config.timeout()).await?,
    };
    let exact = listed_exactly(config, &url);
    if let Some(refused) = addresses
        .iter()
        .find(|a| !address_allowed(config, exact, a.ip()))
    {
        return Err(WebhookError::AddressRefused {
            host,
            ip: refused.ip(),
        }
        .into());
    }
    let secret = secret_for(config, &url).ok_or_else(|| WebhookError::NoSecret(host.clone()))?;
    let body = serde_json::to_vec(&delivery.payload)?;
    let timestamp = gpuq_common::now_ms() / 1000;
    let signature = sign(secret, &delivery.id, timestamp, &body)?;
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(config.timeout())
        .connect_timeout(config.timeout())
        .user_agent(concat!("gpuq-webhooks/", env!("CARGO_PKG_VERSION")));
    if ip_literal(&url).is_none() {
        client = client.resolve_to_addrs(&host, &addresses);
    }
    let mut response = client
        .build()?
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(header::ID, delivery.id.as_str())
        .header(header::TIMESTAMP, timestamp.to_string())
        .header(header::SIGNATURE, signature)
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let answer = read_limited(&mut response, config.max_response_bytes).await;
    if status.is_success() {
        return Ok(());
    }
    let shown = &answer[..answer.len().min(ERROR_BODY_BYTES)];
    Err(SendError::Status {
        status: status.as_u16(),
        body: String::from_utf8_lossy(shown).into_owned(),
    })
}

/// Every address of `host`, within `timeout`.
async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, SendError> {
    let lookup = tokio::net::lookup_host((host, port));
    let found = tokio::time::timeout(timeout, lookup)
        .await
        .map_err(|_| SendError::ResolveTimeout {
            host: host.to_owned(),
        })?
        .map_err(|source| SendError::Resolve {
            host: host.to_owned(),
            source,
        })?;
    let addresses: Vec<SocketAddr> = found.collect();
    if addresses.is_empty() {
        return Err(SendError::NoAddress {
            host: host.to_owned(),
        });
    }
    Ok(addresses)
}

/// At most `limit` bytes of the response body (the rest is never read).
async fn read_limited(response: &mut reqwest::Response, limit: u64) -> Vec<u8> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow_hosts: &[&str]) -> WebhooksConfig {
        WebhooksConfig {
            allow_http: true,
            allow_hosts: allow_hosts.iter().map(|h| h.to_string()).collect(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            timeout_ms: 2_000,
            ..WebhooksConfig::default()
        }
    }

    fn delivery(url: &str) -> WebhookDelivery {
        WebhookDelivery::new("j-1", "completed", url, serde_json::json!({}), 0)
    }

    /// `localhost` resolves (from /etc/hosts, no network) to loopback
    /// addresses: refused for good under a wildcard.
    #[tokio::test]
    async fn webhook_to_a_name_resolving_to_loopback_is_refused_for_good() {
        let error = post(&config(&["*"]), &delivery("http://localhost:9/hook"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                SendError::Refused(WebhookError::AddressRefused { .. })
            ),
            "{error}"
        );
        assert!(error.is_permanent());
        let error = post(&config(&["*"]), &delivery("http://[::ffff:127.0.0.1]/"))
            .await
            .unwrap_err();
        assert!(error.is_permanent(), "{error}");
    }

    /// Listed exactly, loopback is allowed: the attempt reaches the
    /// connect, which fails (nothing listens on port 9) and is retried.
    #[tokio::test]
    async fn webhook_to_an_exactly_listed_loopback_host_is_attempted() {
        let error = post(
            &config(&["127.0.0.1:9"]),
            &delivery("http://127.0.0.1:9/hook"),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, SendError::Http(_)), "{error}");
        assert!(!error.is_permanent());
        assert!(!error.to_string().contains("/hook"), "no url: {error}");
    }

    /// A one-shot HTTP server on loopback answering `reply` (after `delay`);
    /// returns its port.
    async fn answering(reply: Vec<u8>, delay: Duration) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 64 * 1024];
            let _ = socket.read(&mut request).await;
            tokio::time::sleep(delay).await;
            let _ = socket.write_all(&reply).await;
            let _ = socket.shutdown().await;
        });
        port
    }

    /// A redirect is an answer like any non-2xx (retried), never followed.
    #[tokio::test]
    async fn webhook_redirects_are_not_followed() {
        let reply = b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\n\r\n";
        let port = answering(reply.to_vec(), Duration::ZERO).await;
        let host = format!("127.0.0.1:{port}");
        let url = format!("http://{host}/hook");
        let error = post(&config(&[&host]), &delivery(&url)).await.unwrap_err();
        assert!(
            matches!(error, SendError::Status { status: 307, .. }),
            "{error}"
        );
        assert!(!error.is_permanent());
    }

    /// A huge 2xx body is read only up to `max_response_bytes`; a slow
    /// answer past `timeout_ms` is a (retried) failure.
    #[tokio::test]
    async fn webhook_answers_are_bounded_in_size_and_time() {
        let mut huge =
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 10000000\r\n\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'x', 1 << 20));
        let port = answering(huge, Duration::ZERO).await;
        let host = format!("127.0.0.1:{port}");
        let mut bounded = config(&[&host]);
        bounded.max_response_bytes = 100;
        let url = format!("http://{host}/hook");
        match post(&bounded, &delivery(&url)).await.unwrap_err() {
            SendError::Status { status: 500, body } => assert!(body.len() <= 100, "{}", body.len()),
            other => panic!("{other}"),
        }
        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec();
        let port = answering(reply, Duration::from_secs(3)).await;
        let host = format!("127.0.0.1:{port}");
        let mut quick = config(&[&host]);
        quick.timeout_ms = 300;
        let url = format!("http://{host}/hook");
        let started = std::time::Instant::now();
        let error = post(&quick, &delivery(&url)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{error}");
        assert!(!error.is_permanent(), "{error}");
    }
}
