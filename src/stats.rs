//! Metrics: the counters and histograms every process records (exposed as Prometheus text on
//! `GET /metrics`), and the `GET /stats` summary, read from maintained counters in PostgreSQL and
//! the queue's state in Redis.

use crate::queue::{Queue, QueueError, QueueGauges};
use crate::store::{Store, StoreError, Timing, STATS_WINDOW};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use std::sync::OnceLock;

/// Orders accepted by the API.
pub const ACCEPTED: &str = "orders_accepted_total";
/// Requests refused, by error code.
pub const REJECTED: &str = "orders_rejected_total";
/// Orders completed by workers.
pub const COMPLETED: &str = "orders_completed_total";
/// Orders whose tries ran out.
pub const FAILED: &str = "orders_failed_total";
/// Failed tries scheduled for a retry.
pub const RETRIED: &str = "orders_retried_total";
/// Orders the reaper returned from dead workers.
pub const RECOVERED: &str = "orders_recovered_total";
/// Orders PostgreSQL held as `processing` with no trace left in Redis, put back on the queue.
pub const REPAIRED: &str = "orders_repaired_total";
/// Deliveries dropped because the order was already final or delivered twice.
pub const DUPLICATES: &str = "orders_duplicates_suppressed_total";
/// Customer notifications sent.
pub const NOTIFIED: &str = "notifications_sent_total";
/// Connections open on the API, in either lane.
pub const CONNECTIONS_OPEN: &str = "http_connections_open";
/// Connections past the connection cap that the overflow lane answered.
pub const CONNECTIONS_OVERFLOWED: &str = "http_connections_overflowed_total";
/// Overflow-lane connections closed to make room for a newer one.
pub const CONNECTIONS_EVICTED: &str = "http_connections_evicted_total";
/// Request bodies refused because the bodies being read held the whole byte budget.
pub const BODY_BUDGET_SPENT: &str = "http_body_budget_spent_total";
/// HTTP request duration, by route, method and status.
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
/// Processing time, from store to completion.
pub const PROCESSING: &str = "order_processing_seconds";
/// Time from acceptance to completion.
pub const END_TO_END: &str = "order_end_to_end_seconds";
/// Time from acceptance to the first claim.
pub const QUEUE_WAIT: &str = "order_queue_wait_seconds";

/// The process-wide recorder, installed on first use.
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let seconds = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // A recorder installed before (another app in the same test process) keeps working.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// How often the recorder's upkeep runs: without it, histogram samples gather until the next
/// scrape of `/metrics`, so memory grows while nothing scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the recorder's upkeep every [`UPKEEP_EVERY`] until `shutdown`.
pub async fn keep_up(shutdown: crate::Shutdown) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => recorder().run_upkeep(),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// `GET /stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub orders: Counts,
    pub processing_ms: Timing,
    pub end_to_end_ms: Timing,
    /// Queue depth, in flight, scheduled retries, dead letters, live workers, completions in
    /// the last minute (per-second counters in Redis).
    #[serde(flatten)]
    pub queue: QueueGauges,
    /// How many recent completions the timings cover.
    pub window: i64,
    /// `running`, or `paused` by an operator (no worker process claims).
    pub claiming: &'static str,
    /// When claiming was paused.
    #[serde(with = "time::serde::rfc3339::option")]
    pub paused_at: Option<time::OffsetDateTime>,
}

/// Orders per status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub queued: i64,
    pub processing: i64,
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub total: i64,
}

/// Why stats could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Reads the summary: two PostgreSQL queries on small tables and index ranges, one Redis script.
pub async fn collect(queue: &Queue, store: &Store) -> Result<Stats, StatsError> {
    let (db, gauges) = tokio::join!(store.stats(), queue.gauges());
    let (db, queue) = (db?, gauges?);
    let count = |s: &str| db.counts.get(s).copied().unwrap_or(0);
    let mut orders = Counts {
        queued: count("queued"),
        processing: count("processing"),
        completed: count("completed"),
        failed: count("failed"),
        cancelled: count("cancelled"),
        total: 0,
    };
    orders.total =
        orders.queued + orders.processing + orders.completed + orders.failed + orders.cancelled;
    let paused_at = queue.paused_at_ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok()
    });
    Ok(Stats {
        orders,
        processing_ms: db.processing_ms,
        end_to_end_ms: db.end_to_end_ms,
        queue,
        window: STATS_WINDOW,
        claiming: if paused_at.is_some() {
            "paused"
        } else {
            "running"
        },
        paused_at,
    })
}

/// The Prometheus text exposition: this process's counters and histograms, plus gauges of the
/// queue (shared by all processes) and of this process's database pool.
pub async fn render(queue: &Queue, store: &Store) -> Result<String, QueueError> {
    let gauges = queue.gauges().await?;
    metrics::gauge!("orders_queue_depth").set(gauges.queue_depth as f64);
    metrics::gauge!("orders_in_flight").set(gauges.in_flight as f64);
    metrics::gauge!("orders_scheduled_retries").set(gauges.scheduled_retries as f64);
    metrics::gauge!("orders_dead_letters").set(gauges.dead_letters as f64);
    metrics::gauge!("orders_live_workers").set(gauges.live_workers as f64);
    let paused = if gauges.paused_at_ms.is_some() {
        1.0
    } else {
        0.0
    };
    metrics::gauge!("orders_claiming_paused").set(paused);
    let (in_use, waiting) = store.pool_usage();
    metrics::gauge!("db_pool_connections_in_use").set(in_use as f64);
    metrics::gauge!("db_pool_waiting").set(waiting as f64);
    Ok(recorder().render())
}
