//! The HTTP API: one route table ([`ROUTES`]) and the router built from it, plain async
//! handlers that return [`ApiError`], and one [`recover`] that turns every rejection into the one
//! JSON error shape. Every response goes out through the access log.
//!
//! - `routes.rs`: the table and the router
//! - `auth.rs`: the admin check and its limit on failed attempts per client address
//! - `handlers.rs`: one function per operation on orders, and the probes
//! - `admin.rs`: the operator's operations (the console's): dead letters, scheduled retries,
//!   pause and resume, workers, per-second history, an order's history
//! - `server.rs`: the accept loop and its connection and time budgets
//! - `body.rs`: the JSON body reader and its limits of size, time and memory
//! - `request_id.rs`: `X-Request-Id`
//! - `access_log.rs`: the request id on every response, the HTTP histogram, the access log
//! - `error.rs`: [`ApiError`], its responses, [`recover`]
//! - `openapi.rs`: the OpenAPI document served at `/openapi.json`
//! - `console.rs`: the operator console's page, script and style sheet (`console/`)
//! - `sse.rs`: `GET /events`, live events as Server-Sent Events

mod access_log;
mod admin;
mod auth;
mod body;
mod console;
mod error;
mod handlers;
mod openapi;
mod request_id;
mod routes;
mod server;
mod sse;

pub use auth::AdminAuth;
pub use body::{json_body, Body, BodyBudget};
pub use error::{recover, recovered, ApiError};
pub use handlers::accepted;
pub use request_id::{request_id, REQUEST_ID};
pub use routes::{resolve, route_of, Access, Route, ROUTES};
pub use server::{listen, serve as serve_filter, Limits};

use crate::queue::Queue;
use crate::store::Store;
use slog::Logger;
use std::convert::Infallible;
use std::sync::Arc;
use warp::reply::Response;
use warp::Filter;

/// Largest body of `POST /orders` and `PUT /orders/{id}/status`.
pub const MAX_BODY: u64 = 64 * 1024;
/// Largest body of `POST /orders/batch` (1,000 orders).
pub const MAX_BATCH_BODY: u64 = 4 * 1024 * 1024;
/// Most orders in one batch.
pub const MAX_BATCH: usize = 1000;

/// The client address of a request's connection. The server (`server.rs`) puts it in every
/// request's extensions; [`peer`] reads it (`None` in `warp::test` requests).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// The client address of the request, when the server recorded one.
pub fn peer() -> impl Filter<Extract = (Option<std::net::SocketAddr>,), Error = Infallible> + Copy {
    warp::ext::optional::<Peer>().map(|p: Option<Peer>| p.map(|Peer(addr)| addr))
}

/// What the handlers share.
pub struct Api {
    pub queue: Queue,
    pub store: Store,
    /// The admin token and the failed attempts counted against client addresses.
    pub admin: AdminAuth,
    /// What the bodies being read may hold and how long they may take.
    pub body_budget: BodyBudget,
    /// Where cancellations are published.
    pub cancelled_channel: String,
    /// The roles of this process and whether they run.
    pub roles: Arc<crate::RoleStatus>,
    /// What `/readyz` asks of Redis: the permissions this process's roles need.
    pub probe: Arc<crate::queue::Probe>,
    /// The live events of this process, for `GET /events`.
    pub live: Arc<crate::live::Hub>,
    /// The worker lease, past which the console marks a worker stuck.
    pub lease: std::time::Duration,
    pub log: Logger,
}

/// Every route of the API, with errors recovered into JSON, each response carrying its
/// `X-Request-Id`, timed into the HTTP histogram, and logged.
pub fn routes(
    api: Arc<Api>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let log = api.log.clone();
    access_log::logged(recovered(routes::router(api), log.clone()), log)
}

/// Serves the API on `listener` within `limits` until `shutdown`, then finishes the requests
/// under way (until the shutdown deadline).
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<Api>,
    limits: Limits,
    shutdown: crate::Shutdown,
) {
    let log = api.log.clone();
    server::serve(listener, routes(api), limits, shutdown, log).await;
}
