//! Private servers for the scenarios that break them: a `redis-server` and a PostgreSQL cluster
//! on free ports, data in temporary directories, and a scenario's [`Stage`] (a Redis topology,
//! PostgreSQL, the service processes), logging under `target/chaos-logs/<scenario>/`. Each server
//! is killed (and its data removed) on drop, panic or not.

use super::process::{dying_with_us, free_port, signal, wait_child, Process};
use super::tally::Scene;
use super::temp::TempDir;
use super::wait_until;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The log directory of one scenario, `target/chaos-logs/<scenario>/` with `servers/` inside,
/// made afresh; the previous run's moves to `<scenario>.previous/`, so that a rare failure
/// survives one more run.
pub fn scenario_log_dir(scenario: &str) -> PathBuf {
    let logs = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/chaos-logs");
    let log_dir = logs.join(scenario);
    let previous = logs.join(format!("{scenario}.previous"));
    let _ = std::fs::remove_dir_all(&previous);
    let _ = std::fs::rename(&log_dir, &previous);
    std::fs::create_dir_all(log_dir.join("servers")).expect("create the log dir");
    log_dir
}

/// Where PostgreSQL 15 is installed on Debian; `PG_BIN` overrides it.
fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    Path::new(&dir).join(tool)
}

/// Who PostgreSQL runs as: itself refuses to run as root, so a root test runs it as the
/// `postgres` user (uid and gid), and owns its directories to that user.
#[derive(Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn postgres_user() -> Option<RunAs> {
    let id = |flag: &str, user: Option<&str>| -> Option<u32> {
        let out = Command::new("id").arg(flag).args(user).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u", None)? != 0 {
        return None;
    }
    Some(RunAs {
        uid: id("-u", Some("postgres")).expect("running as root needs a `postgres` user"),
        gid: id("-g", Some("postgres")).expect("the gid of `postgres`"),
    })
}

/// Opens a log file for appending (a restarted server adds to the same file).
pub fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open a log file")
}

/// How Redis syncs its append-only file.
#[derive(Clone, Copy, Debug)]
pub enum Fsync {
    /// `appendfsync everysec`, what the project ships: writes answered in about the last second
    /// can be lost (a crash of the machine; or a `kill -9` while a slow background fsync holds
    /// the write back).
    EverySec,
    /// `appendfsync always`: every write is on disk before Redis answers.
    Always,
}

/// A private `redis-server` on a free port, with a directory of its own; restartable on the same
/// port and directory.
pub struct RedisServer {
    pub port: u16,
    /// Set: the server speaks TLS only (`--port 0 --tls-port <port>`), with these files.
    tls: Option<RedisTls>,
    /// What it is started with besides its port, address and directory.
    args: Vec<String>,
    /// The text of a config file given as the first argument (a sentinel needs one it can
    /// rewrite), written into its directory.
    conf: Option<String>,
    dir: TempDir,
    log: PathBuf,
    child: Option<Child>,
}

/// The PEM files of a TLS-only Redis: its certificate and key, and the CA it and its clients
/// trust (clients may present a certificate: `--tls-auth-clients optional`).
#[derive(Clone)]
pub struct RedisTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl RedisServer {
    /// A server with its append-only file on, logging to `<log_dir>/redis.log`; speaking TLS
    /// only when `tls` is given.
    pub async fn with_aof(log_dir: &Path, fsync: Fsync, tls: Option<RedisTls>) -> RedisServer {
        let fsync = match fsync {
            Fsync::EverySec => "everysec",
            Fsync::Always => "always",
        };
        let args = ["--appendonly", "yes", "--appendfsync", fsync, "--save", ""];
        Self::start_with(log_dir.join("redis.log"), tls, None, &args).await
    }

    /// A server started as `redis-server [conf] --port P --bind 127.0.0.1 --dir D <args>`,
    /// logging to `log`; returns once it answers PING.
    pub async fn start(log: PathBuf, conf: Option<&str>, args: &[&str]) -> RedisServer {
        Self::start_with(log, None, conf, args).await
    }

    async fn start_with(
        log: PathBuf,
        tls: Option<RedisTls>,
        conf: Option<&str>,
        args: &[&str],
    ) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            tls,
            args: args.iter().map(|a| a.to_string()).collect(),
            conf: conf.map(str::to_string),
            dir: TempDir::new("redis"),
            log,
            child: None,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let log = append(&self.log);
        let mut command = dying_with_us("redis-server");
        if let Some(text) = &self.conf {
            let path = self.dir.path().join("redis.conf");
            // A restarted sentinel keeps what it wrote into its file.
            if !path.exists() {
                std::fs::write(&path, text).expect("write the redis config file");
            }
            command.arg(path);
        }
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", "optional"]),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether it is running (not killed by [`RedisServer::kill9`]).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A client of this server (trusting its CA when it speaks TLS).
    pub fn client(&self) -> redis::Client {
        let client = match &self.tls {
            None => redis::Client::open(self.url()),
            Some(tls) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&tls.ca).expect("read the CA certificate")),
                },
            ),
        };
        client.expect("a client of the private redis")
    }

    /// Waits until the server answers PING (after loading its append-only file).
    async fn wait_ready(&self) {
        let what = format!(
            "redis-server on {} to answer (see {})",
            self.port,
            self.log.display()
        );
        wait_until(&what, Duration::from_secs(20), async || {
            let Ok(mut conn) = self.try_conn().await else {
                return false;
            };
            let pong = redis::cmd("PING").query_async::<String>(&mut conn).await;
            pong.is_ok()
        })
        .await;
    }

    /// A fresh connection, or why there is none (it may be down).
    pub async fn try_conn(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        self.client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A fresh connection (the server may have restarted since the last one).
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.try_conn().await.expect("connect to the private redis")
    }

    /// `kill -9`: no shutdown, no final fsync.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, from the same directory (and append-only file).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is still running");
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A private PostgreSQL cluster (`initdb` + `postgres` as a child process) with the database
/// `orders`.
pub struct PostgresServer {
    pub port: u16,
    /// Holds `data/` (the cluster) and `socket/` (its Unix socket).
    dir: TempDir,
    run_as: Option<RunAs>,
    log: PathBuf,
    child: Option<Child>,
}

impl PostgresServer {
    /// A server not started yet: its directories (owned by the `postgres` user when we are
    /// root) and a free port.
    fn unstarted(label: &str, log: PathBuf) -> PostgresServer {
        let dir = TempDir::new(label);
        let run_as = postgres_user();
        std::fs::create_dir_all(dir.path().join("socket")).expect("socket dir");
        if let Some(user) = run_as {
            for path in [dir.path().to_path_buf(), dir.path().join("socket")] {
                std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))
                    .expect("chown the postgres dirs");
            }
        }
        PostgresServer {
            port: free_port(),
            dir,
            run_as,
            log,
            child: None,
        }
    }

    /// Runs one of the PostgreSQL programs to its end with the arguments `args` adds, its
    /// output to the server's log.
    fn run_tool(&self, tool: &str, args: impl FnOnce(&mut Command) -> &mut Command) {
        let log = append(&self.log);
        let mut command = self.command(tool);
        args(&mut command)
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        let status = command
            .status()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(
            status.success(),
            "{tool} failed (see {})",
            self.log.display()
        );
    }

    /// Initialises and starts a server logging to `<log_dir>/postgres.log`, with a database
    /// `orders`.
    pub async fn start(log_dir: &Path) -> PostgresServer {
        let mut server = Self::unstarted("postgres", log_dir.join("postgres.log"));
        let data = server.data_dir();
        server.run_tool("initdb", |c| {
            c.arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
                .arg("--no-sync")
        });
        server.spawn().await;
        server
            .connect("postgres")
            .await
            .expect("connect to the private postgres")
            .batch_execute("CREATE DATABASE orders")
            .await
            .expect("create the database orders");
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for one of the PostgreSQL programs, as the `postgres` user when we are root.
    fn command(&self, tool: &str) -> Command {
        let mut command = dying_with_us(pg_bin(tool));
        command.stdin(Stdio::null()).env("LC_ALL", "C");
        if let Some(user) = self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        command
    }

    async fn spawn(&mut self) {
        let log = append(&self.log);
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path().join("socket"))
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ])
            // Speed only; the outage scenario stops it cleanly, so nothing depends on fsync.
            .args(["-c", "fsync=off"])
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let what = format!("postgres to answer (see {})", self.log.display());
        wait_until(&what, Duration::from_secs(30), async || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited with {status} (see {})", self.log.display());
            }
            self.connect("postgres").await.is_ok()
        })
        .await;
    }

    /// The URL of a database on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A connection of the test's own, through the Unix socket: what pg_hba.conf asks of TCP
    /// clients (TLS only, see [`PostgresServer::require_tls`]) is the service's business.
    pub async fn connect(
        &self,
        database: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.dir.path().join("socket"))
            .port(self.port)
            .user("postgres")
            .dbname(database)
            .connect_timeout(Duration::from_secs(2));
        let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Restarts the server with TLS on (`cert` and `key` for itself) and TCP clients accepted
    /// over TLS only (`hostssl`; a plain connection is refused); with `client_ca`, they must
    /// also present a certificate that CA signed (`clientcert=verify-ca`).
    #[allow(dead_code)] // tests/postgres_tls.rs, not the chaos suite
    pub async fn require_tls(&mut self, cert: &Path, key: &Path, client_ca: Option<&Path>) {
        let data = self.data_dir();
        // PostgreSQL wants its key readable by itself alone.
        for (from, name, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
            let to = data.join(name);
            std::fs::copy(from, &to).expect("copy a TLS file into the data dir");
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .expect("chmod a TLS file");
            if let Some(user) = self.run_as {
                std::os::unix::fs::chown(&to, Some(user.uid), Some(user.gid))
                    .expect("chown a TLS file");
            }
        }
        let mut settings =
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n".to_string();
        let mut hba =
            "local all all trust\nlocal replication all trust\nhostssl all all 127.0.0.1/32 trust"
                .to_string();
        if let Some(ca) = client_ca {
            std::fs::copy(ca, data.join("client-ca.crt")).expect("copy the client CA");
            settings.push_str("ssl_ca_file = 'client-ca.crt'\n");
            hba.push_str(" clientcert=verify-ca");
        }
        hba.push('\n');
        std::fs::write(data.join("conf.d-tls.conf"), settings).expect("write the TLS settings");
        let mut conf = OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(&mut conf, b"include 'conf.d-tls.conf'\n")
            .expect("include the TLS settings");
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        self.stop_fast();
        self.restart().await;
    }

    /// A hot standby of this server, streaming from it: a base backup over the Unix socket
    /// (`pg_basebackup -R`), so with the same settings (TLS included), on a port of its own.
    /// `pg_is_in_recovery()` is true there, and it takes no writes.
    #[allow(dead_code)] // tests/postgres_tls.rs, not the chaos suite
    pub async fn start_standby(&self) -> PostgresServer {
        let log = self.log.with_file_name("postgres-standby.log");
        let mut standby = Self::unstarted("postgres-standby", log);
        let data = standby.data_dir();
        standby.run_tool("pg_basebackup", |c| {
            c.arg("-D")
                .arg(&data)
                .arg("-h")
                .arg(self.dir.path().join("socket"))
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-R"])
                .args(["--no-sync", "--checkpoint=fast"])
        });
        standby.spawn().await;
        standby
    }

    /// Stops the server as `pg_ctl stop -m fast` would (SIGINT: roll back open transactions,
    /// disconnect every client, shut down cleanly).
    pub fn stop_fast(&mut self) {
        if let Some(mut child) = self.child.take() {
            assert!(signal(child.id(), "INT"), "SIGINT to postgres");
            if wait_child(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("postgres did not stop in 20 s");
            }
        }
    }

    /// Starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "postgres is still running");
        self.spawn().await;
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the postmaster takes its backends down with it.
            signal(child.id(), "QUIT");
            if wait_child(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A Redis set-up the service can run against, as a scenario sees it.
// Only the test binaries implement and call it, so `Send` bounds on the futures do not matter.
#[allow(async_fn_in_trait)]
pub trait Topology {
    /// The `REDIS_URL` the service is given by default.
    fn service_url(&self) -> String;
    /// A fresh connection to the server that holds `key` now.
    async fn holder_of(&self, key: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection>;
}

impl Topology for RedisServer {
    fn service_url(&self) -> String {
        self.url()
    }

    async fn holder_of(&self, _key: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        self.try_conn().await
    }
}

/// One scenario's private servers: a Redis topology `R` and PostgreSQL (database `orders`), and
/// the directory the logs of its servers (`servers/`) and service processes go to.
pub struct Stage<R> {
    pub scenario: String,
    pub log_dir: PathBuf,
    pub redis: R,
    pub postgres: PostgresServer,
}

impl<R: Topology> Stage<R> {
    /// Starts PostgreSQL and, at the same time, the Redis that `redis` starts (given the
    /// directory for server logs). Logs go to `target/chaos-logs/<scenario>/`.
    pub async fn launch(scenario: &str, redis: impl AsyncFnOnce(PathBuf) -> R) -> Stage<R> {
        let log_dir = scenario_log_dir(scenario);
        let servers = log_dir.join("servers");
        let (redis, postgres) =
            tokio::join!(redis(servers.clone()), PostgresServer::start(&servers));
        Stage {
            scenario: scenario.to_string(),
            log_dir,
            redis,
            postgres,
        }
    }

    /// What every `orders` process of this scenario gets in its environment.
    pub fn env(&self) -> HashMap<String, String> {
        HashMap::from([
            ("DATABASE_URL".into(), self.postgres.url("orders")),
            ("REDIS_URL".into(), self.redis.service_url()),
            ("ORDERS_LOG_FORMAT".into(), "json".into()),
            ("ORDERS_NOTIFIER_CATCH_UP_MS".into(), "500".into()),
            ("ORDERS_LEASE_MS".into(), "1500".into()),
            ("ORDERS_SHUTDOWN_TIMEOUT_MS".into(), "2000".into()),
            ("ORDERS_DB_POOL_SIZE".into(), "8".into()),
        ])
    }

    /// A key under the service's default prefix: `queue` → `{orders}:queue`.
    pub fn key(&self, name: &str) -> String {
        format!("{{orders}}:{name}")
    }

    /// A fresh connection to the `orders` database.
    pub async fn db(&self) -> tokio_postgres::Client {
        self.postgres
            .connect("orders")
            .await
            .expect("connect to the orders database")
    }

    /// [`Stage::env`] with `settings` added or overriding, and the log path of process `name`.
    fn service_env(
        &self,
        name: &str,
        settings: &[(&str, &str)],
    ) -> (HashMap<String, String>, PathBuf) {
        let mut env = self.env();
        env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        (env, self.log_dir.join(format!("{name}.log")))
    }

    /// Starts one `orders serve` process of the scenario with `settings` added to (or
    /// overriding) [`Stage::env`], and waits until its roles are up; its log is
    /// `<scenario>/<name>.log`.
    pub async fn start_service(
        &self,
        name: &str,
        roles: &str,
        settings: &[(&str, &str)],
    ) -> Process {
        let (env, log) = self.service_env(name, settings);
        Process::start(name, roles, &env, log).await
    }

    /// [`Stage::start_service`] without waiting for anything: for a process that is expected
    /// not to become ready.
    pub fn spawn_service(&self, name: &str, roles: &str, settings: &[(&str, &str)]) -> Process {
        let (env, log) = self.service_env(name, settings);
        Process::spawn(name, roles, &env, log)
    }
}

impl<R: Topology> Scene for Stage<R> {
    fn scenario(&self) -> &str {
        &self.scenario
    }

    fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    async fn try_db(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.postgres.connect("orders").await
    }

    async fn queue_redis(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        self.redis.holder_of(&self.key("queue")).await
    }

    fn key(&self, name: &str) -> String {
        Stage::key(self, name)
    }
}
