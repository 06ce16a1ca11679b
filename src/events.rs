//! Order events on Redis pub/sub, and the notifier that turns `order.completed` into customer
//! notifications, once per order.

use crate::backoff::Backoff;
use crate::order::{Job, Money, Status};
use crate::queue::Queue;
use crate::store::Store;
use crate::{RoleStatus, Shutdown};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use slog::{info, warn, Logger};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

/// What is published when an order reaches a final status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: Status,
    pub total: Money,
    pub items: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    /// The `X-Request-Id` of the request the event follows from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The W3C trace context of the span that published it, when the order is traced
    /// (`crate::trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl Event {
    /// The event of `job` reaching `status`.
    pub fn new(job: &Job, status: Status, completed_at: Option<OffsetDateTime>) -> Event {
        Event {
            event_id: Uuid::now_v7(),
            order_id: job.order_id,
            customer_id: job.customer_id.clone(),
            status,
            total: job.total,
            items: job.items.clone(),
            accepted_at: job.accepted_at,
            completed_at,
            request_id: job.request_id.clone(),
            traceparent: None,
            tracestate: None,
        }
    }

    /// The event of an order as stored (its current status).
    pub fn of_order(order: &crate::store::OrderView, request_id: &str) -> Event {
        Event {
            event_id: Uuid::now_v7(),
            order_id: order.order_id,
            customer_id: order.customer_id.clone(),
            status: order.status,
            total: order.total,
            items: order.items.clone(),
            accepted_at: order.accepted_at,
            completed_at: order.completed_at,
            request_id: Some(request_id.to_string()),
            traceparent: None,
            tracestate: None,
        }
    }

    /// The same event carrying a trace context (`traceparent`, `tracestate`).
    pub fn traced(mut self, (traceparent, tracestate): (Option<String>, Option<String>)) -> Event {
        self.traceparent = traceparent;
        self.tracestate = tracestate;
        self
    }

    /// The JSON published.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The line a customer notification writes (the stand-in for sending an email). A customer id
/// that could pass for more fields of a term log line (a comma, a colon, a quote) is quoted;
/// control and invisible characters never get this far (order validation refuses them).
pub fn notification_line(customer_id: &str, order_id: Uuid) -> String {
    if customer_id.contains([',', ':', '"', '\\']) {
        format!("Email sent to customer {customer_id:?} for Order #{order_id} - Status: completed")
    } else {
        format!("Email sent to customer {customer_id} for Order #{order_id} - Status: completed")
    }
}

/// Notifications recorded per transaction, at the most.
const NOTIFY_BATCH: usize = 512;
/// How long the notifier lets events gather before it records a batch. Notifications are off
/// the order's path (its event is already out), so a few milliseconds cost a customer nothing
/// and save PostgreSQL a transaction per handful of orders (three statements each).
const NOTIFY_LINGER: Duration = Duration::from_millis(20);

/// A subscription that lasts this long (or brings a message) counts as working: only then does
/// the backoff start again from its shortest wait. One that ends sooner (refused channel
/// permission, a server that drops it) is retried after ever longer waits.
const SUBSCRIPTION_LASTED: Duration = Duration::from_secs(10);

/// The notifier role: subscribes to the completion channel and notifies each customer once.
/// When the subscription drops (Redis restarted, a failover) it resubscribes with backoff, and
/// every `catch_up` it notifies completed orders whose event it missed. `status.notifier` is
/// true only while it is subscribed.
#[allow(clippy::too_many_arguments)]
pub async fn run_notifier(
    queue: Queue,
    channel: String,
    store: Store,
    catch_up: Duration,
    status: Arc<RoleStatus>,
    shutdown: Shutdown,
    log: Logger,
) {
    let log = log.new(slog::o!("role" => "notifier"));
    // Events go through a channel to one sender, which records them a batch per transaction.
    let (events, received) = mpsc::unbounded_channel();
    let sender = tokio::spawn(send_notifications(store.clone(), received, log.clone()));
    let mut pacing = Resubscriptions::new();
    while !shutdown.is_cancelled() {
        let mut pubsub = match queue.subscriber().await {
            Ok(p) => p,
            Err(e) => {
                let failures = pacing.failed();
                warn!(log, "cannot reach Redis for the subscription, retrying"; "error" => %e, "failures" => failures);
                pacing.wait(&shutdown).await;
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(&channel).await {
            let failures = pacing.failed();
            warn!(log, "subscribe failed, retrying"; "error" => %e, "failures" => failures);
            pacing.wait(&shutdown).await;
            continue;
        }
        let subscribed = crate::RoleGuard::mark(&status.notifier);
        info!(log, "subscribed"; "channel" => &channel, "after_failures" => pacing.failures);
        let since = tokio::time::Instant::now();
        let mut lasted = false;
        let mut messages = pubsub.on_message();
        let mut tick = tokio::time::interval(catch_up);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    lasted = true;
                    match serde_json::from_slice::<Event>(message.get_payload_bytes()) {
                        Ok(event) if event.status == Status::Completed => {
                            crate::trace::event_received(&event);
                            let _ = events.send(event.order_id);
                        }
                        Ok(_) => {}
                        Err(e) => warn!(log, "ignoring a message that is not an order event"; "error" => %e),
                    }
                }
                _ = tick.tick() => match store.missed_notifications(catch_up, 1000).await {
                    Ok(missed) => {
                        if !missed.is_empty() {
                            info!(log, "catching up missed notifications"; "count" => missed.len());
                        }
                        for order_id in missed {
                            let _ = events.send(order_id);
                        }
                    }
                    Err(e) => warn!(log, "catch-up query failed"; "error" => %e),
                },
                _ = shutdown.cancelled() => break,
            }
            if !lasted && since.elapsed() >= SUBSCRIPTION_LASTED {
                lasted = true;
            }
            if lasted && pacing.failures > 0 {
                pacing.lasted();
            }
        }
        drop(subscribed);
        if shutdown.is_cancelled() {
            break;
        }
        if lasted {
            pacing.lasted();
            warn!(log, "subscription ended (Redis restarted?), resubscribing");
        } else {
            let failures = pacing.failed();
            warn!(log, "subscription ended at once (no permission for the channel?), retrying";
                "channel" => &channel, "failures" => failures);
            pacing.wait(&shutdown).await;
        }
    }
    // Let the notifications received so far be sent.
    drop(events);
    let _ = sender.await;
    info!(log, "notifier stopped");
}

/// How the notifier paces its subscription attempts: after each failure (no connection, a
/// refused `SUBSCRIBE`, a subscription that ended before it lasted) a longer wait, from 100 ms
/// up to 5 s; the shortest again only once a subscription lasted. Each failure logs one line, so
/// a subscription refused forever logs a line per backoff step, not thousands a second.
struct Resubscriptions {
    backoff: Backoff,
    /// Failures since the last subscription that lasted.
    failures: u64,
}

impl Resubscriptions {
    fn new() -> Resubscriptions {
        Resubscriptions {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            failures: 0,
        }
    }

    /// One more failure; how many since the last subscription that lasted.
    fn failed(&mut self) -> u64 {
        self.failures += 1;
        self.failures
    }

    /// Waits before the next attempt (or until `shutdown`).
    async fn wait(&mut self, shutdown: &Shutdown) {
        self.backoff.wait(shutdown).await;
    }

    /// A subscription lasted: the next failure waits the shortest again. How many failures
    /// came before it.
    fn lasted(&mut self) -> u64 {
        self.backoff.reset();
        std::mem::take(&mut self.failures)
    }
}

/// Records and sends notifications for the order ids received, a batch per transaction. A
/// batch that fails is left to the catch-up, which finds its orders still unnotified.
async fn send_notifications(
    store: Store,
    mut received: mpsc::UnboundedReceiver<Uuid>,
    log: Logger,
) {
    let mut batch = Vec::with_capacity(NOTIFY_BATCH);
    while received.recv_many(&mut batch, NOTIFY_BATCH).await > 0 {
        if batch.len() < NOTIFY_BATCH {
            tokio::time::sleep(NOTIFY_LINGER).await;
            while batch.len() < NOTIFY_BATCH {
                match received.try_recv() {
                    Ok(order_id) => batch.push(order_id),
                    Err(_) => break,
                }
            }
        }
        let sent = store
            .notify_once(&batch, |order_id, customer_id| {
                info!(log, "{}", notification_line(customer_id, order_id); "order_id" => %order_id);
            })
            .await;
        crate::trace::notified(&batch, sent.as_ref().err().map(|e| e as _));
        match sent {
            Ok(n) => metrics::counter!(crate::stats::NOTIFIED).increment(n as u64),
            Err(e) => {
                warn!(log, "notifications not recorded; the catch-up will retry them"; "count" => batch.len(), "error" => %e)
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The notifier once logged 61,281 lines in 10 s when every subscription was refused: it
    /// reset its backoff on each attempt.
    #[test]
    fn a_subscription_refused_again_and_again_is_retried_ever_more_slowly() {
        let mut pacing = Resubscriptions::new();
        let (mut waited, mut attempts) = (Duration::ZERO, 0);
        while waited < Duration::from_secs(10) {
            attempts = pacing.failed();
            waited += pacing.backoff.next_delay();
        }
        // Waits of at least 50, 100, 200, ... 2500 ms (half of each window).
        assert!(attempts <= 10, "{attempts} attempts in 10 s");
        assert_eq!(pacing.lasted(), attempts);
        assert!(pacing.backoff.next_delay() <= Duration::from_millis(100));
        assert_eq!(pacing.lasted(), 0, "nothing failed since");
    }

    #[test]
    fn a_customer_id_that_could_pass_for_fields_is_quoted_in_the_line() {
        let id = Uuid::nil();
        assert_eq!(
            notification_line("cust-42", id),
            format!("Email sent to customer cust-42 for Order #{id} - Status: completed")
        );
        assert_eq!(
            notification_line("a, order_id: b", id),
            format!(
                "Email sent to customer \"a, order_id: b\" for Order #{id} - Status: completed"
            )
        );
    }
}
