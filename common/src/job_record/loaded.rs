//! The record scripts as `redis::Script`s, for the processes' Redis modules
//! (feature `redis`): loaded once per connection owner, run by `EVALSHA`
//! (redis-rs loads a script again when Redis answers `NOSCRIPT`).
//!
//! It lives here, not in each process, so that turning a [`ScriptCall`] into
//! an invocation is written once; each process's store still owns its
//! connection and every command it sends.

use super::scripts::{Script, ScriptCall};

/// One `redis::Script` per record script.
#[derive(Clone)]
pub struct RecordScripts {
    loaded: Vec<(Script, redis::Script)>,
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
