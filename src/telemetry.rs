//! Logging: slog-term lines for people (coloured on a terminal), JSON lines for machines; never
//! dropping a line under load, and cheap enough to stay on at `info` under load.
//!
//! Each record is formatted on the thread that logs it, into a line of its own, and handed to one
//! writer thread. The writer writes every line that is waiting with one call and flushes when none
//! is left, so a burst costs a few system calls, not one per line (slog-term writes a line to an
//! unbuffered stream in four or five pieces, which at info level dominated the API's CPU under
//! load). When 65,536 lines wait, loggers block until the writer
//! catches up: a burst slows down, no line is dropped.
//!
//! In the term format a value that holds a separator (`,` `:` `"` or whitespace), a control or a
//! non-ASCII character, or is empty, is written quoted and escaped as a Rust string literal:
//! values come from clients (request ids, paths, error texts), and `x,status:200,msg:fake` must
//! not read as three fields. Plain values are written as they are; JSON escapes its own.

use crate::config::{Config, LogFormat};
use slog::{o, Drain, Level, Logger, OwnedKVList, Record};
use std::cell::RefCell;
use std::io::{self, IsTerminal, Write};
use std::sync::mpsc;

/// Lines waiting for the writer, at most; loggers then block.
const BACKLOG: usize = 65_536;
/// How long the writer lets lines gather after writing some (waking it for each line cost more
/// than formatting the line).
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

enum Message {
    Line(Vec<u8>),
    /// Write what came before, then stop.
    Stop,
}

/// Builds the process logger: term format to stderr, or JSON lines to stdout. Keep the guard
/// until the process ends: dropping it writes the last lines.
pub fn logger(config: &Config) -> (Logger, LogGuard) {
    let level = parse_level(&config.log_level);
    let (lines, waiting) = mpsc::sync_channel(BACKLOG);
    let (root, writer) = match config.log_format {
        LogFormat::Term => {
            let color = io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none()
                && std::env::var("TERM").map_or(true, |t| t != "dumb");
            let drain = term_format(lines.clone(), color);
            let root = Logger::root(drain.filter_level(level).fuse(), o!());
            (root, spawn_writer(waiting, io::stderr()))
        }
        LogFormat::Json => {
            let drain = JsonLines {
                lines: lines.clone(),
            };
            let root = Logger::root(drain.filter_level(level).fuse(), o!());
            (root, spawn_writer(waiting, io::stdout()))
        }
    };
    let guard = LogGuard {
        stop: lines,
        writer: Some(writer),
    };
    (root, guard)
}

/// Writes the last lines when dropped.
pub struct LogGuard {
    stop: mpsc::SyncSender<Message>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if self.stop.send(Message::Stop).is_ok() {
            if let Some(writer) = self.writer.take() {
                let _ = writer.join();
            }
        }
    }
}

/// The writer thread: all the lines waiting in one write, a flush when none is left. Write
/// errors (a closed pipe) are ignored, so that loggers never block on a writer that gave up.
fn spawn_writer(
    waiting: mpsc::Receiver<Message>,
    out: impl Write + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let mut out = io::BufWriter::with_capacity(64 * 1024, out);
            // Blocks for the first line after a quiet spell; while lines keep coming, takes them
            // every LINGER instead, so that loggers rarely have to wake this thread.
            let mut next = waiting.recv().ok();
            while let Some(first) = next {
                let mut message = Some(first);
                while let Some(m) = message {
                    match m {
                        Message::Line(line) => {
                            let _ = out.write_all(&line);
                        }
                        Message::Stop => {
                            let _ = out.flush();
                            return;
                        }
                    }
                    message = waiting.try_recv().ok();
                }
                let _ = out.flush();
                std::thread::sleep(LINGER);
                next = match waiting.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::TryRecvError::Empty) => waiting.recv().ok(),
                    Err(mpsc::TryRecvError::Disconnected) => None,
                };
            }
        })
        .expect("spawning the log writer thread")
}

/// The term format, sending each line to the writer.
fn term_format(lines: mpsc::SyncSender<Message>, color: bool) -> slog_term::FullFormat<Lines> {
    slog_term::FullFormat::new(Lines { lines, color }).build()
}

/// The slog-term decorator: formats one record into a line of its own (with ANSI colours when
/// `color`, as slog-term's `TermDecorator` paints them) and sends it to the writer.
struct Lines {
    lines: mpsc::SyncSender<Message>,
    color: bool,
}

impl slog_term::Decorator for Lines {
    fn with_record<F>(&self, record: &Record, _: &OwnedKVList, f: F) -> io::Result<()>
    where
        F: FnOnce(&mut dyn slog_term::RecordDecorator) -> io::Result<()>,
    {
        let mut line = Line {
            text: Vec::with_capacity(192),
            level: record.level(),
            color: self.color,
            value_from: None,
        };
        f(&mut line)?;
        line.end_value();
        send(&self.lines, line.text)
    }
}

fn send(lines: &mpsc::SyncSender<Message>, line: Vec<u8>) -> io::Result<()> {
    lines
        .send(Message::Line(line))
        .map_err(|_| io::Error::other("the log writer stopped"))
}

/// One line being formatted.
struct Line {
    text: Vec<u8>,
    level: Level,
    color: bool,
    /// Where the value being written began: slog-term starts each part of a line (key,
    /// separator, value, comma) with a call to this decorator, so a value ends at the next one.
    value_from: Option<usize>,
}

impl Line {
    /// Quotes the value just written, if it needs quotes.
    fn end_value(&mut self) {
        let Some(from) = self.value_from.take() else {
            return;
        };
        let quoted = {
            let value = String::from_utf8_lossy(&self.text[from..]);
            needs_quotes(&value).then(|| format!("{value:?}"))
        };
        if let Some(quoted) = quoted {
            self.text.truncate(from);
            self.text.extend_from_slice(quoted.as_bytes());
        }
    }

    fn paint(&mut self, code: &[u8]) -> io::Result<()> {
        self.end_value();
        if self.color {
            self.text.extend_from_slice(code);
        }
        Ok(())
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl slog_term::RecordDecorator for Line {
    fn reset(&mut self) -> io::Result<()> {
        self.paint(b"\x1b[0m")
    }

    fn start_level(&mut self) -> io::Result<()> {
        let code: &[u8] = match self.level {
            Level::Critical => b"\x1b[35m",
            Level::Error => b"\x1b[31m",
            Level::Warning => b"\x1b[33m",
            Level::Info => b"\x1b[32m",
            Level::Debug => b"\x1b[36m",
            Level::Trace => b"\x1b[34m",
        };
        self.paint(code)
    }

    fn start_key(&mut self) -> io::Result<()> {
        self.paint(b"\x1b[1m")
    }

    fn start_msg(&mut self) -> io::Result<()> {
        self.paint(b"\x1b[1m")
    }

    fn start_value(&mut self) -> io::Result<()> {
        self.reset()?;
        self.value_from = Some(self.text.len());
        Ok(())
    }
}

/// Whether a value would be ambiguous or hidden in a term line as it is. Rust's `Debug` quoting
/// then escapes quotes, backslashes, control characters and the invisible ones (bidirectional
/// controls, line separators, zero-width characters).
fn needs_quotes(value: &str) -> bool {
    value.is_empty()
        || value.chars().any(|c| {
            matches!(c, ',' | ':' | '"') || c.is_whitespace() || c.is_control() || !c.is_ascii()
        })
}

thread_local! {
    /// The JSON formatter of this thread (slog-json's is not `Sync`), writing into [`JSON_LINE`].
    static JSON: slog_json::Json<JsonLine> = slog_json::Json::new(JsonLine).add_default_keys().build();
    static JSON_LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The JSON drain: formats on the logging thread, sends the line to the writer.
struct JsonLines {
    lines: mpsc::SyncSender<Message>,
}

impl Drain for JsonLines {
    type Ok = ();
    type Err = io::Error;

    fn log(&self, record: &Record, values: &OwnedKVList) -> io::Result<()> {
        JSON.with(|json| json.log(record, values))?;
        let line = JSON_LINE.with(|line| std::mem::take(&mut *line.borrow_mut()));
        send(&self.lines, line)
    }
}

/// Where this thread's JSON formatter writes.
struct JsonLine;

impl Write for JsonLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        JSON_LINE.with(|line| line.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn parse_level(name: &str) -> Level {
    match name.to_ascii_lowercase().as_str() {
        "trace" => Level::Trace,
        "debug" => Level::Debug,
        "warn" | "warning" => Level::Warning,
        "error" => Level::Error,
        "critical" => Level::Critical,
        _ => Level::Info,
    }
}

/// An error and its sources, joined with ": ". A source whose text its error already ends with
/// (`redis: {0}` over the Redis error) is not repeated.
pub fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !chain.ends_with(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = cause.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::info;

    /// The lines `log` writes through a drain made by `drain` from the writer's channel.
    fn lines_of<D>(
        drain: impl FnOnce(mpsc::SyncSender<Message>) -> D,
        log: impl Fn(&Logger),
    ) -> String
    where
        D: Drain<Ok = (), Err = io::Error>
            + Send
            + Sync
            + std::panic::UnwindSafe
            + std::panic::RefUnwindSafe
            + 'static,
    {
        let (lines, waiting) = mpsc::sync_channel(16);
        let logger = Logger::root(drain(lines).fuse(), o!("role" => "api"));
        log(&logger);
        drop(logger);
        let mut text = Vec::new();
        while let Ok(Message::Line(line)) = waiting.recv() {
            text.extend(line);
        }
        String::from_utf8(text).unwrap()
    }

    fn spoofing(log: &Logger) {
        info!(log, "request"; "method" => "GET", "path" => "/orders", "status" => 200,
            "request_id" => "x,status:200,msg:fake", "agent" => "curl/8 (x)",
            "customer_id" => "\u{202e}cba", "key" => "caf\u{e9}", "empty" => "", "nl" => "a\nb");
    }

    #[test]
    fn the_term_format_quotes_values_that_could_pass_for_more_fields() {
        for color in [false, true] {
            let line = lines_of(|lines| term_format(lines, color), spoofing);
            let plain = String::from_utf8(strip_ansi(line.as_bytes())).unwrap();
            for field in [
                "method: GET",
                "path: /orders",
                "status: 200",
                r#"request_id: "x,status:200,msg:fake""#,
                r#"agent: "curl/8 (x)""#,
                r#"customer_id: "\u{202e}cba""#,
                r#"key: "café""#,
                r#"empty: """#,
                r#"nl: "a\nb""#,
                "role: api",
            ] {
                assert!(plain.contains(field), "{field} in {plain:?}");
            }
            assert_eq!(plain.lines().count(), 1, "{plain:?}");
            assert!(!plain.contains(", status:200"), "{plain:?}");
        }
    }

    #[test]
    fn the_json_format_keeps_values_as_they_are() {
        let line = lines_of(|lines| JsonLines { lines }, spoofing);
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["request_id"], "x,status:200,msg:fake");
        assert_eq!(json["customer_id"], "\u{202e}cba");
        assert_eq!(json["path"], "/orders");
        assert_eq!(json["status"], 200);
    }

    /// `text` without its ANSI colour codes.
    fn strip_ansi(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut bytes = text.iter();
        while let Some(&b) = bytes.next() {
            if b == 0x1b {
                bytes.by_ref().find(|&&c| c == b'm');
            } else {
                out.push(b);
            }
        }
        out
    }
}
