//! One error type for the API; each variant knows its HTTP status. [`recover`] turns every
//! rejection into the one JSON error shape; the internal cause of a 503 is logged, never sent to
//! the client.

use serde::Serialize;
use slog::{error, warn, Logger};
use std::error::Error;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{message}")]
    InvalidBody {
        message: String,
        field: Option<String>,
    },
    #[error("{message}")]
    InvalidField { field: String, message: String },
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    InvalidHeader(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(u64),
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    /// What an idempotent request made is no longer there (deleted by an admin).
    #[error("{0}")]
    Gone(String),
    #[error("missing bearer token: send Authorization: Bearer <admin token>")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the queue is full, retry later")]
    QueueFull,
    /// A budget of the HTTP edge is spent (connections, body bytes); retrying soon may help.
    #[error("{0}")]
    Overloaded(&'static str),
    /// The request body did not arrive in its time.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// Too many failed admin authentications from the client's address; the seconds until the
    /// block ends.
    #[error("too many failed admin authentications from this address, retry in {0} s")]
    TooManyFailures(u64),
    /// Redis or PostgreSQL failed; the cause is for the log only.
    #[error("a backing service is unavailable, retry later")]
    Unavailable(#[source] Box<dyn Error + Send + Sync>),
    /// The orders are queued on the Redis primary, but fewer replicas than required
    /// (`ORDERS_REDIS_MIN_REPLICAS`) acknowledged them in time.
    #[error(
        "the order is queued but only {acked} of the {wanted} Redis replicas required have it; \
         retry with the same Idempotency-Key"
    )]
    NotReplicated { wanted: u32, acked: u32 },
}

impl warp::reject::Reject for ApiError {}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// The status and the machine-readable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::InvalidBody { .. } => (StatusCode::BAD_REQUEST, "invalid_body"),
            ApiError::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            ApiError::InvalidHeader(_) => (StatusCode::BAD_REQUEST, "invalid_header"),
            ApiError::QueueFull => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
            ApiError::TooManyFailures(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::InvalidField { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Gone(_) => (StatusCode::GONE, "gone"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::NotReplicated { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not_replicated"),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::InvalidBody { field, .. } => field.as_deref(),
            ApiError::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The response the client gets: the status, the JSON body, `Connection: close` after a
    /// body that was not read to its end, and `Retry-After` when trying again may help.
    pub fn to_response(&self) -> Response {
        let (status, code) = self.status_and_code();
        let mut response = error_body(status, code, self.to_string(), self.field());
        if let ApiError::PayloadTooLarge(_) | ApiError::Overloaded(_) | ApiError::BodyTimeout = self
        {
            response
                .headers_mut()
                .insert("connection", HeaderValue::from_static("close"));
        }
        let retry_after = match self {
            ApiError::Unavailable(_)
            | ApiError::QueueFull
            | ApiError::Overloaded(_)
            | ApiError::NotReplicated { .. } => Some(1),
            ApiError::TooManyFailures(seconds) => Some(*seconds),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(seconds));
        }
        response
    }
}

fn error_body(
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&str>,
) -> Response {
    let body = Body {
        error: Detail {
            code,
            message,
            field,
        },
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

impl From<crate::order::InvalidOrder> for ApiError {
    fn from(e: crate::order::InvalidOrder) -> Self {
        use crate::order::InvalidOrder::*;
        match e {
            Malformed(m) => ApiError::MalformedJson(m),
            WrongShape { message, field } => ApiError::InvalidBody { message, field },
            Rule { field, message } => ApiError::InvalidField {
                field: field.to_string(),
                message,
            },
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Unavailable(Box::new(e))
    }
}

impl From<crate::queue::QueueError> for ApiError {
    fn from(e: crate::queue::QueueError) -> Self {
        match e {
            crate::queue::QueueError::NotReplicated { wanted, acked } => {
                ApiError::NotReplicated { wanted, acked }
            }
            e => ApiError::Unavailable(Box::new(e)),
        }
    }
}

impl From<crate::stats::StatsError> for ApiError {
    fn from(e: crate::stats::StatsError) -> Self {
        ApiError::Unavailable(Box::new(e))
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        self.to_response()
    }
}

/// Hands a handler's or a filter's outcome to warp (`.and_then(answer)`): the one place an
/// [`ApiError`] becomes the rejection that [`recover`] answers.
pub(super) fn answer<T>(
    result: Result<T, ApiError>,
) -> futures_util::future::Ready<Result<T, Rejection>> {
    futures_util::future::ready(result.map_err(warp::reject::custom))
}

/// `filter` with every rejection answered by [`recover`].
pub fn recovered<F>(
    filter: F,
    log: Logger,
) -> impl Filter<Extract = (Response,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static
where
    F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
{
    filter
        .recover(move |rejection| {
            let log = log.clone();
            async move { Ok::<_, std::convert::Infallible>(recover(rejection, &log)) }
        })
        .unify()
}

/// Turns any rejection into the JSON error shape. A rejection it does not know is a bug, not
/// the client's doing: a 500 with a generic body, its details only in the log.
pub fn recover(rejection: Rejection, log: &Logger) -> Response {
    let known;
    let error = match rejection.find::<ApiError>() {
        Some(error) => error,
        None => match from_warp(&rejection) {
            Some(error) => {
                known = error;
                &known
            }
            None => {
                error!(log, "unhandled rejection"; "rejection" => ?rejection);
                metrics::counter!(crate::stats::REJECTED, "reason" => "internal").increment(1);
                let status = StatusCode::INTERNAL_SERVER_ERROR;
                return error_body(status, "internal", "internal error".into(), None);
            }
        },
    };
    match error {
        ApiError::Unavailable(cause) => {
            warn!(log, "request failed: backing service unavailable"; "error" => cause_chain(cause.as_ref()));
        }
        // Every request fails so while the replicas are down or behind: the log says which
        // setting asks for them.
        ApiError::NotReplicated { wanted, acked } => {
            warn!(log, "orders queued but not replicated in time (ORDERS_REDIS_MIN_REPLICAS, ORDERS_REDIS_REPLICA_TIMEOUT_MS)";
                "wanted" => wanted, "acked" => acked);
        }
        _ => {}
    }
    metrics::counter!(crate::stats::REJECTED, "reason" => error.status_and_code().1).increment(1);
    error.to_response()
}

/// The error of a rejection made by warp's own filters (or the router's), in the order they
/// rank when several branches refused a request: a path no branch knows is only not found when
/// every branch says so, and a branch refusing the method ranks above what its headers or query
/// were refused for.
fn from_warp(rejection: &Rejection) -> Option<ApiError> {
    use warp::reject;
    Some(if rejection.is_not_found() {
        ApiError::NotFound("no such route".into())
    } else if rejection.find::<super::routes::OtherMethod>().is_some()
        || rejection.find::<reject::MethodNotAllowed>().is_some()
    {
        ApiError::MethodNotAllowed
    } else if rejection.find::<reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge(super::MAX_BODY)
    } else if rejection.find::<reject::UnsupportedMediaType>().is_some() {
        ApiError::UnsupportedMediaType
    } else if let Some(e) = rejection.find::<reject::InvalidHeader>() {
        ApiError::InvalidHeader(e.to_string())
    } else if let Some(e) = rejection.find::<reject::MissingHeader>() {
        ApiError::InvalidHeader(e.to_string())
    } else if let Some(e) = rejection.find::<reject::InvalidQuery>() {
        ApiError::InvalidQuery(e.to_string())
    } else {
        return None;
    })
}

/// An error and its sources, joined with ": ". A source whose text its error already ends with
/// (`redis: {0}` over the Redis error) is not repeated.
fn cause_chain(error: &(dyn Error + 'static)) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !chain.ends_with(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = cause.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::Filter;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("redis: {0}")]
        Repeats(#[source] Inner),
        #[error("enqueue failed")]
        Wraps(#[source] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Inner(#[source] std::io::Error);

    fn io() -> std::io::Error {
        std::io::Error::other("os error 111")
    }

    #[test]
    fn the_cause_chain_names_every_source_once() {
        let repeats = Outer::Repeats(Inner(io()));
        assert_eq!(
            cause_chain(&repeats),
            "redis: connection refused: os error 111"
        );
        let wraps = Outer::Wraps(Inner(io()));
        assert_eq!(
            cause_chain(&wraps),
            "enqueue failed: connection refused: os error 111"
        );
        let error = ApiError::Unavailable(Box::new(Outer::Wraps(Inner(io()))));
        assert!(error.source().is_some());
        assert_eq!(
            error.to_string(),
            "a backing service is unavailable, retry later"
        );
    }

    /// The response `recover` makes of what `filter` rejects.
    async fn answered<F>(filter: F, request: warp::test::RequestBuilder) -> (u16, String)
    where
        F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
    {
        let filter = recovered(filter, Logger::root(slog::Discard, slog::o!()));
        let response = request.reply(&filter).await;
        let body = String::from_utf8_lossy(response.body()).into_owned();
        (response.status().as_u16(), body)
    }

    #[tokio::test]
    async fn an_unknown_rejection_is_a_generic_500_without_its_details() {
        #[derive(Debug)]
        struct Unknown;
        impl warp::reject::Reject for Unknown {}
        let filter =
            warp::any().and_then(|| async { Err::<Response, _>(warp::reject::custom(Unknown)) });
        let (status, body) = answered(filter, warp::test::request()).await;
        assert_eq!(status, 500);
        assert_eq!(
            body,
            r#"{"error":{"code":"internal","message":"internal error"}}"#
        );
    }

    #[tokio::test]
    async fn warps_own_rejections_keep_their_status() {
        let header = warp::header::<String>("x-needed").map(|_| Response::default());
        let (status, body) = answered(header, warp::test::request()).await;
        assert_eq!(status, 400);
        assert!(body.contains(r#""code":"invalid_header""#), "{body}");
        let query = warp::query::raw().map(|_| Response::default());
        let (status, body) = answered(query, warp::test::request().path("/")).await;
        assert_eq!(status, 400);
        assert!(body.contains(r#""code":"invalid_query""#), "{body}");
        let method = warp::get().map(Response::default);
        let request = warp::test::request().method("POST");
        let (status, body) = answered(method, request).await;
        assert_eq!(status, 405);
        assert!(body.contains(r#""code":"method_not_allowed""#), "{body}");
        let none = warp::path("x").map(Response::default);
        let (status, body) = answered(none, warp::test::request().path("/y")).await;
        assert_eq!(status, 404);
        assert!(body.contains("no such route"), "{body}");
    }
}
