//! Failures: a transient one schedules the order's next try, an order whose tries ran out is
//! failed and dead-lettered, a payload that can never be an order is dead-lettered at once; and
//! the loop that promotes the retries that are due.

use super::steps::send_final_events_again;
use super::{now_ms, until_done, Ctx};
use crate::backoff::{retry_delay, Backoff};
use crate::events::Event;
use crate::order::{Job, Status};
use crate::stats;
use crate::Shutdown;
use slog::{debug, error, warn};
use std::sync::Arc;
use std::time::Duration;

/// How often due retries are moved back to the queue.
const PROMOTE_EVERY: Duration = Duration::from_millis(100);

/// Moves the retries that are due back to the queue every [`PROMOTE_EVERY`], until `stop`.
pub(super) async fn promote_due_retries(ctx: Arc<Ctx>, stop: Shutdown) {
    let mut promote = tokio::time::interval(PROMOTE_EVERY);
    let mut backoff = Backoff::new(PROMOTE_EVERY, Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = promote.tick() => {
                match ctx.queue.queue().promote_due(now_ms()).await {
                    Ok(_) => backoff.reset(),
                    // Not every tick while Redis refuses: the wait grows.
                    Err(e) => {
                        debug!(ctx.log, "promoting due retries failed"; "error" => %e);
                        backoff.wait(&stop).await;
                    }
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Takes the order off this worker and schedules its next try after `wait`, retrying the
/// Redis step until it succeeds.
async fn schedule_next_try(ctx: &Ctx, job: &Job, payload: &[u8], wait: Duration) {
    let due = now_ms() + wait.as_millis() as u64;
    until_done(ctx, "schedule retry", || {
        ctx.queue.schedule_retry(payload, job, due)
    })
    .await;
}

/// After a transient failure: schedule the next try, or give up once the tries are spent.
pub(super) async fn retry_later(ctx: &Ctx, job: Job, payload: &[u8]) {
    let order_id = job.order_id;
    if job.failures >= ctx.max_attempts {
        return give_up(ctx, &job, payload).await;
    }
    let wait = retry_delay(ctx.retry_base, ctx.retry_max, job.failures);
    metrics::counter!(stats::RETRIED).increment(1);
    warn!(ctx.log, "order failed, retrying later"; "order_id" => %order_id,
        "failures" => job.failures, "in_ms" => wait.as_millis() as u64,
        "error" => job.errors.last().map(String::as_str).unwrap_or(""));
    schedule_next_try(ctx, &job, payload, wait).await;
}

/// The order's tries ran out: mark it failed, publish it on the failed channel, dead-letter it. If the
/// failure cannot even be recorded (PostgreSQL still down), it is scheduled once more instead.
async fn give_up(ctx: &Ctx, job: &Job, payload: &[u8]) {
    let order_id = job.order_id;
    let reason = job
        .errors
        .last()
        .map(String::as_str)
        .unwrap_or("attempts exhausted");
    match ctx.store.fail(job, reason).await {
        Ok(true) => {}
        Ok(false) => {
            send_final_events_again(ctx, &[(job, payload)]).await;
            return;
        }
        Err(e) => {
            error!(ctx.log, "cannot mark the order failed yet, retrying later"; "order_id" => %order_id, "error" => %e);
            let wait = retry_delay(ctx.retry_base, ctx.retry_max, job.failures);
            schedule_next_try(ctx, job, payload, wait).await;
            return;
        }
    }
    metrics::counter!(stats::FAILED).increment(1);
    error!(ctx.log, "order failed, dead-lettered"; "order_id" => %order_id, "failures" => job.failures, "error" => reason);
    let event = Event::new(job, Status::Failed, None).to_json();
    until_done(ctx, "dead-letter", || {
        ctx.queue
            .dead_letter_and_publish(payload, Some(order_id), &job.errors, Some(&event))
    })
    .await;
}

/// Moves a payload that can never be an order to the dead letters, never to be retried.
pub(super) async fn dead_letter_poison(ctx: &Ctx, payload: &[u8], error: String) {
    error!(ctx.log, "dead-lettering a payload that is not a valid order"; "error" => &error);
    let order_id = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("order_id")?.as_str()?.parse().ok());
    let errors = [format!("invalid payload: {error}")];
    until_done(ctx, "dead-letter", || {
        ctx.queue
            .dead_letter_and_publish(payload, order_id, &errors, None)
    })
    .await;
}
