//! A service's log, as JSON lines: a child process writes them to a file; an in-process service
//! logs into memory through [`Log::capture`]. Either way a test reads them the same way.

use serde_json::Value;
use slog::Drain;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where the JSON log lines of one service are.
#[derive(Clone, Debug)]
pub enum Log {
    File(PathBuf),
    Memory(Arc<Mutex<Vec<u8>>>),
}

impl Log {
    /// A logger for an in-process service that keeps its lines (at `info` and above, the
    /// service's default level) for the test, and also prints them when TEST_LOG is set.
    pub fn capture() -> (Log, slog::Logger) {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let json = Mutex::new(slog_json::Json::default(Buffer(buffer.clone())))
            .ignore_res()
            .filter_level(slog::Level::Info)
            .ignore_res();
        let logger = if std::env::var_os("TEST_LOG").is_some() {
            let decorator = slog_term::PlainSyncDecorator::new(io::stderr());
            let term = slog_term::FullFormat::new(decorator).build().ignore_res();
            slog::Logger::root(slog::Duplicate::new(json, term).ignore_res(), slog::o!())
        } else {
            slog::Logger::root(json, slog::o!())
        };
        (Log::Memory(buffer), logger)
    }

    /// Every JSON line logged so far (lines that are not JSON, such as a panic message, skipped).
    pub fn lines(&self) -> Vec<Value> {
        let text = match self {
            Log::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
            Log::Memory(buffer) => String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned(),
        };
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The first line whose message is `msg`.
    pub fn find(&self, msg: &str) -> Option<Value> {
        self.lines().into_iter().find(|l| l["msg"] == msg)
    }

    /// Every line whose message is `msg`.
    pub fn all(&self, msg: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["msg"] == msg)
            .collect()
    }

    /// The sum of the `count` field of every line logged with this message.
    pub fn logged_count(&self, msg: &str) -> u64 {
        self.all(msg)
            .iter()
            .filter_map(|l| l["count"].as_u64())
            .sum()
    }

    /// The file, for messages (`memory` for an in-process service).
    pub fn path(&self) -> &Path {
        match self {
            Log::File(path) => path,
            Log::Memory(_) => Path::new("memory"),
        }
    }
}

/// Bytes written into the shared buffer of a [`Log::Memory`].
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
