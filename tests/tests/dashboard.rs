//! The dashboard in a real headless Chromium (driven through chromedriver's
//! WebDriver API): the page loads, shows the hosts of a running system, and a
//! job submitted while it is open appears and turns completed without a reload.
//! Also saves the screenshot shown in the README (docs/dashboard.png).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpuq_integration_tests::fixtures::ConfigBuilder;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// chromedriver on a free port. Dropping it ends the browser session (so
/// Chromium exits even when the test failed), then stops chromedriver by pid.
struct Driver {
    child: Child,
    base: String,
    port: u16,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(session) = &self.session {
            use std::io::{Read, Write};
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                // Bounded: chromedriver may keep the connection open after answering.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let request = format!("DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(request.as_bytes());
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn webdriver(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Value,
) -> Value {
    let mut request = client.request(method, url);
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let reply: Value = response.json().await.unwrap();
    assert!(
        reply["value"]["error"].is_null(),
        "webdriver {url}: {reply}"
    );
    reply["value"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_hosts_and_a_job_turning_completed_live() {
    // The screenshot's scenario: one 24 GiB GPU split in two workers.
    let system = ConfigBuilder::new()
        .host("gpu-host-1")
        .dispatcher("workers_per_gpu = 2")
        .gpu_named(24576, "declared-24g")
        .echo("echo")
        .model("sleep", "sleep", 4096)
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 2, WAIT)
        .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _gateway = system.spawn("gpuq", &["serve", "--listen", &format!("127.0.0.1:{port}")]);
    for args in [
        vec!["submit", "echo", "--input", "prompt=wooden chair", "--wait"],
        vec![
            "submit",
            "sleep",
            "--input",
            "fail=true",
            "--input",
            "duration_ms=10",
            "--wait",
        ],
    ] {
        system.gpuq(&args, WAIT);
    }

    let driver_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={driver_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; scripts/test.sh installs it)");
    let mut driver = Driver {
        child,
        base: format!("http://127.0.0.1:{driver_port}"),
        port: driver_port,
        session: None,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    while client
        .get(format!("{}/status", driver.base))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let session = webdriver(
        &client,
        reqwest::Method::POST,
        &format!("{}/session", driver.base),
        json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }}}}),
    )
    .await;
    let session_id = session["sessionId"].as_str().unwrap().to_owned();
    driver.session = Some(session_id.clone());
    let session = format!("{}/session/{session_id}", driver.base);
    webdriver(
        &client,
        reqwest::Method::POST,
        &format!("{session}/url"),
        json!({"url": format!("http://127.0.0.1:{port}/")}),
    )
    .await;

    let text_of = |id: &'static str| {
        let (client, session) = (client.clone(), session.clone());
        async move {
            let script = format!("return document.getElementById('{id}').innerText");
            webdriver(
                &client,
                reqwest::Method::POST,
                &format!("{session}/execute/sync"),
                json!({"script": script, "args": []}),
            )
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
        }
    };
    let wait_for = |id: &'static str, needle: String| async move {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = text_of(id).await;
            if text.contains(&needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "#{id} never showed {needle:?}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let gpus = wait_for("gpus", "gpu-host-1".into()).await;
    assert!(gpus.contains("declared-24g"), "{gpus}");
    wait_for("workers", "gpu-host-1-gpu0-slot1".into()).await;
    wait_for("live", "live".into()).await;

    // Submitted while the page is open: appears, then turns completed.
    let output = system.gpuq(
        &[
            "submit",
            "sleep",
            "--input",
            "duration_ms=1500",
            "--job-id",
            "dashboard-live-job",
        ],
        WAIT,
    );
    assert!(output.status.success());
    wait_for("jobs", "dashboard-live-job".into()).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let jobs = text_of("jobs").await;
        if jobs
            .lines()
            .any(|l| l.starts_with("dashboard-live-job") && l.contains("completed"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job never turned completed on the page: {jobs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let jobs = text_of("jobs").await;
    assert!(
        jobs.contains("model_failed"),
        "the failed job and its error show too: {jobs}"
    );

    // The screenshot for the README.
    let png = webdriver(
        &client,
        reqwest::Method::GET,
        &format!("{session}/screenshot"),
        Value::Null,
    )
    .await;
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png");
    if std::env::var_os("GPUQ_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(&docs, &png).unwrap();
    }
}
