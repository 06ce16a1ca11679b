//! The operator's operations, which the console calls: dead letters (pages, retry one, some or
//! all that match, delete, purge), scheduled retries (pages, run now), pausing and resuming
//! claiming, the worker processes, the per-second history, and one order's history. The router
//! has checked the admin token of the admin ones.

use super::handlers::{find, invalid, parse_id, parse_limit};
use super::{Api, ApiError, Body};
use crate::order::{Job, Status};
use crate::queue::{DeadLetter, DeadLetterFilter};
use serde::Deserialize;
use serde_json::Value;
use slog::info;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{json, with_status, Response};
use warp::Reply;

/// Most dead letters one bulk retry takes.
const MAX_BULK: usize = 500;

fn query<T: for<'de> Deserialize<'de>>(query: &str) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::InvalidQuery(format!("invalid query string: {e}")))
}

/// An RFC 3339 time of a Unix time in milliseconds.
fn rfc3339_ms(ms: u64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// A dead letter's id from the path: a UUID (the order's, or its own).
fn dead_letter_id(id: &str) -> Result<String, ApiError> {
    Uuid::try_parse(id)
        .map(|id| id.to_string())
        .map_err(|_| ApiError::NotFound(format!("no dead letter {id}")))
}

/// A dead-letter cursor is an index key: when it failed (15 digits), `:`, its id.
fn dead_letter_cursor(cursor: Option<&str>) -> Result<Option<&str>, ApiError> {
    match cursor {
        None | Some("") => Ok(None),
        Some(c) => {
            let ok = c.split_once(':').is_some_and(|(ms, id)| {
                ms.len() == 15
                    && ms.bytes().all(|b| b.is_ascii_digit())
                    && Uuid::try_parse(id).is_ok()
            });
            ok.then_some(Some(c))
                .ok_or_else(|| invalid("cursor", "cursor is not one this API returned"))
        }
    }
}

/// `GET /dead-letters?limit=&cursor=&customer_id=&error=` (admin): newest first.
pub async fn list_dead_letters(raw: String, api: Arc<Api>) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        limit: Option<String>,
        cursor: Option<String>,
        customer_id: Option<String>,
        error: Option<String>,
    }
    let params: Params = query(&raw)?;
    let limit = parse_limit(params.limit.as_deref())? as usize;
    let after = dead_letter_cursor(params.cursor.as_deref())?;
    let filter = DeadLetterFilter {
        customer_id: params.customer_id.filter(|c| !c.is_empty()),
        error: params.error.filter(|e| !e.is_empty()),
    };
    let (page, total) = tokio::try_join!(
        api.queue.dead_letters(after, limit, &filter),
        api.queue.dead_letter_count()
    )?;
    Ok(json(&serde_json::json!({
        "dead_letters": page.dead_letters,
        "total": total,
        "next_cursor": page.next,
    }))
    .into_response())
}

/// What retrying some dead letters did.
#[derive(Default)]
struct Retried {
    ids: Vec<String>,
    /// Those that can never succeed (no order in them), or whose order is in another final
    /// status, or that another call took first.
    skipped: usize,
}

/// Puts these dead letters back on the queue with their tries reset (their error history is
/// kept): PostgreSQL's row made `queued` first, in one statement, then the entries moved in one
/// script call.
async fn retry_letters(api: &Api, letters: &[DeadLetter]) -> Result<Retried, ApiError> {
    let mut jobs: Vec<(&DeadLetter, Job)> = Vec::with_capacity(letters.len());
    for letter in letters {
        if let (Some(_), Ok(mut job)) = (letter.order_id, Job::parse(letter.payload.as_bytes())) {
            job.failures = 0;
            // The letter's errors include the try that made it fail, which its payload lacks.
            job.errors = letter.errors.clone();
            jobs.push((letter, job));
        }
    }
    let ids: Vec<Uuid> = jobs.iter().map(|(_, j)| j.order_id).collect();
    let may = api.store.requeue_failed(&ids).await?;
    jobs.retain(|(_, j)| may.contains(&j.order_id));
    let revived = api.queue.revive(&jobs).await?;
    for id in &revived {
        info!(api.log, "dead letter retried"; "order_id" => id);
    }
    Ok(Retried {
        skipped: letters.len() - revived.len(),
        ids: revived,
    })
}

/// `POST /dead-letters/{id}/retry` (admin): puts one dead letter back on the queue.
pub async fn retry_dead_letter(id: String, api: Arc<Api>) -> Result<Response, ApiError> {
    let id = dead_letter_id(&id)?;
    let not_found = || ApiError::NotFound(format!("no dead letter {id}"));
    let letters = api
        .queue
        .dead_letters_by_id(std::slice::from_ref(&id))
        .await?;
    let letter = letters.first().ok_or_else(not_found)?;
    let mut job = match (letter.order_id, Job::parse(letter.payload.as_bytes())) {
        (Some(_), Ok(job)) => job,
        (_, Err(e)) => {
            return Err(ApiError::Conflict(format!(
                "this dead letter can never succeed: {e}"
            )))
        }
        (None, Ok(_)) => {
            return Err(ApiError::Conflict(
                "this dead letter can never succeed: it names no order".into(),
            ))
        }
    };
    job.failures = 0;
    job.errors = letter.errors.clone();
    let order_id = job.order_id;
    if api.store.requeue_failed(&[order_id]).await?.is_empty() {
        return Err(ApiError::Conflict(format!(
            "order {order_id} is no longer failed"
        )));
    }
    if api.queue.revive(&[(letter, job)]).await?.is_empty() {
        return Err(not_found());
    }
    info!(api.log, "dead letter retried"; "order_id" => %order_id);
    let body = json(&serde_json::json!({"order_id": order_id, "status": Status::Queued}));
    Ok(with_status(body, StatusCode::ACCEPTED).into_response())
}

/// `POST /dead-letters/retry` (admin): `{"ids": [...]}` retries those (up to 500);
/// `{"filter": {...}, "cursor": ...}` retries the next slice of those that match, and answers
/// where to go on from.
pub async fn retry_dead_letters(body: Body, api: Arc<Api>) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Bulk {
        ids: Option<Vec<String>>,
        filter: Option<DeadLetterFilter>,
        cursor: Option<String>,
    }
    let raw: serde_json::Map<String, Value> = crate::order::from_json_object(&body)?;
    if let Some((field, _)) = raw.iter().find(|(_, v)| v.is_null()) {
        return Err(invalid(field, format!("{field} must not be null")));
    }
    if raw.get("filter").is_some_and(|f| !f.is_object()) {
        return Err(invalid("filter", "filter must be an object"));
    }
    let bulk: Bulk =
        serde_json::from_value(Value::Object(raw)).map_err(|e| ApiError::InvalidBody {
            message: format!("invalid body: {e}"),
            field: None,
        })?;
    let (letters, next) = match (bulk.ids, bulk.filter) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_BULK {
                return Err(invalid(
                    "ids",
                    format!("ids holds 1 to {MAX_BULK} dead-letter ids"),
                ));
            }
            let mut valid: Vec<String> = ids
                .iter()
                .filter_map(|id| Uuid::try_parse(id).ok().map(|u| u.to_string()))
                .collect();
            valid.sort();
            valid.dedup();
            let letters = api.queue.dead_letters_by_id(&valid).await?;
            let unknown = ids.len() - letters.len();
            let retried = retry_letters(&api, &letters).await?;
            return Ok(json(&serde_json::json!({
                "retried": retried.ids.len(),
                "skipped": retried.skipped + unknown,
                "next_cursor": null,
            }))
            .into_response());
        }
        (None, Some(filter)) => {
            let after = dead_letter_cursor(bulk.cursor.as_deref())?;
            let page = api.queue.dead_letters(after, MAX_BULK, &filter).await?;
            (page.dead_letters, page.next)
        }
        _ => {
            return Err(invalid(
                "ids",
                "send either ids or a filter (an empty filter takes every dead letter)",
            ))
        }
    };
    let retried = retry_letters(&api, &letters).await?;
    Ok(json(&serde_json::json!({
        "retried": retried.ids.len(),
        "skipped": retried.skipped,
        "next_cursor": next,
    }))
    .into_response())
}

/// `DELETE /dead-letters/{id}` (admin): the order stays failed.
pub async fn delete_dead_letter(id: String, api: Arc<Api>) -> Result<Response, ApiError> {
    let id = dead_letter_id(&id)?;
    if !api.queue.remove_dead_letter(&id).await? {
        return Err(ApiError::NotFound(format!("no dead letter {id}")));
    }
    info!(api.log, "dead letter deleted"; "id" => &id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /dead-letters` (admin): every dead letter; the orders stay failed.
pub async fn purge_dead_letters(api: Arc<Api>) -> Result<Response, ApiError> {
    let purged = api.queue.purge_dead_letters().await?;
    info!(api.log, "dead letters purged"; "count" => purged);
    Ok(json(&serde_json::json!({"purged": purged})).into_response())
}

/// The JSON of a scheduled retry.
fn scheduled_json(job: &Job, due_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "order_id": job.order_id,
        "customer_id": job.customer_id,
        "total": job.total,
        "due_at": rfc3339_ms(due_ms),
        "failures": job.failures,
        "errors": job.errors,
    })
}

/// `GET /scheduled?limit=&cursor=` (admin): the scheduled retries, soonest first.
pub async fn list_scheduled(raw: String, api: Arc<Api>) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        limit: Option<String>,
        cursor: Option<String>,
    }
    let params: Params = query(&raw)?;
    let limit = parse_limit(params.limit.as_deref())? as usize;
    let from = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.split_once('_')
                .and_then(|(ms, skip)| Some((ms.parse().ok()?, skip.parse().ok()?)))
                .ok_or_else(|| invalid("cursor", "cursor is not one this API returned"))?,
        ),
    };
    let page = api.queue.scheduled(from, limit).await?;
    let scheduled: Vec<_> = page
        .scheduled
        .iter()
        .map(|(job, due)| scheduled_json(job, *due))
        .collect();
    Ok(json(&serde_json::json!({
        "scheduled": scheduled,
        "total": page.total,
        "next_cursor": page.next.map(|(ms, skip)| format!("{ms}_{skip}")),
    }))
    .into_response())
}

/// `POST /scheduled/{id}/retry` (admin): the order's scheduled retry runs now.
pub async fn run_scheduled_now(id: String, api: Arc<Api>) -> Result<Response, ApiError> {
    let order_id = parse_id(&id)?;
    if !api.queue.run_scheduled_now(order_id).await? {
        return Err(ApiError::NotFound(format!(
            "order {order_id} is not waiting for a retry"
        )));
    }
    info!(api.log, "scheduled retry run now"; "order_id" => %order_id);
    let body = json(&serde_json::json!({"order_id": order_id, "status": Status::Queued}));
    Ok(with_status(body, StatusCode::ACCEPTED).into_response())
}

/// `POST /workers/pause` (admin): every worker process stops claiming; intake goes on.
pub async fn pause(api: Arc<Api>) -> Result<Response, ApiError> {
    let now = OffsetDateTime::now_utc();
    let at = api
        .queue
        .pause((now.unix_timestamp_nanos() / 1_000_000) as u64)
        .await?;
    info!(api.log, "claiming paused for every worker");
    Ok(
        json(&serde_json::json!({"claiming": "paused", "paused_at": rfc3339_ms(at)}))
            .into_response(),
    )
}

/// `POST /workers/resume` (admin).
pub async fn resume(api: Arc<Api>) -> Result<Response, ApiError> {
    api.queue.resume().await?;
    info!(api.log, "claiming resumed for every worker");
    Ok(json(&serde_json::json!({"claiming": "running", "paused_at": null})).into_response())
}

/// `GET /workers`: every registered worker process, as it last told of itself.
pub async fn workers(api: Arc<Api>) -> Result<Response, ApiError> {
    let (now_ms, workers) = api.queue.workers().await?;
    let lease_ms = api.lease.as_millis() as u64;
    let now_s = now_ms as i128 * 1_000_000;
    let shown: Vec<serde_json::Value> = workers
        .iter()
        .map(|w| {
            let info: serde_json::Value = w
                .info
                .as_deref()
                .and_then(|i| serde_json::from_str(i).ok())
                .unwrap_or_default();
            let beat_age = info["beat_ms"].as_u64().map(|b| now_ms.saturating_sub(b));
            let oldest_age = w.oldest_held.as_ref().map(|job| {
                let age = now_s - job.accepted_at.unix_timestamp_nanos();
                (age.max(0) / 1_000_000) as u64
            });
            let stuck = w.lease_left_ms.is_none() || beat_age.is_some_and(|a| a > lease_ms);
            serde_json::json!({
                "id": w.id,
                "host": info["host"],
                "pid": info["pid"],
                "started_at": info["started_at"],
                "heartbeat_age_ms": beat_age,
                "held": w.held,
                "oldest_held_age_ms": oldest_age,
                "stuck": stuck,
                "rss_bytes": info["rss_bytes"],
                "cpu_seconds": info["cpu_seconds"],
                "open_fds": info["open_fds"],
            })
        })
        .collect();
    Ok(json(&serde_json::json!({"lease_ms": lease_ms, "workers": shown})).into_response())
}

/// `GET /stats/history`: completions and dead letters per second over the last 10 minutes.
pub async fn history(api: Arc<Api>) -> Result<Response, ApiError> {
    Ok(json(&api.queue.history().await?).into_response())
}

/// `GET /orders/{id}/history`: the order with its timeline, errors, request id and
/// notification.
pub async fn order_history(id: String, api: Arc<Api>) -> Result<Response, ApiError> {
    let order_id = parse_id(&id)?;
    let not_found = || ApiError::NotFound(format!("no order {order_id}"));
    let (stored, traces) = tokio::try_join!(
        async { Ok::<_, ApiError>(api.store.history(order_id).await?) },
        async { Ok::<_, ApiError>(api.queue.order_traces(order_id).await?) }
    )?;
    let (order, request_id, mut errors, notified_at) = match stored {
        Some(h) => (h.order, h.request_id, h.errors, h.notified_at),
        // Not stored yet: as `GET /orders/{id}` finds it.
        None => {
            let order = find(&api, order_id).await?.ok_or_else(not_found)?;
            let request_id = traces.job.as_ref().and_then(|j| j.request_id.clone());
            (order, request_id, Vec::new(), None)
        }
    };
    // A retry waiting in Redis knows of a failed try that PostgreSQL has not been told of.
    if let Some(job) = &traces.job {
        if job.errors.len() > errors.len() {
            errors = job.errors.clone();
        }
    }
    let mut timeline = vec![("accepted", order.accepted_at)];
    if let Some(at) = order.processing_started_at {
        timeline.push(("processing", at));
    }
    match (order.status, order.completed_at, order.updated_at) {
        (Status::Completed, Some(at), _) => timeline.push(("completed", at)),
        (Status::Failed, _, Some(at)) => timeline.push(("failed", at)),
        (Status::Cancelled, _, Some(at)) => timeline.push(("cancelled", at)),
        _ => {}
    }
    if let Some(at) = traces
        .dead_letter_failed_at
        .as_deref()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    {
        timeline.push(("dead_lettered", at));
    }
    if let Some(at) = notified_at {
        timeline.push(("notified", at));
    }
    timeline.sort_by_key(|(_, at)| *at);
    let timeline: Vec<_> = timeline
        .iter()
        .map(|(event, at)| serde_json::json!({"event": event, "at": rfc3339(*at)}))
        .collect();
    Ok(json(&serde_json::json!({
        "order": order,
        "request_id": request_id,
        "errors": errors,
        "timeline": timeline,
        "notification": notified_at.map(|at| serde_json::json!({"sent_at": rfc3339(at)})),
        "dead_letter": traces.dead_letter_failed_at.is_some(),
        "retry_due_at": traces.retry_due_ms.and_then(rfc3339_ms),
    }))
    .into_response())
}
