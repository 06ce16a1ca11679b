//! Live events over HTTP (`GET /events`, Server-Sent Events): a client that disconnects and
//! reconnects with `Last-Event-ID` gets every event once and in order, as the stream holds them;
//! filters pass only their customer's or order's events; a client that stops reading is closed
//! while the service's RSS stays flat (the real binary); past `sse_max_streams` a 503; bad ids
//! and filters are refused; an idle stream sends heartbeats; streams end at their lifetime and
//! at shutdown.

mod common;

use common::http::{check_error, Field};
use common::process::Process;
use common::{api_only, test_env, wait_until, TestApp};
use futures_util::StreamExt;
use orders::Roles;
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// One SSE frame as a client reads it.
#[derive(Debug, Default, Clone, PartialEq)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    comment: Option<String>,
    retry: Option<String>,
}

impl Frame {
    fn is_event(&self) -> bool {
        self.data.is_some()
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("data")).expect("JSON data")
    }
}

/// An open event stream.
struct Sse {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
}

impl Sse {
    /// Opens `path` (with a `Last-Event-ID` header when given); the answer must be a stream.
    async fn open(app: &TestApp, path: &str, last_event_id: Option<&str>) -> Sse {
        let response = request(app, path, last_event_id).await;
        assert_eq!(response.status(), 200, "GET {path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(header("content-type"), "text/event-stream");
        assert_eq!(header("cache-control"), "no-cache");
        assert_eq!(header("x-accel-buffering"), "no");
        assert!(!header("x-request-id").is_empty());
        Sse {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
        }
    }

    /// The next frame within `timeout`; `None` when the stream ended or nothing came.
    async fn next(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                return Some(parse_frame(&String::from_utf8(block).expect("UTF-8")));
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Some(Err(_)) | None) | Err(_) => return None,
            }
        }
    }

    /// The next `n` events (frames with data; comments and hints are skipped), each within
    /// `timeout` of the one before.
    async fn events(&mut self, n: usize, timeout: Duration) -> Vec<Frame> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            match self.next(timeout).await {
                Some(frame) if frame.is_event() => events.push(frame),
                Some(_) => {}
                None => panic!("only {} of {n} events came", events.len()),
            }
        }
        events
    }

    /// The next event within `timeout`, skipping comments and hints.
    async fn next_event(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(frame) if frame.is_event() => return Some(frame),
                Some(_) if !left.is_zero() => {}
                _ => return None,
            }
        }
    }
}

fn parse_frame(block: &str) -> Frame {
    let mut frame = Frame::default();
    for line in block.lines().filter(|l| !l.is_empty()) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "" => frame.comment = Some(value),
            "id" => frame.id = Some(value),
            "event" => frame.event = Some(value),
            "data" => frame.data = Some(value),
            "retry" => frame.retry = Some(value),
            other => panic!("unknown field {other:?} in {block:?}"),
        }
    }
    frame
}

async fn request(app: &TestApp, path: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = app.http.get(app.url(path));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.expect("GET /events")
}

/// The event stream's entries after `after` (exclusive; `None`: all), as (id, event JSON), read
/// a page at a time (the test connection times out on one large reply).
async fn stream_after(app: &TestApp, after: Option<&str>) -> Vec<(String, String)> {
    let mut redis = app.redis.clone();
    let mut entries: Vec<(String, String)> = Vec::new();
    loop {
        let from = entries.last().map(|(id, _)| id.as_str()).or(after);
        let start = from.map_or("-".to_string(), |id| format!("({id}"));
        let reply: redis::streams::StreamRangeReply = redis
            .xrange_count(app.key("events"), start, "+", 500)
            .await
            .expect("XRANGE");
        if reply.ids.is_empty() {
            return entries;
        }
        for entry in reply.ids {
            let event: String = entry.get("event").expect("an event field");
            entries.push((entry.id, event));
        }
    }
}

fn ids_and_data(frames: &[Frame]) -> Vec<(String, String)> {
    frames
        .iter()
        .map(|f| (f.id.clone().unwrap(), f.data.clone().unwrap()))
        .collect()
}

async fn post_orders(app: &TestApp, customer: &str, n: usize) -> Vec<Uuid> {
    let order = json!({"customer_id": customer, "items": ["sku-1"], "total": 1.5});
    futures_util::stream::iter(0..n)
        .map(|_| app.post_order(&order))
        .buffer_unordered(10)
        .then(|r| async move {
            assert_eq!(r.status(), 202);
            let body: Value = r.json().await.unwrap();
            body["order_id"].as_str().unwrap().parse::<Uuid>().unwrap()
        })
        .collect()
        .await
}

async fn wait_completed(app: &TestApp, n: i64) {
    wait_until(
        &format!("{n} completed"),
        Duration::from_secs(30),
        async || app.count_status("completed").await == n,
    )
    .await;
    wait_until(
        &format!("{n} events in the stream"),
        Duration::from_secs(10),
        async || stream_after(app, None).await.len() as i64 == n,
    )
    .await;
}

const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches for an event that must not come.
const QUIET: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_with_last_event_id_gets_every_event_once_in_order() {
    let app = TestApp::spawn_with(Roles::ALL, &[]).await;
    let mut first = Sse::open(&app, "/events", None).await;
    let hint = first.next(WAIT).await.expect("a first frame");
    assert_eq!(hint.retry.as_deref(), Some("1000"), "{hint:?}");
    let mut only_a = Sse::open(&app, "/events?customer_id=%20sse-a%20", None).await;

    let mut a = post_orders(&app, "sse-a", 10).await;
    post_orders(&app, "sse-b", 10).await;
    wait_completed(&app, 20).await;

    // Ten events, then the client goes away.
    let seen = first.events(10, WAIT).await;
    drop(first);
    let stream = stream_after(&app, None).await;
    assert_eq!(
        ids_and_data(&seen),
        stream[..10],
        "the stream's first ten, in order"
    );
    assert!(seen
        .iter()
        .all(|f| f.event.as_deref() == Some("order.completed")));
    let last = seen.last().unwrap().id.clone().unwrap();

    // More complete while it is away.
    a.extend(post_orders(&app, "sse-a", 10).await);
    post_orders(&app, "sse-b", 10).await;
    wait_completed(&app, 40).await;

    // Back with the id of the last event it got: every later one once, in order, then live.
    let expected = stream_after(&app, Some(&last)).await;
    assert_eq!(expected.len(), 30);
    let mut again = Sse::open(&app, "/events", Some(&last)).await;
    let resumed = again.events(expected.len(), WAIT).await;
    assert_eq!(ids_and_data(&resumed), expected);
    assert_eq!(again.next_event(QUIET).await, None, "nothing more");
    let live = post_orders(&app, "sse-b", 1).await[0];
    let next = again.next_event(WAIT).await.expect("the live event");
    assert_eq!(next.json()["order_id"], live.to_string());
    assert_eq!(stream_after(&app, Some(&last)).await.len(), 31);
    assert_eq!(
        stream_after(&app, Some(&last)).await[30].0,
        next.id.clone().unwrap()
    );

    // The query parameter, for clients that cannot set headers; the header wins over it.
    let mut by_query = Sse::open(&app, &format!("/events?last_event_id={last}"), None).await;
    assert_eq!(ids_and_data(&by_query.events(30, WAIT).await), expected);
    let mut header_wins = Sse::open(&app, "/events?last_event_id=0-0", Some(&last)).await;
    assert_eq!(ids_and_data(&header_wins.events(30, WAIT).await), expected);
    // An id older than the oldest entry kept replays from the oldest.
    let mut all = Sse::open(&app, "/events", Some("1-0")).await;
    assert_eq!(all.events(41, WAIT).await.len(), 41);

    // The customer filter (trimmed as orders' ids are) saw only sse-a's 20, live.
    let mine = only_a.events(20, WAIT).await;
    assert!(mine.iter().all(|f| f.json()["customer_id"] == "sse-a"));
    let stream = stream_after(&app, None).await;
    let of_a: Vec<_> = stream
        .iter()
        .filter(|(_, e)| serde_json::from_str::<Value>(e).unwrap()["customer_id"] == "sse-a")
        .cloned()
        .collect();
    assert_eq!(ids_and_data(&mine), of_a);
    assert_eq!(
        only_a.next_event(QUIET).await,
        None,
        "no other customer's event"
    );

    // The order filter, replayed from the start: that order's one event.
    let mut one = Sse::open(&app, &format!("/events?order_id={}", a[3]), Some("0-0")).await;
    let events = one.events(1, WAIT).await;
    assert_eq!(events[0].json()["order_id"], a[3].to_string());
    assert_eq!(events[0].json()["status"], "completed");
    assert_eq!(one.next_event(QUIET).await, None, "no other order's event");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_filters_are_refused_and_an_idle_stream_sends_heartbeats() {
    let app = TestApp::spawn_with(
        api_only(),
        &[
            ("ORDERS_SSE_HEARTBEAT_MS", "200"),
            ("ORDERS_SSE_MAX_STREAM_MS", "2000"),
        ],
    )
    .await;
    for id in ["abc", "1", "1-", "-1", "1-2-3", "18446744073709551616-0"] {
        let response = request(&app, "/events", Some(id)).await;
        check_error(response, 400, "invalid_header", Field::Absent, id).await;
    }
    let refused = [
        ("/events?last_event_id=abc", "last_event_id"),
        ("/events?order_id=not-a-uuid", "order_id"),
        ("/events?customer_id=%20", "customer_id"),
        ("/events?customer_id=a%00b", "customer_id"),
        (
            "/events?customer_id=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "customer_id",
        ),
    ];
    for (path, field) in refused {
        let response = request(&app, path, None).await;
        check_error(response, 422, "invalid_field", Field::Is(field), path).await;
    }
    // A bad parameter is refused even beside a good header.
    let response = request(&app, "/events?last_event_id=x", Some("1-0")).await;
    check_error(
        response,
        422,
        "invalid_field",
        Field::Is("last_event_id"),
        "both",
    )
    .await;
    for path in ["/events?since=1", "/events?order_id=a&order_id=b"] {
        let response = request(&app, path, None).await;
        check_error(response, 400, "invalid_query", Field::Absent, path).await;
    }

    // Idle: a heartbeat comment every 200 ms, and the stream ends at its lifetime.
    let opened = Instant::now();
    let mut idle = Sse::open(&app, "/events", None).await;
    let mut heartbeats = 0;
    while let Some(frame) = idle.next(WAIT).await {
        assert!(!frame.is_event(), "no events were appended: {frame:?}");
        if frame.comment.as_deref() == Some("heartbeat") {
            heartbeats += 1;
        }
    }
    let lasted = opened.elapsed();
    assert!(heartbeats >= 3, "{heartbeats} heartbeats in {lasted:?}");
    assert!(
        lasted >= Duration::from_millis(1900) && lasted < Duration::from_secs(6),
        "the stream ended after {lasted:?}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_stream_limit_it_is_503_and_streams_end_at_shutdown() {
    let mut app = TestApp::spawn_with(
        api_only(),
        &[
            ("ORDERS_SSE_MAX_STREAMS", "2"),
            ("ORDERS_SSE_HEARTBEAT_MS", "200"),
            ("ORDERS_SHUTDOWN_TIMEOUT_MS", "10000"),
        ],
    )
    .await;
    let first = Sse::open(&app, "/events", None).await;
    let mut second = Sse::open(&app, "/events", None).await;
    let response = request(&app, "/events", None).await;
    assert_eq!(response.headers()["retry-after"], "1");
    check_error(response, 503, "overloaded", Field::Absent, "a third stream").await;
    // Other routes are not held up by the streams.
    assert_eq!(app.get("/healthz").await.status(), 200);

    // A client that leaves frees its place.
    drop(first);
    let mut third = None;
    wait_until("a place for a new stream", WAIT, async || {
        let response = request(&app, "/events", None).await;
        if response.status() == 200 {
            third = Some(response);
        }
        third.is_some()
    })
    .await;

    // Shutdown ends the open streams at once: it does not wait for its deadline.
    let stopping = Instant::now();
    app.stop().await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    while second.next(WAIT).await.is_some() {}
    let rest = third.unwrap().bytes().await;
    assert!(rest.is_ok(), "the stream ended cleanly: {rest:?}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_behind_is_ended_and_resumes_from_redis_without_a_gap() {
    const EVENTS: usize = 20_000;
    let app = TestApp::spawn_with(api_only(), &[("ORDERS_SSE_BUFFER_EVENTS", "16")]).await;
    let mut slow = Sse::open(&app, "/events", None).await;
    // It reads nothing while about 26 MiB of events are appended: more than the socket buffers
    // hold, so its stream falls more than 16 events behind the process's reader.
    for from in (0..EVENTS).step_by(1000) {
        append_events(&app, from, 1000).await;
    }
    let mut got = Vec::new();
    while let Some(frame) = slow.next(WAIT).await {
        if frame.is_event() {
            got.push(frame);
        }
    }
    assert!(
        !got.is_empty() && got.len() < EVENTS,
        "the stream ended after {} of {EVENTS} events",
        got.len()
    );
    eprintln!(
        "slow client: its stream ended after {} of {EVENTS} events",
        got.len()
    );
    // Resumed with the id of the last event it got: the rest, once, in order.
    let last = got.last().unwrap().id.clone().unwrap();
    let mut again = Sse::open(&app, "/events", Some(&last)).await;
    got.extend(again.events(EVENTS - got.len(), WAIT).await);
    let stream = stream_after(&app, None).await;
    assert_eq!(stream.len(), EVENTS);
    assert!(ids_and_data(&got) == stream, "every event once, in order");
    assert_eq!(again.next_event(QUIET).await, None, "nothing more");
    app.cleanup().await;
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A final event of about 1.3 KiB, as the workers append it.
fn big_event(n: usize) -> String {
    let items: Vec<String> = (0..10)
        .map(|i| format!("{n:08}-{i}-{}", "x".repeat(110)))
        .collect();
    json!({
        "event_id": Uuid::new_v4(), "order_id": Uuid::new_v4(), "customer_id": "flood",
        "status": "completed", "total": 1.5, "items": items,
        "accepted_at": "2026-11-22T04:30:02.763829Z", "completed_at": "2026-11-22T04:30:04.998385Z"
    })
    .to_string()
}

/// Appends `n` events to the stream, as the workers' scripts do.
async fn append_events(app: &TestApp, from: usize, n: usize) {
    let mut redis = app.redis.clone();
    let mut pipe = redis::pipe();
    for i in from..from + n {
        pipe.cmd("XADD")
            .arg(app.key("events"))
            .arg("*")
            .arg("event")
            .arg(big_event(i))
            .ignore();
    }
    let () = pipe.query_async(&mut redis).await.expect("XADD");
}

/// A gauge or counter of the process's `/metrics`, summed over its labels that contain `with`.
async fn metric(url: &str, name: &str, with: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with([' ', '{'])))
        .filter(|l| l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_the_rss_stays_flat() {
    const BATCH: usize = 500;
    const WARM_UP: usize = 3_000;
    const FLOOD: usize = 20_000;
    let vars = test_env(&[("ORDERS_HTTP_WRITE_TIMEOUT_MS", "2000")]).await;
    let log = common::process::test_log_path(&vars, "sse-rss");
    let service = Process::start("service", "api", &vars, log).await;
    let app = TestApp::observe(&vars).await;
    let url = |path: &str| service.url(path);
    let metrics = url("/metrics");

    // A client that reads everything, throughout.
    let reader = {
        let response = reqwest::get(url("/events")).await.unwrap();
        assert_eq!(response.status(), 200);
        let (tx, rx) = tokio::sync::watch::channel(0usize);
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let (mut events, mut tail) = (0usize, Vec::new());
            while let Some(Ok(chunk)) = body.next().await {
                tail.extend_from_slice(&chunk);
                let text = String::from_utf8_lossy(&tail).into_owned();
                let complete = text.rfind("\n\n").map_or(0, |i| i + 2);
                events += text[..complete].matches("\ndata:").count();
                tail.drain(..complete);
                let _ = tx.send(events);
            }
        });
        rx
    };
    let wait_read = async |reader: &tokio::sync::watch::Receiver<usize>, n: usize| {
        let what = format!("the reader to get {n} events");
        wait_until(&what, Duration::from_secs(60), async || {
            *reader.borrow() >= n
        })
        .await;
    };

    // Warm up: the shared buffer full, the allocator's arenas made.
    let mut appended = 0;
    while appended < WARM_UP {
        append_events(&app, appended, BATCH).await;
        appended += BATCH;
        wait_read(&reader, appended).await;
    }
    let before = rss_kib(service.pid());

    // A client that sends its request and never reads, with a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket
        .connect(format!("127.0.0.1:{}", service.port).parse().unwrap())
        .await
        .unwrap();
    stuck
        .write_all(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    wait_until("two streams open", WAIT, async || {
        metric(&metrics, "sse_streams_open", "").await == 2.0
    })
    .await;

    // About 26 MiB of events flow past it.
    let mut peak = before;
    while appended < WARM_UP + FLOOD {
        append_events(&app, appended, BATCH).await;
        appended += BATCH;
        wait_read(&reader, appended).await;
        peak = peak.max(rss_kib(service.pid()));
    }
    // The server closed it (within the write timeout of its buffers filling), not the client.
    wait_until(
        "the stuck stream to be closed",
        Duration::from_secs(20),
        async || metric(&metrics, "sse_streams_open", "").await == 1.0,
    )
    .await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, stuck.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection is closed");
    assert!(
        rest.len() < FLOOD * 1000,
        "it was sent only what its buffers held: {} bytes",
        rest.len()
    );
    let ended = metric(&metrics, "sse_streams_ended_total", "").await;
    assert_eq!(ended, 1.0, "one stream ended");

    let grew_kib = peak.saturating_sub(before);
    eprintln!(
        "RSS {} MiB before, peak {} MiB while {FLOOD} events (~{} MiB) flowed past a client that \
         did not read; it got {} KiB before it was closed",
        before / 1024,
        peak / 1024,
        FLOOD * big_event(0).len() / (1 << 20),
        rest.len() / 1024
    );
    assert!(grew_kib < 8 * 1024, "RSS grew {grew_kib} KiB");
    // The reader got everything, the slow client notwithstanding.
    assert_eq!(*reader.borrow(), WARM_UP + FLOOD);
    drop(service);
    app.cleanup().await;
}
