//! One typed configuration, read from `config/default.toml` (compiled in), an optional file named
//! by `ORDERS_CONFIG`, and environment variables, in rising order of precedence.

use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

const DEFAULTS: &str = include_str!("../config/default.toml");

/// Every setting of the service; `config/default.toml` documents each one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database_url: String,
    pub db_pool_size: usize,
    pub db_statement_timeout_ms: u64,
    pub redis_url: String,
    pub redis_mode: RedisMode,
    pub redis_sentinel_master: String,
    pub redis_ca_file: String,
    pub redis_client_cert_file: String,
    pub redis_client_key_file: String,
    pub redis_min_replicas: u32,
    pub redis_replica_timeout_ms: u64,
    pub redis_prefix: String,
    pub event_channel: String,
    pub failed_channel: String,
    pub cancelled_channel: String,
    pub listen: SocketAddr,
    pub admin_token: String,
    pub http_max_connections: usize,
    pub http_header_timeout_ms: u64,
    pub http_max_header_bytes: usize,
    pub http_write_timeout_ms: u64,
    pub http_body_timeout_ms: u64,
    pub http_body_min_rate: u64,
    pub http_body_budget_bytes: usize,
    pub admin_auth_max_failures: u32,
    pub admin_auth_window_ms: u64,
    pub admin_auth_max_clients: usize,
    pub processing_delay_ms: DelayRange,
    pub threads: usize,
    pub fetch_loops: usize,
    pub max_in_flight: usize,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub max_queue_depth: u64,
    pub lease_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub notifier_catch_up_ms: u64,
    pub notifier_claim_idle_ms: u64,
    pub event_stream_maxlen: u64,
    pub sse_max_streams: usize,
    pub sse_buffer_events: usize,
    pub sse_heartbeat_ms: u64,
    pub sse_max_stream_ms: u64,
    pub log_format: LogFormat,
    pub log_level: String,
    pub trace_endpoint: String,
    pub trace_sample_ratio: f64,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Term,
    Json,
}

/// How Redis is deployed, and so what `REDIS_URL` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (`REDIS_URL` is its URL).
    Standalone,
    /// Redis Cluster (`REDIS_URL` lists seed nodes, comma-separated).
    Cluster,
    /// A primary watched by Sentinel (`REDIS_URL` lists the sentinels, comma-separated).
    Sentinel,
}

/// The simulated processing time: uniform between `min` and `max` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct DelayRange {
    pub min: u64,
    pub max: u64,
}

impl TryFrom<String> for DelayRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || format!("processing_delay_ms: expected \"MIN-MAX\" or \"N\", got {text:?}");
        let (min, max) = match text.split_once('-') {
            Some((a, b)) => (a.trim().parse(), b.trim().parse()),
            None => (text.trim().parse(), text.trim().parse()),
        };
        match (min, max) {
            (Ok(min), Ok(max)) if min <= max => Ok(DelayRange { min, max }),
            _ => Err(bad()),
        }
    }
}

impl DelayRange {
    /// One draw from the range.
    pub fn sample(self) -> Duration {
        if self.max == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rand::random_range(self.min..=self.max))
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid TOML in {path}: {source}")]
    Toml {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{name}={value:?} is not a valid value for {key}")]
    Env {
        name: String,
        value: String,
        key: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the configuration the running process should use.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_from(|name| std::env::var(name).ok())
    }

    /// Loads the configuration with `env` standing for the environment (tests pass their own).
    pub fn load_from(env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        // A renamed setting would otherwise be ignored without a word.
        if env("ORDERS_WORKERS").is_some() {
            return Err(ConfigError::Invalid(
                "ORDERS_WORKERS was renamed ORDERS_FETCH_LOOPS (fetch loops per worker process)"
                    .into(),
            ));
        }
        let mut table = parse_table(DEFAULTS, "config/default.toml")?;
        if let Some(path) = env("ORDERS_CONFIG") {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            table.extend(parse_table(&text, &path)?);
        }
        let keys: Vec<String> = table.keys().cloned().collect();
        for key in keys {
            let name = format!("ORDERS_{}", key.to_uppercase());
            let alias = match key.as_str() {
                "database_url" => env("DATABASE_URL"),
                "redis_url" => env("REDIS_URL"),
                "trace_endpoint" => env("OTEL_EXPORTER_OTLP_ENDPOINT"),
                _ => None,
            };
            let Some(value) = env(&name).or(alias) else {
                continue;
            };
            let parsed = match &table[&key] {
                toml::Value::Integer(_) => value.trim().parse().map(toml::Value::Integer).ok(),
                toml::Value::Float(_) => value.trim().parse().map(toml::Value::Float).ok(),
                _ => Some(toml::Value::String(value.clone())),
            };
            let parsed = parsed.ok_or_else(|| ConfigError::Env {
                name,
                value,
                key: key.clone(),
            })?;
            table.insert(key, parsed);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.check()
    }

    fn check(self) -> Result<Config, ConfigError> {
        let positive = [
            ("db_pool_size", self.db_pool_size),
            ("fetch_loops", self.fetch_loops),
            ("max_in_flight", self.max_in_flight),
            ("max_attempts", self.max_attempts as usize),
            ("lease_ms", self.lease_ms as usize),
            ("http_max_connections", self.http_max_connections),
            (
                "http_header_timeout_ms",
                self.http_header_timeout_ms as usize,
            ),
            ("http_write_timeout_ms", self.http_write_timeout_ms as usize),
            ("http_body_timeout_ms", self.http_body_timeout_ms as usize),
            ("http_body_min_rate", self.http_body_min_rate as usize),
            (
                "admin_auth_max_failures",
                self.admin_auth_max_failures as usize,
            ),
            ("admin_auth_window_ms", self.admin_auth_window_ms as usize),
            ("admin_auth_max_clients", self.admin_auth_max_clients),
            (
                "notifier_claim_idle_ms",
                self.notifier_claim_idle_ms as usize,
            ),
            ("sse_max_streams", self.sse_max_streams),
            ("sse_buffer_events", self.sse_buffer_events),
            ("sse_heartbeat_ms", self.sse_heartbeat_ms as usize),
            ("sse_max_stream_ms", self.sse_max_stream_ms as usize),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
        }
        // Beyond a day a timeout is a mistake (and far enough beyond, a time that overflows).
        let day = 24 * 3600 * 1000;
        let timeouts = [
            ("http_header_timeout_ms", self.http_header_timeout_ms),
            ("http_write_timeout_ms", self.http_write_timeout_ms),
            ("http_body_timeout_ms", self.http_body_timeout_ms),
            ("shutdown_timeout_ms", self.shutdown_timeout_ms),
            ("sse_heartbeat_ms", self.sse_heartbeat_ms),
            ("sse_max_stream_ms", self.sse_max_stream_ms),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, v)| *v > day) {
            return Err(ConfigError::Invalid(format!(
                "{name} must be at most {day} (a day)"
            )));
        }
        // Three quarters of the budget are the batches': less than the largest body would
        // refuse every such body, forever.
        let least = crate::http::MAX_BATCH_BODY as usize * 2;
        if self.http_body_budget_bytes < least {
            return Err(ConfigError::Invalid(format!(
                "http_body_budget_bytes must be at least {least} (the largest body accepted is \
                 half that, and batches have three quarters of the budget)"
            )));
        }
        if self.event_stream_maxlen < 1000 {
            return Err(ConfigError::Invalid(
                "ORDERS_EVENT_STREAM_MAXLEN (event_stream_maxlen) must be at least 1000: the \
                 stream is how consumers catch up, and the notifier reads it"
                    .into(),
            ));
        }
        // Event streams hold connections: they must leave room under the cap for orders.
        if self.sse_max_streams >= self.http_max_connections {
            return Err(ConfigError::Invalid(
                "sse_max_streams must be less than http_max_connections (each event stream holds \
                 a connection)"
                    .into(),
            ));
        }
        if self.sse_buffer_events > 1 << 20 {
            return Err(ConfigError::Invalid(
                "sse_buffer_events must be at most 1048576".into(),
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.http_max_header_bytes) {
            return Err(ConfigError::Invalid(
                "http_max_header_bytes must be between 1024 and 1048576".into(),
            ));
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(['{', '}']) {
            return Err(ConfigError::Invalid(
                "redis_prefix must be non-empty and hold no braces".into(),
            ));
        }
        check_admin_token(&self.admin_token)?;
        self.check_redis()?;
        self.check_tracing()?;
        Ok(self)
    }

    /// The Redis settings must describe one deployment that can be reached: the URL list fits
    /// the mode, TLS files are readable and only given with `rediss://`.
    fn check_redis(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let urls = self.redis_urls();
        if urls.is_empty() {
            return invalid("REDIS_URL (redis_url) is empty".into());
        }
        if self.redis_mode == RedisMode::Standalone && urls.len() > 1 {
            return invalid(format!(
                "REDIS_URL (redis_url) lists {} addresses: a list needs ORDERS_REDIS_MODE=cluster \
                 (seed nodes) or sentinel (sentinels)",
                urls.len()
            ));
        }
        for (i, url) in urls.iter().enumerate() {
            // The message leaves the URL out: it may hold a password.
            if let Err(e) = redis::IntoConnectionInfo::into_connection_info(*url) {
                return invalid(format!(
                    "REDIS_URL (redis_url): address {} of {} is not a Redis URL: {e}",
                    i + 1,
                    urls.len()
                ));
            }
        }
        let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
        if tls != 0 && tls != urls.len() {
            return invalid(
                "REDIS_URL (redis_url) mixes rediss:// and redis:// addresses: use one scheme"
                    .into(),
            );
        }
        let sentinel = self.redis_mode == RedisMode::Sentinel;
        if sentinel && self.redis_sentinel_master.trim().is_empty() {
            return invalid(
                "ORDERS_REDIS_SENTINEL_MASTER (redis_sentinel_master) must name the master the \
                 sentinels watch when ORDERS_REDIS_MODE=sentinel"
                    .into(),
            );
        }
        if !sentinel && !self.redis_sentinel_master.is_empty() {
            return invalid(
                "ORDERS_REDIS_SENTINEL_MASTER (redis_sentinel_master) is set but \
                 ORDERS_REDIS_MODE is not sentinel"
                    .into(),
            );
        }
        let files = [
            ("ORDERS_REDIS_CA_FILE (redis_ca_file)", &self.redis_ca_file),
            (
                "ORDERS_REDIS_CLIENT_CERT_FILE (redis_client_cert_file)",
                &self.redis_client_cert_file,
            ),
            (
                "ORDERS_REDIS_CLIENT_KEY_FILE (redis_client_key_file)",
                &self.redis_client_key_file,
            ),
        ];
        if self.redis_client_cert_file.is_empty() != self.redis_client_key_file.is_empty() {
            return invalid(
                "ORDERS_REDIS_CLIENT_CERT_FILE and ORDERS_REDIS_CLIENT_KEY_FILE go together: set \
                 both (a client certificate) or neither"
                    .into(),
            );
        }
        for (name, path) in files.iter().filter(|(_, path)| !path.is_empty()) {
            if tls == 0 {
                return invalid(format!(
                    "{name} is set but REDIS_URL (redis_url) does not use rediss:// (TLS)"
                ));
            }
            if let Err(e) = std::fs::File::open(path) {
                return invalid(format!("{name}: cannot read {path}: {e}"));
            }
        }
        if !(1..=60_000).contains(&self.redis_replica_timeout_ms) {
            return invalid(
                "ORDERS_REDIS_REPLICA_TIMEOUT_MS (redis_replica_timeout_ms) must be between 1 \
                 and 60000"
                    .into(),
            );
        }
        Ok(())
    }

    /// A sampling ratio is a share; the exporter speaks plain HTTP to one host.
    fn check_tracing(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(ConfigError::Invalid(format!(
                "ORDERS_TRACE_SAMPLE_RATIO (trace_sample_ratio) must be between 0 and 1, got {}",
                self.trace_sample_ratio
            )));
        }
        let endpoint = self.trace_endpoint.trim();
        if endpoint.is_empty() {
            return Ok(());
        }
        let uri: Result<warp::http::Uri, _> = endpoint.parse();
        let fine = uri.as_ref().is_ok_and(|u| {
            u.scheme_str() == Some("http") && u.host().is_some() && u.query().is_none()
        });
        if !fine {
            return Err(ConfigError::Invalid(format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT (trace_endpoint) must be an http:// URL such as \
                 http://127.0.0.1:4318 (spans go to <endpoint>/v1/traces; the exporter speaks \
                 plain HTTP, to a collector beside the service), got {endpoint:?}"
            )));
        }
        Ok(())
    }

    /// The addresses of `REDIS_URL`: one server, or (cluster and sentinel modes) a
    /// comma-separated list of seed nodes or sentinels.
    pub fn redis_urls(&self) -> Vec<&str> {
        self.redis_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// Threads of the async runtime: `threads`, or half the CPUs (at least one) when it is 0.
    pub fn runtime_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get() / 2)
                .max(1),
            n => n,
        }
    }

    /// The admin token, if one is configured.
    pub fn admin_token(&self) -> Option<&str> {
        Some(self.admin_token.as_str()).filter(|t| !t.is_empty())
    }
}

/// Shortest admin token accepted: a token short enough to guess is no lock.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// An admin token that is set must be one a client can send and nobody can guess: at least
/// [`MIN_ADMIN_TOKEN_LEN`] visible ASCII characters (a bearer token holds no space, control or
/// non-ASCII character, and a padded token could never match, a silent lockout). Empty is
/// allowed: admin routes are then disabled. The message never repeats the token.
fn check_admin_token(token: &str) -> Result<(), ConfigError> {
    let problem = if token.is_empty() {
        return Ok(());
    } else if token.trim() != token {
        "has leading or trailing whitespace".to_string()
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        "holds a space, a control or a non-ASCII character".to_string()
    } else if token.len() < MIN_ADMIN_TOKEN_LEN {
        format!("is shorter than {MIN_ADMIN_TOKEN_LEN} characters")
    } else {
        return Ok(());
    };
    Err(ConfigError::Invalid(format!(
        "ORDERS_ADMIN_TOKEN (admin_token) {problem}: it must be empty (admin routes disabled) or \
         at least {MIN_ADMIN_TOKEN_LEN} visible ASCII characters, with no spaces"
    )))
}

fn parse_table(text: &str, path: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|source| ConfigError::Toml {
            path: path.to_string(),
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_work_against_local_services() {
        let config = load(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(
            config.processing_delay_ms,
            DelayRange {
                min: 1000,
                max: 3000
            }
        );
        assert_eq!(config.max_in_flight, 1000);
        assert_eq!(config.event_channel, "order.completed");
        assert_eq!(config.failed_channel, "order.failed");
        assert_eq!(config.cancelled_channel, "order.cancelled");
        assert_eq!(config.admin_token(), None);
        assert_eq!(config.log_format, LogFormat::Term);
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load(&[
            ("DATABASE_URL", "postgres://x@h/db"),
            ("ORDERS_PROCESSING_DELAY_MS", "0"),
            ("ORDERS_MAX_IN_FLIGHT", "5000"),
            ("ORDERS_ADMIN_TOKEN", "s3cret-admin-token-1"),
            ("ORDERS_LOG_FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(config.database_url, "postgres://x@h/db");
        assert_eq!(config.processing_delay_ms, DelayRange { min: 0, max: 0 });
        assert_eq!(config.max_in_flight, 5000);
        assert_eq!(config.admin_token(), Some("s3cret-admin-token-1"));
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_are_named() {
        assert!(matches!(
            load(&[("ORDERS_FETCH_LOOPS", "many")]),
            Err(ConfigError::Env { .. })
        ));
        assert!(load(&[("ORDERS_FETCH_LOOPS", "0")]).is_err());
        assert!(matches!(
            load(&[("ORDERS_WORKERS", "2")]),
            Err(ConfigError::Invalid(m)) if m.contains("ORDERS_FETCH_LOOPS")
        ));
        assert!(load(&[("ORDERS_PROCESSING_DELAY_MS", "3-1")]).is_err());
        assert!(load(&[("ORDERS_LOG_FORMAT", "xml")]).is_err());
        assert!(load(&[("ORDERS_LISTEN", "nowhere")]).is_err());
    }

    #[test]
    fn http_budgets_that_cannot_work_are_refused() {
        assert!(load(&[("ORDERS_HTTP_MAX_CONNECTIONS", "0")]).is_err());
        assert!(load(&[("ORDERS_HTTP_HEADER_TIMEOUT_MS", "0")]).is_err());
        assert!(load(&[("ORDERS_HTTP_MAX_HEADER_BYTES", "100")]).is_err());
        assert!(load(&[("ORDERS_HTTP_WRITE_TIMEOUT_MS", "9999999999999")]).is_err());
        // Smaller than a full batch: every full batch would be refused.
        assert!(matches!(
            load(&[("ORDERS_HTTP_BODY_BUDGET_BYTES", "1000000")]),
            Err(ConfigError::Invalid(m)) if m.contains("http_body_budget_bytes")
        ));
        let config = load(&[]).unwrap();
        assert_eq!(config.http_max_connections, 4096);
        assert_eq!(config.http_body_budget_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn a_set_admin_token_must_be_long_and_sendable() {
        for (token, why) in [
            ("x", "shorter than 16"),
            ("fifteen-chars-x", "shorter than 16"),
            (" ", "whitespace"),
            ("abc ", "whitespace"),
            (" sixteen-chars-xx", "whitespace"),
            ("sixteen-chars-xx\n", "whitespace"),
            ("sixteen chars xxx", "a space"),
            ("sixteen-chars-x\u{7}x", "a control"),
            ("sixteen-chars-café", "non-ASCII"),
        ] {
            let error = load(&[("ORDERS_ADMIN_TOKEN", token)])
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("ORDERS_ADMIN_TOKEN (admin_token)") && error.contains(why),
                "{token:?}: {error}"
            );
            if token.len() > 8 {
                assert!(
                    !error.contains(token),
                    "the message repeats the token: {error}"
                );
            }
        }
        let sixteen = "sixteen-chars-xx";
        let config = load(&[("ORDERS_ADMIN_TOKEN", sixteen)]).unwrap();
        assert_eq!(config.admin_token(), Some(sixteen));
        let config = load(&[("ORDERS_ADMIN_TOKEN", "")]).unwrap();
        assert_eq!(config.admin_token(), None, "empty: admin routes disabled");
    }

    #[test]
    fn redis_defaults_are_one_plain_server_without_wait() {
        let config = load(&[]).unwrap();
        assert_eq!(config.redis_mode, RedisMode::Standalone);
        assert_eq!(config.redis_urls(), vec!["redis://127.0.0.1:6379"]);
        assert_eq!(config.redis_min_replicas, 0);
        assert_eq!(config.redis_replica_timeout_ms, 1000);
        assert!(config.redis_ca_file.is_empty() && config.redis_sentinel_master.is_empty());
    }

    #[test]
    fn redis_modes_take_lists_of_addresses() {
        let config = load(&[
            ("ORDERS_REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://a:7000, redis://b:7001,redis://c:7002"),
        ])
        .unwrap();
        assert_eq!(config.redis_mode, RedisMode::Cluster);
        assert_eq!(config.redis_urls().len(), 3);
        let config = load(&[
            ("ORDERS_REDIS_MODE", "sentinel"),
            ("ORDERS_REDIS_SENTINEL_MASTER", "mymaster"),
            ("REDIS_URL", "redis://s1:26379,redis://s2:26379"),
            ("ORDERS_REDIS_MIN_REPLICAS", "1"),
            ("ORDERS_REDIS_REPLICA_TIMEOUT_MS", "250"),
        ])
        .unwrap();
        assert_eq!(config.redis_mode, RedisMode::Sentinel);
        assert_eq!(config.redis_sentinel_master, "mymaster");
        assert_eq!(
            (config.redis_min_replicas, config.redis_replica_timeout_ms),
            (1, 250)
        );
    }

    /// Each wrong Redis setting is refused with a message that names it.
    #[test]
    fn wrong_redis_settings_are_named() {
        let pem = std::env::temp_dir().join(format!("orders-config-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&pem, "not checked here").unwrap();
        let pem = pem.to_str().unwrap();
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("ORDERS_REDIS_MODE", "ring")], "redis_mode"),
            (
                &[("REDIS_URL", "redis://a:1,redis://b:2")],
                "ORDERS_REDIS_MODE=cluster",
            ),
            (&[("REDIS_URL", " , ")], "REDIS_URL (redis_url) is empty"),
            (&[("REDIS_URL", "http://x")], "REDIS_URL (redis_url)"),
            (
                &[
                    ("ORDERS_REDIS_MODE", "cluster"),
                    ("REDIS_URL", "rediss://a:1,redis://b:2"),
                ],
                "mixes rediss://",
            ),
            (
                &[("ORDERS_REDIS_MODE", "sentinel")],
                "ORDERS_REDIS_SENTINEL_MASTER",
            ),
            (
                &[("ORDERS_REDIS_SENTINEL_MASTER", "m")],
                "ORDERS_REDIS_MODE is not sentinel",
            ),
            (
                &[
                    ("REDIS_URL", "rediss://h:1"),
                    ("ORDERS_REDIS_CLIENT_CERT_FILE", pem),
                ],
                "ORDERS_REDIS_CLIENT_KEY_FILE go together",
            ),
            (
                &[("ORDERS_REDIS_CA_FILE", pem)],
                "ORDERS_REDIS_CA_FILE (redis_ca_file) is set but REDIS_URL",
            ),
            (
                &[
                    ("REDIS_URL", "rediss://h:1"),
                    ("ORDERS_REDIS_CA_FILE", "/nonexistent/ca.pem"),
                ],
                "ORDERS_REDIS_CA_FILE (redis_ca_file): cannot read /nonexistent/ca.pem",
            ),
            (
                &[("ORDERS_REDIS_REPLICA_TIMEOUT_MS", "0")],
                "ORDERS_REDIS_REPLICA_TIMEOUT_MS",
            ),
            (
                &[("ORDERS_REDIS_REPLICA_TIMEOUT_MS", "60001")],
                "ORDERS_REDIS_REPLICA_TIMEOUT_MS",
            ),
            (&[("ORDERS_REDIS_MIN_REPLICAS", "-1")], "redis_min_replicas"),
        ];
        for (vars, named) in cases {
            let error = load(vars).expect_err(named).to_string();
            assert!(error.contains(named), "{vars:?}: {error}");
        }
        let config = load(&[
            ("REDIS_URL", "rediss://user:secret@h:1"),
            ("ORDERS_REDIS_CA_FILE", pem),
            ("ORDERS_REDIS_CLIENT_CERT_FILE", pem),
            ("ORDERS_REDIS_CLIENT_KEY_FILE", pem),
        ])
        .unwrap();
        assert_eq!(config.redis_ca_file, pem);
        let error = load(&[("REDIS_URL", "redis://user:secret@h:1,redis://h:2")])
            .unwrap_err()
            .to_string();
        assert!(
            !error.contains("secret"),
            "the message repeats a password: {error}"
        );
        let _ = std::fs::remove_file(pem);
    }

    #[test]
    fn tracing_is_off_by_default_and_its_settings_are_checked() {
        let config = load(&[]).unwrap();
        assert_eq!(
            (config.trace_endpoint.as_str(), config.trace_sample_ratio),
            ("", 1.0)
        );
        let config = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("ORDERS_TRACE_SAMPLE_RATIO", "0.25"),
        ])
        .unwrap();
        assert_eq!(config.trace_endpoint, "http://127.0.0.1:4318");
        assert_eq!(config.trace_sample_ratio, 0.25);
        for (vars, named) in [
            (
                ("ORDERS_TRACE_SAMPLE_RATIO", "1.5"),
                "ORDERS_TRACE_SAMPLE_RATIO",
            ),
            (
                ("ORDERS_TRACE_SAMPLE_RATIO", "-0.1"),
                "ORDERS_TRACE_SAMPLE_RATIO",
            ),
            (
                ("ORDERS_TRACE_SAMPLE_RATIO", "NaN"),
                "ORDERS_TRACE_SAMPLE_RATIO",
            ),
            (
                ("ORDERS_TRACE_SAMPLE_RATIO", "half"),
                "ORDERS_TRACE_SAMPLE_RATIO",
            ),
            (
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector"),
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
        ] {
            let error = load(&[vars]).expect_err(named).to_string();
            assert!(error.contains(named), "{vars:?}: {error}");
        }
    }

    #[test]
    fn delays_sample_within_their_range() {
        let range = DelayRange::try_from("10-20".to_string()).unwrap();
        for _ in 0..100 {
            let d = range.sample().as_millis();
            assert!((10..=20).contains(&d));
        }
        assert_eq!(DelayRange { min: 0, max: 0 }.sample(), Duration::ZERO);
    }
}
