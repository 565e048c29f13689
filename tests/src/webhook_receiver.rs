//! A webhook receiver of a test's own: `tests/fixtures/webhook_receiver.py`
//! (the `standardwebhooks` package verifies each signature, as any receiver
//! would), on a loopback port, stopped by pid when dropped or `stop`ped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) receiver and the log of what it was sent.
pub struct WebhookReceiver {
    pub port: u16,
    secret: String,
    /// Holds the log file; removed with the receiver.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl WebhookReceiver {
    /// A receiver on a free loopback port, checking `secret`, not started yet.
    pub fn new(secret: &str) -> WebhookReceiver {
        WebhookReceiver {
            port: crate::http::free_port(),
            secret: secret.to_owned(),
            dir: tempfile::tempdir().expect("webhook receiver dir"),
            child: None,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("requests.jsonl")
    }

    /// Starts it; it answers 500 to its first `fail_first` requests.
    pub fn start(&mut self, fail_first: u32) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = root.join(".venv/bin/python");
        assert!(
            python.is_file(),
            "{} missing: run scripts/python-env.sh (scripts/test.sh does)",
            python.display()
        );
        let child = Command::new(python)
            .arg(root.join("tests/fixtures/webhook_receiver.py"))
            .arg(self.port.to_string())
            .arg(&self.secret)
            .arg(self.log())
            .arg(fail_first.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the webhook receiver");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "webhook receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it (by pid).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every request it got, in order: `{"n", "id", "verified", "status", "body"}`.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}
