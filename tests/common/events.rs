//! A subscriber to an event channel that keeps every event it sees, for tests that wait for one
//! order's event or count events per order. It subscribes again when its connection ends (a
//! Redis restart); events published while it is away are not seen, of course.

use super::wait::wait_until;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long events may keep coming before [`Events::finish`] gives up waiting for a pause.
const QUIET_AT_LAST: Duration = Duration::from_secs(300);

/// A running subscription.
pub struct Events {
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Every event so far, and when the last one came.
struct Seen {
    events: Vec<Value>,
    last: Instant,
}

impl Events {
    /// Subscribes to `channel` on the Redis at `url`, and returns once Redis has confirmed it.
    pub async fn subscribe(url: &str, channel: &str) -> Events {
        Self::subscribe_with(redis::Client::open(url).expect("redis url"), channel).await
    }

    /// [`Events::subscribe`] through `client` (one that speaks TLS, say).
    pub async fn subscribe_with(client: redis::Client, channel: &str) -> Events {
        let seen = Arc::new(Mutex::new(Seen {
            events: Vec::new(),
            last: Instant::now(),
        }));
        let stop = CancellationToken::new();
        let (ready, subscribed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(listen(
            client,
            channel.to_string(),
            seen.clone(),
            stop.clone(),
            ready,
        ));
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .unwrap_or_else(|_| panic!("subscribed to {channel} within 10 s"))
            .expect("the subscriber task runs");
        Events {
            seen,
            stop,
            task: Some(task),
        }
    }

    /// The first event of order `id`, waiting for up to `timeout`.
    pub async fn of_order(&self, id: Uuid, timeout: Duration) -> Value {
        let wanted = id.to_string();
        let found = || {
            let seen = self.seen.lock().unwrap();
            seen.events
                .iter()
                .find(|e| e["order_id"] == wanted.as_str())
                .cloned()
        };
        let mut event = None;
        let what = format!("the event of order {id}");
        wait_until(&what, timeout, async || {
            event = found();
            event.is_some()
        })
        .await;
        event.expect("found")
    }

    /// Waits until no event has arrived for `quiet`, stops, and returns how many distinct
    /// events each order had: a repeat of an event (the same `event_id`, sent again after a
    /// redelivery) is one event.
    pub async fn finish(self, quiet: Duration) -> HashMap<Uuid, usize> {
        distinct_per_order(&self.finish_all(quiet).await)
    }

    /// Waits until no event has arrived for `quiet`, stops, and returns every event seen, in the
    /// order they came.
    pub async fn finish_all(mut self, quiet: Duration) -> Vec<Value> {
        let what = format!("{quiet:?} without an event");
        wait_until(&what, QUIET_AT_LAST, async || {
            self.seen.lock().unwrap().last.elapsed() >= quiet
        })
        .await;
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        std::mem::take(&mut self.seen.lock().unwrap().events)
    }
}

/// How many distinct events each order has among `events`: a repeat (the same `event_id`) is one.
pub fn distinct_per_order(events: &[Value]) -> HashMap<Uuid, usize> {
    let mut ids: HashMap<Uuid, HashSet<String>> = HashMap::new();
    for (n, event) in events.iter().enumerate() {
        let order: Uuid = event["order_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("an event has an order_id");
        let id = event["event_id"]
            .as_str()
            .map_or_else(|| format!("#{n}"), str::to_string);
        ids.entry(order).or_default().insert(id);
    }
    ids.into_iter()
        .map(|(order, ids)| (order, ids.len()))
        .collect()
}

impl Drop for Events {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Subscribes (again whenever the connection ends) and records every event, until `stop`.
async fn listen(
    client: redis::Client,
    channel: String,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    while !stop.is_cancelled() {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if pubsub.subscribe(&channel).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = stop.cancelled() => return,
            };
            let Some(message) = message else { break };
            let event: Value =
                serde_json::from_slice(message.get_payload_bytes()).expect("an event is JSON");
            let mut seen = seen.lock().unwrap();
            seen.last = Instant::now();
            seen.events.push(event);
        }
    }
}
