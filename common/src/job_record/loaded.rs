//! The record scripts as `redis::Script`s, for the processes' Redis modules
//! (feature `redis`): loaded once per connection owner, run by `EVALSHA`
//! (redis-rs loads a script again when Redis answers `NOSCRIPT`).
//!
//! It lives here, not in each process, so that turning a [`ScriptCall`] into
//! an invocation is written once; each process's store still owns its
//! connection and every command it sends.

use super::scripts::{batch_source, Script, ScriptCall};

/// One `redis::Script` per record script, and the batch of them.
#[derive(Clone)]
pub struct RecordScripts {
    loaded: Vec<(Script, redis::Script)>,
    batch: redis::Script,
}

impl Default for RecordScripts {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordScripts {
    pub fn new() -> RecordScripts {
        RecordScripts {
            loaded: Script::ALL
                .into_iter()
                .map(|script| (script, redis::Script::new(&script.source())))
                .collect(),
            batch: redis::Script::new(&batch_source()),
        }
    }

    /// The loaded script of this kind.
    pub fn script(&self, script: Script) -> &redis::Script {
        self.loaded
            .iter()
            .find(|(kind, _)| *kind == script)
            .map(|(_, loaded)| loaded)
            .expect("RecordScripts::new loads every Script::ALL")
    }

    /// The invocation of `call`, ready for `invoke_async`.
    pub fn invocation(&self, call: &ScriptCall) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.script(call.script).prepare_invoke();
        for key in &call.keys {
            invocation.key(key);
        }
        for arg in &call.args {
            invocation.arg(arg);
        }
        invocation
    }

    /// Runs `calls` as one batch (`super::scripts::batch`): one reply per
    /// call, in order, each what the call alone would have given, or its own
    /// error. The outer error is the batch's (no op ran, or the link failed).
    pub async fn run_batch<C>(
        &self,
        connection: &mut C,
        calls: Vec<ScriptCall>,
    ) -> redis::RedisResult<Vec<redis::RedisResult<redis::Value>>>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let ops = calls.len();
        let call = super::scripts::batch(calls);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.batch.get_hash())
            .arg(call.keys.len())
            .arg(&call.keys)
            .arg(&call.args);
        let reply: Vec<redis::Value> = query_loaded(connection, &self.batch, &cmd).await?;
        if reply.len() != ops {
            return Err(batch_error(format!(
                "{} replies to a batch of {ops}",
                reply.len()
            )));
        }
        Ok(reply.into_iter().map(op_reply).collect())
    }

    /// Runs one call: its reply. As `invocation(call).invoke_async`, with
    /// the keys and args written once, straight into the command.
    pub async fn run<C>(
        &self,
        connection: &mut C,
        call: &ScriptCall,
    ) -> redis::RedisResult<redis::Value>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        query_loaded(connection, self.script(call.script), &self.evalsha(call)).await
    }

    /// Runs a [`Script::Finish`] call; `true` when it wrote, `false` when the
    /// job had already ended (its status is kept).
    pub async fn finish<C>(&self, connection: &mut C, call: &ScriptCall) -> redis::RedisResult<bool>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        debug_assert_eq!(call.script, Script::Finish);
        let reply: String = self.invocation(call).invoke_async(connection).await?;
        Ok(reply == "ok")
    }

    /// Runs a [`Script::Finish`] call, then `WAIT replicas timeout_ms`, in
    /// one pipeline; returns whether the script wrote and how many replicas
    /// acknowledged. One pipeline goes down one server connection, and
    /// `WAIT` counts the replicas holding every write made on *that*
    /// connection, this outcome included: two separate calls could straddle
    /// a reconnect, and a `WAIT` on a fresh connection that wrote nothing
    /// would vouch for nothing. `WAIT` holds that connection (shared by the
    /// process) until the replicas answer or the timeout passes.
    pub async fn finish_replicated<C>(
        &self,
        connection: &mut C,
        call: &ScriptCall,
        replicas: u32,
        timeout_ms: u64,
    ) -> redis::RedisResult<(bool, u32)>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        debug_assert_eq!(call.script, Script::Finish);
        let mut pipe = redis::pipe();
        pipe.add_command(self.evalsha(call))
            .cmd("WAIT")
            .arg(replicas)
            .arg(timeout_ms);
        let (reply, acked): (String, i64) = match pipe.query_async(connection).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // A restarted Redis, or a replica just promoted, has no scripts yet.
                self.script(Script::Finish)
                    .prepare_invoke()
                    .load_async(connection)
                    .await?;
                pipe.query_async(connection).await?
            }
            other => other?,
        };
        Ok((reply == "ok", u32::try_from(acked).unwrap_or(0)))
    }

    /// `EVALSHA` of `call` as a pipeline command (for many calls in one round
    /// trip; the script must have been loaded, see `redis::Script::load_async`).
    pub fn evalsha(&self, call: &ScriptCall) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script(call.script).get_hash())
            .arg(call.keys.len())
            .arg(&call.keys)
            .arg(&call.args);
        cmd
    }
}

/// `cmd`, an `EVALSHA` of `script`; when Redis has not got the script (a
/// restart, a promoted replica), loads it and sends `cmd` again.
async fn query_loaded<C, T>(
    connection: &mut C,
    script: &redis::Script,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T>
where
    C: redis::aio::ConnectionLike + Send,
    T: redis::FromRedisValue,
{
    match cmd.query_async(connection).await {
        Err(error)
            if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            script.prepare_invoke().load_async(connection).await?;
            cmd.query_async(connection).await
        }
        other => other,
    }
}

/// One op's element of a batch reply: `{1, reply}`, `{1}` (a nil reply) or
/// `{0, message}`.
fn op_reply(element: redis::Value) -> redis::RedisResult<redis::Value> {
    let redis::Value::Array(mut parts) = element else {
        return Err(batch_error(format!("a batch op replied {element:?}")));
    };
    let reply = (parts.len() == 2).then(|| parts.pop()).flatten();
    match (parts.first(), reply) {
        (Some(redis::Value::Int(1)), reply) => Ok(reply.unwrap_or(redis::Value::Nil)),
        (Some(redis::Value::Int(0)), Some(message)) => {
            let message: String = redis::from_redis_value(message)?;
            Err(batch_error(message))
        }
        (first, reply) => Err(batch_error(format!(
            "a batch op replied {first:?}, {reply:?}"
        ))),
    }
}

fn batch_error(detail: String) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
        "record script in a batch failed",
        detail,
    ))
}

/// The [`Script::Queued`] reply, in a pipeline's results.
impl redis::FromRedisValue for super::scripts::QueuedReply {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let parsed = match &value {
            redis::Value::Int(code) => super::scripts::QueuedReply::from_parts(Some(*code), None),
            redis::Value::Array(_) => {
                let (kind, number): (String, u64) =
                    redis::FromRedisValue::from_redis_value(value.clone())?;
                super::scripts::QueuedReply::from_parts(None, Some((&kind, number)))
            }
            _ => None,
        };
        parsed.ok_or_else(|| format!("unexpected reply of the queued script: {value:?}").into())
    }
}
