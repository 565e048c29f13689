//! The worker's job-record writes (claims, outcomes, retries, progress),
//! sent in batches: whatever writes are waiting when Redis answers the last
//! batch go together in one `EVALSHA` of the batch script
//! (`gpuq_common::job_record::scripts::batch`), up to `MAX_BATCH`.
//!
//! Why: with many jobs in flight, each job's claim and outcome used to be
//! a Redis call of their own, and the per-call cost (the command's
//! encoding and parsing on both sides, a script call's set-up in Redis)
//! was a large part of the CPU a job costs (docs/benchmarks.md, issue 18).
//! A batch pays it once for all its writes. A lone write waits for nothing:
//! it goes at once, as its own script call. Only one batch is in flight at a
//! time, so writes that come while it is out wait for its reply (about one
//! round trip) and then go together. That bounds a worker's record writes
//! to `MAX_BATCH` per round trip: with Redis 10 ms away, 1,600 writes (800
//! jobs) a second per worker, far above what GPU jobs of a second or more
//! ask, but a limit for sub-millisecond jobs against a distant Redis.
//!
//! Nothing about a write's meaning changes: each op is its script, run in
//! order, with its own reply or error (a failing op does not fail the
//! others). An outcome that must be confirmed by replicas (`WAIT`) is not
//! written here but by `Store::finish` directly, in its own pipeline with
//! the `WAIT` (see `RecordScripts::finish_replicated`).
//!
//! The task ends when the last `Store` clone (and so the last sender) is
//! dropped; a write already taken is still sent.

use gpuq_common::job_record::scripts::{ScriptCall, MAX_BATCH};
use gpuq_common::job_record::RecordScripts;
use gpuq_common::redis_link::RedisLink;
use redis::{RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

/// Writes that may wait for the task before a sender waits too.
const QUEUE: usize = 1024;

struct Pending {
    call: ScriptCall,
    reply: oneshot::Sender<RedisResult<Value>>,
}

/// The handle the store writes through.
#[derive(Clone)]
pub(super) struct RecordWriter {
    queue: mpsc::Sender<Pending>,
}

impl RecordWriter {
    /// Starts the writing task on the current runtime.
    pub(super) fn start(connection: RedisLink, scripts: RecordScripts) -> RecordWriter {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(connection, scripts, requests));
        RecordWriter { queue }
    }

    /// Runs `call` (in a batch with whatever else is waiting): its reply as
    /// the script alone would give it.
    pub(super) async fn write(&self, call: ScriptCall) -> RedisResult<Value> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Pending { call, reply }).await.is_err() {
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }
}

async fn write_batches(
    mut connection: RedisLink,
    scripts: RecordScripts,
    mut requests: mpsc::Receiver<Pending>,
) {
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    while requests.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        let (calls, replies): (Vec<_>, Vec<_>) =
            waiting.drain(..).map(|p| (p.call, p.reply)).unzip();
        if let [call] = calls.as_slice() {
            let reply = scripts.run(&mut connection, call).await;
            for sender in replies {
                // A caller that stopped waiting needs no reply.
                let _ = sender.send(reply.clone());
            }
            continue;
        }
        match scripts.run_batch(&mut connection, calls).await {
            Ok(answers) => {
                for (sender, answer) in replies.into_iter().zip(answers) {
                    let _ = sender.send(answer);
                }
            }
            Err(error) => {
                for sender in replies {
                    let _ = sender.send(Err(error.clone()));
                }
            }
        }
    }
}

fn gone() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "the record writer has stopped"))
}
