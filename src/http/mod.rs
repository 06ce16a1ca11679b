//! The HTTP API: routes built from small filters, plain async handlers, and one `recover` that
//! turns every rejection into the one JSON error shape.

mod error;
mod handlers;
mod openapi;

pub use error::ApiError;

use crate::queue::Queue;
use crate::store::Store;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use slog::{debug, info, warn, Logger};
use std::convert::Infallible;
use std::sync::Arc;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// Largest body of `POST /orders` and `PUT /orders/{id}/status`.
pub const MAX_BODY: u64 = 64 * 1024;
/// Largest body of `POST /orders/batch` (1,000 orders).
pub const MAX_BATCH_BODY: u64 = 4 * 1024 * 1024;
/// Most orders in one batch.
pub const MAX_BATCH: usize = 1000;

/// What the handlers share.
pub struct Api {
    pub queue: Queue,
    pub store: Store,
    pub admin_token: Option<String>,
    /// The roles of this process and whether they run.
    pub roles: Arc<crate::RoleStatus>,
    pub log: Logger,
}

/// Header that names a request in every log line, response and event about it.
pub const REQUEST_ID: &str = "x-request-id";

/// The caller's `X-Request-Id` when it is 1–128 visible ASCII characters, or a new one.
fn request_id() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    callers_request_id().map(|id: Option<String>| id.unwrap_or_else(new_request_id))
}

/// The caller's `X-Request-Id` when it is 1–128 visible ASCII characters.
fn callers_request_id() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::value(REQUEST_ID)
        .map(|v: warp::http::HeaderValue| valid_request_id(&v))
        .or(warp::any().map(|| None))
        .unify()
}

fn new_request_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn valid_request_id(value: &warp::http::HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic);
    ok.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// Every route of the API, with errors recovered into JSON, each response carrying its
/// `X-Request-Id`, timed into the HTTP histogram, and logged.
pub fn routes(
    api: Arc<Api>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let log = api.log.clone();
    let inner = api_routes(api);
    warp::any()
        .map(std::time::Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(callers_request_id())
        .and(inner)
        .map(
            move |start: std::time::Instant,
                  method: warp::http::Method,
                  path: warp::path::FullPath,
                  id: Option<String>,
                  reply| {
                let mut response = warp::Reply::into_response(reply);
                // Handlers that log set the id they used; the others get the caller's or a new one.
                let headers = response.headers_mut();
                if !headers.contains_key(REQUEST_ID) {
                    let id = id.unwrap_or_else(new_request_id);
                    if let Ok(v) = warp::http::HeaderValue::from_str(&id) {
                        headers.insert(REQUEST_ID, v);
                    }
                }
                let status = response.status().as_u16();
                let route = route_of(path.as_str());
                if status == 405 {
                    if let Some(allow) = allowed_methods(route) {
                        let allow = warp::http::HeaderValue::from_static(allow);
                        response.headers_mut().insert(warp::http::header::ALLOW, allow);
                    }
                }
                let elapsed = start.elapsed();
                record_duration(route, method_label(&method), status_label(response.status()), elapsed);
                let id = response.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                let line = (method.as_str(), path.as_str(), status, elapsed.as_micros() as u64);
                if status >= 400 {
                    info!(log, "request"; "method" => line.0, "path" => line.1, "status" => line.2, "us" => line.3, "request_id" => id);
                } else {
                    debug!(log, "request"; "method" => line.0, "path" => line.1, "status" => line.2, "us" => line.3, "request_id" => id);
                }
                response
            },
        )
}

thread_local! {
    /// The HTTP histogram's handles by (route, method, status), per runtime thread: looking the
    /// series up in the registry by its three labels on every request was 5% of the API's CPU
    /// under load (perf). The labels are all static, so the map stays small.
    static HTTP_HISTOGRAMS: std::cell::RefCell<
        std::collections::HashMap<(&'static str, &'static str, &'static str), metrics::Histogram>,
    > = Default::default();
}

/// Records a request's duration in `http_request_duration_seconds{route,method,status}`.
fn record_duration(
    route: &'static str,
    method: &'static str,
    status: &'static str,
    elapsed: std::time::Duration,
) {
    HTTP_HISTOGRAMS.with(|histograms| {
        histograms
            .borrow_mut()
            .entry((route, method, status))
            .or_insert_with(|| {
                metrics::histogram!(crate::stats::HTTP_DURATION,
                    "route" => route, "method" => method, "status" => status)
            })
            .record(elapsed.as_secs_f64());
    });
}

/// The route template of a path, for metric labels (ids would make one series per order).
fn route_of(path: &str) -> &'static str {
    let mut segments = path.trim_matches('/').split('/');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some("orders"), None, _, _) => "/orders",
        (Some("orders"), Some("batch"), None, _) => "/orders/batch",
        (Some("orders"), Some(_), None, _) => "/orders/{id}",
        (Some("orders"), Some(_), Some("status"), None) => "/orders/{id}/status",
        (Some("dead-letters"), None, _, _) => "/dead-letters",
        (Some("dead-letters"), Some(_), Some("retry"), None) => "/dead-letters/{id}/retry",
        (Some("healthz"), None, _, _) => "/healthz",
        (Some("readyz"), None, _, _) => "/readyz",
        (Some("stats"), None, _, _) => "/stats",
        (Some("metrics"), None, _, _) => "/metrics",
        (Some("openapi.json"), None, _, _) => "/openapi.json",
        _ => "other",
    }
}

/// The methods a route answers, for the `Allow` header of a 405.
fn allowed_methods(route: &str) -> Option<&'static str> {
    Some(match route {
        "/orders" => "GET, POST",
        "/orders/batch" => "POST",
        "/orders/{id}" => "GET, DELETE",
        "/orders/{id}/status" => "PUT",
        "/dead-letters" => "GET",
        "/dead-letters/{id}/retry" => "POST",
        "/healthz" | "/readyz" | "/stats" | "/metrics" | "/openapi.json" => "GET",
        _ => return None,
    })
}

/// The `{id}` of `/orders/{id}`: any one segment but `batch`, which is the batch route's (so
/// `GET /orders/batch` is a 405, not an unknown order).
fn order_id() -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::path::param::<String>()
        .and(warp::path::end())
        .and_then(|id: String| async move {
            if id == "batch" {
                Err(warp::reject::not_found())
            } else {
                Ok(id)
            }
        })
}

/// A method as a static label (no allocation per request).
fn method_label(method: &warp::http::Method) -> &'static str {
    use warp::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A status as a static label (no allocation per request).
fn status_label(status: warp::http::StatusCode) -> &'static str {
    status
        .canonical_reason()
        .map_or("other", |_| match status.as_u16() {
            200 => "200",
            202 => "202",
            204 => "204",
            400 => "400",
            401 => "401",
            403 => "403",
            404 => "404",
            405 => "405",
            409 => "409",
            411 => "411",
            413 => "413",
            415 => "415",
            422 => "422",
            429 => "429",
            500 => "500",
            503 => "503",
            _ => "other",
        })
}

fn api_routes(
    api: Arc<Api>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    let log = api.log.clone();
    let with_api = warp::any().map(move || api.clone());

    let create = warp::path!("orders")
        .and(warp::post())
        .and(json_body(MAX_BODY))
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(request_id())
        .and(with_api.clone())
        .and_then(handlers::create_order);
    let batch = warp::path!("orders" / "batch")
        .and(warp::post())
        .and(json_body(MAX_BATCH_BODY))
        .and(request_id())
        .and(with_api.clone())
        .and_then(handlers::create_batch);
    let list = warp::path!("orders")
        .and(warp::get())
        .and(raw_query())
        .and(with_api.clone())
        .and_then(handlers::list_orders);
    let get = warp::path("orders")
        .and(order_id())
        .and(warp::get())
        .and(with_api.clone())
        .and_then(handlers::get_order);
    let cancel = warp::path!("orders" / String / "status")
        .and(warp::put())
        .and(json_body(MAX_BODY))
        .and(request_id())
        .and(with_api.clone())
        .and_then(handlers::set_status);
    let delete = warp::path("orders")
        .and(order_id())
        .and(warp::delete())
        .and(warp::header::optional::<String>("authorization"))
        .and(with_api.clone())
        .and_then(handlers::delete_order);
    let dead_letters = warp::path!("dead-letters")
        .and(warp::get())
        .and(raw_query())
        .and(warp::header::optional::<String>("authorization"))
        .and(with_api.clone())
        .and_then(handlers::list_dead_letters);
    let retry_dead_letter = warp::path!("dead-letters" / String / "retry")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(with_api.clone())
        .and_then(handlers::retry_dead_letter);
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_api.clone())
        .and_then(handlers::ready);
    let stats = warp::path!("stats")
        .and(warp::get())
        .and(with_api.clone())
        .and_then(handlers::stats);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_api.clone())
        .and_then(handlers::metrics);
    let openapi = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| warp::reply::with_header(openapi::DOCUMENT, "content-type", "application/json"));

    create
        .or(batch)
        .or(list)
        .or(get)
        .or(cancel)
        .or(delete)
        .or(dead_letters)
        .or(retry_dead_letter)
        .or(healthz)
        .or(readyz)
        .or(stats)
        .or(metrics)
        .or(openapi)
        .recover(move |rejection| {
            let log = log.clone();
            async move { Ok::<_, Infallible>(recover(rejection, &log)) }
        })
}

/// The query string, empty when there is none.
fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// A JSON request body of at most `limit` bytes: 415 for another content type, 413 when larger
/// (whether or not a content-length says so up front).
fn json_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and_then(
            move |kind: Option<String>, length: Option<u64>| async move {
                let json = kind.as_deref().is_some_and(|k| {
                    k.split(';')
                        .next()
                        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
                });
                if !json {
                    return Err(warp::reject::custom(ApiError::UnsupportedMediaType));
                }
                Ok(length.is_some_and(|n| n > limit))
            },
        )
        .and(warp::body::stream())
        .and_then(move |too_large: bool, stream| read_limited(stream, limit, too_large))
}

/// Reads a body stream, refusing it as soon as it grows past `limit`.
async fn read_limited<B: Buf>(
    stream: impl futures_util::Stream<Item = Result<B, warp::Error>>,
    limit: u64,
    too_large: bool,
) -> Result<Bytes, Rejection> {
    let mut stream = std::pin::pin!(stream);
    if too_large {
        drain(stream.as_mut()).await;
        return Err(warp::reject::custom(ApiError::PayloadTooLarge(limit)));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| {
            warp::reject::custom(ApiError::MalformedJson(format!(
                "could not read the body: {e}"
            )))
        })?;
        if (body.len() + chunk.remaining()) as u64 > limit {
            drain(stream.as_mut()).await;
            return Err(warp::reject::custom(ApiError::PayloadTooLarge(limit)));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

/// Reads and drops what is left of a refused body, for a bounded time and size, so the client
/// finishes sending and reads the 413 instead of a reset connection.
async fn drain<B: Buf>(
    mut stream: std::pin::Pin<&mut impl futures_util::Stream<Item = Result<B, warp::Error>>>,
) {
    let mut drained: usize = 0;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(chunk)) = stream.next().await {
            drained += chunk.remaining();
            if drained > 16 * 1024 * 1024 {
                break;
            }
        }
    })
    .await;
}

/// Turns any rejection into the JSON error shape.
fn recover(rejection: Rejection, log: &Logger) -> warp::reply::Response {
    let error = if let Some(e) = rejection.find::<ApiError>() {
        match e {
            ApiError::Unavailable(cause) => {
                warn!(log, "request failed: backing service unavailable"; "error" => cause);
                ApiError::Unavailable(cause.clone())
            }
            other => other.clone(),
        }
    } else if rejection.is_not_found() {
        ApiError::NotFound("no such route".into())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge(MAX_BODY)
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::UnsupportedMediaType
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::InvalidHeader(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::InvalidQuery(e.to_string())
    } else {
        warn!(log, "unhandled rejection"; "rejection" => ?rejection);
        ApiError::InvalidQuery(format!("bad request: {rejection:?}"))
    };
    metrics::counter!(crate::stats::REJECTED, "reason" => error.status_and_code().1).increment(1);
    error.into_response()
}

/// Serves the API on `listener` until `shutdown`, then finishes the requests under way.
pub async fn serve(listener: tokio::net::TcpListener, api: Arc<Api>, shutdown: crate::Shutdown) {
    warp::serve(routes(api))
        .incoming(listener)
        .graceful(async move { shutdown.cancelled().await })
        .run()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_labels_are_route_templates() {
        assert_eq!(route_of("/orders"), "/orders");
        assert_eq!(route_of("/orders/"), "/orders");
        assert_eq!(route_of("/orders/batch"), "/orders/batch");
        assert_eq!(route_of("/orders/0193-abc"), "/orders/{id}");
        assert_eq!(route_of("/orders/x/status"), "/orders/{id}/status");
        assert_eq!(route_of("/orders/x/status/y"), "other");
        assert_eq!(
            route_of("/dead-letters/x/retry"),
            "/dead-letters/{id}/retry"
        );
        assert_eq!(route_of("/nope"), "other");
        assert_eq!(status_label(warp::http::StatusCode::ACCEPTED), "202");
        assert_eq!(method_label(&warp::http::Method::PUT), "PUT");
    }
}
