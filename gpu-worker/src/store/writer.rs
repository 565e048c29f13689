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
//! A batch also stops at `MAX_BATCH_BYTES`, so large outcomes never hold
//! Redis longer than they would alone.
//!
//! The task ends when the last `Store` clone (and so the last sender) is
//! dropped; a write already taken is still sent.

use gpuq_common::job_record::scripts::{ScriptCall, MAX_BATCH};
use gpuq_common::job_record::RecordScripts;
use gpuq_common::redis_link::RedisLink;
use redis::{RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

/// Most bytes of keys and args in one batch. Outcomes carry results a
/// client's model produced: sixteen large ones in one script would hold
/// Redis, and every other client, for as long as all sixteen writes take,
/// where separate calls let other commands in between. A write over this
/// goes alone, as it would without batching.
const MAX_BATCH_BYTES: usize = 256 * 1024;

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
        while !waiting.is_empty() {
            let taken = batch_len(&waiting);
            send(&mut connection, &scripts, waiting.drain(..taken).collect()).await;
        }
    }
}

/// How many of `waiting`, from the front, go in one call: as many as stay
/// within `MAX_BATCH_BYTES` of keys and args, and at least one.
fn batch_len(waiting: &[Pending]) -> usize {
    let mut bytes = 0;
    let within = waiting
        .iter()
        .take_while(|pending| {
            let call = &pending.call;
            bytes += call
                .keys
                .iter()
                .chain(&call.args)
                .map(String::len)
                .sum::<usize>();
            bytes <= MAX_BATCH_BYTES
        })
        .count();
    within.max(1)
}

/// One Redis call for `batch`, and each caller's reply.
async fn send(connection: &mut RedisLink, scripts: &RecordScripts, batch: Vec<Pending>) {
    let (calls, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.call, p.reply)).unzip();
    if let [call] = calls.as_slice() {
        let reply = scripts.run(connection, call).await;
        for sender in replies {
            // A caller that stopped waiting needs no reply.
            let _ = sender.send(reply.clone());
        }
        return;
    }
    match scripts.run_batch(connection, calls).await {
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

fn gone() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "the record writer has stopped"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuq_common::job_record::scripts::Script;

    fn pending(arg_bytes: usize) -> Pending {
        let call = ScriptCall {
            script: Script::Progress,
            keys: vec!["k".into()],
            args: vec!["x".repeat(arg_bytes)],
        };
        Pending {
            call,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_batch_stops_at_its_byte_limit_and_a_large_write_goes_alone() {
        let small = || pending(100);
        assert_eq!(batch_len(&[small(), small(), small()]), 3);
        let large = || pending(MAX_BATCH_BYTES);
        assert_eq!(batch_len(&[large(), small()]), 1, "a large write alone");
        assert_eq!(
            batch_len(&[small(), large(), small()]),
            1,
            "stops before it"
        );
        let half = || pending(MAX_BATCH_BYTES / 2 - 10);
        assert_eq!(batch_len(&[half(), half(), half()]), 2);
    }
}
