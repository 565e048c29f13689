//! The one way a process reaches Redis (feature `redis`): a [`RedisLink`]
//! holds the connection to the primary and follows the primary through a
//! Sentinel failover. Each process's store sends every command through it
//! and subscribes through it; the store still owns what it sends.
//!
//! With a plain `redis://` / `rediss://` URL the link is one
//! `ConnectionManager`, as before: it reconnects to that address by itself.
//!
//! With Sentinel that is not enough: a `ConnectionManager` reconnects to the
//! *same* address, which after a failover is dead, or alive again as a
//! read-only replica. So the link itself is the connection (it implements
//! `ConnectionLike`: commands, pipelines and scripts run on a clone of it),
//! every reply is checked, and an error meaning "this is not the primary
//! (any more)" (I/O errors, dropped or refused connections, timeouts,
//! `READONLY`, `MASTERDOWN`) marks the link stale. The next command first
//! asks the sentinels for the primary (the crate checks the answer's `ROLE`) and,
//! when it moved, swaps in a manager for the new address: a new
//! *generation*. Until the sentinels name a primary that answers, callers
//! get the error, and decide (the worker retries, `/readyz` says 503).
//!
//! Subscriptions ([`RedisLink::subscribe`]) ask the sentinels each time one
//! is made, and their stream ends when the connection drops or the link
//! moves to another generation, so every subscription loop (which
//! resubscribes when its stream ends) lands on the current primary.
//!
//! Scripts survive a failover: `redis::Script::invoke_async` loads a script
//! again when Redis answers `NOSCRIPT`, as a promoted replica's empty script
//! cache does; pipelined `EVALSHA`s load and retry themselves.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline, RedisConnectionInfo, RedisError,
    RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::watch;

use crate::config::{RedisTarget, SentinelTarget};

/// A subscription's messages; the stream ends when its connection drops or
/// the link follows the primary elsewhere.
pub type Messages = Pin<Box<dyn Stream<Item = redis::Msg> + Send>>;

/// Longest a look-up through the sentinels, or a new connection, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed look-up, callers within this long get its error instead
/// of asking the sentinels again (many callers fail at once in a failover).
const LOOKUP_PAUSE: Duration = Duration::from_millis(250);

/// A cloneable handle on the process's Redis primary: clone it and run
/// commands on it as on a `ConnectionManager` (one multiplexed connection
/// per generation, so a pipeline's commands share one server connection).
#[derive(Clone)]
pub struct RedisLink {
    shared: Arc<Shared>,
}

struct Shared {
    manager_config: ConnectionManagerConfig,
    primary: RwLock<Primary>,
    /// Some connection of the current generation saw the primary go.
    stale: AtomicBool,
    /// `None` for a single server: nothing to look up.
    sentinel: Option<tokio::sync::Mutex<Lookup>>,
    /// The current generation, for subscriptions to notice a move.
    generation: watch::Sender<u64>,
}

#[derive(Clone)]
struct Primary {
    generation: u64,
    client: redis::Client,
    manager: ConnectionManager,
}

/// The sentinels, asked one look-up at a time.
struct Lookup {
    sentinels: SentinelClient,
    last_failure: Option<(Instant, RedisError)>,
}

impl RedisLink {
    /// Connects to the primary of `target`. `manager_config` sets the
    /// timeouts; with Sentinel its reconnect attempts are cut to one, since
    /// reconnecting to a dead primary's address only delays the look-up.
    pub async fn connect(
        target: &RedisTarget,
        manager_config: ConnectionManagerConfig,
    ) -> RedisResult<RedisLink> {
        let (client, sentinel, manager_config) = match target {
            RedisTarget::Direct(url) => (redis::Client::open(url.as_str())?, None, manager_config),
            RedisTarget::Sentinel(target) => {
                let mut lookup = Lookup {
                    sentinels: sentinel_client(target)?,
                    last_failure: None,
                };
                let client = lookup.primary().await?;
                let config = manager_config.set_number_of_retries(1);
                (client, Some(tokio::sync::Mutex::new(lookup)), config)
            }
        };
        let manager = new_manager(&client, &manager_config).await?;
        Ok(RedisLink {
            shared: Arc::new(Shared {
                manager_config,
                primary: RwLock::new(Primary {
                    generation: 0,
                    client,
                    manager,
                }),
                stale: AtomicBool::new(false),
                sentinel,
                generation: watch::channel(0).0,
            }),
        })
    }

    /// The current primary's manager and generation, found again first if
    /// a reply said it was lost.
    async fn current(&self) -> RedisResult<(ConnectionManager, u64)> {
        if self.shared.stale.load(Ordering::Acquire) {
            self.follow_primary().await?;
        }
        let primary = self.shared.primary.read();
        Ok((primary.manager.clone(), primary.generation))
    }

    /// `PING` on the primary: whether it answers now.
    pub async fn ping(&self) -> RedisResult<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.clone())
            .await?;
        Ok(())
    }

    /// Subscribes to `channel` on a connection of its own, on the primary
    /// the sentinels name now (the current one when they do not answer: a
    /// subscription risks no write). The stream ends when that connection
    /// drops or the link moves to another primary: subscribe again then.
    pub async fn subscribe(&self, channel: &str) -> RedisResult<Messages> {
        self.ask_sentinels().await;
        let primary = self.shared.primary.read().clone();
        let subscribing = async {
            let mut pubsub = primary.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(CONNECT_TIMEOUT, subscribing).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(error)) => {
                self.shared.observe_error(&error, primary.generation);
                return Err(error);
            }
            Err(_) => return Err(timed_out("subscribing")),
        };
        let mut generations = self.shared.generation.subscribe();
        let moved = async move {
            // Also ends when the link is gone (the sender dropped).
            let _ = generations
                .wait_for(|current| *current != primary.generation)
                .await;
        };
        Ok(Box::pin(pubsub.into_on_message().take_until(moved)))
    }

    /// Asks the sentinels where the primary is and, if it moved, swaps in a
    /// manager for it. One look-up at a time; those who waited for it use
    /// its result.
    async fn follow_primary(&self) -> RedisResult<()> {
        let Some(lookup) = &self.shared.sentinel else {
            self.shared.stale.store(false, Ordering::Release);
            return Ok(());
        };
        let mut lookup = lookup.lock().await;
        if !self.shared.stale.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some((at, error)) = &lookup.last_failure {
            if at.elapsed() < LOOKUP_PAUSE {
                return Err(error.clone());
            }
        }
        let found = match lookup.primary().await {
            Ok(client) => self.install(client).await,
            Err(error) => Err(error),
        };
        lookup.last_failure = found.as_ref().err().map(|e| (Instant::now(), e.clone()));
        found
    }

    /// Asks the sentinels where the primary is now and follows it; keeps
    /// the current one when they cannot say.
    async fn ask_sentinels(&self) {
        let Some(lookup) = &self.shared.sentinel else {
            return;
        };
        let mut lookup = lookup.lock().await;
        let found = match lookup.primary().await {
            Ok(client) => self.install(client).await,
            Err(error) => Err(error),
        };
        if let Err(error) = found {
            tracing::debug!(%error, "sentinels did not name a primary; keeping the current one");
        }
    }

    /// Makes `client` (the primary the sentinels named) the current one.
    async fn install(&self, client: redis::Client) -> RedisResult<()> {
        let address = client.get_connection_info().addr().clone();
        if self
            .shared
            .primary
            .read()
            .client
            .get_connection_info()
            .addr()
            == &address
        {
            // Same primary (a blip): its manager reconnects by itself.
            self.shared.stale.store(false, Ordering::Release);
            return Ok(());
        }
        let manager = new_manager(&client, &self.shared.manager_config).await?;
        let generation = {
            let mut primary = self.shared.primary.write();
            let generation = primary.generation + 1;
            *primary = Primary {
                generation,
                client,
                manager,
            };
            generation
        };
        self.shared.stale.store(false, Ordering::Release);
        self.shared.generation.send_replace(generation);
        tracing::warn!(primary = %address, generation, "redis primary moved; following it");
        Ok(())
    }
}

impl Shared {
    /// Marks the link stale when `error`, seen on a connection of
    /// `generation`, means the primary is gone from there.
    fn observe_error(&self, error: &RedisError, generation: u64) {
        if self.sentinel.is_some()
            && primary_lost(error)
            && self.primary.read().generation == generation
            && !self.stale.swap(true, Ordering::AcqRel)
        {
            tracing::warn!(%error, "redis primary unreachable or demoted; asking the sentinels");
        }
    }

    fn observe_value(&self, value: &Value, generation: u64) {
        if let Value::ServerError(error) = value {
            if server_error_means_replica(error.kind(), Some(error.code())) {
                self.observe_error(&RedisError::from(error.clone()), generation);
            }
        }
    }
}

impl ConnectionLike for RedisLink {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (mut manager, generation) = self.current().await?;
            let reply = manager.req_packed_command(cmd).await;
            match &reply {
                Ok(value) => self.shared.observe_value(value, generation),
                Err(error) => self.shared.observe_error(error, generation),
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (mut manager, generation) = self.current().await?;
            let reply = manager.req_packed_commands(pipeline, offset, count).await;
            match &reply {
                Ok(values) => values
                    .iter()
                    .for_each(|value| self.shared.observe_value(value, generation)),
                Err(error) => self.shared.observe_error(error, generation),
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.primary.read().manager.get_db()
    }
}

/// A plain client for the primary of `target` now: one look-up, not
/// followed afterwards. For tools and tests that want one connection.
pub async fn primary_client(target: &RedisTarget) -> RedisResult<redis::Client> {
    match target {
        RedisTarget::Direct(url) => redis::Client::open(url.as_str()),
        RedisTarget::Sentinel(target) => {
            let mut lookup = Lookup {
                sentinels: sentinel_client(target)?,
                last_failure: None,
            };
            lookup.primary().await
        }
    }
}

/// Whether `error` means the connection's server is not (or no longer)
/// the reachable primary.
fn primary_lost(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || server_error_means_replica(
            match error.kind() {
                ErrorKind::Server(kind) => Some(kind),
                _ => None,
            },
            error.code(),
        )
}

/// `READONLY` (a write on a replica, also from inside a script) or
/// `MASTERDOWN` (a replica that lost its primary).
fn server_error_means_replica(kind: Option<ServerErrorKind>, code: Option<&str>) -> bool {
    matches!(
        kind,
        Some(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
    ) || matches!(code, Some("READONLY" | "MASTERDOWN"))
}

impl Lookup {
    /// A client for the primary the sentinels name, checked to be one.
    async fn primary(&mut self) -> RedisResult<redis::Client> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.sentinels.async_get_client()).await {
            Ok(found) => found,
            Err(_) => Err(timed_out("asking the sentinels for the primary")),
        }
    }
}

async fn new_manager(
    client: &redis::Client,
    config: &ConnectionManagerConfig,
) -> RedisResult<ConnectionManager> {
    let connecting = client.get_connection_manager_with_config(config.clone());
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(manager) => manager,
        Err(_) => Err(timed_out("connecting to the primary")),
    }
}

fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// The sentinels of `target`, and how to reach the primary they name.
fn sentinel_client(target: &SentinelTarget) -> RedisResult<SentinelClient> {
    let address = |host: &str, port: u16| match target.tls {
        true => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        },
        false => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    let mut to_sentinel = RedisConnectionInfo::default();
    if let Some(password) = &target.sentinel_password {
        to_sentinel = to_sentinel.set_password(password);
    }
    let sentinels = target
        .sentinels
        .iter()
        .map(|(host, port)| {
            address(host, *port)
                .into_connection_info()
                .map(|info| info.set_redis_settings(to_sentinel.clone()))
        })
        .collect::<RedisResult<Vec<_>>>()?;
    let mut to_primary = RedisConnectionInfo::default().set_db(target.db);
    if let Some(username) = &target.username {
        to_primary = to_primary.set_username(username);
    }
    if let Some(password) = &target.password {
        to_primary = to_primary.set_password(password);
    }
    let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(to_primary);
    if target.tls {
        node = node.set_tls_mode(redis::TlsMode::Secure);
    }
    SentinelClient::build(
        sentinels,
        &target.master_name,
        Some(node),
        SentinelServerType::Master,
    )
}

#[cfg(test)]
mod tests;
