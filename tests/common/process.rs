//! The real `orders` binary as a child process, for tests that kill or signal it.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One running `orders serve` process.
pub struct Process {
    pub child: Child,
    pub port: u16,
}

impl Process {
    /// Starts `orders serve --roles ROLES` with `vars` as its environment (and a port of its
    /// own); its log goes to `target/test-logs/<prefix>-<port>.log`.
    pub fn start(roles: &str, vars: &HashMap<String, String>) -> Process {
        let port = free_port();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let prefix = vars.get("ORDERS_REDIS_PREFIX").cloned().unwrap_or_default();
        let log =
            std::fs::File::create(dir.join(format!("{prefix}-{port}.log"))).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_orders"))
            .args(["serve", "--roles", roles])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars)
            .env("ORDERS_LISTEN", format!("127.0.0.1:{port}"))
            .env("ORDERS_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start the orders binary");
        Process { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Waits until the API answers /readyz with 200.
    pub async fn wait_ready(&self) {
        let start = Instant::now();
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "service not ready in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (`KILL`, `TERM`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, for up to `timeout`; its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "process did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
