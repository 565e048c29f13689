//! Servers a test owns and may break on purpose: a private Redis and an
//! S3-compatible moto server, each on a free loopback port, stopped by pid.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Redis server of a test's own, on a free loopback port, that the test may
/// stop and restart (the shared one must stay up for the others). Stopped by
/// pid when dropped.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = PrivateRedis { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the server on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An S3-compatible server of a test's own (moto, from the project's Python
/// environment) on a free loopback port, with one bucket. Stopped by pid when dropped.
pub struct MotoS3 {
    pub port: u16,
    child: Child,
}

impl MotoS3 {
    pub fn start(bucket: &str) -> MotoS3 {
        let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
        assert!(
            server.is_file(),
            "{} missing: run scripts/python-env.sh (scripts/test.sh does)",
            server.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let moto = MotoS3 { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let request = format!("PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                stream.write_all(request.as_bytes()).unwrap();
                let mut reply = String::new();
                let _ = stream.read_to_string(&mut reply);
                assert!(
                    reply.starts_with("HTTP/1.1 200"),
                    "bucket not created: {reply}"
                );
                return moto;
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `[artifacts]` section for a store in `bucket` on this server.
    pub fn artifacts_config(&self, bucket: &str) -> String {
        format!(
            "[artifacts]\nurl = \"s3://{bucket}/gpuq\"\ninline_max_bytes = 1024\n[artifacts.options]\n\
             aws_endpoint = \"http://127.0.0.1:{}\"\naws_allow_http = \"true\"\naws_region = \"us-east-1\"\n\
             aws_access_key_id = \"testing\"\naws_secret_access_key = \"testing\"\n",
            self.port
        )
    }

    /// Object keys in the bucket, read back from the server.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let request = format!(
            "GET /{bucket}?list-type=2 HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply
            .split("<Key>")
            .skip(1)
            .filter_map(|part| part.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect()
    }
}

impl Drop for MotoS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
