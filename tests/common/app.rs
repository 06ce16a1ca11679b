//! The service started in-process on a free port, against the real Redis and PostgreSQL, with a
//! database and a Redis key prefix of its own; and what a test can see of its state.

use super::db::{self, scalar};
use super::log::Log;
use super::redis_url;
use orders::config::Config;
use orders::{Roles, Shutdown};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::net::SocketAddr;
use uuid::Uuid;

/// Where nothing listens: the address of an app with no API role in this process.
const NO_API: &str = "127.0.0.1:9";

/// A running service and handles on what it uses.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub db: tokio_postgres::Client,
    pub redis: redis::aio::MultiplexedConnection,
    pub prefix: String,
    pub config: Config,
    /// The service's log lines (none for [`TestApp::observe`]: the processes keep their own).
    pub log: Log,
    db_name: String,
    shutdown: Shutdown,
    running: Option<tokio::task::JoinHandle<()>>,
}

/// A fresh database (migrated by the service on start) and Redis prefix, as the environment
/// variables a service would read: zero processing delay, a short notifier catch-up.
pub async fn test_env(overrides: &[(&str, &str)]) -> HashMap<String, String> {
    let id = Uuid::new_v4().simple().to_string();
    let db_name = format!("orders_test_{id}");
    db::admin_client()
        .await
        .batch_execute(&format!("CREATE DATABASE {db_name}"))
        .await
        .expect("create the test database");
    let mut vars: HashMap<String, String> = HashMap::from([
        (
            "DATABASE_URL".into(),
            format!("{}/{db_name}", db::postgres_base()),
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
        let mut app = Self::observe(&vars).await;
        let config = app.config.clone();
        app.start(&config, roles).await;
        app
    }

    /// Handles on the database and Redis prefix of `vars` (made by [`test_env`]) with no service
    /// running in this process: for tests that run the binary as child processes.
    pub async fn observe(vars: &HashMap<String, String>) -> TestApp {
        let config = Config::load_from(|name| vars.get(name).cloned()).expect("test config");
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
            addr: NO_API.parse().unwrap(),
            http: super::http::client(),
            db: db::connect(&config.database_url).await,
            redis,
            prefix: config.redis_prefix.clone(),
            config,
            log: Log::Memory(Default::default()),
            db_name,
            shutdown: Shutdown::new(),
            running: None,
        }
    }

    /// Another process's worth of roles on the same database and Redis prefix.
    pub async fn sibling(&self, roles: Roles) -> TestApp {
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        let mut app = TestApp {
            addr: NO_API.parse().unwrap(),
            http: super::http::client(),
            db: db::connect(&config.database_url).await,
            redis: self.redis.clone(),
            prefix: self.prefix.clone(),
            config: config.clone(),
            log: Log::Memory(Default::default()),
            db_name: String::new(), // the first app owns the database
            shutdown: Shutdown::new(),
            running: None,
        };
        app.start(&config, roles).await;
        app
    }

    /// Starts `roles` in this process, logging into [`TestApp::log`].
    async fn start(&mut self, config: &Config, roles: Roles) {
        let (log, logger) = Log::capture();
        let running = orders::start(config, roles, self.shutdown.clone(), logger)
            .await
            .expect("the service starts");
        if let Some(addr) = running.addr {
            self.addr = addr;
        }
        self.log = log;
        self.running = Some(tokio::spawn(running.wait()));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The name of a key under this app's prefix, e.g. `queue`.
    pub fn key(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.prefix)
    }

    /// The name of this app's database.
    pub fn db_name(&self) -> &str {
        &self.db_name
    }

    /// Count of orders in a status.
    pub async fn count_status(&self, status: &str) -> i64 {
        scalar(
            &self.db,
            "SELECT count(*) FROM orders WHERE status = $1",
            &[&status],
        )
        .await
    }

    /// Rows of a table.
    pub async fn count_rows(&self, table: &str) -> i64 {
        scalar(&self.db, &format!("SELECT count(*) FROM {table}"), &[]).await
    }

    /// Length of a Redis list under the prefix.
    pub async fn list_len(&self, name: &str) -> usize {
        let mut redis = self.redis.clone();
        redis.llen(self.key(name)).await.unwrap()
    }

    /// Fields of a Redis hash under the prefix.
    pub async fn hash_len(&self, name: &str) -> usize {
        let mut redis = self.redis.clone();
        redis.hlen(self.key(name)).await.unwrap()
    }

    /// What the service holds: its rows, its queue and its pending orders.
    pub async fn state(&self) -> State {
        self.state_with(&self.db).await
    }

    /// [`TestApp::state`], read through another connection (after this app's was closed).
    pub async fn state_with(&self, db: &tokio_postgres::Client) -> State {
        State {
            orders: scalar(db, "SELECT count(*) FROM orders", &[]).await,
            items: scalar(db, "SELECT count(*) FROM order_items", &[]).await,
            queue: self.list_len("queue").await,
            pending: self.hash_len("pending").await,
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
            let _ = db::admin_client()
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

/// What a test can see of the service's state.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct State {
    pub orders: i64,
    pub items: i64,
    pub queue: usize,
    pub pending: usize,
}

/// A service that holds nothing.
pub const NOTHING: State = State {
    orders: 0,
    items: 0,
    queue: 0,
    pending: 0,
};

/// A service holding one accepted order, on the queue: nothing has taken it yet.
pub const ONE_QUEUED: State = State {
    queue: 1,
    pending: 1,
    ..NOTHING
};

/// The API role only: nothing takes orders off the queue, so anything wrongly enqueued stays
/// visible on the list.
pub fn api_only() -> Roles {
    Roles::parse("api").unwrap()
}
