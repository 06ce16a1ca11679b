//! `orders-baseline`: the ingest baseline of `just bench` (scripts/bench.sh).
//!
//! A tiny warp server that does everything `POST /orders` of the real service does except the
//! Redis call: the same content-type and body-size checks, the same parse and validation
//! (`NewOrder::parse`), an order id and timestamp (`Job::accept`, with the caller's or a new
//! X-Request-Id), the payload that would be pushed (`Job::to_payload`), and the same 202 with
//! `{"order_id", "status": "queued"}`, a Location and an X-Request-Id header. Not copied: the
//! service's per-request metrics and access log, which the comparison is meant to include. The ratio of the service's accept rate to this one's is what the Redis round
//! trip (and the rest of the service's routing) costs.
//!
//! Listens on `ORDERS_LISTEN` (default 127.0.0.1:8090); stops on SIGINT/SIGTERM. Same runtime as
//! the service, `orders::runtime`, with as many threads (`ORDERS_THREADS`, the same default).

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use orders::order::{InvalidOrder, Job, NewOrder};
use std::convert::Infallible;
use std::net::SocketAddr;
use time::OffsetDateTime;
use warp::http::StatusCode;
use warp::reply::{json, with_header, with_status, Response};
use warp::{Filter, Rejection, Reply};

/// Largest body of `POST /orders`, as in the service.
const MAX_BODY: u64 = 64 * 1024;

/// Why a request was refused (the service's error shape, without the details it adds).
#[derive(Debug)]
enum Refused {
    UnsupportedMediaType,
    TooLarge,
    Invalid(InvalidOrder),
}

impl warp::reject::Reject for Refused {}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = json(&serde_json::json!({"error": {"code": code, "message": message}}));
    with_status(body, status).into_response()
}

/// The JSON error of a rejection, with the service's status codes.
async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(match rejection.find::<Refused>() {
        Some(Refused::UnsupportedMediaType) => error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "content-type must be application/json".into(),
        ),
        Some(Refused::TooLarge) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {MAX_BODY} bytes"),
        ),
        Some(Refused::Invalid(e @ InvalidOrder::Malformed(_))) => {
            error(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())
        }
        Some(Refused::Invalid(e @ InvalidOrder::WrongShape { .. })) => {
            error(StatusCode::BAD_REQUEST, "invalid_body", e.to_string())
        }
        Some(Refused::Invalid(e @ InvalidOrder::Rule { .. })) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            e.to_string(),
        ),
        None if rejection.is_not_found() => {
            error(StatusCode::NOT_FOUND, "not_found", "no such route".into())
        }
        None => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed".into(),
        ),
    })
}

/// A JSON body of at most [`MAX_BODY`] bytes, read the way the service reads it: 415 for another
/// content type, 413 when larger, the stream copied into one buffer.
fn json_body() -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and_then(|kind: Option<String>, length: Option<u64>| async move {
            let json = kind.as_deref().is_some_and(|k| {
                k.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
            if !json {
                return Err(warp::reject::custom(Refused::UnsupportedMediaType));
            }
            if length.is_some_and(|n| n > MAX_BODY) {
                return Err(warp::reject::custom(Refused::TooLarge));
            }
            Ok(())
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(read_limited)
}

/// Reads a body stream into one buffer, refusing it as soon as it grows past [`MAX_BODY`].
async fn read_limited<B: Buf>(
    stream: impl futures_util::Stream<Item = Result<B, warp::Error>>,
) -> Result<Bytes, Rejection> {
    let mut stream = std::pin::pin!(stream);
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| {
            warp::reject::custom(Refused::Invalid(InvalidOrder::Malformed(e.to_string())))
        })?;
        if (body.len() + chunk.remaining()) as u64 > MAX_BODY {
            return Err(warp::reject::custom(Refused::TooLarge));
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

/// Header that names a request, as in the service.
const REQUEST_ID: &str = "x-request-id";

/// The caller's `X-Request-Id` when it is 1–128 visible ASCII characters, or a new one (UUIDv7),
/// as the service makes it.
fn request_id() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::header::value(REQUEST_ID)
        .map(|v: warp::http::HeaderValue| {
            let bytes = v.as_bytes();
            let ok =
                !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic);
            ok.then(|| String::from_utf8_lossy(bytes).into_owned())
        })
        .or(warp::any().map(|| None))
        .unify()
        .map(|id: Option<String>| id.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string()))
}

/// `POST /orders` without Redis.
async fn create_order(body: Bytes, request_id: String) -> Result<Response, Rejection> {
    let order = NewOrder::parse(&body).map_err(|e| warp::reject::custom(Refused::Invalid(e)))?;
    let job = Job::accept(order, OffsetDateTime::now_utc(), Some(request_id.clone()));
    // What the service would push; kept from being optimised away.
    let payload = job.to_payload();
    std::hint::black_box(&payload);
    let order_id = job.order_id.to_string();
    let body = json(&serde_json::json!({"order_id": order_id, "status": "queued"}));
    let location = format!("/orders/{order_id}");
    let reply = with_header(
        with_status(body, StatusCode::ACCEPTED),
        "location",
        location,
    );
    Ok(with_header(reply, REQUEST_ID, request_id).into_response())
}

fn main() -> anyhow::Result<()> {
    let config = orders::config::Config::load()?;
    orders::runtime(&config)?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::var("ORDERS_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:8090".into())
        .parse()
        .map_err(|e| anyhow::anyhow!("ORDERS_LISTEN: {e}"))?;
    let create = warp::path!("orders")
        .and(warp::post())
        .and(json_body())
        .and(request_id())
        .and_then(create_order);
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})));
    let routes = create.or(healthz).recover(recover);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("orders-baseline listening on {}", listener.local_addr()?);
    let stop = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    };
    warp::serve(routes)
        .incoming(listener)
        .graceful(stop)
        .run()
        .await;
    Ok(())
}
