//! One `orders serve` process of a scenario: the real binary, its own roles and settings, JSON
//! logs in `target/chaos-logs/<scenario>/<name>.log`. Killed (SIGKILL) on drop.

use super::cluster::{dying_with_us, free_port, signal, Cluster};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `orders` process.
pub struct Service {
    pub name: String,
    pub roles: String,
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

impl Service {
    /// Starts `orders serve --roles <roles>` against the cluster, with `settings` added to (or
    /// overriding) [`Cluster::env`], and waits until each of its roles is up: the API answers
    /// `/readyz`, the worker has registered, the notifier has subscribed.
    pub async fn start(
        cluster: &Cluster,
        name: &str,
        roles: &str,
        settings: &[(&str, &str)],
    ) -> Service {
        let port = free_port();
        let log = cluster.log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create the service log");
        let child = dying_with_us(env!("CARGO_BIN_EXE_orders"))
            .args(["serve", "--roles", roles])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(cluster.env())
            .envs(settings.iter().copied())
            .env("ORDERS_LISTEN", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start the orders binary");
        let mut service = Service {
            name: name.to_string(),
            roles: roles.to_string(),
            port,
            log,
            child,
        };
        service.wait_started().await;
        service
    }

    async fn wait_started(&mut self) {
        let http = reqwest::Client::new();
        let start = Instant::now();
        loop {
            let api_ready = !self.roles.contains("api")
                || matches!(http.get(self.url("/readyz")).send().await, Ok(r) if r.status() == 200);
            let worker_ready = !self.roles.contains("worker") || self.logged("worker started");
            let notifier_ready = !self.roles.contains("notifier") || self.logged("subscribed");
            if api_ready && worker_ready && notifier_ready {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited at start with {status} (see {})",
                    self.name,
                    self.log.display()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} not up in 30 s (see {})",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Whether the process is still running (a stopped one counts as running).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal: `KILL`, `TERM`, `STOP`, `CONT`.
    pub fn signal(&self, name: &str) {
        assert!(signal(self.child.id(), name), "kill -{name} {}", self.name);
    }

    /// Waits for the process to exit, for up to `timeout`; panics if it does not.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "{} did not exit within {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every JSON line logged so far.
    pub fn log_lines(&self) -> Vec<Value> {
        read_log(&self.log)
    }

    /// The first line whose message is `msg`.
    pub fn find_log(&self, msg: &str) -> Option<Value> {
        self.log_lines().into_iter().find(|l| l["msg"] == msg)
    }

    /// The sum of the `count` field of every line logged with this message.
    pub fn logged_count(&self, msg: &str) -> u64 {
        self.log_lines()
            .iter()
            .filter(|l| l["msg"] == msg)
            .filter_map(|l| l["count"].as_u64())
            .sum()
    }

    fn logged(&self, msg: &str) -> bool {
        self.find_log(msg).is_some()
    }

    /// The id of this process's worker role, as it logged it on start.
    pub fn worker_id(&self) -> String {
        self.find_log("worker started")
            .and_then(|l| l["worker"].as_str().map(str::to_string))
            .expect("the worker logged its id")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // SIGKILL ends a process even while it is stopped (SIGSTOP).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON lines of a log file (lines that are not JSON, such as a panic message, skipped).
pub fn read_log(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
