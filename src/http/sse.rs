//! `GET /events`: the final-status events as Server-Sent Events, filtered by customer or order,
//! resumable with `Last-Event-ID` (a stream id of `{prefix}:events`).
//!
//! A stream subscribes to the process's broadcast (`crate::live`) first, then replays from Redis
//! what followed its `Last-Event-ID`, page by page, then goes on from the broadcast, skipping
//! what the replay already covered: every event once, in stream order. Each stream is a task
//! that hands frames to its response body through a channel of a few frames; the budgets are
//! the broadcast buffer (a stream that falls behind it ends), the write timeout of the
//! connection (a client that stops reading is closed), `sse_max_streams` and
//! `sse_max_stream_ms`; every stream ends at shutdown.

use super::{Api, ApiError};
use crate::live::{EventId, Hub, LiveEvent, STREAMS_ENDED, STREAMS_OPEN, STREAMS_REFUSED};
use crate::queue::{Queue, StreamEvent};
use serde::Deserialize;
use slog::{info, Logger};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit};
use tokio::time::{Instant, MissedTickBehavior, Sleep};
use uuid::Uuid;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::sse::Event;
use warp::Reply;

/// Entries read from Redis per page of a replay.
const REPLAY_PAGE: usize = 256;
/// Frames a stream's task may have handed on and the response body not yet taken.
const BUFFERED_FRAMES: usize = 16;
/// How long EventSource waits before it reconnects after a stream ended.
const RECONNECT: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsParams {
    customer_id: Option<String>,
    order_id: Option<String>,
    last_event_id: Option<String>,
}

/// Which events a stream passes on.
#[derive(Debug, Default)]
struct Selection {
    customer_id: Option<String>,
    order_id: Option<Uuid>,
}

impl Selection {
    fn matches(&self, event: &LiveEvent) -> bool {
        self.customer_id
            .as_deref()
            .is_none_or(|c| c == event.customer_id)
            && self.order_id.is_none_or(|o| o == event.order_id)
    }
}

/// `GET /events?customer_id=&order_id=&last_event_id=`, with the `Last-Event-ID` header (which
/// wins over the query parameter: EventSource sends the newest one as a header when it
/// reconnects, with the URL it started with).
pub async fn events(
    query: String,
    last_event_id: Option<String>,
    api: Arc<Api>,
) -> Result<Response, ApiError> {
    let params: EventsParams = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::InvalidQuery(format!("invalid query string: {e}")))?;
    let customer_id = match params.customer_id.as_deref() {
        None => None,
        Some(raw) => Some(crate::order::parse_customer_id(raw)?.to_string()),
    };
    let order_id = match params.order_id.as_deref() {
        None => None,
        Some(raw) => Some(
            Uuid::try_parse(raw)
                .map_err(|_| super::handlers::invalid("order_id", "order_id must be a UUID"))?,
        ),
    };
    let selection = Selection {
        customer_id,
        order_id,
    };
    // Both are checked; the header wins.
    let from_query = match params.last_event_id.as_deref() {
        None | Some("") => None,
        Some(param) => Some(EventId::parse(param).ok_or_else(|| {
            super::handlers::invalid(
                "last_event_id",
                "last_event_id must be a stream id, <ms>-<seq>",
            )
        })?),
    };
    let from_header = match last_event_id.as_deref() {
        None | Some("") => None,
        Some(header) => Some(EventId::parse(header).ok_or_else(|| {
            ApiError::InvalidHeader("Last-Event-ID must be a stream id, <ms>-<seq>".into())
        })?),
    };
    let cursor = from_header.or(from_query);
    let hub = api.live.clone();
    let Some(permit) = hub.admit() else {
        metrics::counter!(STREAMS_REFUSED).increment(1);
        return Err(ApiError::Overloaded(
            "the service is at its limit of event streams, retry later",
        ));
    };
    // Subscribed before the replay is read: whatever is appended meanwhile reaches the
    // broadcast, and the replay's last id tells which of it was already sent.
    let receiver = hub.subscribe();
    let first_page = match cursor {
        Some(after) => Some(
            api.queue
                .events_after(Some(&after.to_string()), REPLAY_PAGE)
                .await?,
        ),
        None => None,
    };
    let (frames, mut body) = mpsc::channel(BUFFERED_FRAMES);
    let feed = Feed {
        hub,
        queue: api.queue.clone(),
        selection,
        cursor,
        frames,
        log: api.log.clone(),
        _place: permit,
        _open: OpenStream::count(),
    };
    tokio::spawn(feed.run(first_page, receiver));
    let body = futures_util::stream::poll_fn(move |cx| {
        body.poll_recv(cx)
            .map(|frame| frame.map(Ok::<_, Infallible>))
    });
    let mut response = warp::sse::reply(body).into_response();
    // nginx and its kind would otherwise hold the events back to fill their buffers.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One stream's task: what it passes on and where it is.
struct Feed {
    hub: Arc<Hub>,
    queue: Queue,
    selection: Selection,
    /// The id of the last entry this stream has seen (sent or filtered out).
    cursor: Option<EventId>,
    frames: mpsc::Sender<Event>,
    log: Logger,
    _place: OwnedSemaphorePermit,
    _open: OpenStream,
}

/// Why a stream ended, as the `reason` label of [`STREAMS_ENDED`].
type Ended = &'static str;

impl Feed {
    async fn run(
        mut self,
        first_page: Option<Vec<StreamEvent>>,
        receiver: broadcast::Receiver<Arc<LiveEvent>>,
    ) {
        let deadline = tokio::time::sleep(self.hub.limits.max_lifetime);
        let mut deadline = std::pin::pin!(deadline);
        let reason = self.serve(first_page, receiver, &mut deadline).await;
        if reason == "lagged" {
            info!(self.log, "an event stream fell too far behind and was ended";
                "last_event_id" => self.cursor.map(|c| c.to_string()));
        }
        metrics::counter!(STREAMS_ENDED, "reason" => reason).increment(1);
    }

    async fn serve(
        &mut self,
        first_page: Option<Vec<StreamEvent>>,
        mut receiver: broadcast::Receiver<Arc<LiveEvent>>,
        deadline: &mut Pin<&mut Sleep>,
    ) -> Ended {
        if let Err(ended) = self.send(Event::default().retry(RECONNECT), deadline).await {
            return ended;
        }
        if let Some(page) = first_page {
            if let Err(ended) = self.replay(page, deadline).await {
                return ended;
            }
        }
        let period = self.hub.limits.heartbeat;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let frame = tokio::select! {
                biased;
                _ = self.hub.shutdown.cancelled() => return "shutdown",
                _ = deadline.as_mut() => return "lifetime",
                _ = self.frames.closed() => return "client",
                received = receiver.recv() => match received {
                    Ok(event) => match self.pass(&event) {
                        Some(frame) => frame,
                        None => continue,
                    },
                    Err(RecvError::Lagged(_)) => return "lagged",
                    Err(RecvError::Closed) => return "reader",
                },
                _ = heartbeat.tick() => Event::default().comment(" heartbeat"),
            };
            if let Err(ended) = self.send(frame, deadline).await {
                return ended;
            }
            heartbeat.reset();
        }
    }

    /// Sends the events after the cursor that Redis keeps, page by page, until a page is not
    /// full (the rest comes through the broadcast).
    async fn replay(
        &mut self,
        mut page: Vec<StreamEvent>,
        deadline: &mut Pin<&mut Sleep>,
    ) -> Result<(), Ended> {
        loop {
            let full = page.len() >= REPLAY_PAGE;
            for entry in &page {
                let Some(event) = LiveEvent::parse(entry) else {
                    if let Some(id) = EventId::parse(&entry.id) {
                        self.cursor = Some(id);
                    }
                    continue;
                };
                if let Some(frame) = self.pass(&event) {
                    self.send(frame, deadline).await?;
                }
            }
            if !full {
                return Ok(());
            }
            let after = self.cursor.map(|c| c.to_string());
            page = tokio::select! {
                _ = self.hub.shutdown.cancelled() => return Err("shutdown"),
                read = self.queue.events_after(after.as_deref(), REPLAY_PAGE) => {
                    read.map_err(|_| "unavailable")?
                }
            };
        }
    }

    /// The frame of `event` if this stream has not seen it and passes it on; moves the cursor.
    fn pass(&mut self, event: &LiveEvent) -> Option<Event> {
        if self.cursor.is_some_and(|seen| event.id <= seen) {
            return None;
        }
        self.cursor = Some(event.id);
        self.selection.matches(event).then(|| {
            Event::default()
                .id(event.id.to_string())
                .event(event.name())
                .data(event.json.clone())
        })
    }

    /// Hands one frame to the response body, waiting while the client takes the ones before.
    async fn send(&self, frame: Event, deadline: &mut Pin<&mut Sleep>) -> Result<(), Ended> {
        tokio::select! {
            biased;
            _ = self.hub.shutdown.cancelled() => Err("shutdown"),
            _ = deadline.as_mut() => Err("lifetime"),
            sent = self.frames.send(frame) => sent.map_err(|_| "client"),
        }
    }
}

/// One stream in the open-streams gauge, for as long as its task lives.
struct OpenStream(metrics::Gauge);

impl OpenStream {
    fn count() -> OpenStream {
        let gauge = metrics::gauge!(STREAMS_OPEN);
        gauge.increment(1.0);
        OpenStream(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
