//! The `adapter` runtime: a long-lived child process per loaded model, speaking
//! JSON lines over stdin/stdout (docs/adapters.md).
//!
//! The child is untrusted: every line it writes is size-limited and parsed; a
//! crash, a hang past the job's timeout or garbage on stdout becomes a clear job
//! error, the child is killed, and the next job starts a fresh one. Every
//! request carries an `id` that each reply must echo: a reply with a missing or
//! other id (a stray line left over from an earlier request) is a protocol
//! error, so it can never become the next job's result. Its stderr
//! goes to the worker's log. It inherits `CUDA_VISIBLE_DEVICES` and dies with
//! the worker.

use std::process::Stdio;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use gpuq_common::registry::{AdapterParams, ModelConfig};
use gpuq_common::wire::{value_from_json as from_adapter_json, value_to_json as to_adapter_json};
use gpuq_common::{ErrorCode, JobError, Value, ValueMap};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::{LoadError, Progress, RunError, Runtime};

/// Longest line an adapter may write (a result with inline data included).
const MAX_LINE_BYTES: usize = 256 * 1024 * 1024;
/// How long an adapter gets to exit after `unload`.
const UNLOAD_GRACE: Duration = Duration::from_secs(5);

struct ChildProcess {
    child: Child,
    stdin: ChildStdin,
    lines: FramedRead<ChildStdout, LinesCodec>,
    /// Number of the last request sent; ids are unique within the process.
    last_request: u64,
}

pub struct AdapterModel {
    model_id: String,
    params: AdapterParams,
    child: Mutex<Option<ChildProcess>>,
}

/// What an adapter said, or failed to say.
enum Reply {
    Message(serde_json::Value),
    Exited(String),
    Garbage(String),
}

impl ChildProcess {
    /// Sends `message` with a fresh `id`; returns the id its replies must echo.
    async fn request(&mut self, mut message: serde_json::Value) -> std::io::Result<String> {
        self.last_request += 1;
        let id = format!("r{}", self.last_request);
        message["id"] = json!(id);
        self.send(&message).await?;
        Ok(id)
    }

    async fn send(&mut self, message: &serde_json::Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(message).expect("json values serialize");
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await
    }

    async fn next_reply(&mut self) -> Reply {
        match self.lines.next().await {
            None => Reply::Exited(self.exit_status().await),
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                Reply::Garbage(format!("a line longer than {MAX_LINE_BYTES} bytes"))
            }
            Some(Err(LinesCodecError::Io(error))) => {
                Reply::Garbage(format!("unreadable output: {error}"))
            }
            Some(Ok(line)) => match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(message) if message.get("type").and_then(|t| t.as_str()).is_some() => {
                    Reply::Message(message)
                }
                _ => Reply::Garbage(format!("not a protocol message: {}", truncate(&line, 200))),
            },
        }
    }

    async fn exit_status(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => "closed its output".to_owned(),
        }
    }

    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// `Some(what is wrong)` unless `message` echoes request `expected`'s id.
fn wrong_reply_id(message: &serde_json::Value, expected: &str) -> Option<String> {
    match message.get("id") {
        Some(serde_json::Value::String(id)) if id == expected => None,
        Some(other) => Some(format!(
            "a reply with id {} while request \"{expected}\" was running",
            truncate(&other.to_string(), 80)
        )),
        None => Some(format!(
            "a reply without an id while request \"{expected}\" was running"
        )),
    }
}

/// Maps an adapter's `error` message to a job error; adapters may pick among a few codes.
fn adapter_error(message: &serde_json::Value) -> JobError {
    let text = message["message"]
        .as_str()
        .unwrap_or("the adapter reported an error")
        .to_owned();
    let code = match message["code"].as_str() {
        Some("invalid_input") => ErrorCode::InvalidInput,
        Some("out_of_memory") => ErrorCode::OutOfMemory,
        _ => ErrorCode::ModelFailed,
    };
    JobError::new(code, text)
}

impl AdapterModel {
    /// Starts the adapter and waits for it to finish loading.
    pub async fn load(
        model: &ModelConfig,
        params: AdapterParams,
    ) -> Result<AdapterModel, LoadError> {
        let child = spawn_and_load(&model.id, &params).await?;
        Ok(AdapterModel {
            model_id: model.id.clone(),
            params,
            child: Mutex::new(Some(child)),
        })
    }

    // Longer than 80 lines: one read loop over the adapter's reply lines, an arm per message type of the protocol.

    async fn run_job(
        &self,
        inputs: ValueMap,
        timeout: Duration,
        progress: Progress,
    ) -> Result<ValueMap, RunError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut slot = self.child.lock().await;
        if slot.is_none() {
            tracing::info!(model = %self.model_id, "restarting adapter");
            let started =
                tokio::time::timeout_at(deadline, spawn_and_load(&self.model_id, &self.params))
                    .await;
            *slot = Some(match started {
                Ok(Ok(child)) => child,
                Ok(Err(error)) => return Err(RunError::ModelBroken(error.to_job_error())),
                Err(_) => return Err(RunError::TimedOut { stuck: false }),
            });
        }
        let child = slot.as_mut().expect("adapter child present");
        let inputs_json: serde_json::Map<String, serde_json::Value> = inputs
            .iter()
            .map(|(k, v)| (k.clone(), to_adapter_json(v)))
            .collect();
        let id = match child
            .request(json!({"op": "run", "inputs": inputs_json}))
            .await
        {
            Ok(id) => id,
            Err(error) => {
                let status = child.exit_status().await;
                slot.take();
                return Err(crashed(format!(
                    "the adapter could not take the job ({error}); it exited: {status}"
                )));
            }
        };
        loop {
            let reply = match tokio::time::timeout_at(deadline, child.next_reply()).await {
                Ok(reply) => reply,
                Err(_) => {
                    tracing::warn!(model = %self.model_id, "adapter hung past the job's timeout; killing it");
                    slot.take().expect("adapter child present").kill().await;
                    return Err(RunError::TimedOut { stuck: false });
                }
            };
            let message = match reply {
                Reply::Message(message) => message,
                Reply::Exited(status) => {
                    slot.take();
                    return Err(crashed(format!(
                        "the adapter exited while running the job: {status}"
                    )));
                }
                Reply::Garbage(what) => {
                    slot.take().expect("adapter child present").kill().await;
                    return Err(misbehaved(format!(
                        "the adapter wrote invalid output ({what}); it was restarted"
                    )));
                }
            };
            if let Some(what) = wrong_reply_id(&message, &id) {
                slot.take().expect("adapter child present").kill().await;
                return Err(misbehaved(format!(
                    "the adapter broke the protocol ({what}); it was restarted"
                )));
            }
            match message["type"].as_str() {
                Some("progress") => {
                    if let Some(fraction) = message["progress"]
                        .as_f64()
                        .filter(|p| (0.0..=1.0).contains(p))
                    {
                        progress(fraction);
                    }
                }
                Some("result") => {
                    let outputs = match from_adapter_json(&message["outputs"]) {
                        Ok(Value::Map(entries)) => entries,
                        Ok(_) => {
                            return Err(misbehaved(
                                "the adapter's 'outputs' is not an object".into(),
                            ))
                        }
                        Err(error) => {
                            return Err(misbehaved(format!(
                                "the adapter's outputs are invalid: {error}"
                            )))
                        }
                    };
                    return Ok(outputs
                        .into_iter()
                        .map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), v))
                        .collect());
                }
                Some("error") => return Err(RunError::Job(adapter_error(&message))),
                other => {
                    slot.take().expect("adapter child present").kill().await;
                    return Err(misbehaved(format!(
                        "the adapter sent an unknown message type {other:?}; it was restarted"
                    )));
                }
            }
        }
    }
}

/// The adapter process died: the job may be retried (a fresh process starts).
fn crashed(message: String) -> RunError {
    RunError::Job(JobError::new(ErrorCode::ModelCrashed, message))
}

/// The adapter misbehaved: the job fails; a fresh process starts for the next one.
fn misbehaved(message: String) -> RunError {
    RunError::Job(JobError::new(ErrorCode::ModelFailed, message))
}

async fn spawn_and_load(model_id: &str, params: &AdapterParams) -> Result<ChildProcess, LoadError> {
    let (program, args) = params
        .command
        .split_first()
        .expect("validated: command has a program");
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(&params.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(cwd) = &params.cwd {
        command.current_dir(cwd);
    }
    gpuq_common::process::set_parent_death_signal(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| LoadError::new(model_id, format!("cannot start adapter {program}: {e}")))?;
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut process = ChildProcess {
        child,
        stdin,
        lines: FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_LINE_BYTES)),
        last_request: 0,
    };
    let settings = serde_json::to_value(&params.settings).unwrap_or_default();
    let load = json!({"op": "load", "model": model_id, "settings": settings});
    let loaded = async {
        let id = process
            .request(load)
            .await
            .map_err(|e| format!("cannot send load: {e}"))?;
        loop {
            let message = match process.next_reply().await {
                Reply::Message(message) => message,
                Reply::Exited(status) => {
                    return Err(format!("adapter exited while loading: {status}"))
                }
                Reply::Garbage(what) => {
                    return Err(format!(
                        "adapter wrote invalid output while loading ({what})"
                    ))
                }
            };
            if let Some(what) = wrong_reply_id(&message, &id) {
                return Err(format!("adapter broke the protocol while loading ({what})"));
            }
            match message["type"].as_str() {
                Some("ready") => return Ok(()),
                Some("progress") => continue,
                Some("error") => {
                    return Err(format!(
                        "adapter load failed: {}",
                        adapter_error(&message).message
                    ))
                }
                other => return Err(format!("adapter sent {other:?} instead of 'ready'")),
            }
        }
    };
    let timeout = Duration::from_secs(params.load_timeout_s);
    match tokio::time::timeout(timeout, loaded).await {
        Ok(Ok(())) => Ok(process),
        Ok(Err(reason)) => {
            process.kill().await;
            Err(LoadError::new(model_id, reason))
        }
        Err(_) => {
            process.kill().await;
            Err(LoadError::new(
                model_id,
                format!("adapter did not load within {} s", params.load_timeout_s),
            ))
        }
    }
}

impl Runtime for AdapterModel {
    fn run(
        &self,
        inputs: ValueMap,
        timeout: Duration,
        progress: Progress,
    ) -> BoxFuture<'_, Result<ValueMap, RunError>> {
        self.run_job(inputs, timeout, progress).boxed()
    }

    fn abort(&self) -> BoxFuture<'_, ()> {
        async move {
            // The job's future was dropped, so the lock is free; kill, don't ask.
            if let Some(child) = self.child.lock().await.take() {
                child.kill().await;
            }
        }
        .boxed()
    }

    fn can_abort(&self) -> bool {
        true
    }

    fn unload(&self) -> BoxFuture<'_, ()> {
        async move {
            let Some(mut child) = self.child.lock().await.take() else {
                return;
            };
            let _ = child.request(json!({"op": "unload"})).await;
            if tokio::time::timeout(UNLOAD_GRACE, child.child.wait())
                .await
                .is_err()
            {
                child.kill().await;
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_errors_keep_allowed_codes_only() {
        assert_eq!(
            adapter_error(&json!({"type": "error", "message": "bad", "code": "invalid_input"}))
                .code,
            ErrorCode::InvalidInput
        );
        assert_eq!(
            adapter_error(&json!({"type": "error", "message": "x", "code": "unroutable"})).code,
            ErrorCode::ModelFailed
        );
    }

    #[test]
    fn a_reply_must_echo_the_request_id() {
        assert_eq!(
            wrong_reply_id(&json!({"type": "result", "id": "r2"}), "r2"),
            None
        );
        for stray in [
            json!({"type": "result", "id": "r1"}),
            json!({"type": "result", "id": 2}),
            json!({"type": "progress", "progress": 0.5}),
        ] {
            assert!(wrong_reply_id(&stray, "r2").is_some(), "{stray}");
        }
    }
}
