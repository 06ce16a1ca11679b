//! `orders-load`: a load generator for the order service.
//!
//! It subscribes to the completion channel first, then sends orders to `POST /orders` (or
//! `POST /orders/batch` with `--batch B`) from `--concurrency` clients: as fast as they go
//! (closed loop), or at `--rate` orders per second at fixed arrival times (open loop). In open
//! loop both latencies are taken from the *intended* send time, so a server that falls behind
//! cannot hide its queueing (no coordinated omission). Every accepted order id is remembered with
//! its send instant; the first event on the channel for one of those ids gives its end-to-end time
//! (POST to event). After the last request it waits up to `--wait` seconds for the remaining
//! events and reports HTTP and end-to-end percentiles, rejections, transport errors, missing and
//! duplicated events.
//!
//! It only talks to `--url` and `--redis-url` and stops by itself: the number of orders is
//! bounded, every request has a timeout, and so has the wait. Plain `http://` only (reqwest is
//! built without TLS). Exit code 0 when no order went missing, none was duplicated and there was
//! no transport error (a 202 without the order ids counts as one); 1 otherwise; 2 when it cannot
//! start (bad options, Redis unreachable).

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

mod report;
use report::{sustained_rate, Percentiles, Report};

/// Time limit of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest batch the service accepts.
const MAX_BATCH: u64 = 1000;

/// Command line options.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "Load generator for the order service (HTTP accept + completion events)"
)]
struct Args {
    /// Orders to send (with --rate and --duration it is rate * duration instead).
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Concurrent HTTP clients (also the size of the connection pool).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Orders per request: 0 sends single POST /orders, B > 0 sends POST /orders/batch.
    #[arg(long, default_value_t = 0)]
    batch: u64,
    /// Open loop: orders per second at fixed arrival times; 0 is a closed loop, as fast as it goes.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// With --rate: stop sending after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Base URL of the service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Redis the service publishes its events on.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Channel of the completion events.
    #[arg(long, default_value = "order.completed")]
    channel: String,
    /// Do not subscribe: measure the HTTP side only.
    #[arg(long)]
    no_events: bool,
    /// Seconds to wait for the last events once everything is sent.
    #[arg(long, default_value_t = 30.0)]
    wait: f64,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// A latency histogram in microseconds that grows as needed.
struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable!("3 digits is valid"));
        h.auto(true);
        Hist(h)
    }
}

impl Hist {
    fn record(&mut self, d: Duration) {
        let _ = self.0.record((d.as_micros() as u64).max(1));
    }
}

/// Everything measured, behind one lock: the senders and the subscriber hold it only briefly.
#[derive(Default)]
struct State {
    sent: u64,
    accepted: u64,
    rejected: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
    http: Hist,
    /// Accepted order id -> send instant (the intended one in open loop).
    ours: HashMap<Uuid, Instant>,
    /// Order id -> first arrival and number of events, for every order on the channel: with no
    /// processing delay an event can beat the 202 that names its order.
    seen: HashMap<Uuid, (Instant, u32)>,
    completed: u64,
    duplicated: u64,
    ignored_events: u64,
    last_event: Option<Instant>,
    /// When each of our orders completed, in arrival order of the events.
    completions: Vec<Instant>,
    e2e: Hist,
}

impl State {
    /// Order `id`, sent at `at`, was accepted. True when its event was already here.
    fn accepted(&mut self, id: Uuid, at: Instant) -> bool {
        self.accepted += 1;
        self.ours.insert(id, at);
        let Some(&(first, n)) = self.seen.get(&id) else {
            return false;
        };
        self.duplicated += u64::from(n - 1);
        self.complete(at, first);
        true
    }

    /// An event for `id` arrived at `now`. True when it completes one of our orders.
    fn event(&mut self, id: Uuid, now: Instant) -> bool {
        let (_, n) = self.seen.entry(id).or_insert((now, 0));
        *n += 1;
        let first_time = *n == 1;
        match self.ours.get(&id) {
            Some(&at) if first_time => self.complete(at, now),
            Some(_) => self.duplicated += 1,
            None => {}
        }
        first_time && self.ours.contains_key(&id)
    }

    fn complete(&mut self, sent: Instant, event: Instant) {
        self.completed += 1;
        self.last_event = Some(self.last_event.map_or(event, |l| l.max(event)));
        self.completions.push(event);
        self.e2e.record(event.saturating_duration_since(sent));
    }
}

/// What the clients share.
struct Ctx {
    client: reqwest::Client,
    base: String,
    count: u64,
    batch: u64,
    /// Seconds between two orders in open loop.
    interval: Option<f64>,
    start: Instant,
    next_request: AtomicU64,
    state: Arc<Mutex<State>>,
    sent_bar: ProgressBar,
    event_bar: ProgressBar,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An order as sent.
#[derive(Serialize)]
struct Order {
    customer_id: String,
    items: Vec<String>,
    total: Cents,
}

/// An amount in cents, written as a JSON number with two decimals (`12.30`).
struct Cents(u64);

impl Serialize for Cents {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = format!("{}.{:02}", self.0 / 100, self.0 % 100);
        let raw =
            serde_json::value::RawValue::from_string(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// A valid order for sequence number `i`, varied but reproducible (splitmix64 seeded by `i`).
fn order(i: u64) -> Order {
    let mut x = i.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut next = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let prefix = ["cust", "acme", "shop", "client"][(next() % 4) as usize];
    Order {
        customer_id: format!("{prefix}-{:05}", next() % 20_000),
        items: (0..1 + next() % 3)
            .map(|_| format!("sku-{:04}", next() % 5_000))
            .collect(),
        total: Cents(100 + next() % 50_000),
    }
}

/// The result of one request.
enum Outcome {
    Accepted(Vec<Uuid>),
    Rejected(u16),
    Failed(String),
}

/// The error and its causes on one line (reqwest hides the cause behind "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// Sends orders `first..first + n` in one request.
async fn send(ctx: &Ctx, first: u64, n: u64) -> Outcome {
    let request = if ctx.batch == 0 {
        ctx.client
            .post(format!("{}/orders", ctx.base))
            .json(&order(first))
    } else {
        let orders: Vec<Order> = (first..first + n).map(order).collect();
        ctx.client
            .post(format!("{}/orders/batch", ctx.base))
            .json(&orders)
    };
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(chain(&e)),
    };
    if response.status().as_u16() != 202 {
        return Outcome::Rejected(response.status().as_u16());
    }
    #[derive(Deserialize)]
    struct Queued {
        order_id: Option<Uuid>,
        order_ids: Option<Vec<Uuid>>,
    }
    let ids = match response.json::<Queued>().await {
        Ok(q) => q.order_id.map(|id| vec![id]).or(q.order_ids),
        Err(e) => return Outcome::Failed(format!("unreadable 202 body: {}", chain(&e))),
    };
    match ids {
        Some(ids) if ids.len() as u64 == n => Outcome::Accepted(ids),
        _ => Outcome::Failed(format!("202 without the {n} order id(s) expected")),
    }
}

/// One client: takes the next request number until all the orders are sent.
async fn sender(ctx: Arc<Ctx>) {
    let per_request = ctx.batch.max(1);
    loop {
        let first = ctx.next_request.fetch_add(1, Ordering::Relaxed) * per_request;
        if first >= ctx.count {
            return;
        }
        let n = per_request.min(ctx.count - first);
        let t0 = match ctx.interval {
            Some(interval) => {
                let at = ctx.start + Duration::from_secs_f64(first as f64 * interval);
                tokio::time::sleep_until(at).await;
                at
            }
            None => Instant::now(),
        };
        let outcome = send(&ctx, first, n).await;
        let latency = t0.elapsed();
        let mut state = lock(&ctx.state);
        state.sent += n;
        match outcome {
            Outcome::Accepted(ids) => {
                state.http.record(latency);
                let early = ids.into_iter().filter(|&id| state.accepted(id, t0)).count();
                ctx.event_bar.inc(early as u64);
            }
            Outcome::Rejected(code) => {
                state.http.record(latency);
                *state.rejected.entry(code).or_default() += n;
            }
            Outcome::Failed(message) => {
                state.errors += n;
                state.first_error.get_or_insert(message);
            }
        }
        ctx.sent_bar.inc(n);
    }
}

/// Subscribes (before anything is sent) and feeds the events to the state until the stream
/// ends; `ended` tells when it did (Redis went away).
async fn subscribe(
    args: &Args,
    state: Arc<Mutex<State>>,
    bar: ProgressBar,
    ended: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let redis = redis::Client::open(args.redis_url.as_str()).context("invalid --redis-url")?;
    let mut pubsub = (redis.get_async_pubsub().await)
        .with_context(|| format!("cannot connect to {}", args.redis_url))?;
    (pubsub.subscribe(&args.channel).await)
        .with_context(|| format!("cannot subscribe to {}", args.channel))?;
    let mut messages = pubsub.into_on_message();
    #[derive(Deserialize)]
    struct Event {
        order_id: Uuid,
        status: String,
    }
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            let now = Instant::now();
            let event = serde_json::from_slice::<Event>(message.get_payload_bytes());
            let mut state = lock(&state);
            match event {
                Ok(e) if e.status == "completed" => {
                    if state.event(e.order_id, now) {
                        bar.inc(1);
                    }
                }
                _ => state.ignored_events += 1,
            }
        }
        ended.store(true, Ordering::Relaxed);
    });
    Ok(())
}

fn progress_bar(multi: &MultiProgress, len: u64, label: &'static str) -> ProgressBar {
    let style =
        ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} ({per_sec}) {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    multi.add(ProgressBar::new(len).with_prefix(label).with_style(style))
}

/// Subscribes, sends, waits for the last events, and sums it all up.
async fn run(args: Args) -> anyhow::Result<Report> {
    let non_negative = |x: f64| x.is_finite() && x >= 0.0;
    if args.concurrency == 0
        || args.batch > MAX_BATCH
        || !non_negative(args.rate)
        || !(non_negative(args.wait) && args.wait <= 3600.0)
    {
        bail!(
            "need --concurrency >= 1, --batch <= {MAX_BATCH}, --rate >= 0 and --wait in 0..=3600"
        );
    }
    let count = match args.duration {
        Some(d) if args.rate > 0.0 && d.is_finite() && d > 0.0 => (args.rate * d).round() as u64,
        Some(_) => bail!("--duration needs --rate > 0 and a positive number of seconds"),
        None => args.count,
    };
    let base = reqwest::Url::parse(&args.url).context("invalid --url")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        // Below the service's idle timeout (http_header_timeout_ms, 10 s by default), so that a
        // pooled connection is not closed by the service under a request.
        .pool_idle_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let multi = MultiProgress::new();
    let state = Arc::<Mutex<State>>::default();
    let sent_bar = progress_bar(&multi, count, "sent");
    let event_bar = match args.no_events {
        true => ProgressBar::hidden(),
        false => progress_bar(&multi, count, "completed"),
    };
    let ended = Arc::new(AtomicBool::new(false));
    if !args.no_events {
        subscribe(&args, state.clone(), event_bar.clone(), ended.clone()).await?;
    }

    let ctx = Arc::new(Ctx {
        client,
        base: base.as_str().trim_end_matches('/').to_string(),
        count,
        batch: args.batch,
        interval: (args.rate > 0.0).then(|| 1.0 / args.rate),
        start: Instant::now(),
        next_request: AtomicU64::new(0),
        state,
        sent_bar,
        event_bar,
    });
    let senders: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(sender(ctx.clone())))
        .collect();
    for s in senders {
        s.await.context("a sender task failed")?;
    }
    let elapsed = ctx.start.elapsed();
    ctx.sent_bar.finish();

    let deadline = Instant::now() + Duration::from_secs_f64(args.wait);
    while !args.no_events && Instant::now() < deadline && !ended.load(Ordering::Relaxed) {
        let all_in = {
            let state = lock(&ctx.state);
            state.completed >= state.accepted
        };
        if all_in {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx.event_bar.finish();

    let mut state = lock(&ctx.state);
    let per_sec = |n: u64, d: Duration| {
        if d.is_zero() {
            0.0
        } else {
            n as f64 / d.as_secs_f64()
        }
    };
    let to_last_event = state
        .last_event
        .map(|l| l.saturating_duration_since(ctx.start));
    Ok(Report {
        sent: state.sent,
        accepted: state.accepted,
        rejected: std::mem::take(&mut state.rejected),
        transport_errors: state.errors,
        first_error: state.first_error.take(),
        elapsed_s: elapsed.as_secs_f64(),
        accept_rate: per_sec(state.accepted, elapsed),
        http_latency_ms: Percentiles::of(&state.http),
        events_measured: !args.no_events,
        completed: state.completed,
        missing: if args.no_events {
            0
        } else {
            state.accepted - state.completed
        },
        duplicated: state.duplicated,
        ignored_events: state.ignored_events,
        completion_rate: to_last_event.map_or(0.0, |d| per_sec(state.completed, d)),
        sustained_completion_rate: sustained_rate(&mut state.completions),
        end_to_end_ms: Percentiles::of(&state.e2e),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    let report = match run(args).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orders-load: {e:#}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        report.print_table();
    }
    let clean = report.missing == 0 && report.duplicated == 0 && report.transport_errors == 0;
    ExitCode::from(if clean { 0 } else { 1 })
}
