//! Live events: one reader per API process follows the event stream (`{prefix}:events`) and
//! fans each entry out, parsed once, to every `GET /events` stream of the process
//! (`http/sse.rs`) through one bounded broadcast buffer. A stream that falls further behind
//! than that buffer holds is told so (`Lagged`) and ended: memory does not grow with a slow
//! client, and the client resumes with `Last-Event-ID` from Redis.

use crate::backoff::Backoff;
use crate::config::Config;
use crate::order::Status;
use crate::queue::{Queue, StreamEvent};
use crate::Shutdown;
use serde::Deserialize;
use slog::{info, warn, Logger};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// Entries the reader takes per read, at most: it passes them on at once, so a read is also at
/// most half the broadcast buffer, or a burst alone would leave every stream behind.
const READ_COUNT: usize = 512;
/// How long one read waits on the server; between reads the reader checks for shutdown.
const READ_BLOCK_MS: u64 = 1000;

/// Open event streams (a gauge).
pub const STREAMS_OPEN: &str = "sse_streams_open";
/// Event streams ended, by `reason`: `client` (gone), `lagged` (too slow), `lifetime`,
/// `shutdown`, `unavailable` (Redis failed during a replay), `reader` (the reader stopped).
pub const STREAMS_ENDED: &str = "sse_streams_ended_total";
/// Requests for a stream refused at `sse_max_streams`.
pub const STREAMS_REFUSED: &str = "sse_streams_refused_total";

/// The id of a stream entry, `<ms>-<seq>`, compared as the pair of numbers it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    /// `<ms>-<seq>`, both decimal numbers; anything else is `None`.
    pub fn parse(text: &str) -> Option<EventId> {
        let (ms, seq) = text.split_once('-')?;
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        Some(EventId {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One event of the stream, parsed once for every stream that filters it.
#[derive(Debug)]
pub struct LiveEvent {
    pub id: EventId,
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: Status,
    /// The event's JSON as the stream holds it (one line).
    pub json: String,
}

/// The fields a filter needs; the rest of the event is passed on as it is.
#[derive(Deserialize)]
struct Head {
    order_id: Uuid,
    customer_id: String,
    status: Status,
}

impl LiveEvent {
    /// The event of a stream entry; `None` for an entry that is not an order event, or whose
    /// JSON spans lines (it could not be one `data:` line).
    pub fn parse(entry: &StreamEvent) -> Option<LiveEvent> {
        let id = EventId::parse(&entry.id)?;
        let json = std::str::from_utf8(&entry.event).ok()?;
        if json.contains(['\n', '\r']) {
            return None;
        }
        let head: Head = serde_json::from_str(json).ok()?;
        Some(LiveEvent {
            id,
            order_id: head.order_id,
            customer_id: head.customer_id,
            status: head.status,
            json: json.to_string(),
        })
    }

    /// The SSE event name: `order.completed`, `order.failed`, `order.cancelled`.
    pub fn name(&self) -> String {
        format!("order.{}", self.status.as_str())
    }
}

/// What the settings allow a stream.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    pub heartbeat: Duration,
    pub max_lifetime: Duration,
}

/// The live events of one API process: the reader's broadcast and the budget of streams.
pub struct Hub {
    sender: broadcast::Sender<Arc<LiveEvent>>,
    streams: Arc<Semaphore>,
    pub limits: StreamLimits,
    /// Cancelled when the process stops: every stream ends.
    pub shutdown: Shutdown,
}

impl Hub {
    /// The hub, with its reader started on `queue` until `shutdown`.
    pub fn start(config: &Config, queue: Queue, shutdown: Shutdown, log: &Logger) -> Arc<Hub> {
        let (sender, _) = broadcast::channel(config.sse_buffer_events);
        let hub = Arc::new(Hub {
            sender: sender.clone(),
            streams: Arc::new(Semaphore::new(config.sse_max_streams)),
            limits: StreamLimits {
                heartbeat: Duration::from_millis(config.sse_heartbeat_ms),
                max_lifetime: Duration::from_millis(config.sse_max_stream_ms),
            },
            shutdown: shutdown.clone(),
        });
        let log = log.new(slog::o!("task" => "live events"));
        let read_count = (config.sse_buffer_events / 2).clamp(1, READ_COUNT);
        tokio::spawn(follow(queue, sender, read_count, shutdown, log));
        hub
    }

    /// A place for one more stream, `None` at `sse_max_streams`.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }

    /// Every event the reader passes on from now.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.sender.subscribe()
    }
}

/// The reader: follows the stream from the time it starts (and, after a failure, from the last
/// entry read, so nothing is skipped) and passes each entry on. With no stream listening it
/// only keeps its place. Reconnects with backoff.
async fn follow(
    queue: Queue,
    sender: broadcast::Sender<Arc<LiveEvent>>,
    read_count: usize,
    shutdown: Shutdown,
    log: Logger,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failures = 0u64;
    let mut after: Option<String> = None;
    while !shutdown.is_cancelled() {
        let connected = async {
            if after.is_none() {
                after = Some(queue.events_now().await?);
            }
            queue.stream_connection().await
        };
        let mut conn = match connected.await {
            Ok(conn) => conn,
            Err(e) => {
                failures += 1;
                warn!(log, "cannot follow the event stream, retrying"; "error" => %e, "failures" => failures);
                backoff.wait(&shutdown).await;
                continue;
            }
        };
        let Some(mut from) = after.clone() else {
            continue;
        };
        let failure = loop {
            if shutdown.is_cancelled() {
                break None;
            }
            match queue
                .follow_events(&mut conn, &from, read_count, READ_BLOCK_MS)
                .await
            {
                Ok(entries) => {
                    if failures > 0 {
                        info!(log, "following the event stream again"; "after_failures" => failures);
                        failures = 0;
                        backoff.reset();
                    }
                    let Some(last) = entries.last() else {
                        continue;
                    };
                    from = last.id.clone();
                    after = Some(from.clone());
                    if sender.receiver_count() == 0 {
                        continue;
                    }
                    for entry in &entries {
                        match LiveEvent::parse(entry) {
                            // No receiver left is no error: the next entry finds none either.
                            Some(event) => drop(sender.send(Arc::new(event))),
                            None => {
                                warn!(log, "not passing on a stream entry that is not an order event"; "id" => &entry.id)
                            }
                        }
                    }
                }
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = failure {
            conn.discard();
            failures += 1;
            warn!(log, "following the event stream failed, reconnecting"; "error" => %e, "failures" => failures);
            backoff.wait(&shutdown).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compare_as_numbers() {
        let a = EventId::parse("9-10").unwrap();
        let b = EventId::parse("10-2").unwrap();
        assert!(a < b, "9-10 comes before 10-2");
        assert!(EventId::parse("10-2").unwrap() < EventId::parse("10-10").unwrap());
        assert_eq!(b.to_string(), "10-2");
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-1-1",
            "+1-2",
            "1 -2",
            "18446744073709551616-0",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_entry_is_parsed_once_into_what_filters_need() {
        let json = r#"{"event_id":"7f0c2b9e-3c1a-5d2e-9f3b-2a6c1e0d4f5a","order_id":"0193a5b2-7c1e-7d2a-9f3b-2a6c1e0d4f5a","customer_id":"cust-42","status":"completed","total":1.5,"items":["a"],"accepted_at":"2026-11-22T04:30:02Z","completed_at":null}"#;
        let entry = StreamEvent {
            id: "1700000000000-3".into(),
            event: json.as_bytes().to_vec(),
        };
        let event = LiveEvent::parse(&entry).unwrap();
        assert_eq!(event.customer_id, "cust-42");
        assert_eq!(event.name(), "order.completed");
        assert_eq!(event.json, json);
        let torn = StreamEvent {
            event: json.replace(',', ",\n").into_bytes(),
            ..entry.clone()
        };
        assert!(LiveEvent::parse(&torn).is_none());
        let other = StreamEvent {
            event: b"{}".to_vec(),
            ..entry
        };
        assert!(LiveEvent::parse(&other).is_none());
    }
}
