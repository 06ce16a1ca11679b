//! The handlers: plain async functions from parsed input to a reply or an [`ApiError`]. The
//! router has checked the admin token of an admin operation before its handler runs.

use super::{Api, ApiError, MAX_BATCH};
use crate::events::Event;
use crate::order::{Job, NewOrder, Status};
use crate::queue::{Enqueued, Removal, Replay};
use crate::store::{CancelOutcome, Cursor, ListQuery, OrderView};
use bytes::Bytes;
use serde::Deserialize;
use slog::{info, warn};
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{json, with_header, with_status, Response};
use warp::Reply;

/// Default and largest page of `GET /orders`.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// `POST /orders`: validate, enqueue, 202. With an `Idempotency-Key`, the same key and body
/// within 24 h answer the first order's id and enqueue nothing; another body is a 409.
pub async fn create_order(
    body: Bytes,
    idempotency_key: Option<String>,
    request_id: String,
    api: Arc<Api>,
) -> Result<Response, ApiError> {
    let order = NewOrder::parse(&body)?;
    if let Some(key) = &idempotency_key {
        let printable = key.bytes().all(|b| b.is_ascii_graphic());
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !printable {
            return Err(ApiError::InvalidHeader(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
            )));
        }
    }
    // What the key remembers: the order id and the order as validated, so that the same order
    // sent with other spacing or key order still counts as the same body.
    let canonical = idempotency_key.as_ref().map(|_| order.canonical_json());
    let job = Job::accept(order, OffsetDateTime::now_utc(), Some(request_id.clone()));
    let replay = canonical.map(|body| Replay {
        order_id: job.order_id,
        body,
    });
    let idempotency = idempotency_key.as_deref().zip(replay.as_ref());
    let outcome = api
        .queue
        .enqueue(std::slice::from_ref(&job), idempotency)
        .await?;
    let order_id = match outcome {
        Enqueued::Accepted => {
            metrics::counter!(crate::stats::ACCEPTED).increment(1);
            info!(api.log, "order accepted"; "order_id" => %job.order_id, "request_id" => &request_id);
            job.order_id
        }
        Enqueued::QueueFull => return Err(ApiError::QueueFull),
        Enqueued::Seen(first) if Some(&first.body) == replay.as_ref().map(|r| &r.body) => {
            info!(api.log, "idempotent replay"; "order_id" => %first.order_id, "request_id" => &request_id);
            first.order_id
        }
        Enqueued::Seen(_) | Enqueued::SeenUnreadable => {
            return Err(ApiError::Conflict(
                "this Idempotency-Key was used with a different body".into(),
            ))
        }
    };
    Ok(accepted(order_id, request_id))
}

/// The 202 of an accepted order: its id and `queued`, its `Location` and the request's
/// `X-Request-Id`. Public for the ingest baseline, which must answer exactly this.
pub fn accepted(order_id: Uuid, request_id: String) -> Response {
    let body = json(&serde_json::json!({"order_id": order_id, "status": "queued"}));
    let location = format!("/orders/{order_id}");
    let reply = with_header(
        with_status(body, StatusCode::ACCEPTED),
        "location",
        location,
    );
    with_header(reply, super::REQUEST_ID, request_id).into_response()
}

/// `POST /orders/batch`: a JSON array of up to 1,000 orders; all valid and enqueued, or none.
pub async fn create_batch(
    body: Bytes,
    request_id: String,
    api: Arc<Api>,
) -> Result<Response, ApiError> {
    let orders = NewOrder::parse_batch(&body).map_err(|(index, e)| {
        let mut e = ApiError::from(e);
        if let (Some(i), ApiError::InvalidField { field, message }) = (index, &mut e) {
            *message = format!("order {i}: {message}");
            *field = format!("[{i}].{field}");
        } else if let (Some(i), ApiError::InvalidBody { message, field }) = (index, &mut e) {
            *message = format!("order {i}: {message}");
            *field = Some(match field.take() {
                Some(f) => format!("[{i}].{f}"),
                None => format!("[{i}]"),
            });
        }
        e
    })?;
    if orders.is_empty() || orders.len() > MAX_BATCH {
        return Err(ApiError::InvalidField {
            field: "orders".into(),
            message: format!("a batch holds 1 to {MAX_BATCH} orders"),
        });
    }
    let now = OffsetDateTime::now_utc();
    let jobs: Vec<Job> = orders
        .into_iter()
        .map(|o| Job::accept(o, now, Some(request_id.clone())))
        .collect();
    let outcome = api.queue.enqueue(&jobs, None).await?;
    if outcome == Enqueued::QueueFull {
        return Err(ApiError::QueueFull);
    }
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.order_id).collect();
    metrics::counter!(crate::stats::ACCEPTED).increment(ids.len() as u64);
    for id in &ids {
        info!(api.log, "order accepted"; "order_id" => %id, "request_id" => &request_id);
    }
    let body = json(&serde_json::json!({"order_ids": ids, "status": "queued"}));
    let reply = with_status(body, StatusCode::ACCEPTED);
    Ok(with_header(reply, super::REQUEST_ID, request_id).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    customer_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        field: field.into(),
        message: message.into(),
    }
}

/// `GET /orders?status=&customer_id=&limit=&cursor=`: newest first, keyset pagination.
pub async fn list_orders(query: String, api: Arc<Api>) -> Result<Response, ApiError> {
    let params: ListParams = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::InvalidQuery(format!("invalid query string: {e}")))?;
    let status = match params.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            invalid(
                "status",
                "status must be one of queued, processing, completed, failed, cancelled",
            )
        })?),
    };
    let limit = parse_limit(params.limit.as_deref())?;
    let after = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            Cursor::decode(c)
                .ok_or_else(|| invalid("cursor", "cursor is not one this API returned"))?,
        ),
    };
    // A customer id with a control character can match no stored order (they are refused on
    // the way in), and PostgreSQL would refuse a NUL in the query: answer an empty page.
    if params
        .customer_id
        .as_deref()
        .is_some_and(|c| c.chars().any(char::is_control))
    {
        return Ok(json(&Page::default()).into_response());
    }
    let query = ListQuery {
        status,
        customer_id: params.customer_id,
        limit,
        after,
    };
    let (orders, next) = api.store.list(&query).await?;
    let page = Page {
        orders,
        next_cursor: next.map(|c| c.encode()),
    };
    Ok(json(&page).into_response())
}

/// A page of `GET /orders`. Serialized as it is, not through `serde_json::json!`, which turned
/// each total into a float (`2.50` came out as `2.5`, `0.00` as `0.0`).
#[derive(Default, serde::Serialize)]
struct Page {
    orders: Vec<OrderView>,
    next_cursor: Option<String>,
}

/// A page size: 1 to 500, 50 when absent.
fn parse_limit(limit: Option<&str>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| invalid("limit", format!("limit must be 1 to {MAX_LIMIT}"))),
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(id).map_err(|_| ApiError::NotFound(format!("no order {id}")))
}

/// Finds an order in PostgreSQL or, while no worker has stored it yet, in Redis. PostgreSQL is
/// asked again after a Redis miss: a worker may have stored and acknowledged it in between.
async fn find(api: &Api, order_id: Uuid) -> Result<Option<OrderView>, ApiError> {
    if let Some(order) = api.store.get(order_id).await? {
        return Ok(Some(order));
    }
    if let Some(job) = api.queue.pending(order_id).await? {
        return Ok(Some(OrderView::queued(job)));
    }
    Ok(api.store.get(order_id).await?)
}

/// `GET /orders/{id}`.
pub async fn get_order(id: String, api: Arc<Api>) -> Result<Response, ApiError> {
    let order_id = parse_id(&id)?;
    match find(&api, order_id).await? {
        Some(order) => Ok(json(&order).into_response()),
        None => Err(ApiError::NotFound(format!("no order {order_id}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusChange {
    status: String,
}

/// `PUT /orders/{id}/status` with `{"status": "cancelled"}`.
pub async fn set_status(
    id: String,
    body: Bytes,
    request_id: String,
    api: Arc<Api>,
) -> Result<Response, ApiError> {
    let order_id = parse_id(&id)?;
    let change: StatusChange = crate::order::from_json_object(&body)?;
    match Status::parse(&change.status) {
        Some(Status::Cancelled) => {}
        Some(other) => {
            return Err(ApiError::Conflict(format!(
                "an order cannot be set to {other} through the API; only \"cancelled\""
            )))
        }
        None => return Err(invalid("status", "status must be \"cancelled\"")),
    }
    let queued = api.queue.pending(order_id).await?;
    let outcome = api.store.cancel(order_id, queued.as_ref()).await?;
    match outcome {
        CancelOutcome::NotFound => Err(ApiError::NotFound(format!("no order {order_id}"))),
        CancelOutcome::Final(status) => Err(ApiError::Conflict(format!(
            "order {order_id} is already {status}"
        ))),
        CancelOutcome::Cancelled => {
            info!(api.log, "order cancelled"; "order_id" => %order_id, "request_id" => &request_id);
            let order = api.store.get(order_id).await?;
            let Some(order) = order else {
                return Err(ApiError::NotFound(format!("no order {order_id}")));
            };
            let event = Event::of_order(&order, &request_id).to_json();
            if let Err(e) = api.queue.publish(&api.cancelled_channel, &event).await {
                warn!(api.log, "cancellation not published"; "channel" => &api.cancelled_channel, "order_id" => %order_id, "error" => %e);
            }
            Ok(with_header(json(&order), super::REQUEST_ID, request_id).into_response())
        }
    }
}

/// `DELETE /orders/{id}` (admin): removes the order and its items.
pub async fn delete_order(id: String, api: Arc<Api>) -> Result<Response, ApiError> {
    let order_id = parse_id(&id)?;
    let removal = api.queue.remove_queued(order_id).await?;
    let from_store = api.store.delete(order_id).await?;
    match (removal, from_store) {
        (Removal::Removed, _) | (_, true) => {}
        // Claimed but not stored yet: deleting now would let the worker store it afterwards.
        (Removal::HeldByWorker, false) => {
            return Err(ApiError::Conflict(format!(
                "order {order_id} is being taken by a worker; retry in a moment"
            )))
        }
        (Removal::NotQueued, false) => {
            return Err(ApiError::NotFound(format!("no order {order_id}")))
        }
    }
    info!(api.log, "order deleted"; "order_id" => %order_id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /dead-letters?limit=` (admin): the newest dead letters with their error history.
pub async fn list_dead_letters(query: String, api: Arc<Api>) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        limit: Option<String>,
    }
    let params: Params = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::InvalidQuery(format!("invalid query string: {e}")))?;
    let limit = parse_limit(params.limit.as_deref())?;
    let entries = api.queue.dead_letters(limit as usize).await?;
    let total = api.queue.dead_letter_count().await?;
    let entries: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|_| serde_json::json!({"raw": e})))
        .collect();
    Ok(json(&serde_json::json!({"dead_letters": entries, "total": total})).into_response())
}

/// Dead letters searched for one order id by the retry route.
const DEAD_LETTER_SCAN: usize = 100_000;

/// `POST /dead-letters/{id}/retry` (admin): puts a dead-lettered order back on the queue with its
/// tries reset (its error history is kept).
pub async fn retry_dead_letter(id: String, api: Arc<Api>) -> Result<Response, ApiError> {
    let order_id = parse_id(&id)?;
    let not_found = || ApiError::NotFound(format!("no dead letter for order {order_id}"));
    let entries = api.queue.dead_letters(DEAD_LETTER_SCAN).await?;
    let wanted = order_id.to_string();
    let (entry, payload) = entries
        .iter()
        .find_map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).ok()?;
            (v["order_id"].as_str()? == wanted)
                .then(|| (e.clone(), v["payload"].as_str().unwrap_or("").to_string()))
        })
        .ok_or_else(not_found)?;
    let mut job = Job::parse(payload.as_bytes())
        .map_err(|e| ApiError::Conflict(format!("this dead letter can never succeed: {e}")))?;
    job.failures = 0;
    if !api.store.requeue_failed(order_id).await? {
        return Err(ApiError::Conflict(format!(
            "order {order_id} is no longer failed"
        )));
    }
    if !api.queue.revive(&entry, &job).await? {
        return Err(not_found());
    }
    info!(api.log, "dead letter retried"; "order_id" => %order_id);
    let body = json(&serde_json::json!({"order_id": order_id, "status": "queued"}));
    Ok(with_status(body, StatusCode::ACCEPTED).into_response())
}

/// `GET /stats`: order metrics for people and scripts.
pub async fn stats(api: Arc<Api>) -> Result<Response, ApiError> {
    let stats = crate::stats::collect(&api.queue, &api.store).await?;
    Ok(json(&stats).into_response())
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(api: Arc<Api>) -> Result<Response, ApiError> {
    let text = crate::stats::render(&api.queue, &api.store).await?;
    Ok(with_header(text, "content-type", "text/plain; version=0.0.4").into_response())
}

/// `GET /readyz`: Redis and PostgreSQL answer and the migrations are applied.
pub async fn ready(api: Arc<Api>) -> Response {
    let redis = match api.queue.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let postgres = match api.store.ready().await {
        Ok(true) => "ok".to_string(),
        Ok(false) => "migrations not applied".to_string(),
        Err(e) => e.to_string(),
    };
    let configured = api
        .roles
        .configured
        .get()
        .copied()
        .unwrap_or(crate::Roles::ALL);
    let role = |on: bool, flag: &std::sync::atomic::AtomicBool| match (
        on,
        flag.load(std::sync::atomic::Ordering::Relaxed),
    ) {
        (false, _) => "off",
        (true, true) => "running",
        (true, false) => "stopped",
    };
    let worker = role(configured.worker, &api.roles.worker);
    let notifier = role(configured.notifier, &api.roles.notifier);
    let ready = redis == "ok" && postgres == "ok" && worker != "stopped" && notifier != "stopped";
    let body = json(&serde_json::json!({
        "status": if ready { "ready" } else { "unavailable" },
        "redis": redis,
        "postgres": postgres,
        "roles": {"api": "running", "worker": worker, "notifier": notifier},
    }));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    with_status(body, status).into_response()
}
