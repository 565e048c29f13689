//! The RabbitMQ nodes a process may connect to, and which one it is on.
//!
//! lapin takes one URI per connection and does not fail over by itself, so
//! each process owns this: [`BrokerNodes::connect`] tries the nodes in turn,
//! starting at the process's current node (at first a per-process random
//! one, so a fleet's connections spread over the cluster). A process's broker
//! module calls [`BrokerNodes::connection_lost`] when a connection drops,
//! which moves the process on to the next node, then connects again,
//! declares the topology and restarts its consumers there. All of one
//! process's connections share the current node, so they stay together.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use lapin::types::LongString;
use lapin::{Connection, ConnectionProperties};

/// Longest wait for one node's TCP and AMQP handshake: a node that is
/// stopping may accept a connection and never answer it.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why one node was passed over.
#[derive(Debug, thiserror::Error)]
pub enum NodeFailure {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("no handshake within {} s", CONNECT_TIMEOUT.as_secs())]
    Timeout,
}

/// No node of the list accepted a connection.
#[derive(Debug, thiserror::Error)]
#[error("no rabbitmq node answered ({tried} tried); last error from {node}: {source}")]
pub struct NoNodeError {
    pub tried: usize,
    /// The last node tried (`host:port`).
    pub node: String,
    #[source]
    pub source: NodeFailure,
}

/// Which node of the list a connection reached; given back to
/// [`BrokerNodes::connection_lost`] when it drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIndex(usize);

/// The nodes of one RabbitMQ cluster (or the one node), shared by a
/// process's connections. Cheap to clone.
#[derive(Clone)]
pub struct BrokerNodes {
    inner: Arc<Inner>,
}

struct Inner {
    urls: Vec<String>,
    /// Index of the node to try first on the next connect.
    next: AtomicUsize,
    /// Connections made after a loss ([`BrokerNodes::reconnects`]).
    reconnects: AtomicU64,
    /// A loss was reported and no connection was made since.
    lost: AtomicBool,
    /// Index + 1 of the node the last connection reached; 0 before any.
    current: AtomicUsize,
}

impl BrokerNodes {
    /// The config's nodes (`amqp_urls` or `amqp_url`), starting at a random
    /// one unless `amqp.shuffle_nodes = false`.
    pub fn for_config(config: &crate::config::Config) -> BrokerNodes {
        BrokerNodes::new(config.amqp_nodes(), config.amqp.shuffle_nodes)
    }

    /// `urls` in config order; the first connect starts at a random one when
    /// `shuffle`, else at the first. Panics on an empty list (the config
    /// guarantees one URL at least).
    pub fn new(urls: Vec<String>, shuffle: bool) -> BrokerNodes {
        assert!(!urls.is_empty(), "at least one rabbitmq url");
        let start = if shuffle {
            rand::random_range(0..urls.len())
        } else {
            0
        };
        BrokerNodes {
            inner: Arc::new(Inner {
                urls,
                next: AtomicUsize::new(start),
                reconnects: AtomicU64::new(0),
                lost: AtomicBool::new(false),
                current: AtomicUsize::new(0),
            }),
        }
    }

    /// Every node's `host:port`, in config order.
    pub fn labels(&self) -> Vec<String> {
        self.inner.urls.iter().map(|url| node_label(url)).collect()
    }

    /// Connects to the first node that answers, trying each node once,
    /// starting at the process's current node. The connection shows up as
    /// `connection_name` in RabbitMQ's management UI.
    pub async fn connect(
        &self,
        connection_name: &str,
    ) -> Result<(Connection, NodeIndex), NoNodeError> {
        self.connect_with(connection_name, |url| url.to_owned())
            .await
    }

    /// Like [`BrokerNodes::connect`], asking for frames of at most
    /// `frame_max` bytes (see [`super::connect_with_frame_max`]).
    pub async fn connect_with_frame_max(
        &self,
        connection_name: &str,
        frame_max: u32,
    ) -> Result<(Connection, NodeIndex), NoNodeError> {
        self.connect_with(connection_name, |url| super::with_frame_max(url, frame_max))
            .await
    }

    async fn connect_with(
        &self,
        connection_name: &str,
        url_of: impl Fn(&str) -> String,
    ) -> Result<(Connection, NodeIndex), NoNodeError> {
        let urls = &self.inner.urls;
        let start = self.inner.next.load(Ordering::Relaxed);
        let mut last = None;
        for offset in 0..urls.len() {
            let index = (start + offset) % urls.len();
            let properties = ConnectionProperties::default()
                .with_connection_name(LongString::from(connection_name));
            let url = url_of(&urls[index]);
            let handshake = Connection::connect(&url, properties);
            let connected = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
                Ok(connected) => connected.map_err(NodeFailure::from),
                Err(_) => Err(NodeFailure::Timeout),
            };
            match connected {
                Ok(connection) => {
                    self.note_connected(index);
                    return Ok((connection, NodeIndex(index)));
                }
                Err(error) => {
                    tracing::warn!(node = %node_label(&urls[index]), %error, "rabbitmq node did not answer; trying the next");
                    last = Some((index, error));
                }
            }
        }
        let (index, source) = last.expect("at least one node was tried");
        // Next time, start after the node that failed last.
        self.inner
            .next
            .store((index + 1) % urls.len(), Ordering::Relaxed);
        Err(NoNodeError {
            tried: urls.len(),
            node: node_label(&urls[index]),
            source,
        })
    }

    fn note_connected(&self, index: usize) {
        self.inner.current.store(index + 1, Ordering::Relaxed);
        self.inner.next.store(index, Ordering::Relaxed);
        if self.inner.lost.swap(false, Ordering::Relaxed) {
            self.inner.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(node = %node_label(&self.inner.urls[index]), "connected to rabbitmq");
    }

    /// A connection to `node` was lost: if the process is still on that
    /// node, the next connect starts at the node after it. Once per loss,
    /// however many of the process's connections report it, and a late
    /// report after the process moved on changes nothing.
    pub fn connection_lost(&self, node: NodeIndex) {
        let on_node = node.0 + 1;
        if self
            .inner
            .current
            .compare_exchange(on_node, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let after = (node.0 + 1) % self.inner.urls.len();
            self.inner.next.store(after, Ordering::Relaxed);
            self.inner.lost.store(true, Ordering::Relaxed);
            tracing::warn!(node = %node_label(&self.inner.urls[node.0]), "rabbitmq connection lost; moving on to the next node");
        }
    }

    /// `host:port` of the node the latest connection reached.
    pub fn connected_node(&self) -> Option<String> {
        let current = self.inner.current.load(Ordering::Relaxed);
        (current > 0).then(|| node_label(&self.inner.urls[current - 1]))
    }

    /// Connections this process made after a loss (`gpuq_amqp_reconnects_total`).
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }
}

/// `host:port` of an AMQP URL, without credentials, vhost or options.
pub fn node_label(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.contains(':') && !host_port.ends_with(']') {
        host_port.to_owned()
    } else {
        let port = if url.starts_with("amqps") { 5671 } else { 5672 };
        format!("{host_port}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_drop_credentials_vhost_and_options() {
        assert_eq!(
            node_label("amqp://gpuq:s3cr@t@rabbit-1:5681/%2f?heartbeat=10"),
            "rabbit-1:5681"
        );
        assert_eq!(node_label("amqp://rabbit-2/%2f"), "rabbit-2:5672");
        assert_eq!(node_label("amqps://u:p@rabbit-3"), "rabbit-3:5671");
        assert_eq!(node_label("amqp://[::1]:5682/%2f"), "[::1]:5682");
    }

    #[test]
    fn a_loss_moves_the_process_on_once_and_counts_one_reconnect() {
        let urls = vec![
            "amqp://a/%2f".into(),
            "amqp://b/%2f".into(),
            "amqp://c/%2f".into(),
        ];
        let nodes = BrokerNodes::new(urls, false);
        nodes.note_connected(0);
        nodes.note_connected(0); // a second connection of the process, same node
        assert_eq!(nodes.connected_node().as_deref(), Some("a:5672"));
        assert_eq!(nodes.reconnects(), 0, "more connections are not reconnects");
        // Both connections drop; the process moves on to b once.
        nodes.connection_lost(NodeIndex(0));
        nodes.connection_lost(NodeIndex(0));
        assert_eq!(nodes.inner.next.load(Ordering::Relaxed), 1);
        assert!(nodes.connected_node().is_none());
        nodes.note_connected(1);
        nodes.note_connected(1);
        assert_eq!(nodes.reconnects(), 1);
        // A late report of the old node changes nothing.
        nodes.connection_lost(NodeIndex(0));
        assert_eq!(nodes.connected_node().as_deref(), Some("b:5672"));
        assert_eq!(nodes.inner.next.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn connect_tries_every_node_then_starts_after_the_last_failure() {
        // Nothing listens on these loopback ports: each refusal is immediate.
        let nodes = BrokerNodes::new(
            vec![
                "amqp://127.0.0.1:1/%2f".into(),
                "amqp://127.0.0.1:2/%2f".into(),
                "amqp://127.0.0.1:3/%2f".into(),
            ],
            true,
        );
        let Err(error) = nodes.connect("test").await else {
            panic!("no node answers")
        };
        assert_eq!(error.tried, 3);
        assert!(nodes.connected_node().is_none());
        assert_eq!(nodes.reconnects(), 0);
        let first_failed = error.node.clone();
        let Err(error) = nodes.connect("test").await else {
            panic!("no node answers")
        };
        // The second round started right after the node that failed last,
        // so it ended on that same node again.
        assert_eq!(error.node, first_failed);
        assert_eq!(
            nodes.labels(),
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
        );
    }
}
