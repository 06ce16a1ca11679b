//! A subscriber to an event channel that keeps every event it sees, for tests that wait for one
//! order's event or count events per order. It subscribes again when its connection ends (a
//! Redis restart); events published while it is away are not seen, of course.

use super::wait::wait_until;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
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

    /// Waits until no event has arrived for `quiet`, stops, and returns the events per order id.
    pub async fn finish(mut self, quiet: Duration) -> HashMap<Uuid, usize> {
        let what = format!("{quiet:?} without an event");
        wait_until(&what, QUIET_AT_LAST, async || {
            self.seen.lock().unwrap().last.elapsed() >= quiet
        })
        .await;
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let mut counts = HashMap::new();
        for event in &self.seen.lock().unwrap().events {
            let id: Uuid = event["order_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("an event has an order_id");
            *counts.entry(id).or_default() += 1;
        }
        counts
    }
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
