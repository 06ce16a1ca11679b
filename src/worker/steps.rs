//! The processing steps of claimed orders, in two batching tasks:
//!
//! - the starter validates each payload again (anything can be pushed on the list), stores the
//!   valid ones as `processing` in one statement and starts each one's processing time;
//! - the completer completes what has finished (a conditional update, so a cancelled or
//!   redelivered order is not), then publishes the events and acknowledges, in one round trip.
//!
//! Each runs one batch at a time and takes everything that arrived meanwhile as the next batch:
//! an idle service sends each order on at once, a busy one sends bigger batches, and
//! PostgreSQL's fixed cost per statement (executor start-up, the count triggers, the commit) is
//! paid per batch, not per order.

use super::fetch::Claimed;
use super::retry::{dead_letter_poison, retry_later};
use super::{until_done, Ctx, BATCH};
use crate::events::Event;
use crate::order::{Job, Status};
use crate::queue::{Ack, FinalEvent};
use crate::stats;
use crate::store::Completion;
use crate::{trace, Shutdown};
use slog::{info, warn};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// How long a completion under way may go on after the shutdown deadline.
const COMPLETION_GRACE: Duration = Duration::from_secs(5);

/// A stored order, processing, with the attempt that fences its completion.
pub(super) struct Started {
    job: Job,
    attempt: i32,
    claimed: Claimed,
    since: std::time::Instant,
    trace: trace::Order,
}

/// Stores claimed orders as `processing`, one batch at a time: whatever has been claimed since
/// the last one.
pub(super) async fn starter(
    ctx: Arc<Ctx>,
    mut claimed: mpsc::UnboundedReceiver<Claimed>,
    finished: mpsc::UnboundedSender<Started>,
    tasks: TaskTracker,
    abort: Shutdown,
) {
    while let Some(batch) = next_batch(&mut claimed, &abort).await {
        tokio::select! {
            _ = start_batch(&ctx, batch, &tasks, &abort, finished.clone()) => {}
            _ = abort.cancelled() => return,
        }
    }
}

/// Everything waiting on `from`, up to a batch, once there is something; `None` when every
/// sender is gone or the shutdown deadline has passed.
async fn next_batch<T>(from: &mut mpsc::UnboundedReceiver<T>, abort: &Shutdown) -> Option<Vec<T>> {
    let mut batch = Vec::with_capacity(BATCH);
    tokio::select! {
        n = from.recv_many(&mut batch, BATCH) => (n > 0).then_some(batch),
        _ = abort.cancelled() => None,
    }
}

/// Validates a claimed batch, stores the valid orders as `processing` in one statement, then
/// starts each one's processing time; when it is over the order goes to the completer.
async fn start_batch(
    ctx: &Arc<Ctx>,
    batch: Vec<Claimed>,
    tasks: &TaskTracker,
    abort: &Shutdown,
    finished: mpsc::UnboundedSender<Started>,
) {
    let mut jobs: Vec<(Job, Claimed)> = Vec::with_capacity(batch.len());
    let mut seen = HashSet::with_capacity(batch.len());
    let mut drop_now = Vec::new();
    for claimed in batch {
        match Job::parse(&claimed.payload) {
            Err(e) => dead_letter_poison(ctx, &claimed.payload, e.to_string()).await,
            // The same order twice in one batch (pushed twice): the copy is dropped.
            Ok(job) if !seen.insert(job.order_id) => drop_now.push((job.order_id, claimed)),
            Ok(job) => jobs.push((job, claimed)),
        }
    }
    if !jobs.is_empty() {
        let refs: Vec<&Job> = jobs.iter().map(|(job, _)| job).collect();
        let store_began = trace::now();
        let begun = ctx.store.begin_processing(&refs).await;
        let stored = (store_began, trace::now());
        let attempts = match begun {
            Ok(attempts) => attempts,
            Err(e) => {
                if e.is_unavailable() {
                    ctx.db_down.store(true, Ordering::Relaxed);
                }
                for (job, claimed) in jobs {
                    retry_later(ctx, job.failed_once(e.to_string()), &claimed.payload).await;
                }
                return;
            }
        };
        let mut found_final = Vec::new();
        for (job, claimed) in jobs {
            let Some(&attempt) = attempts.get(&job.order_id) else {
                found_final.push((job, claimed));
                continue;
            };
            info!(ctx.log, "order processing"; "order_id" => %job.order_id, "attempt" => attempt,
                "request_id" => job.request_id.as_deref().unwrap_or(""), trace::log_kv(&job));
            if attempt == 1 {
                let waited = OffsetDateTime::now_utc() - job.accepted_at;
                metrics::histogram!(stats::QUEUE_WAIT).record(waited.as_seconds_f64().max(0.0));
            }
            let started = Started {
                trace: trace::Order::stored(&job, attempt, claimed.claimed_at, stored),
                job,
                attempt,
                claimed,
                since: std::time::Instant::now(),
            };
            // The simulated work: an async sleep, so thousands can be in flight.
            let delay = ctx.delay.sample();
            if delay.is_zero() {
                let _ = finished.send(started);
            } else {
                let (finished, abort) = (finished.clone(), abort.clone());
                tasks.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => { let _ = finished.send(started); }
                        _ = abort.cancelled() => {}
                    }
                });
            }
        }
        if !found_final.is_empty() {
            let found: Vec<(&Job, &[u8])> = found_final
                .iter()
                .map(|(job, claimed)| (job, claimed.payload.as_slice()))
                .collect();
            send_final_events_again(ctx, &found).await;
        }
    }
    if !drop_now.is_empty() {
        metrics::counter!(stats::DUPLICATES).increment(drop_now.len() as u64);
        let acks: Vec<Ack> = drop_now
            .iter()
            .map(|(order_id, claimed)| Ack {
                payload: &claimed.payload,
                order_id: *order_id,
                event: None,
                // The other copy of the batch goes on: the pending entry is its.
                keep_pending: true,
            })
            .collect();
        publish_and_acknowledge(ctx, &acks).await;
    }
}

/// Acknowledges deliveries of orders found already final, publishing and appending each one's
/// final event again (same `event_id`): a worker that died after its completion commit and
/// before its acknowledgement left the order final with no event, and this redelivery is the
/// only one it gets. An order whose event did go out (its delivery was taken over) gets a
/// repeat, recognisable by its id. A deleted order gets none. If the statuses cannot be read
/// (PostgreSQL down), the deliveries go back on the queue.
pub(super) async fn send_final_events_again(ctx: &Ctx, found: &[(&Job, &[u8])]) {
    let ids: Vec<Uuid> = found.iter().map(|(job, _)| job.order_id).collect();
    let statuses = match ctx.store.final_statuses(&ids).await {
        Ok(statuses) => statuses,
        Err(e) => {
            if e.is_unavailable() {
                ctx.db_down.store(true, Ordering::Relaxed);
            }
            // Back on the queue as they are, for a later claim (workers stop claiming while
            // PostgreSQL is down); not a failed try of the order.
            let payloads: Vec<Vec<u8>> = found.iter().map(|(_, p)| p.to_vec()).collect();
            warn!(ctx.log, "cannot read whether these orders are final, putting them back"; "count" => payloads.len(), "error" => %e);
            until_done(ctx, "requeue", || ctx.queue.requeue(&payloads)).await;
            return;
        }
    };
    metrics::counter!(stats::DUPLICATES).increment(found.len() as u64);
    let acks: Vec<Ack> = found
        .iter()
        .map(|&(job, payload)| {
            let status = statuses.iter().find(|(id, ..)| *id == job.order_id);
            info!(ctx.log, "order already final, sending its event again"; "order_id" => %job.order_id,
                "status" => status.map_or("deleted", |(_, s, _)| s.as_str()));
            Ack {
                payload,
                order_id: job.order_id,
                event: status.map(|&(_, status, at)| FinalEvent {
                    status,
                    json: Event::new(job, status, at).to_json(),
                    first: false,
                }),
                keep_pending: false,
            }
        })
        .collect();
    publish_and_acknowledge(ctx, &acks).await;
}

/// Completes what has finished processing, one batch at a time: whatever has finished since the
/// last one.
pub(super) async fn completer(
    ctx: Arc<Ctx>,
    mut finished: mpsc::UnboundedReceiver<Started>,
    abort: Shutdown,
) {
    while let Some(batch) = next_batch(&mut finished, &abort).await {
        // A completion that has begun runs on past the shutdown deadline, for a while: once its
        // commit is made, stopping before the publish would lose the event.
        let grace = async {
            abort.cancelled().await;
            tokio::time::sleep(COMPLETION_GRACE).await;
        };
        tokio::select! {
            _ = complete_batch(&ctx, batch) => {}
            _ = grace => {}
        }
    }
}

/// Completes the orders still `processing` under their attempt (a cancelled or redelivered one
/// is not), then publishes their events and acknowledges them all in one round trip.
async fn complete_batch(ctx: &Ctx, mut batch: Vec<Started>) {
    let ids: Vec<Uuid> = batch.iter().map(|s| s.job.order_id).collect();
    let attempts: Vec<i32> = batch.iter().map(|s| s.attempt).collect();
    let complete_began = trace::now();
    let completed = match ctx.store.complete(&ids, &attempts).await {
        Ok(completed) => completed,
        Err(e) => {
            if e.is_unavailable() {
                ctx.db_down.store(true, Ordering::Relaxed);
            }
            for started in batch {
                let retry = started.job.failed_once(e.to_string());
                retry_later(ctx, retry, &started.claimed.payload).await;
            }
            return;
        }
    };
    let complete = (complete_began, trace::now());
    for s in &mut batch {
        let outcome = match completed.get(&(s.job.order_id, s.attempt)) {
            Some(Completion::Completed(_)) => "completed",
            Some(Completion::TakenOver) => "taken over",
            None => "already final",
        };
        s.trace.completed(complete, outcome);
    }
    let acks: Vec<Ack> = batch
        .iter()
        .map(|s| {
            let outcome = completed.get(&(s.job.order_id, s.attempt));
            Ack {
                payload: &s.claimed.payload,
                order_id: s.job.order_id,
                event: match outcome {
                    Some(Completion::Completed(at)) => {
                        let event = Event::new(&s.job, Status::Completed, Some(*at));
                        Some(FinalEvent {
                            status: Status::Completed,
                            json: event.traced(s.trace.carrier()).to_json(),
                            first: true,
                        })
                    }
                    _ => None,
                },
                keep_pending: matches!(outcome, Some(Completion::TakenOver)),
            }
        })
        .collect();
    publish_and_acknowledge(ctx, &acks).await;
    drop(acks);
    let published = trace::now();
    for s in &mut batch {
        s.trace.published(published);
    }
    let done = completed
        .values()
        .filter(|c| matches!(c, Completion::Completed(_)))
        .count();
    metrics::counter!(stats::COMPLETED).increment(done as u64);
    for started in &batch {
        let order_id = started.job.order_id;
        let request_id = started.job.request_id.as_deref().unwrap_or("");
        match completed.get(&(order_id, started.attempt)) {
            Some(Completion::Completed(at)) => {
                metrics::histogram!(stats::PROCESSING)
                    .record(started.since.elapsed().as_secs_f64());
                let total = (*at - started.job.accepted_at).as_seconds_f64().max(0.0);
                metrics::histogram!(stats::END_TO_END).record(total);
                info!(ctx.log, "order completed"; "order_id" => %order_id, "request_id" => request_id,
                    trace::log_kv(&started.job));
            }
            _ => info!(ctx.log, "order was cancelled or taken over, not completed";
                "order_id" => %order_id, "request_id" => request_id, trace::log_kv(&started.job)),
        }
    }
}

/// Publishes the events of these orders and acknowledges them, retrying until Redis takes it;
/// the retries share one acknowledgement id, so a retry after a lost reply publishes nothing
/// twice.
pub(super) async fn publish_and_acknowledge(ctx: &Ctx, acks: &[Ack<'_>]) {
    let ack_id = Uuid::new_v4().simple().to_string();
    until_done(ctx, "acknowledge", || {
        ctx.queue.publish_and_acknowledge(acks, &ack_id)
    })
    .await;
}
