//! Request ids: the header that names a request in every log line, response and event about it.

use std::convert::Infallible;
use warp::http::HeaderValue;
use warp::Filter;

/// Header that names a request in every log line, response and event about it.
pub const REQUEST_ID: &str = "x-request-id";

/// The caller's `X-Request-Id` when it is 1–128 visible ASCII characters, or a new one (UUIDv7).
pub fn request_id() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    callers_request_id().map(|id: Option<String>| id.unwrap_or_else(new_request_id))
}

/// The caller's `X-Request-Id` when it is 1–128 visible ASCII characters.
pub(super) fn callers_request_id(
) -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::value(REQUEST_ID)
        .map(|v: HeaderValue| valid_request_id(&v))
        .or(warp::any().map(|| None))
        .unify()
}

/// A new request id: sortable by time, so ids in a log read in order.
pub(super) fn new_request_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

pub(super) fn valid_request_id(value: &HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic);
    ok.then(|| String::from_utf8_lossy(bytes).into_owned())
}
