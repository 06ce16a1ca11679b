//! The handlers: plain async functions from parsed input to a reply or an [`ApiError`]. The
//! router has checked the admin token of an admin operation before its handler runs.

use super::Body;
use super::{Api, ApiError, MAX_BATCH};
use crate::events::Event;
use crate::order::{Job, NewOrder, Status};
use crate::queue::{Enqueued, Removal, Replay};
use crate::store::{CancelOutcome, Cursor, ListQuery, OrderView};
use crate::trace;
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
/// within 24 h answer the first order's id with its current status and enqueue nothing; another
/// body is a 409; the order having been deleted since, a 410.
pub async fn create_order(
    incoming: trace::Incoming,
    body: Body,
    idempotency_key: Option<String>,
    request_id: String,
    api: Arc<Api>,
) -> Result<Response, ApiError> {
    let span = incoming.request("POST /orders", "/orders");
    let reply = place_order(&span, body, idempotency_key, request_id, api).await;
    end_request(span, &reply);
    reply
}

/// Ends a request span with the status its reply answers.
fn end_request(mut span: trace::Span, reply: &Result<Response, ApiError>) {
    let status = reply
        .as_ref()
        .map_or_else(|e| e.status_and_code().0, |r| r.status());
    span.answered(status.as_u16());
    span.end();
}

/// `POST /orders` under its request span.
async fn place_order(
    span: &trace::Span,
    body: Body,
    idempotency_key: Option<String>,
    request_id: String,
    api: Arc<Api>,
) -> Result<Response, ApiError> {
    let order = NewOrder::parse(&body)?;
    let key = checked_idempotency_key(idempotency_key)?;
    let canonical = key.as_ref().map(|_| order.canonical_json());
    let enqueue = span.child("enqueue", trace::SpanKind::Producer);
    let job = Job::accept(order, OffsetDateTime::now_utc(), Some(request_id.clone()))
        .traced(enqueue.carrier());
    let jobs = std::slice::from_ref(&job);
    let enqueued = enqueue_once(&api, jobs, key.as_deref(), canonical).await;
    enqueue.ended(&enqueued);
    let Some(first) = enqueued? else {
        metrics::counter!(crate::stats::ACCEPTED).increment(1);
        info!(api.log, "order accepted"; "order_id" => %job.order_id, "request_id" => &request_id,
            trace::log_kv(&job));
        return Ok(accepted(job.order_id, request_id));
    };
    // `enqueue_once` saw that the record names as many orders as this request: one.
    let (order_id, status) = replayed(&api, first, &request_id).await?[0];
    Ok(order_reply(
        order_id,
        status.unwrap_or(Status::Queued),
        request_id,
    ))
}

/// The 202 of an accepted order: its id and `queued`, its `Location` and the request's
/// `X-Request-Id`. Public for the ingest baseline, which must answer exactly this.
pub fn accepted(order_id: Uuid, request_id: String) -> Response {
    order_reply(order_id, Status::Queued, request_id)
}

/// The 202 of `POST /orders`: the order's id and `status`, its `Location`, the `X-Request-Id`.
fn order_reply(order_id: Uuid, status: Status, request_id: String) -> Response {
    let body = json(&serde_json::json!({"order_id": order_id, "status": status}));
    let location = format!("/orders/{order_id}");
    let reply = with_header(
        with_status(body, StatusCode::ACCEPTED),
        "location",
        location,
    );
    with_header(reply, super::REQUEST_ID, request_id).into_response()
}

/// `POST /orders/batch`: a JSON array of up to 1,000 orders; all valid and enqueued, or none.
/// An `Idempotency-Key` covers the whole batch, under the rules of `POST /orders`; a replay
/// adds `statuses`, the current status of each order (`deleted` for one an admin deleted), and
/// `status` is the one they share or `mixed`; every order deleted, it is a 410.
pub async fn create_batch(
    incoming: trace::Incoming,
    body: Body,
    idempotency_key: Option<String>,
    request_id: String,
    api: Arc<Api>,
) -> Result<Response, ApiError> {
    let span = incoming.request("POST /orders/batch", "/orders/batch");
    let reply = place_batch(&span, body, idempotency_key, request_id, api).await;
    end_request(span, &reply);
    reply
}

/// `POST /orders/batch` under its request span.
async fn place_batch(
    span: &trace::Span,
    body: Body,
    idempotency_key: Option<String>,
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
    let key = checked_idempotency_key(idempotency_key)?;
    // The batch as validated: the array of each order's canonical JSON. Plain strings and
    // numbers: serialising cannot fail.
    let canonical = key
        .as_ref()
        .map(|_| serde_json::to_string(&orders).unwrap_or_default());
    let now = OffsetDateTime::now_utc();
    let enqueue = span.child("enqueue", trace::SpanKind::Producer);
    let carrier = enqueue.carrier();
    let jobs: Vec<Job> = orders
        .into_iter()
        .map(|o| Job::accept(o, now, Some(request_id.clone())).traced(carrier.clone()))
        .collect();
    let enqueued = enqueue_once(&api, &jobs, key.as_deref(), canonical).await;
    enqueue.ended(&enqueued);
    let body = match enqueued? {
        None => {
            let ids: Vec<Uuid> = jobs.iter().map(|j| j.order_id).collect();
            metrics::counter!(crate::stats::ACCEPTED).increment(ids.len() as u64);
            for job in &jobs {
                info!(api.log, "order accepted"; "order_id" => %job.order_id,
                    "request_id" => &request_id, trace::log_kv(job));
            }
            serde_json::json!({"order_ids": ids, "status": Status::Queued})
        }
        Some(first) => {
            let orders = replayed(&api, first, &request_id).await?;
            let ids: Vec<Uuid> = orders.iter().map(|(id, _)| *id).collect();
            let statuses: Vec<&str> = orders
                .iter()
                .map(|(_, s)| s.map_or("deleted", Status::as_str))
                .collect();
            let shared = statuses
                .first()
                .filter(|s| statuses.iter().all(|t| t == *s));
            let status = shared.copied().unwrap_or("mixed");
            serde_json::json!({"order_ids": ids, "status": status, "statuses": statuses})
        }
    };
    let reply = with_status(json(&body), StatusCode::ACCEPTED);
    Ok(with_header(reply, super::REQUEST_ID, request_id).into_response())
}

/// The `Idempotency-Key` header, when sent: 1 to 255 printable ASCII characters, else a 400.
fn checked_idempotency_key(key: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(key) = key else { return Ok(None) };
    let printable = key.bytes().all(|b| b.is_ascii_graphic());
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !printable {
        return Err(ApiError::InvalidHeader(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )));
    }
    Ok(Some(key))
}

/// Enqueues `jobs`; with an idempotency key, remembers their ids and `canonical` (the request
/// as validated) under it in the same script call. `None`: accepted now. `Some(ids)`: the key
/// was used before with this same request, which made these orders; nothing was enqueued. The
/// key used with another request (or on the other route) is a 409.
async fn enqueue_once(
    api: &Api,
    jobs: &[Job],
    key: Option<&str>,
    canonical: Option<String>,
) -> Result<Option<Vec<Uuid>>, ApiError> {
    let replay = canonical.map(|body| Replay {
        order_ids: jobs.iter().map(|j| j.order_id).collect(),
        body,
    });
    match api.queue.enqueue(jobs, key.zip(replay.as_ref())).await? {
        Enqueued::Accepted => Ok(None),
        Enqueued::QueueFull => Err(ApiError::QueueFull),
        Enqueued::Seen(first)
            if replay.as_ref().is_some_and(|r| {
                r.body == first.body && r.order_ids.len() == first.order_ids.len()
            }) =>
        {
            Ok(Some(first.order_ids))
        }
        Enqueued::Seen(_) | Enqueued::SeenUnreadable => Err(ApiError::Conflict(
            "this Idempotency-Key was used with a different body".into(),
        )),
    }
}

/// The orders an idempotent replay names, each with its current status (`None`: deleted); a
/// 410 when none of them is left.
async fn replayed(
    api: &Api,
    order_ids: Vec<Uuid>,
    request_id: &str,
) -> Result<Vec<(Uuid, Option<Status>)>, ApiError> {
    let statuses = current_statuses(api, &order_ids).await?;
    for id in &order_ids {
        info!(api.log, "idempotent replay"; "order_id" => %id, "request_id" => request_id);
    }
    if statuses.iter().all(Option::is_none) {
        return Err(ApiError::Gone(
            "the orders this Idempotency-Key made have been deleted".into(),
        ));
    }
    Ok(order_ids.into_iter().zip(statuses).collect())
}

/// The current status of each of these accepted orders, `None` for one that is gone: stored in
/// PostgreSQL, else `queued` while in the pending hash (which holds every accepted order until
/// a worker has stored it), else stored since (PostgreSQL is asked again, as [`find`] does).
/// An accepted order in neither place was deleted by an admin: no tombstone is needed.
async fn current_statuses(api: &Api, ids: &[Uuid]) -> Result<Vec<Option<Status>>, ApiError> {
    let mut known = api.store.statuses_of(ids).await?;
    let missing: Vec<Uuid> = ids
        .iter()
        .filter(|id| !known.contains_key(id))
        .copied()
        .collect();
    if !missing.is_empty() {
        let pending = api.queue.pending_among(&missing).await?;
        let mut unseen = Vec::new();
        for (id, pending) in missing.into_iter().zip(pending) {
            if pending {
                known.insert(id, Status::Queued);
            } else {
                unseen.push(id);
            }
        }
        if !unseen.is_empty() {
            known.extend(api.store.statuses_of(&unseen).await?);
        }
    }
    Ok(ids.iter().map(|id| known.get(id).copied()).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    customer_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

pub(super) fn invalid(field: &str, message: impl Into<String>) -> ApiError {
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
pub(super) fn parse_limit(limit: Option<&str>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| invalid("limit", format!("limit must be 1 to {MAX_LIMIT}"))),
    }
}

pub(super) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(id).map_err(|_| ApiError::NotFound(format!("no order {id}")))
}

/// Finds an order in PostgreSQL or, while no worker has stored it yet, in Redis. PostgreSQL is
/// asked again after a Redis miss: a worker may have stored and acknowledged it in between.
pub(super) async fn find(api: &Api, order_id: Uuid) -> Result<Option<OrderView>, ApiError> {
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
    body: Body,
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
            if let Err(e) = api.queue.publish_event(Status::Cancelled, &event).await {
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

/// `GET /readyz`: Redis and PostgreSQL answer, the migrations are applied and PostgreSQL takes
/// writes.
pub async fn ready(api: Arc<Api>) -> Response {
    // The probe, not a bare PING: a Redis that answers but refuses a permission, or a replica,
    // cannot serve the roles either.
    let redis = match api.queue.probe(&api.probe).await {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let postgres = api.store.ready().await.to_string();
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
    // The notifier's flag is set only while its reads of the event stream work.
    let notifier = match role(configured.notifier, &api.roles.notifier) {
        "stopped" => "not reading events",
        other => other,
    };
    let ready = redis == "ok"
        && postgres == "ok"
        && worker != "stopped"
        && notifier != "not reading events";
    // Paused by an operator is not unready: the process does what it was told.
    let claiming = match api.queue.paused().await {
        Ok(true) => "paused",
        Ok(false) => "running",
        Err(_) => "unknown",
    };
    let body = json(&serde_json::json!({
        "status": if ready { "ready" } else { "unavailable" },
        "redis": redis,
        "postgres": postgres,
        "roles": {"api": "running", "worker": worker, "notifier": notifier},
        "claiming": claiming,
    }));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    with_status(body, status).into_response()
}
