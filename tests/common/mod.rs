//! The one test harness, shared by every test binary: the service in-process ([`TestApp`]) or as
//! the real binary ([`process::Process`]), waiting for a condition ([`wait_until`]), scalar
//! queries ([`db::scalar`]), requests and the error shape ([`http`]), event subscribers
//! ([`events::Events`]), log lines ([`log::Log`]), a TCP proxy that can cut a connection
//! ([`proxy::Proxy`]); private servers to break ([`servers`]: one Redis, PostgreSQL;
//! [`redis_servers`]: a Redis Cluster, a primary with replicas and sentinels), keyed load that
//! retries ([`load`]), the final count of a scenario ([`tally`]) and a headless Chromium over
//! WebDriver for the console ([`browser::Browser`]).
//!
//! Tests talk to the real Redis and PostgreSQL; each gets a database and a Redis key prefix of its
//! own, so they run in parallel.
// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod app;
pub mod browser;
pub mod certs;
pub mod db;
pub mod events;
pub mod http;
pub mod load;
pub mod log;
pub mod process;
pub mod proxy;
pub mod redis_servers;
pub mod servers;
pub mod tally;
pub mod temp;
pub mod wait;

// The names most tests use; each binary uses some of them.
#[allow(unused_imports)]
pub use app::{api_only, test_env, State, TestApp, NOTHING, ONE_QUEUED};
#[allow(unused_imports)]
pub use db::{postgres_base, scalar};
#[allow(unused_imports)]
pub use http::Sent;
#[allow(unused_imports)]
pub use wait::wait_until;

/// The admin token of tests that set one (`ORDERS_ADMIN_TOKEN`): the service refuses one shorter
/// than 16 characters.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The `Authorization` header that carries [`ADMIN_TOKEN`].
pub fn admin_bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

/// Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}
