//! The queue's connections to Redis in each deployment (`ORDERS_REDIS_MODE`): the shared
//! multiplexed [`Connection`] that every command but the blocking pop goes through, the
//! [`BlockingConnection`]s of the fetch loops and the blocking stream reads (the notifier's group,
//! the live events). Each mode keeps what it needs to make more of them in a [`Deployment`].
//!
//! Sentinel mode resolves the primary through the sentinels, and again when a command fails in a
//! way a failover explains (`READONLY` from a demoted primary, a dropped or refused connection):
//! one resolution at a time and at most one per [`RESOLVE_INTERVAL`], however many requests
//! fail together. A command that failed with `READONLY` or a refused connection ran nowhere, so
//! it is sent once more to the new primary; any other failed command returns its error (it may
//! have run), and the caller retries or answers 503 as for any Redis error.

use super::QueueError;
use crate::config::{Config, RedisMode};
use futures_util::FutureExt;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, ErrorKind,
    IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind,
    TlsCertificates, TlsMode, Value,
};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Connecting to one server, at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A reply on the shared connection, at most: a slow Redis fails requests rather than holding
/// them.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A reply on a cluster's blocking connection: longer than the pop blocks on the server (a
/// cluster connection cannot go without a response timeout).
const CLUSTER_BLOCKING_TIMEOUT: Duration = Duration::from_secs(5);
/// Sentinel mode: the least time between two resolutions of the primary.
const RESOLVE_INTERVAL: Duration = Duration::from_millis(500);
/// Sentinel mode: one resolution (asking the sentinels and connecting), at most.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared multiplexed connection, in any mode. A clone is a handle on the same connection;
/// it implements [`ConnectionLike`], so commands, pipelines and scripts run on it unchanged.
#[derive(Clone)]
pub enum Connection {
    /// One server, reconnecting by itself.
    Standalone(ConnectionManager),
    /// Redis Cluster: each command goes to the owner of its keys' slot, following `MOVED` and
    /// `ASK` and refreshing the slot map.
    Cluster(ClusterConnection),
    /// The primary the sentinels name, asked again after a failover.
    Sentinel(Arc<Primary>),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
            Connection::Sentinel(primary) => {
                let primary = primary.clone();
                async move {
                    primary
                        .run(|mut conn| async move { conn.req_packed_command(cmd).await })
                        .await
                }
                .boxed()
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Sentinel(primary) => {
                let primary = primary.clone();
                async move {
                    primary
                        .run(|mut conn| async move {
                            conn.req_packed_commands(pipeline, offset, count).await
                        })
                        .await
                }
                .boxed()
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
            Connection::Sentinel(primary) => primary.current().conn.get_db(),
        }
    }
}

impl Connection {
    /// Runs `cmd` on the node that owns `key`'s slot (in a cluster; elsewhere on the one server),
    /// for commands a cluster connection would otherwise send to any node (`SCAN`).
    pub async fn query_on_owner_of<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match self {
            Connection::Cluster(conn) => {
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = conn.route_command(cmd.clone(), routing).await?;
                redis::from_redis_value(value).map_err(RedisError::from)
            }
            other => cmd.query_async(other).await,
        }
    }
}

/// A connection of one fetch loop, for its blocking pops: no client-side timeout shorter than
/// the pop (see STYLE.md). Commands go through [`BlockingConnection::query`]; drop it with
/// [`BlockingConnection::discard`] after an error.
pub enum BlockingConnection {
    /// From the standalone pool.
    Pooled(deadpool_redis::Connection),
    /// A cluster connection of its own (the pop goes to the owner of the queue's slot).
    Cluster(ClusterConnection),
    /// A connection to the primary the sentinels named when it was made.
    Sentinel {
        conn: MultiplexedConnection,
        primary: Arc<Primary>,
        generation: u64,
    },
}

impl BlockingConnection {
    /// Runs one (blocking) command.
    pub async fn query<T: redis::FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            BlockingConnection::Pooled(conn) => cmd.query_async(conn).await,
            BlockingConnection::Cluster(conn) => cmd.query_async(conn).await,
            BlockingConnection::Sentinel {
                conn,
                primary,
                generation,
            } => {
                let reply = cmd.query_async(conn).await;
                if let Err(e) = &reply {
                    // The loop reconnects after an error: to the new primary, if there is one.
                    primary.noticed(*generation, e).await;
                }
                reply
            }
        }
    }

    /// Runs a pipeline that ends in a blocking command's reply and what follows it.
    pub async fn query_pipeline<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> RedisResult<T> {
        match self {
            BlockingConnection::Pooled(conn) => pipe.query_async(conn).await,
            BlockingConnection::Cluster(conn) => pipe.query_async(conn).await,
            BlockingConnection::Sentinel {
                conn,
                primary,
                generation,
            } => {
                let reply = pipe.query_async(conn).await;
                if let Err(e) = &reply {
                    primary.noticed(*generation, e).await;
                }
                reply
            }
        }
    }

    /// Drops the connection so that it is never reused (a pooled one leaves the pool).
    pub fn discard(self) {
        if let BlockingConnection::Pooled(conn) = self {
            drop(deadpool_redis::Connection::take(conn));
        }
    }
}

/// What one mode needs to make blocking connections. (One per process, behind
/// an `Arc`: the variants' sizes do not matter.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Deployment {
    Standalone { blocking: deadpool_redis::Pool },
    Cluster { blocking: ClusterClient },
    Sentinel(Arc<Primary>),
}

impl Deployment {
    /// Connects as `config` says: the shared connection and what makes the others. Fails when
    /// Redis cannot be reached; the error names the settings to look at.
    pub(super) async fn connect(config: &Config) -> Result<(Connection, Deployment), QueueError> {
        let tls = Tls::from_config(config)?;
        let urls = config.redis_urls();
        let unreachable = |source: RedisError| QueueError::Connect {
            what: describe(config, &urls, &tls),
            source,
        };
        match config.redis_mode {
            RedisMode::Standalone => {
                let url = urls.first().copied().unwrap_or_default();
                let client = tls.client(url).map_err(unreachable)?;
                let conn = client
                    .get_connection_manager_with_config(manager_config())
                    .await
                    .map_err(unreachable)?;
                let manager = deadpool_redis::Manager::new_with_config(
                    client.get_connection_info().clone(),
                    blocking_config(),
                )
                .map_err(unreachable)?;
                // One per fetch loop, the notifier's group reads and the live-event reader.
                let blocking = deadpool_redis::Pool::builder(manager)
                    .max_size(config.fetch_loops + 2)
                    .runtime(deadpool_redis::Runtime::Tokio1)
                    .create_timeout(Some(CONNECT_TIMEOUT))
                    .wait_timeout(Some(CONNECT_TIMEOUT))
                    .build()
                    .map_err(|e| {
                        unreachable(RedisError::from((
                            ErrorKind::Client,
                            "redis pool",
                            e.to_string(),
                        )))
                    })?;
                Ok((
                    Connection::Standalone(conn),
                    Deployment::Standalone { blocking },
                ))
            }
            RedisMode::Cluster => {
                let shared = tls.cluster(&urls, RESPONSE_TIMEOUT).map_err(unreachable)?;
                let blocking = tls
                    .cluster(&urls, CLUSTER_BLOCKING_TIMEOUT)
                    .map_err(unreachable)?;
                let conn = shared.get_async_connection().await.map_err(unreachable)?;
                Ok((Connection::Cluster(conn), Deployment::Cluster { blocking }))
            }
            RedisMode::Sentinel => {
                let sentinels = tls
                    .sentinels(&urls, &config.redis_sentinel_master)
                    .map_err(unreachable)?;
                let primary = Primary::resolve_first(sentinels)
                    .await
                    .map_err(unreachable)?;
                let primary = Arc::new(primary);
                Ok((
                    Connection::Sentinel(primary.clone()),
                    Deployment::Sentinel(primary),
                ))
            }
        }
    }

    /// A new connection for one fetch loop's blocking pops.
    pub(super) async fn blocking_connection(&self) -> Result<BlockingConnection, QueueError> {
        Ok(match self {
            Deployment::Standalone { blocking } => {
                BlockingConnection::Pooled(blocking.get().await?)
            }
            Deployment::Cluster { blocking, .. } => {
                BlockingConnection::Cluster(blocking.get_async_connection().await?)
            }
            Deployment::Sentinel(primary) => {
                let current = primary.current();
                let conn = current
                    .client
                    .get_multiplexed_async_connection_with_config(&blocking_config())
                    .await;
                match conn {
                    Ok(conn) => BlockingConnection::Sentinel {
                        conn,
                        primary: primary.clone(),
                        generation: current.generation,
                    },
                    Err(e) => {
                        primary.noticed(current.generation, &e).await;
                        return Err(e.into());
                    }
                }
            }
        })
    }
}

/// A sentinel deployment's primary: the connection to it now, and the sentinels to ask when it
/// seems to have changed.
pub struct Primary {
    sentinels: tokio::sync::Mutex<Resolver>,
    current: RwLock<Arc<Current>>,
}

/// The sentinels, and when they were last asked.
struct Resolver {
    client: SentinelClient,
    last: Instant,
}

/// The primary as last resolved; `generation` counts resolutions that changed it.
struct Current {
    generation: u64,
    client: Client,
    conn: ConnectionManager,
}

impl Primary {
    /// Asks the sentinels for the primary and connects to it.
    async fn resolve_first(sentinels: SentinelClient) -> RedisResult<Primary> {
        let mut resolver = Resolver {
            client: sentinels,
            last: Instant::now(),
        };
        let (client, conn) = resolver.ask().await?;
        Ok(Primary {
            sentinels: tokio::sync::Mutex::new(resolver),
            current: RwLock::new(Arc::new(Current {
                generation: 0,
                client,
                conn,
            })),
        })
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs a request on the primary; after an error a failover may explain, resolves the
    /// primary again, and after `READONLY` or a refused connection (nothing ran) sends the
    /// request once more to the new one.
    async fn run<'a, T, F, Fut>(&self, mut send: F) -> RedisResult<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>> + 'a,
    {
        let current = self.current();
        match send(current.conn.clone()).await {
            Err(e) if failover_may_explain(&e) => {
                let changed = self.refresh(current.generation).await;
                let never_ran = e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
                    || e.is_connection_refusal();
                if changed && never_ran {
                    send(self.current().conn.clone()).await
                } else {
                    Err(e)
                }
            }
            other => other,
        }
    }

    /// After `e` on a connection made at `generation`: resolves the primary again when a
    /// failover may explain it, so that the next connection goes to the new one.
    async fn noticed(&self, generation: u64, e: &RedisError) {
        if failover_may_explain(e) {
            self.refresh(generation).await;
        }
    }

    /// Resolves the primary again, unless it changed since `seen` (another request did it) or
    /// it was resolved less than [`RESOLVE_INTERVAL`] ago; whether it changed since `seen`.
    async fn refresh(&self, seen: u64) -> bool {
        let mut resolver = self.sentinels.lock().await;
        let current = self.current();
        if current.generation != seen {
            return true;
        }
        if resolver.last.elapsed() < RESOLVE_INTERVAL {
            return false;
        }
        resolver.last = Instant::now();
        let Ok((client, conn)) = resolver.ask().await else {
            // The sentinels may not have failed over yet; the next error asks again.
            return false;
        };
        if client.get_connection_info().addr() == current.client.get_connection_info().addr() {
            // The same primary: its connection manager reconnects by itself.
            return false;
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Current {
            generation: seen + 1,
            client,
            conn,
        });
        true
    }
}

impl Resolver {
    /// The primary the sentinels name (checked to call itself primary), and a connection to it.
    async fn ask(&mut self) -> RedisResult<(Client, ConnectionManager)> {
        let resolve = async {
            let client = self.client.async_get_client().await?;
            let conn = client
                .get_connection_manager_with_config(manager_config())
                .await?;
            Ok((client, conn))
        };
        tokio::time::timeout(RESOLVE_TIMEOUT, resolve)
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from((
                    ErrorKind::Io,
                    "no answer from the sentinels and the primary they name",
                )))
            })
    }
}

/// Whether a failover could be why a command failed: a demoted primary refuses writes, a
/// killed one drops or refuses connections. (EXECABORT: a transaction whose writes a replica
/// refused.)
fn failover_may_explain(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::ExecAbort)
    ) || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_io_error()
        || e.is_timeout()
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
}

/// A blocking pop waits longer than any response timeout would allow.
fn blocking_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(None)
}

/// The TLS material of `ORDERS_REDIS_CA_FILE` and the client certificate settings, read at
/// start; `None`: the system's roots and no client certificate (or no TLS).
struct Tls(Option<TlsCertificates>);

impl Tls {
    fn from_config(config: &Config) -> Result<Tls, QueueError> {
        let read = |setting: &'static str, path: &str| -> Result<Option<Vec<u8>>, QueueError> {
            if path.is_empty() {
                return Ok(None);
            }
            std::fs::read(path)
                .map(Some)
                .map_err(|source| QueueError::ReadFile {
                    setting,
                    path: path.to_string(),
                    source,
                })
        };
        let root_cert = read("ORDERS_REDIS_CA_FILE", &config.redis_ca_file)?;
        let cert = read(
            "ORDERS_REDIS_CLIENT_CERT_FILE",
            &config.redis_client_cert_file,
        )?;
        let key = read(
            "ORDERS_REDIS_CLIENT_KEY_FILE",
            &config.redis_client_key_file,
        )?;
        let client_tls = match (cert, key) {
            (Some(client_cert), Some(client_key)) => Some(ClientTlsConfig {
                client_cert,
                client_key,
            }),
            _ => None,
        };
        if root_cert.is_none() && client_tls.is_none() {
            return Ok(Tls(None));
        }
        Ok(Tls(Some(TlsCertificates {
            client_tls,
            root_cert,
        })))
    }

    /// A client for one server.
    fn client(&self, url: &str) -> RedisResult<Client> {
        match &self.0 {
            Some(certs) => Client::build_with_tls(url, certs.clone()),
            None => Client::open(url),
        }
    }

    /// A cluster client with these seed nodes and this response timeout.
    fn cluster(&self, seeds: &[&str], response_timeout: Duration) -> RedisResult<ClusterClient> {
        let mut builder = ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response_timeout);
        if let Some(certs) = &self.0 {
            builder = builder.certs(certs.clone());
        }
        builder.build()
    }

    /// A client of the sentinels for the primary named `master`. The primary is reached as the
    /// sentinels are (TLS or not, the same certificates, the same credentials as the first
    /// sentinel URL).
    fn sentinels(&self, urls: &[&str], master: &str) -> RedisResult<SentinelClient> {
        let infos = urls
            .iter()
            .map(|url| url.into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?;
        let secure = infos
            .iter()
            .any(|info| matches!(info.addr(), ConnectionAddr::TcpTls { .. }));
        let mut builder = SentinelClientBuilder::new(
            infos.iter().map(|info| info.addr().clone()),
            master,
            SentinelServerType::Master,
        )?;
        if let Some(first) = infos.first() {
            let settings = first.redis_settings();
            if let Some(username) = settings.username() {
                builder = builder
                    .set_client_to_redis_username(username)
                    .set_client_to_sentinel_username(username);
            }
            if let Some(password) = settings.password() {
                builder = builder
                    .set_client_to_redis_password(password)
                    .set_client_to_sentinel_password(password);
            }
        }
        if secure {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certs) = &self.0 {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs.clone());
            }
        }
        builder.build()
    }
}

/// What could not be reached, for the start-up error: the mode, the addresses (never the
/// credentials) and the settings that chose them.
fn describe(config: &Config, urls: &[&str], tls: &Tls) -> String {
    let addresses: Vec<String> = urls
        .iter()
        .map(|url| match url.into_connection_info() {
            Ok(info) => info.addr().to_string(),
            Err(_) => "?".into(),
        })
        .collect();
    let addresses = addresses.join(", ");
    let what = match config.redis_mode {
        RedisMode::Standalone => format!("Redis at {addresses} (REDIS_URL)"),
        RedisMode::Cluster => format!(
            "Redis Cluster through the seed nodes {addresses} (REDIS_URL, \
             ORDERS_REDIS_MODE=cluster)"
        ),
        RedisMode::Sentinel => format!(
            "the primary {:?} through the sentinels {addresses} (REDIS_URL, \
             ORDERS_REDIS_MODE=sentinel, ORDERS_REDIS_SENTINEL_MASTER)",
            config.redis_sentinel_master
        ),
    };
    let tls_used = urls.iter().any(|u| u.starts_with("rediss://"));
    let how = match (tls_used, &tls.0) {
        (false, _) => String::new(),
        (true, Some(certs)) if certs.root_cert.is_some() => format!(
            " over TLS, trusting the CA certificate of ORDERS_REDIS_CA_FILE={}",
            config.redis_ca_file
        ),
        (true, _) => " over TLS, trusting the system's root certificates (ORDERS_REDIS_CA_FILE \
                      is not set)"
            .into(),
    };
    format!("{what}{how}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars: std::collections::HashMap<&str, &str> = vars.iter().copied().collect();
        Config::load_from(|name| vars.get(name).map(|v| v.to_string())).expect("a config")
    }

    #[test]
    fn what_cannot_be_reached_is_named_without_the_password() {
        let ca = std::env::temp_dir().join(format!("orders-ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&ca, "not parsed here").unwrap();
        let ca = ca.to_str().unwrap();
        let tls = config(&[
            ("REDIS_URL", "rediss://user:secret@redis.internal:6380"),
            ("ORDERS_REDIS_CA_FILE", ca),
        ]);
        let text = describe(&tls, &tls.redis_urls(), &Tls::from_config(&tls).unwrap());
        assert!(text.contains("redis.internal:6380 (REDIS_URL)"), "{text}");
        assert!(
            text.contains(&format!("ORDERS_REDIS_CA_FILE={ca}")),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
        let roots = config(&[("REDIS_URL", "rediss://h:1")]);
        let text = describe(&roots, &roots.redis_urls(), &Tls(None));
        assert!(text.contains("system's root certificates"), "{text}");
        let sentinel = config(&[
            ("ORDERS_REDIS_MODE", "sentinel"),
            ("ORDERS_REDIS_SENTINEL_MASTER", "mymaster"),
            ("REDIS_URL", "redis://:pw@s1:26379,redis://s2:26379"),
        ]);
        let text = describe(&sentinel, &sentinel.redis_urls(), &Tls(None));
        assert!(
            text.contains("\"mymaster\" through the sentinels s1:26379, s2:26379")
                && text.contains("ORDERS_REDIS_SENTINEL_MASTER")
                && !text.contains("pw"),
            "{text}"
        );
        // A file that went away after the configuration was loaded is named by its setting.
        std::fs::remove_file(ca).unwrap();
        let error = Tls::from_config(&tls)
            .err()
            .expect("unreadable")
            .to_string();
        assert!(
            error.starts_with("ORDERS_REDIS_CA_FILE: cannot read"),
            "{error}"
        );
    }

    #[test]
    fn only_errors_a_failover_explains_ask_the_sentinels_again() {
        let server = |kind| RedisError::from((ErrorKind::Server(kind), "from the server"));
        let io = |kind| RedisError::from(std::io::Error::from(kind));
        assert!(failover_may_explain(&server(ServerErrorKind::ReadOnly)));
        assert!(failover_may_explain(&io(
            std::io::ErrorKind::ConnectionRefused
        )));
        assert!(failover_may_explain(&io(std::io::ErrorKind::BrokenPipe)));
        assert!(!failover_may_explain(&server(ServerErrorKind::NoScript)));
        assert!(!failover_may_explain(&server(
            ServerErrorKind::ResponseError
        )));
    }
}
