//! The gateway's HTTP/1.1 server loop: hyper under the axum router, with the
//! per-connection limits `axum::serve` does not offer.
//!
//! - A client has `gateway.header_timeout_s` to send its request headers
//!   (hyper closes the connection after it), so idle or trickling
//!   connections cannot pile up (slowloris).
//! - A request body must arrive within `gateway.body_timeout_s` (the request
//!   fails after it; the layer is in the router).
//! - Each connection's write buffer is capped at [`WRITE_BUFFER_BYTES`], so a
//!   client that does not read (an event stream left open) costs at most that
//!   much memory: the server then stops pulling from the response stream and
//!   the stream's reader falls behind the shared event ring instead.
//! - Shutdown stops accepting, lets open requests finish for at most
//!   [`SHUTDOWN_GRACE`] (event streams end on the same token at once), then
//!   returns.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// hyper's smallest allowed buffer: the most a connection that does not read
/// holds in pending writes (2,001 such streams with 10,000 events flowing
/// measured +37 MiB of gateway RSS in all, tests/tests/event_streams.rs).
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// Longest shutdown waits for open requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    let service = TowerToHyperService::new(router);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(WRITE_BUFFER_BYTES);
        let connection = http.serve_connection(TokioIo::new(stream), service.clone());
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "gateway connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("gateway shutdown: requests still open after the grace period");
    }
}
