//! A headless Chromium driven through chromedriver's WebDriver API, for the
//! dashboard and job-page tests.
//!
//! WebGL (the job page's 3D viewer) runs on SwiftShader, Chromium's software
//! renderer: `--use-angle=swiftshader --enable-unsafe-swiftshader` (this
//! machine has no GPU; without `--enable-unsafe-swiftshader`, recent
//! Chromium versions refuse software WebGL).

#![allow(dead_code)] // each test file uses a part

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(30);

/// chromedriver on a free port with one browser session. Dropping it ends
/// the session (so Chromium exits even when the test failed), then stops
/// chromedriver by pid.
pub struct Browser {
    child: Child,
    port: u16,
    session_id: Option<String>,
    session: String,
    client: reqwest::Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(session) = &self.session_id {
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

impl Browser {
    /// Chromium with a window of `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test.sh installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            child,
            port,
            session_id: None,
            session: String::new(),
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + WAIT;
        while browser
            .client
            .get(format!("{base}/status"))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--use-angle=swiftshader".to_owned(),
            "--enable-unsafe-swiftshader".to_owned(),
            format!("--window-size={width},{height}"),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium", "args": args
        }}}});
        let session = webdriver(
            &browser.client,
            reqwest::Method::POST,
            &format!("{base}/session"),
            capabilities,
        )
        .await;
        let id = session["sessionId"].as_str().unwrap().to_owned();
        browser.session = format!("{base}/session/{id}");
        browser.session_id = Some(id);
        browser
    }

    pub async fn open(&self, url: &str) {
        let target = format!("{}/url", self.session);
        webdriver(
            &self.client,
            reqwest::Method::POST,
            &target,
            json!({ "url": url }),
        )
        .await;
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn run(&self, script: &str) -> Value {
        let target = format!("{}/execute/sync", self.session);
        webdriver(
            &self.client,
            reqwest::Method::POST,
            &target,
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Runs `script`, which calls `arguments[0]` with its value when done.
    pub async fn run_async(&self, script: &str) -> Value {
        let target = format!("{}/execute/async", self.session);
        webdriver(
            &self.client,
            reqwest::Method::POST,
            &target,
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Runs `script` every 100 ms until it returns something other than
    /// null or false; fails after [`WAIT`], saying `what` and the last value.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.run(script).await;
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never happened ({value})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `innerText` of the element with this id ("" when there is none).
    pub async fn text_of(&self, id: &str) -> String {
        let script = format!(
            "const e = document.getElementById({}); return e ? e.innerText : ''",
            json!(id)
        );
        self.run(&script)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until element `id`'s text contains `needle`; returns the text.
    pub async fn wait_for_text(&self, id: &str, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text_of(id).await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "#{id} never showed {needle:?}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the window; written to `docs/<name>` when
    /// `GPUQ_UPDATE_SCREENSHOT` is set (the README shows it).
    pub async fn screenshot(&self, name: &str) -> Vec<u8> {
        use base64::Engine;
        let target = format!("{}/screenshot", self.session);
        let png = webdriver(&self.client, reqwest::Method::GET, &target, Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        if std::env::var_os("GPUQ_UPDATE_SCREENSHOT").is_some() {
            let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../docs")
                .join(name);
            std::fs::write(docs, &png).unwrap();
        }
        png
    }
}
