//! The real `orders` binary as a child process, for tests that kill or signal it, and the
//! process tools the chaos suite's private servers use too.

use super::log::Log;
use super::wait::wait_until;
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked, which is good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A command for a long-running child that is killed with the test process even when the test
/// process itself is killed from outside (a timeout) and no `Drop` runs: through
/// `setpriv --pdeathsig KILL` (util-linux) when there is one; it execs the program, so the child's
/// pid is the program's. (The signal follows the thread that started the child; the runtime's
/// threads live as long as the test.)
pub fn dying_with_us(program: impl AsRef<std::ffi::OsStr>) -> Command {
    static SETPRIV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let setpriv = *SETPRIV.get_or_init(|| {
        Command::new("setpriv")
            .arg("--help")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--pdeathsig"))
    });
    if setpriv {
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Sends a signal (`KILL`, `TERM`, `INT`, `QUIT`, `STOP`, `CONT`) to a process; whether it was
/// sent. (Never panics: it is also used from `Drop`.)
pub fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for a child to exit, for up to `timeout`, blocking the thread (for `Drop`, which cannot
/// await); `None` if it is still running.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where a test that shares the machine's Redis and PostgreSQL keeps the log of a process:
/// `target/test-logs/<prefix>-<name>.log`.
pub fn test_log_path(vars: &HashMap<String, String>, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    let prefix = vars.get("ORDERS_REDIS_PREFIX").cloned().unwrap_or_default();
    dir.join(format!("{prefix}-{name}.log"))
}

/// Runs the `orders` binary with `args`, and `env` as its whole environment (besides `PATH`),
/// until it exits by itself (`healthcheck`, or a start that must fail); its exit status and
/// output. Panics if it still runs after `timeout` (and kills it).
pub async fn run_orders(
    args: &[&str],
    env: &HashMap<String, String>,
    timeout: Duration,
) -> std::process::Output {
    let mut command = tokio::process::Command::from(dying_with_us(env!("CARGO_BIN_EXE_orders")));
    let running = command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(timeout, running)
        .await
        .unwrap_or_else(|_| panic!("orders {args:?} still runs after {timeout:?}"))
        .expect("run the orders binary")
}

/// One running `orders serve` process. Killed (SIGKILL) on drop.
pub struct Process {
    pub name: String,
    pub roles: String,
    pub port: u16,
    /// Its JSON log lines.
    pub log: Log,
    child: Child,
}

impl Process {
    /// Starts `orders serve --roles <roles>` with `env` as its whole environment (besides `PATH`,
    /// a port of its own and JSON logs, written to `log`), and waits until each of its roles is
    /// up: the API answers `/readyz`, the worker has registered, the notifier reads the event stream.
    pub async fn start(
        name: &str,
        roles: &str,
        env: &HashMap<String, String>,
        log: PathBuf,
    ) -> Process {
        let mut process = Self::spawn(name, roles, env, log);
        process.wait_started().await;
        process
    }

    /// Starts the process as [`Process::start`] does, for a configuration it must refuse: waits
    /// for it to exit, and returns its exit status and everything it wrote (stdout and stderr).
    pub async fn start_refused(
        name: &str,
        roles: &str,
        env: &HashMap<String, String>,
        log: PathBuf,
    ) -> (ExitStatus, String) {
        let mut process = Self::spawn(name, roles, env, log);
        let status = process.wait_exit(Duration::from_secs(30)).await;
        let output = std::fs::read_to_string(process.log.path()).unwrap_or_default();
        (status, output)
    }

    /// [`Process::start`] without waiting for anything: for a process that is expected not to
    /// become ready.
    pub fn spawn(name: &str, roles: &str, env: &HashMap<String, String>, log: PathBuf) -> Process {
        let port = free_port();
        let file = std::fs::File::create(&log).expect("create the service log");
        let child = dying_with_us(env!("CARGO_BIN_EXE_orders"))
            .args(["serve", "--roles", roles])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .env("ORDERS_LISTEN", format!("127.0.0.1:{port}"))
            .env("ORDERS_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start the orders binary");
        Process {
            name: name.to_string(),
            roles: roles.to_string(),
            port,
            log: Log::File(log),
            child,
        }
    }

    async fn wait_started(&mut self) {
        let http = super::http::client();
        let see = format!("see {}", self.log.path().display());
        let what = format!("{} to be up ({see})", self.name);
        wait_until(&what, Duration::from_secs(30), async || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited at start with {status} ({see})", self.name);
            }
            let api_ready = !self.roles.contains("api")
                || matches!(http.get(self.url("/readyz")).send().await, Ok(r) if r.status() == 200);
            let worker_ready =
                !self.roles.contains("worker") || self.log.find("worker started").is_some();
            let notifier_ready = !self.roles.contains("notifier")
                || self.log.find("reading the event stream").is_some();
            api_ready && worker_ready && notifier_ready
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
        let mut exited = None;
        let what = format!("{} to exit", self.name);
        wait_until(&what, timeout, async || {
            exited = self.child.try_wait().expect("try_wait");
            exited.is_some()
        })
        .await;
        exited.expect("exited")
    }

    /// The id of this process's worker role, as it logged it on start.
    pub fn worker_id(&self) -> String {
        self.log
            .find("worker started")
            .and_then(|l| l["worker"].as_str().map(str::to_string))
            .expect("the worker logged its id")
    }
}

/// Runs `orders serve` with `env` as its whole environment (besides `PATH`), for a
/// configuration it must refuse: waits up to `timeout` for it to exit (killing it and failing
/// the test if it does not) and returns its exit status and everything it printed (also kept in
/// `log`).
pub fn run_refused(
    env: &HashMap<String, String>,
    log: PathBuf,
    timeout: Duration,
) -> (ExitStatus, String) {
    let file = std::fs::File::create(&log).expect("create the service log");
    let mut child = dying_with_us(env!("CARGO_BIN_EXE_orders"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .expect("start the orders binary");
    let status = wait_child(&mut child, timeout);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "orders did not exit within {timeout:?} (see {})",
            log.display()
        );
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    (status, output)
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL ends a process even while it is stopped (SIGSTOP).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
