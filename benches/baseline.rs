//! `orders-baseline`: the ingest baseline of `just bench` (scripts/bench.sh).
//!
//! A tiny warp server that does everything `POST /orders` of the real service does except the
//! Redis call, through the service's own pieces: its body reader (`orders::http::json_body`: the
//! content-type and body-size checks), its request-id filter, the same parse and validation
//! (`NewOrder::parse`), an order id and timestamp (`Job::accept`), the payload that would be
//! pushed (`Job::to_payload`), the same 202 (`orders::http::accepted`) and the same error
//! responses (`orders::http::recovered`). Not included: the service's per-request metrics and
//! access log, which the comparison is meant to include. The ratio of the service's accept rate
//! to this one's is what the Redis round trip (and the rest of the service's routing) costs.
//!
//! Listens on `ORDERS_LISTEN` (default 127.0.0.1:8090); stops on SIGINT/SIGTERM. Same runtime as
//! the service, `orders::runtime`, with as many threads (`ORDERS_THREADS`, the same default), and
//! the same accept loop and HTTP budgets (`orders::http::serve_filter`).

use orders::http::{
    accepted, json_body, recovered, request_id, serve_filter, ApiError, Body, BodyBudget, Limits,
    MAX_BODY,
};
use orders::order::{Job, NewOrder};
use std::net::SocketAddr;
use time::OffsetDateTime;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// `POST /orders` without Redis.
async fn create_order(body: Body, request_id: String) -> Result<Response, Rejection> {
    let order = NewOrder::parse(&body).map_err(|e| warp::reject::custom(ApiError::from(e)))?;
    let job = Job::accept(order, OffsetDateTime::now_utc(), Some(request_id.clone()));
    // What the service would push; kept from being optimised away.
    let payload = job.to_payload();
    std::hint::black_box(&payload);
    Ok(accepted(job.order_id, request_id))
}

fn main() -> anyhow::Result<()> {
    let config = orders::config::Config::load()?;
    orders::runtime(&config)?.block_on(serve(config))
}

async fn serve(config: orders::config::Config) -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::var("ORDERS_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:8090".into())
        .parse()
        .map_err(|e| anyhow::anyhow!("ORDERS_LISTEN: {e}"))?;
    let create = warp::path!("orders")
        .and(warp::post())
        .and(json_body(MAX_BODY, &BodyBudget::from_config(&config)))
        .and(request_id())
        .and_then(create_order);
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response());
    // Errors are not what is measured: their log lines go nowhere.
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let routes = recovered(create.or(healthz).unify(), log.clone());
    let listener = orders::http::listen(addr)?;
    eprintln!("orders-baseline listening on {}", listener.local_addr()?);
    let stop = orders::Shutdown::new();
    let stopping = stop.clone();
    tokio::spawn(async move {
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
        stopping.cancel();
    });
    // The service's own accept loop and budgets, so that the comparison is of the Redis call.
    serve_filter(listener, routes, Limits::from_config(&config), stop, log).await;
    Ok(())
}
