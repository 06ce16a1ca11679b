//! Order events (published on Redis channels and appended to the event stream), and the
//! notifier that reads the stream as a consumer group and notifies each customer once.

use crate::backoff::Backoff;
use crate::order::{Job, Money, Status};
use crate::queue::{Queue, StreamEvent};
use crate::store::Store;
use crate::{RoleStatus, Shutdown};
use serde::{Deserialize, Serialize};
use slog::{info, warn, Logger};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use uuid::Uuid;

/// What is published when an order reaches a final status (and appended to the event stream).
/// Its `event_id` is a function of the order and the status, so the event sent again after a
/// redelivery is recognisable as the same one.
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
            event_id: event_id(job.order_id, status),
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
            event_id: event_id(order.order_id, order.status),
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

/// The id of the event of `order_id` reaching `status`: a name-based UUID (version 5) in the
/// order's own namespace, the same however often the event is sent.
pub fn event_id(order_id: Uuid, status: Status) -> Uuid {
    Uuid::new_v5(&order_id, status.as_str().as_bytes())
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

/// Events the notifier reads per group read (and so notifications recorded per transaction), at
/// the most.
const NOTIFY_BATCH: usize = 512;
/// How long one group read waits for an event on the server; between reads the notifier takes
/// over what dead members left and checks for shutdown.
const READ_BLOCK_MS: u64 = 1000;
/// The notifier's consumer group on the event stream.
pub const NOTIFIER_GROUP: &str = "notifier";

/// The notifier role: reads the event stream as a member of the consumer group `notifier` and
/// notifies each customer of a completed order once. What it read is acknowledged (`XACK`) only
/// after the notifications are recorded; what a member read and never acknowledged (it died,
/// or PostgreSQL refused the batch) is taken over by a member after `claim_idle`. A notifier
/// that was down reads on where the group left off, so it misses nothing the stream still
/// holds. Every `catch_up` it also notifies completed orders whose notification has been due in
/// PostgreSQL for that long: the event of one that Redis lost (a restart that lost its last
/// second, a failover) is in no stream. `status.notifier` is true while its reads work.
pub async fn run_notifier(
    queue: Queue,
    store: Store,
    catch_up: Duration,
    claim_idle: Duration,
    status: Arc<RoleStatus>,
    shutdown: Shutdown,
    log: Logger,
) {
    let consumer = format!(
        "{}-{}",
        std::process::id(),
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let log = log.new(slog::o!("role" => "notifier", "consumer" => consumer.clone()));
    let mut pacing = Resubscriptions::new();
    let claim_idle_ms = claim_idle.as_millis() as u64;
    let (mut last_claim, mut last_catch_up) = (Instant::now(), Instant::now());
    while !shutdown.is_cancelled() {
        let connected = async {
            queue.ensure_event_group(NOTIFIER_GROUP).await?;
            queue.stream_connection().await
        };
        let mut conn = match connected.await {
            Ok(conn) => conn,
            Err(e) => {
                let failures = pacing.failed();
                warn!(log, "cannot read the event stream, retrying"; "error" => %e, "failures" => failures);
                pacing.wait(&shutdown).await;
                continue;
            }
        };
        // Ready once a read worked (a refused read fails at once, again and again).
        let mut reading = None;
        let failure = loop {
            if shutdown.is_cancelled() {
                break None;
            }
            let read = queue
                .read_event_group(
                    &mut conn,
                    NOTIFIER_GROUP,
                    &consumer,
                    NOTIFY_BATCH,
                    READ_BLOCK_MS,
                )
                .await;
            match read {
                Ok(events) => {
                    if reading.is_none() {
                        reading = Some(crate::RoleGuard::mark(&status.notifier));
                        info!(log, "reading the event stream"; "group" => NOTIFIER_GROUP, "after_failures" => pacing.lasted());
                    }
                    notify(&queue, &store, events, &log).await;
                }
                Err(e) => break Some(e),
            }
            if last_claim.elapsed() >= claim_idle / 2 {
                last_claim = Instant::now();
                match queue
                    .claim_idle_events(NOTIFIER_GROUP, &consumer, claim_idle_ms, NOTIFY_BATCH)
                    .await
                {
                    Ok(events) if !events.is_empty() => {
                        info!(log, "took over events another member left unacknowledged"; "count" => events.len());
                        notify(&queue, &store, events, &log).await;
                    }
                    Ok(_) => {}
                    Err(e) => break Some(e),
                }
            }
            if last_catch_up.elapsed() >= catch_up {
                last_catch_up = Instant::now();
                catch_up_from_store(&store, catch_up, &log).await;
            }
        };
        drop(reading);
        if let Some(e) = failure {
            conn.discard();
            let failures = pacing.failed();
            warn!(log, "event stream read failed, reconnecting"; "error" => %e, "failures" => failures);
            pacing.wait(&shutdown).await;
        }
    }
    info!(log, "notifier stopped");
}

/// Notifies the customers of the completed orders among `events`, then acknowledges them all.
/// A batch PostgreSQL refuses stays unacknowledged, to be taken over after the idle time.
async fn notify(queue: &Queue, store: &Store, events: Vec<StreamEvent>, log: &Logger) {
    if events.is_empty() {
        return;
    }
    let mut completed = Vec::with_capacity(events.len());
    for entry in &events {
        match serde_json::from_slice::<Event>(&entry.event) {
            Ok(event) if event.status == Status::Completed => {
                crate::trace::event_received(&event);
                completed.push(event.order_id);
            }
            Ok(_) => {}
            Err(e) => {
                warn!(log, "ignoring a stream entry that is not an order event"; "id" => &entry.id, "error" => %e)
            }
        }
    }
    if !completed.is_empty() {
        let sent = store
            .notify_once(&completed, |order_id, customer_id| {
                info!(log, "{}", notification_line(customer_id, order_id); "order_id" => %order_id);
            })
            .await;
        crate::trace::notified(&completed, sent.as_ref().err().map(|e| e as _));
        match sent {
            Ok(n) => metrics::counter!(crate::stats::NOTIFIED).increment(n as u64),
            Err(e) => {
                warn!(log, "notifications not recorded; they stay pending in the group and are retried"; "count" => completed.len(), "error" => %e);
                return;
            }
        }
    }
    let ids: Vec<String> = events.into_iter().map(|e| e.id).collect();
    if let Err(e) = queue.ack_events(NOTIFIER_GROUP, &ids).await {
        // Taken over later and found already notified: nothing is sent twice.
        warn!(log, "events not acknowledged; they will be read again"; "count" => ids.len(), "error" => %e);
    }
}

/// Notifies completed orders whose notification has been due for longer than `grace`: their
/// event is in no stream (Redis lost it).
async fn catch_up_from_store(store: &Store, grace: Duration, log: &Logger) {
    let missed = match store.missed_notifications(grace, 1000).await {
        Ok(missed) => missed,
        Err(e) => {
            warn!(log, "catch-up query failed"; "error" => %e);
            return;
        }
    };
    if missed.is_empty() {
        return;
    }
    info!(log, "catching up notifications whose event Redis lost"; "count" => missed.len());
    match store
        .notify_once(&missed, |order_id, customer_id| {
            info!(log, "{}", notification_line(customer_id, order_id); "order_id" => %order_id);
        })
        .await
    {
        Ok(n) => metrics::counter!(crate::stats::NOTIFIED).increment(n as u64),
        Err(e) => warn!(log, "catch-up notifications not recorded"; "error" => %e),
    }
}

/// How the notifier paces its reconnections: after each failure (no connection, a refused
/// command, a read that failed) a longer wait, from 100 ms up to 5 s; the shortest again only
/// once reading worked. Each failure logs one line, so a read refused forever logs a line per
/// backoff step, not thousands a second.
struct Resubscriptions {
    backoff: Backoff,
    /// Failures since reading last worked.
    failures: u64,
}

impl Resubscriptions {
    fn new() -> Resubscriptions {
        Resubscriptions {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            failures: 0,
        }
    }

    /// One more failure; how many since reading last worked.
    fn failed(&mut self) -> u64 {
        self.failures += 1;
        self.failures
    }

    /// Waits before the next attempt (or until `shutdown`).
    async fn wait(&mut self, shutdown: &Shutdown) {
        self.backoff.wait(shutdown).await;
    }

    /// Reading works: the next failure waits the shortest again. How many failures came
    /// before it.
    fn lasted(&mut self) -> u64 {
        self.backoff.reset();
        std::mem::take(&mut self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The notifier once logged 61,281 lines in 10 s when every subscription was refused: it
    /// reset its backoff on each attempt.
    #[test]
    fn a_read_refused_again_and_again_is_retried_ever_more_slowly() {
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
