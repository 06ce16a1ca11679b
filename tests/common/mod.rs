//! Test harness: starts the real service in-process on a free port, against the real Redis and
//! PostgreSQL, with a database and a Redis key prefix of its own, so tests run in parallel.
#![allow(dead_code)]

pub mod process;

use orders::config::Config;
use orders::{Roles, Shutdown};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// PostgreSQL server the tests make their databases on.
pub fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A running service and handles on what it uses.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub db: tokio_postgres::Client,
    pub redis: redis::aio::MultiplexedConnection,
    pub prefix: String,
    pub config: Config,
    db_name: String,
    shutdown: Shutdown,
    running: Option<tokio::task::JoinHandle<()>>,
}

/// Connects to the maintenance database of the test server.
async fn admin_client() -> tokio_postgres::Client {
    connect(&format!("{}/postgres", postgres_base())).await
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be running (just services)");
    tokio::spawn(conn);
    client
}

/// A logger that prints only when TEST_LOG is set.
pub fn logger() -> slog::Logger {
    if std::env::var_os("TEST_LOG").is_some() {
        use slog::Drain;
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        let drain = slog_term::FullFormat::new(decorator).build().fuse();
        slog::Logger::root(std::sync::Mutex::new(drain).fuse(), slog::o!())
    } else {
        slog::Logger::root(slog::Discard, slog::o!())
    }
}

/// A fresh database (migrated by the service on start) and Redis prefix, as the environment
/// variables a service would read: zero processing delay, a short notifier catch-up.
pub async fn test_env(overrides: &[(&str, &str)]) -> HashMap<String, String> {
    let id = Uuid::new_v4().simple().to_string();
    let db_name = format!("orders_test_{id}");
    admin_client()
        .await
        .batch_execute(&format!("CREATE DATABASE {db_name}"))
        .await
        .expect("create the test database");
    let mut vars: HashMap<String, String> = HashMap::from([
        (
            "DATABASE_URL".into(),
            format!("{}/{db_name}", postgres_base()),
        ),
        ("REDIS_URL".into(), redis_url()),
        ("ORDERS_LISTEN".into(), "127.0.0.1:0".into()),
        ("ORDERS_REDIS_PREFIX".into(), format!("test-{id}")),
        ("ORDERS_PROCESSING_DELAY_MS".into(), "0".into()),
        ("ORDERS_DB_POOL_SIZE".into(), "8".into()),
        ("ORDERS_NOTIFIER_CATCH_UP_MS".into(), "500".into()),
    ]);
    for (k, v) in overrides {
        vars.insert(k.to_string(), v.to_string());
    }
    vars
}

impl TestApp {
    /// Starts all roles with zero processing delay.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Roles::ALL, &[]).await
    }

    /// Starts the given roles with settings overridden as environment variables would.
    pub async fn spawn_with(roles: Roles, overrides: &[(&str, &str)]) -> TestApp {
        let vars = test_env(overrides).await;
        let config = Config::load_from(|name| vars.get(name).cloned()).expect("test config");
        let shutdown = Shutdown::new();
        let running = orders::start(&config, roles, shutdown.clone(), logger())
            .await
            .expect("the service starts");
        let mut app = Self::observe(&vars).await;
        app.addr = running
            .addr
            .unwrap_or_else(|| "127.0.0.1:9".parse().unwrap());
        app.running = Some(tokio::spawn(running.wait()));
        app.shutdown = shutdown;
        app
    }

    /// Handles on the database and Redis prefix of `vars` (made by [`test_env`]) with no service
    /// running in this process: for tests that run the binary as child processes.
    pub async fn observe(vars: &HashMap<String, String>) -> TestApp {
        let config = Config::load_from(|name| vars.get(name).cloned()).expect("test config");
        let db = connect(&config.database_url).await;
        let redis = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis must be running (just services)");
        let db_name = config
            .database_url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        TestApp {
            addr: "127.0.0.1:9".parse().unwrap(),
            http: reqwest::Client::new(),
            db,
            redis,
            prefix: config.redis_prefix.clone(),
            config,
            db_name,
            shutdown: Shutdown::new(),
            running: None,
        }
    }

    /// Another process's worth of roles on the same database and Redis prefix.
    pub async fn sibling(&self, roles: Roles) -> TestApp {
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        let shutdown = Shutdown::new();
        let running = orders::start(&config, roles, shutdown.clone(), logger())
            .await
            .expect("the service starts");
        let mut app = TestApp {
            addr: running
                .addr
                .unwrap_or_else(|| "127.0.0.1:9".parse().unwrap()),
            http: reqwest::Client::new(),
            db: connect(&config.database_url).await,
            redis: self.redis.clone(),
            prefix: self.prefix.clone(),
            config,
            db_name: String::new(), // the first app owns the database
            shutdown,
            running: None,
        };
        app.running = Some(tokio::spawn(running.wait()));
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The name of a key under this app's prefix, e.g. `queue`.
    pub fn key(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.prefix)
    }

    /// GETs `path` and returns its JSON body.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.get_text(path).await).expect("a JSON body")
    }

    /// The body of a GET, as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("GET")
            .text()
            .await
            .expect("a body")
    }

    /// POSTs a JSON value to /orders.
    pub async fn post_order(&self, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url("/orders"))
            .json(body)
            .send()
            .await
            .expect("POST /orders")
    }

    /// POSTs a valid order and returns its id.
    pub async fn accept_order(&self, customer: &str) -> Uuid {
        let response = self
            .post_order(&serde_json::json!({"customer_id": customer, "items": ["sku-1", "sku-2"], "total": 19.99}))
            .await;
        assert_eq!(response.status(), 202);
        let body: serde_json::Value = response.json().await.unwrap();
        body["order_id"].as_str().unwrap().parse().unwrap()
    }

    /// Count of orders in a status.
    pub async fn count_status(&self, status: &str) -> i64 {
        self.db
            .query_one("SELECT count(*) FROM orders WHERE status = $1", &[&status])
            .await
            .unwrap()
            .get(0)
    }

    /// Rows of a table.
    pub async fn count_rows(&self, table: &str) -> i64 {
        self.db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Length of a Redis list under the prefix.
    pub async fn list_len(&self, name: &str) -> usize {
        let mut redis = self.redis.clone();
        redis.llen(self.key(name)).await.unwrap()
    }

    /// Waits until `check` is true, for up to `timeout`; panics with `what` otherwise.
    pub async fn wait_for<F, Fut>(&self, what: &str, timeout: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !check().await {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.running.take() {
            let _ = handle.await;
        }
    }

    /// Stops the service and removes its database and Redis keys.
    pub async fn cleanup(mut self) {
        self.stop().await;
        if !self.db_name.is_empty() {
            let _ = admin_client()
                .await
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.db_name
                ))
                .await;
        }
        let mut redis = self.redis.clone();
        let keys: Vec<String> = redis
            .keys(format!("{{{}}}:*", self.prefix))
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: () = redis.del(keys).await.unwrap_or(());
        }
    }
}
