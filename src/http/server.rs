//! The accept loop: every budget a client could otherwise exhaust, set here because warp 0.4 sets
//! none. HTTP/1.1 only (no h2c: see the README's "Limits" section).
//!
//! - At most `http_max_connections` connections are served. Past that, a small overflow lane
//!   answers `/healthz` (so the orchestrator does not restart a process that is only busy) and
//!   gives everything else a 503 `overloaded`, one request per connection, with a short header
//!   timeout; when the lane is full, a new connection evicts its oldest one, so a flood of idle
//!   connections cannot keep a probe out.
//! - A connection must deliver a whole request head within `http_header_timeout_ms` of being
//!   opened or of its previous response (slow headers and idle keep-alive alike), and the head
//!   may be at most `http_max_header_bytes`.
//! - A response the client does not read for `http_write_timeout_ms` closes the connection.
//! - Bodies have their own budget of time and bytes (`body.rs`).
//! - On shutdown the listener closes, every connection finishes its request under way and
//!   closes, and those still open at the deadline are dropped.

use super::request_id::{new_request_id, valid_request_id};
use super::{ApiError, Peer, REQUEST_ID};
use crate::config::Config;
use crate::Shutdown;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use slog::{info, warn, Logger};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use warp::http::HeaderValue;
use warp::reply::Response;

/// Connections the overflow lane serves at once, beyond `http_max_connections`.
const OVERFLOW: usize = 64;
/// How long an overflow connection may take to send its one request head.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections the kernel may hold for the accept loop (capped by `net.core.somaxconn`).
const BACKLOG: u32 = 4096;
/// File descriptors kept for Redis, PostgreSQL, logs and the listener, beyond the connections.
const OTHER_FILES: u64 = 256;

/// The connection and time budgets of the API.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub write_timeout: Duration,
    /// How long requests under way may take to finish once shutdown begins.
    pub shutdown_timeout: Duration,
}

impl Limits {
    pub fn from_config(config: &Config) -> Limits {
        Limits {
            max_connections: config.http_max_connections,
            header_timeout: Duration::from_millis(config.http_header_timeout_ms),
            max_header_bytes: config.http_max_header_bytes,
            write_timeout: Duration::from_millis(config.http_write_timeout_ms),
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
        }
    }

    /// Raises the open-file limit to what the connection cap needs (up to the hard limit), or
    /// says why it cannot: a cap the process cannot reach would fail as `EMFILE` under load.
    pub fn reserve_files(&self) -> Result<u64, String> {
        let needed = (self.max_connections + OVERFLOW) as u64 + OTHER_FILES;
        match rlimit::increase_nofile_limit(needed) {
            Ok(got) if got >= needed => Ok(got),
            Ok(got) => Err(format!(
                "http_max_connections={} needs {needed} open files, but the limit is {got} \
                 (raise `ulimit -n` or lower ORDERS_HTTP_MAX_CONNECTIONS)",
                self.max_connections
            )),
            Err(e) => Err(format!("cannot raise the open-file limit: {e}")),
        }
    }
}

/// A listener on `addr` whose backlog holds a burst of new connections (tokio's default of
/// 1,024 drops the SYNs of a bigger burst, and each dropped one costs its client a second).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Which budget a connection was admitted under; dropping it frees the place.
enum Lane {
    Full(#[allow(dead_code)] OwnedSemaphorePermit),
    Overflow(OverflowPlace),
}

/// The connections admitted past the cap, oldest first.
#[derive(Default)]
struct OverflowLane {
    admitted: Mutex<VecDeque<(u64, Shutdown)>>,
    next: AtomicU64,
}

/// A place in the overflow lane: `evicted` is cancelled when a newer connection needs it.
struct OverflowPlace {
    lane: Arc<OverflowLane>,
    id: u64,
    evicted: Shutdown,
}

impl OverflowLane {
    fn admit(self: &Arc<Self>) -> OverflowPlace {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evicted = Shutdown::new();
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        if admitted.len() >= OVERFLOW {
            if let Some((_, oldest)) = admitted.pop_front() {
                oldest.cancel();
                metrics::counter!(crate::stats::CONNECTIONS_EVICTED).increment(1);
            }
        }
        admitted.push_back((id, evicted.clone()));
        OverflowPlace {
            lane: self.clone(),
            id,
            evicted,
        }
    }
}

impl Drop for OverflowPlace {
    fn drop(&mut self) {
        let mut admitted = self.lane.admitted.lock().unwrap_or_else(|e| e.into_inner());
        admitted.retain(|(id, _)| *id != self.id);
    }
}

/// Serves `filter` on `listener` until `shutdown`, then drains within the shutdown deadline.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    limits: Limits,
    shutdown: Shutdown,
    log: Logger,
) where
    F: warp::Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let service = warp::service(filter);
    let limits = Arc::new(limits);
    let full = Arc::new(Semaphore::new(limits.max_connections));
    let overflow = Arc::new(OverflowLane::default());
    let closing = Shutdown::new();
    let mut connections = JoinSet::new();
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    slog::error!(log, "a connection task failed"; "error" => %e);
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(e, &log).await;
                    continue;
                }
            },
        };
        let lane = match full.clone().try_acquire_owned() {
            Ok(place) => Lane::Full(place),
            Err(_) => {
                metrics::counter!(crate::stats::CONNECTIONS_OVERFLOWED).increment(1);
                Lane::Overflow(overflow.admit())
            }
        };
        connections.spawn(connection(
            stream,
            addr,
            lane,
            service.clone(),
            limits.clone(),
            closing.clone(),
        ));
    }
    drop(listener);
    closing.cancel();
    let open = connections.len();
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(log, "connections still open at the shutdown deadline are closed";
            "connections" => connections.len());
        connections.shutdown().await;
    } else if open > 0 {
        info!(log, "connections drained"; "connections" => open);
    }
}

/// A failed accept: a connection reset before it was taken is nothing; anything else (most
/// likely out of file descriptors) is logged and waited out briefly, not spun on.
async fn accept_failed(e: io::Error, log: &Logger) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    warn!(log, "cannot accept a connection"; "error" => %e);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One connection, served until it closes or, after `closing`, until its request under way is
/// answered.
async fn connection<S>(
    stream: TcpStream,
    addr: SocketAddr,
    lane: Lane,
    service: S,
    limits: Arc<Limits>,
    closing: Shutdown,
) where
    S: tower_service::Service<hyper::Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let _open = OpenConnection::count();
    let evicted = match &lane {
        Lane::Full(_) => None,
        Lane::Overflow(place) => Some(place.evicted.clone()),
    };
    let overflow = evicted.is_some();
    let handler = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(Peer(addr));
        let health = request.uri().path().trim_end_matches('/') == "/healthz";
        let answer = if overflow && !health {
            Err(refuse_overflow(&request))
        } else {
            Ok(service.clone().call(request))
        };
        async move {
            match answer {
                Ok(future) => future.await,
                Err(refusal) => Ok(refusal),
            }
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(if overflow {
            OVERFLOW_HEADER_TIMEOUT
        } else {
            limits.header_timeout
        })
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(!overflow);
    let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
    let conn = http.serve_connection(io, handler);
    let mut conn = std::pin::pin!(conn);
    let evicted = async {
        match &evicted {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = evicted => {}
        _ = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    drop(lane);
}

/// One connection in the open-connections gauge, for as long as its task lives (also when it is
/// aborted at the shutdown deadline).
struct OpenConnection(metrics::Gauge);

impl OpenConnection {
    fn count() -> OpenConnection {
        let gauge = metrics::gauge!(crate::stats::CONNECTIONS_OPEN);
        gauge.increment(1.0);
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The answer of the overflow lane to anything but `/healthz` (this is also how `/readyz` fails
/// while the connection cap is reached).
fn refuse_overflow(request: &hyper::Request<Incoming>) -> Response {
    let mut response =
        ApiError::Overloaded("the service is at its connection limit, retry later").to_response();
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(valid_request_id)
        .unwrap_or_else(new_request_id);
    if let Ok(id) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

/// A stream whose writes fail once the peer has taken less than [`WRITE_PROGRESS`] bytes in
/// `timeout` while a write waits: a client that stops reading its responses, or reads a byte
/// now and then, cannot hold a connection and its buffers forever. The timer is armed only
/// while a write waits, so a reading client costs nothing.
struct WriteDeadline {
    stream: TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    /// Bytes written since the timer was armed.
    progress: usize,
}

/// What a client must read within the write timeout for the timer to start again.
const WRITE_PROGRESS: usize = 16 * 1024;

impl WriteDeadline {
    fn new(stream: TcpStream, timeout: Duration) -> WriteDeadline {
        WriteDeadline {
            stream,
            timeout,
            stalled: None,
            progress: 0,
        }
    }

    /// After a write that could not proceed: fails once it has waited `timeout`.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading",
        ))
    }

    fn on_write<T: Written>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.poll_stall(cx).map(Err),
            done => {
                if let Poll::Ready(Ok(n)) = &done {
                    self.progress += n.bytes();
                }
                // Enough progress, or all written (a flush): the next stall gets the whole
                // timeout again.
                let flushed = matches!(&done, Poll::Ready(Ok(n)) if n.is_flush());
                if flushed || self.stalled.is_none() || self.progress >= WRITE_PROGRESS {
                    self.stalled = None;
                    self.progress = 0;
                }
                done
            }
        }
    }
}

/// What a write call reports it wrote.
trait Written {
    fn bytes(&self) -> usize;
    /// A flush or shutdown: everything written is with the kernel.
    fn is_flush(&self) -> bool;
}

impl Written for usize {
    fn bytes(&self) -> usize {
        *self
    }
    fn is_flush(&self) -> bool {
        false
    }
}

impl Written for () {
    fn bytes(&self) -> usize {
        0
    }
    fn is_flush(&self) -> bool {
        true
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.on_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.on_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        self.on_write(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.on_write(cx, result)
    }
}
