//! What every response goes through on its way out: its `X-Request-Id`, an `Allow` on a 405,
//! its duration in the HTTP histogram by route template, method and status, and a log line.

use super::request_id::{callers_request_id, new_request_id, REQUEST_ID};
use super::routes::resolve;
use slog::{debug, info, Logger};
use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};
use warp::http::{header::ALLOW, HeaderValue, Method, StatusCode};
use warp::path::FullPath;
use warp::reply::Response;
use warp::Filter;

/// `inner`, each response carrying its `X-Request-Id`, timed into the HTTP histogram, and logged.
pub(super) fn logged<F>(
    inner: F,
    log: Logger,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(callers_request_id())
        .and(inner)
        .map(
            move |start: Instant,
                  method: Method,
                  path: FullPath,
                  id: Option<String>,
                  response: Response| {
                finish(&log, start, &method, path.as_str(), id, response)
            },
        )
}

fn finish(
    log: &Logger,
    start: Instant,
    method: &Method,
    path: &str,
    id: Option<String>,
    mut response: Response,
) -> Response {
    // Handlers that log set the id they used; the others get the caller's or a new one.
    let headers = response.headers_mut();
    if !headers.contains_key(REQUEST_ID) {
        let id = id.unwrap_or_else(new_request_id);
        if let Ok(v) = HeaderValue::from_str(&id) {
            headers.insert(REQUEST_ID, v);
        }
    }
    let status = response.status().as_u16();
    let route = resolve(path);
    if status == 405 {
        if let Some(allow) = route.and_then(|r| r.allow()) {
            response.headers_mut().insert(ALLOW, allow);
        }
    }
    let elapsed = start.elapsed();
    let template = route.map_or("other", |r| r.template);
    record_duration(
        template,
        method_label(method),
        status_label(response.status()),
        elapsed,
    );
    let id = response
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let line = (method.as_str(), path, status, elapsed.as_micros() as u64);
    if status >= 400 {
        info!(log, "request"; "method" => line.0, "path" => line.1, "status" => line.2, "us" => line.3, "request_id" => id);
    } else {
        debug!(log, "request"; "method" => line.0, "path" => line.1, "status" => line.2, "us" => line.3, "request_id" => id);
    }
    response
}

type Labels = (&'static str, &'static str, &'static str);

thread_local! {
    /// The HTTP histogram's handles by (route, method, status), per runtime thread, so a request
    /// does not look its series up in the registry by three labels. The labels are all static,
    /// so the map stays small.
    static HTTP_HISTOGRAMS: RefCell<HashMap<Labels, metrics::Histogram>> = Default::default();
}

/// Records a request's duration in `http_request_duration_seconds{route,method,status}`.
fn record_duration(
    route: &'static str,
    method: &'static str,
    status: &'static str,
    elapsed: Duration,
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

/// A method as a static label (no allocation per request).
fn method_label(method: &Method) -> &'static str {
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
fn status_label(status: StatusCode) -> &'static str {
    status
        .canonical_reason()
        .map_or("other", |_| match status.as_u16() {
            200 => "200",
            202 => "202",
            204 => "204",
            308 => "308",
            400 => "400",
            401 => "401",
            403 => "403",
            404 => "404",
            405 => "405",
            408 => "408",
            409 => "409",
            410 => "410",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::route_of;

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
