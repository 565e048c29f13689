//! The gateway's live event streams (Server-Sent Events): one job's
//! transitions, or every transition (the dashboard's feed).
//!
//! A stream costs the gateway a broadcast cursor on the process's one Redis
//! subscription, never a Redis connection or a queue of its own. What bounds
//! the harm a client can do:
//! - at most `gateway.max_streams` streams at once (503 `too_many_streams`
//!   past it), each holding a semaphore permit for its whole life;
//! - a client that reads slower than events arrive falls behind the shared
//!   ring and gets a final `event: lagged` (re-read the record), never a
//!   buffer of its own;
//! - a job's existence (and visibility to the token) is checked before the
//!   stream starts, so a stream for nothing is a plain 404;
//! - streams end when the gateway shuts down, so shutdown does not wait on them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use futures_util::Stream;
use tokio::sync::OwnedSemaphorePermit;

use super::auth::{self, Identity};
use super::{ApiError, AppState};
use crate::producer::{EventReceiver, HubEvent};

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The final event of a stream that fell behind.
fn lagged() -> Event {
    Event::default()
        .event("lagged")
        .data("events were missed: re-read the job (GET /v1/jobs/{id}) and reconnect")
}

fn take_stream_permit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    Arc::clone(&state.streams).try_acquire_owned().map_err(|_| {
        ApiError::unavailable(
            "too_many_streams",
            format!(
                "this gateway already serves {} event streams (gateway.max_streams); retry later",
                state.producer.config().gateway.max_streams
            ),
        )
    })
}

/// What a stream holds while it lives.
struct StreamState {
    events: EventReceiver,
    /// Released when the stream is dropped (client gone, or ended).
    _permit: OwnedSemaphorePermit,
    shutdown: tokio_util::sync::CancellationToken,
    /// Only this job's events; `None` for every event.
    job_id: Option<String>,
    done: bool,
}

impl StreamState {
    /// The next SSE event, or `None` to end the stream.
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        loop {
            let event = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                event = self.events.recv() => event?,
            };
            let event = match event {
                HubEvent::Gap => {
                    self.done = true;
                    return Some(lagged());
                }
                HubEvent::Status(event) => event,
            };
            match &self.job_id {
                None => return Some(Event::default().json_data(&*event).unwrap_or_default()),
                Some(id) if *id == event.job_id => {
                    self.done = event.status.is_final();
                    return Some(
                        Event::default()
                            .event(event.status.as_str())
                            .json_data(&*event)
                            .unwrap_or_default(),
                    );
                }
                Some(_) => continue,
            }
        }
    }
}

fn into_sse(
    first: Option<Event>,
    state: StreamState,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold((first, state), |(first, mut state)| async move {
        if let Some(first) = first {
            return Some((Ok(first), (None, state)));
        }
        let event = state.next().await?;
        Some((Ok(event), (None, state)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// `GET /v1/jobs/{id}/events`: the job's current state, then each transition
/// and progress update; ends after the final one.
pub async fn job_events(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = take_stream_permit(&state)?;
    // Receive before reading, so a transition between the two is not missed.
    let events = state.producer.subscribe_events().await?;
    let current = auth::visible_job(&identity, &id, state.producer.status(&id).await?)?;
    let first = Event::default()
        .event(current.status.map_or("unknown", |s| s.as_str()))
        .json_data(&current)
        .unwrap_or_default();
    Ok(into_sse(
        Some(first),
        StreamState {
            events,
            _permit: permit,
            shutdown: state.shutdown.clone(),
            job_id: Some(id),
            done: current.is_final(),
        },
    ))
}

/// `GET /v1/events`: every status event of the system (admin; the dashboard's feed).
pub async fn all_events(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    auth::require_admin(&identity)?;
    let permit = take_stream_permit(&state)?;
    let events = state.producer.subscribe_events().await?;
    Ok(into_sse(
        None,
        StreamState {
            events,
            _permit: permit,
            shutdown: state.shutdown.clone(),
            job_id: None,
            done: false,
        },
    ))
}
