//! A client of the HTTP gateway for the tests: starts `gpuq serve` and calls it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{ProcessGuard, TestSystem};

const WAIT: Duration = Duration::from_secs(30);

/// A running `gpuq serve` and an HTTP client for it.
pub struct Gateway {
    pub base: String,
    pub process: ProcessGuard,
    pub client: reqwest::Client,
}

/// Starts `gpuq serve` for `system` on a free port and waits until it answers.
pub async fn start_gateway(system: &TestSystem) -> Gateway {
    start_gateway_on(system, "127.0.0.1").await
}

/// A free TCP port on this machine.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Like [`start_gateway`], listening on `ip` (e.g. `0.0.0.0`); called through 127.0.0.1.
pub async fn start_gateway_on(system: &TestSystem, ip: &str) -> Gateway {
    start(system, ip, None).await
}

/// Like [`start_gateway`], with another config file of the system (e.g. one
/// that logs in to Redis as another user).
pub async fn start_gateway_with_config(system: &TestSystem, config: &std::path::Path) -> Gateway {
    start(system, "127.0.0.1", Some(config)).await
}

async fn start(system: &TestSystem, ip: &str, config: Option<&std::path::Path>) -> Gateway {
    let port = free_port();
    let address = format!("{ip}:{port}");
    let args = ["serve", "--listen", &address];
    let process = match config {
        Some(config) => system.spawn_with_config("gpuq", config, &args),
        None => system.spawn("gpuq", &args),
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "gateway did not start: {}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Gateway {
        base,
        process,
        client,
    }
}

impl Gateway {
    /// One request; returns the status, the body (JSON, or a JSON string) and the headers.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        )
    }

    /// Polls `GET /v1/jobs/{id}` until the job is final.
    pub async fn wait_final(&self, id: &str) -> Value {
        self.wait_final_as(id, None).await
    }

    /// [`Gateway::wait_final`] with a bearer token.
    pub async fn wait_final_as(&self, id: &str, token: Option<&str>) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, job, _) = self
                .call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None, token)
                .await;
            if ["completed", "failed", "cancelled", "timed_out"]
                .contains(&job["status"].as_str().unwrap_or(""))
            {
                return job;
            }
            assert!(Instant::now() < deadline, "{id} not final: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
