//! One abusive client against the real binary (`just abuse`): slow headers, header bombs, a flood
//! of idle connections past the cap, half-sent bodies past the byte budget, h2c, a client that
//! stops reading, and a shutdown with connections stuck. The service runs with its default
//! connection cap, body budget and header timeout; the other timeouts are shortened, so that
//! the run is bounded.
//! Meanwhile `/healthz` is probed as an orchestrator does (a new connection each time, failing
//! after 3 misses in a row). Prints `attack: held, peak RSS N MiB, healthz p99 N ms`.

mod common;

use common::process::Process;
use common::test_env;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The default: the flood below must be open before the first of it times out, on a small
/// shared machine, with a debug build.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// A body gets this plus a second per `BODY_MIN_RATE` bytes.
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
const BODY_MIN_RATE: usize = 4 * 1024 * 1024;
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// The defaults the attack is against (config/default.toml).
const MAX_CONNECTIONS: usize = 4096;
const BODY_BUDGET: usize = 64 * 1024 * 1024;
const MAX_BATCH_BODY: usize = 4 * 1024 * 1024;
/// Time the service may take beyond a budget's own on this small, shared machine.
const SLACK: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_abusive_client_cannot_take_the_service_down() {
    rlimit::increase_nofile_limit(MAX_CONNECTIONS as u64 * 2).expect("open-file limit");
    let ms = |d: Duration| d.as_millis().to_string();
    let vars = test_env(&[
        ("ORDERS_HTTP_HEADER_TIMEOUT_MS", &ms(HEADER_TIMEOUT)),
        ("ORDERS_HTTP_WRITE_TIMEOUT_MS", &ms(WRITE_TIMEOUT)),
        ("ORDERS_HTTP_BODY_TIMEOUT_MS", &ms(BODY_TIMEOUT)),
        ("ORDERS_HTTP_BODY_MIN_RATE", &BODY_MIN_RATE.to_string()),
        ("ORDERS_SHUTDOWN_TIMEOUT_MS", &ms(SHUTDOWN_TIMEOUT)),
    ])
    .await;
    let log = common::process::test_log_path(&vars, "abuse");
    let mut service = Process::start("service", "api,worker,notifier", &vars, log).await;
    let port = service.port;
    let probe = Probe::start(port);

    slow_headers_and_header_bombs_are_cut_off(port).await;
    an_idle_flood_past_the_cap_is_answered_and_then_closed(port).await;
    half_sent_bodies_stay_within_the_byte_budget(port).await;
    h2c_is_not_spoken(port).await;
    a_client_that_stops_reading_is_closed(port).await;
    assert_eq!(
        post(port, "/orders", &order()).await,
        Some(202),
        "after the attacks"
    );

    let peak_mib = peak_rss_kib(service.pid()) / 1024;
    let (worst_misses, p99) = probe.stop().await;
    assert!(
        worst_misses < 3,
        "/healthz missed {worst_misses} probes in a row"
    );
    // The stated worst case of the defaults (README, "Limits"), with what a test process adds.
    assert!(peak_mib < 400, "peak RSS {peak_mib} MiB");

    shutdown_keeps_its_deadline_with_connections_stuck(&mut service, port).await;
    println!("attack: held, peak RSS {peak_mib} MiB, healthz p99 {p99} ms");
}

/// 300 connections that send their head a header every 250 ms (100 of them after 15 KiB at
/// once) are closed at the header timeout; a head over 16 KiB is a 431.
async fn slow_headers_and_header_bombs_are_cut_off(port: u16) {
    let start = Instant::now();
    let mut drips = Vec::new();
    for i in 0..300 {
        drips.push(tokio::spawn(async move {
            let mut stream = connect(port).await;
            let mut head = b"POST /orders HTTP/1.1\r\nHost: a\r\n".to_vec();
            if i % 3 == 0 {
                head.extend(format!("X-Bomb: {}\r\n", "b".repeat(15 * 1024)).as_bytes());
            }
            let _ = stream.write_all(&head).await;
            let opened = Instant::now();
            loop {
                let mut byte = [0u8; 64];
                tokio::select! {
                    read = stream.read(&mut byte) => if !matches!(read, Ok(n) if n > 0) {
                        return opened.elapsed();
                    },
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {
                        if stream.write_all(b"X-Drip: 1\r\n").await.is_err() {
                            return opened.elapsed();
                        }
                    }
                }
                if opened.elapsed() > HEADER_TIMEOUT + SLACK * 3 {
                    return opened.elapsed();
                }
            }
        }));
    }
    let mut bomb = connect(port).await;
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Bomb: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(20 * 1024)
    );
    let _ = bomb.write_all(head.as_bytes()).await;
    assert_eq!(status_of(&read_all(&mut bomb).await), Some(431));
    for drip in drips {
        let held = drip.await.unwrap();
        assert!(
            held <= HEADER_TIMEOUT + SLACK,
            "a slow head was held {held:?}"
        );
    }
    eprintln!("slow heads: 300 cut off in {:?}", start.elapsed());
}

/// More connections than the cap, each holding 15 KiB of an unfinished head (the most memory a
/// connection can make the service hold): new requests get 503 `overloaded` (and `/readyz` says
/// so), `/healthz` keeps answering, and the idle ones are closed at the header timeout.
async fn an_idle_flood_past_the_cap_is_answered_and_then_closed(port: u16) {
    let head = format!("GET /healthz HTTP/1.1\r\nX-Bomb: {}", "b".repeat(15 * 1024));
    let opening = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS + 400 {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(stream) => idle.push(stream),
            Err(e) => panic!("connect {}: {e}", idle.len()),
        }
    }
    futures_util::future::join_all(idle.iter_mut().map(|s| s.write_all(head.as_bytes()))).await;
    let opened = Instant::now();
    eprintln!(
        "idle flood: {} opened in {:?}",
        idle.len(),
        opening.elapsed()
    );
    assert!(
        opening.elapsed() < HEADER_TIMEOUT - Duration::from_secs(1),
        "the machine is too slow to open the flood within the header timeout"
    );
    // The service takes them from the kernel's queue in their order only while the queue holds
    // them all (its backlog is 4,096; past it, SYN cookies let later ones in out of order), so a
    // request may find a free place until the service has taken the whole flood.
    let mut reply = Vec::new();
    for _ in 0..30 {
        reply = request(port, &post_request("/orders", &order())).await;
        if status_of(&reply) != Some(202) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status_of(&reply), Some(503), "{}", text(&reply));
    assert!(text(&reply).contains("\"overloaded\""), "{}", text(&reply));
    assert!(text(&reply).to_lowercase().contains("retry-after: 1"));
    let ready = request(
        port,
        "GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&ready), Some(503), "{}", text(&ready));
    let health = request(
        port,
        "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&health), Some(200), "{}", text(&health));

    let closed = futures_util::future::join_all(idle.into_iter().map(|mut stream| async move {
        let deadline = HEADER_TIMEOUT + SLACK;
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(deadline, stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }))
    .await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        open,
        0,
        "idle connections still open after {:?}",
        opened.elapsed()
    );
    assert_eq!(
        post(port, "/orders", &order()).await,
        Some(202),
        "after the flood"
    );
    eprintln!(
        "idle flood: {} closed in {:?}",
        closed.len(),
        opened.elapsed()
    );
}

/// Full-size batch bodies sent to the last byte and then held: as many as the batches' three
/// quarters of the byte budget hold are read (and answered 408 at their deadline); the rest are
/// refused with 503 as they outgrow it; meanwhile single orders, which have the last quarter to
/// themselves, are still accepted.
async fn half_sent_bodies_stay_within_the_byte_budget(port: u16) {
    let fit = BODY_BUDGET * 3 / 4 / MAX_BATCH_BODY;
    let mut senders = Vec::new();
    for _ in 0..fit + 16 {
        senders.push(tokio::spawn(async move {
            let mut stream = connect(port).await;
            let head = format!(
                "POST /orders/batch HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
                 Content-Length: {MAX_BATCH_BODY}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let started = Instant::now();
            let mut body = vec![b' '; MAX_BATCH_BODY - 1];
            body[0] = b'[';
            // A refusal comes while the body is being sent: the write may fail then.
            let _ = stream.write_all(&body).await;
            let reply = read_all(&mut stream).await;
            (status_of(&reply), started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        post(port, "/orders", &order()).await,
        Some(202),
        "one order while the batches hold their budget"
    );
    let mut held = 0;
    let mut refused = 0;
    for sender in senders {
        match sender.await.unwrap() {
            (Some(408), took) => {
                held += 1;
                let allowed = BODY_TIMEOUT + Duration::from_secs(1) + SLACK;
                assert!(took <= allowed, "a held body took {took:?}");
            }
            // The 503, or the reset of a connection answered before its body was all sent.
            (Some(503) | None, _) => refused += 1,
            other => panic!("a half-sent body got {other:?}"),
        }
    }
    assert_eq!((held, refused), (fit, 16));
    let batch = format!("[{}]", order());
    assert_eq!(
        post(port, "/orders/batch", &batch).await,
        Some(202),
        "after the bodies"
    );
    eprintln!("half-sent bodies: {held} read to their deadline, {refused} refused");
}

/// An HTTP/2 prior-knowledge preface gets no HTTP/2 answer.
async fn h2c_is_not_spoken(port: u16) {
    let mut stream = connect(port).await;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let reply = read_all(&mut stream).await;
    // An HTTP/2 server's first frame is SETTINGS: type 4 in the fourth byte.
    assert!(
        reply.len() < 4 || reply[3] != 4 || reply.starts_with(b"HTTP/1.1"),
        "{reply:?}"
    );
    assert!(!reply.starts_with(b"HTTP/1.1 2"), "{}", text(&reply));
}

/// A client that pipelines requests and never reads the answers is closed at the write
/// timeout, not served forever.
async fn a_client_that_stops_reading_is_closed(port: u16) {
    const REQUESTS: usize = 3000;
    let stream = connect(port).await;
    let (mut reader, mut writer) = stream.into_split();
    tokio::spawn(async move {
        let one = b"GET /openapi.json HTTP/1.1\r\nHost: a\r\n\r\n";
        for _ in 0..REQUESTS {
            if writer.write_all(one).await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(WRITE_TIMEOUT + SLACK).await;
    let mut answers = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut answers)).await;
    assert!(read.is_ok(), "the connection was never closed");
    let served = text(&answers).matches("HTTP/1.1 200").count();
    assert!(served < REQUESTS, "all {served} answers were sent");
    eprintln!("non-reader: closed after {served} of {REQUESTS} answers");
}

/// SIGTERM with one connection mid-head, one mid-body and one idle: the process exits within
/// its shutdown deadline.
async fn shutdown_keeps_its_deadline_with_connections_stuck(service: &mut Process, port: u16) {
    let mut mid_head = connect(port).await;
    mid_head
        .write_all(b"GET /orders HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut mid_body = connect(port).await;
    mid_body
        .write_all(b"POST /orders HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let _idle = connect(port).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    service.signal("TERM");
    let status = service.wait_exit(SHUTDOWN_TIMEOUT + SLACK * 2).await;
    let took = signalled.elapsed();
    assert!(status.success(), "exit {status}");
    assert!(took <= SHUTDOWN_TIMEOUT + SLACK, "exited after {took:?}");
    eprintln!("shutdown with stuck connections: {took:?}");
}

/// `/healthz` asked every 100 ms over a new connection, as an orchestrator asks.
struct Probe {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, u128)>,
}

impl Probe {
    fn start(port: u16) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut misses, mut worst) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let reply = tokio::time::timeout(
                        Duration::from_secs(1),
                        request(
                            port,
                            "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                        ),
                    )
                    .await;
                    if matches!(&reply, Ok(r) if status_of(r) == Some(200)) {
                        misses = 0;
                        latencies.lock().unwrap().push(asked.elapsed().as_micros());
                    } else {
                        misses += 1;
                        worst = usize::max(worst, misses);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut all = latencies.lock().unwrap().clone();
                all.sort_unstable();
                let p99 = all.get(all.len() * 99 / 100).copied().unwrap_or(0);
                (worst, p99.div_ceil(1000))
            }
        });
        Probe { stop, task }
    }

    /// The most misses in a row, and the p99 of the answered probes in milliseconds.
    async fn stop(self) -> (usize, u128) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect")
}

/// Everything the server sends until it closes the connection (or 20 s pass).
async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut reply)).await;
    reply
}

/// One request (which should say `Connection: close`) on a new connection, and its reply.
async fn request(port: u16, raw: &str) -> Vec<u8> {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return Vec::new();
    };
    if stream.write_all(raw.as_bytes()).await.is_err() {
        return Vec::new();
    }
    read_all(&mut stream).await
}

fn post_request(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn post(port: u16, path: &str, body: &str) -> Option<u16> {
    status_of(&request(port, &post_request(path, body)).await)
}

fn order() -> String {
    common::http::valid_order()
}

fn status_of(reply: &[u8]) -> Option<u16> {
    let line = reply.split(|b| *b == b'\r').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).into_owned()
}

/// The peak resident set of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}
