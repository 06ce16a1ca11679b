//! Metrics: the counters and histograms every process records (exposed as Prometheus text on
//! `GET /metrics`), and the `GET /stats` summary, read from maintained counters in PostgreSQL and
//! the queue's state in Redis.

use crate::queue::{Queue, QueueError, QueueGauges};
use crate::store::{Store, StoreError, Timing, STATS_WINDOW};
use metrics::{Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use serde::{Deserialize, Serialize};
use std::sync::{LazyLock, OnceLock};

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
/// Orders waiting in the queue (all processes).
pub const QUEUE_DEPTH: &str = "orders_queue_depth";
/// Orders claimed by a worker and not yet acknowledged (all processes).
pub const IN_FLIGHT: &str = "orders_in_flight";
/// Failed tries waiting for their retry (all processes).
pub const SCHEDULED_RETRIES: &str = "orders_scheduled_retries";
/// Orders in the dead-letter list (all processes).
pub const DEAD_LETTERS: &str = "orders_dead_letters";
/// Worker processes whose heartbeat is current (all processes).
pub const LIVE_WORKERS: &str = "orders_live_workers";
/// 1 while claiming is paused for every worker process, else 0.
pub const CLAIMING_PAUSED: &str = "orders_claiming_paused";
/// This process's PostgreSQL connections checked out of the pool.
pub const DB_POOL_IN_USE: &str = "db_pool_connections_in_use";
/// This process's tasks waiting for a PostgreSQL connection.
pub const DB_POOL_WAITING: &str = "db_pool_waiting";

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
        describe(&recorder);
        let handle = recorder.handle();
        // A recorder installed before (another app in the same test process) keeps working.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// What a metric is, for its `# TYPE` line.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the service exports, with its unit and its `# HELP` text. The process metrics
/// are those `metrics-process` records (names of the Prometheus client guidelines).
#[rustfmt::skip]
const DESCRIPTIONS: &[(Kind, &str, Unit, &str)] = &[
    (Kind::Counter, ACCEPTED, Unit::Count, "Orders accepted by this process's API (POST /orders and /orders/batch)."),
    (Kind::Counter, REJECTED, Unit::Count, "Requests this process's API refused, by error code (reason)."),
    (Kind::Counter, COMPLETED, Unit::Count, "Orders this process's workers completed."),
    (Kind::Counter, FAILED, Unit::Count, "Orders whose tries ran out in this process's workers (dead-lettered)."),
    (Kind::Counter, RETRIED, Unit::Count, "Failed tries this process's workers scheduled for a retry."),
    (Kind::Counter, RECOVERED, Unit::Count, "Orders this process's reaper returned to the queue from dead workers."),
    (Kind::Counter, REPAIRED, Unit::Count, "Orders PostgreSQL held as processing with no trace in Redis, put back on the queue."),
    (Kind::Counter, DUPLICATES, Unit::Count, "Deliveries dropped because the order was already final or delivered twice."),
    (Kind::Counter, NOTIFIED, Unit::Count, "Customer notifications this process sent."),
    (Kind::Gauge, CONNECTIONS_OPEN, Unit::Count, "Connections open on this process's API, in either lane."),
    (Kind::Counter, CONNECTIONS_OVERFLOWED, Unit::Count, "Connections past the connection cap that the overflow lane answered."),
    (Kind::Counter, CONNECTIONS_EVICTED, Unit::Count, "Overflow-lane connections closed to make room for a newer one."),
    (Kind::Counter, BODY_BUDGET_SPENT, Unit::Count, "Request bodies refused (503) because the bodies being read held the whole byte budget."),
    (Kind::Histogram, HTTP_DURATION, Unit::Seconds, "HTTP request duration in seconds, by route, method and status."),
    (Kind::Histogram, PROCESSING, Unit::Seconds, "Processing time of completed orders in seconds, from storing as processing to completion."),
    (Kind::Histogram, END_TO_END, Unit::Seconds, "Time of completed orders in seconds, from acceptance to completion."),
    (Kind::Histogram, QUEUE_WAIT, Unit::Seconds, "Time of orders in seconds, from acceptance to their first claim."),
    (Kind::Gauge, QUEUE_DEPTH, Unit::Count, "Orders waiting in the queue (shared by every process, read from Redis)."),
    (Kind::Gauge, IN_FLIGHT, Unit::Count, "Orders claimed by a worker and not yet acknowledged (shared, read from Redis)."),
    (Kind::Gauge, SCHEDULED_RETRIES, Unit::Count, "Failed tries waiting for their retry (shared, read from Redis)."),
    (Kind::Gauge, DEAD_LETTERS, Unit::Count, "Orders in the dead-letter list (shared, read from Redis)."),
    (Kind::Gauge, LIVE_WORKERS, Unit::Count, "Worker processes whose heartbeat is current (shared, read from Redis)."),
    (Kind::Gauge, CLAIMING_PAUSED, Unit::Count, "1 while claiming is paused for every worker process (POST /workers/pause), else 0."),
    (Kind::Gauge, DB_POOL_IN_USE, Unit::Count, "PostgreSQL connections of this process's pool in use."),
    (Kind::Gauge, DB_POOL_WAITING, Unit::Count, "Tasks of this process waiting for a PostgreSQL connection from the pool."),
    (Kind::Gauge, crate::live::STREAMS_OPEN, Unit::Count, "Live event streams (GET /events) open on this process."),
    (Kind::Counter, crate::live::STREAMS_ENDED, Unit::Count, "Live event streams this process ended, by reason."),
    (Kind::Counter, crate::live::STREAMS_REFUSED, Unit::Count, "Live event streams refused (503) past the stream limit."),
    (Kind::Counter, "process_cpu_seconds_total", Unit::Seconds, "Total user and system CPU time spent in seconds (counted in whole seconds)."),
    (Kind::Gauge, "process_open_fds", Unit::Count, "Number of open file descriptors."),
    (Kind::Gauge, "process_max_fds", Unit::Count, "Maximum number of open file descriptors (soft limit; 0 if unlimited)."),
    (Kind::Gauge, "process_virtual_memory_bytes", Unit::Bytes, "Virtual memory size in bytes."),
    (Kind::Gauge, "process_virtual_memory_max_bytes", Unit::Bytes, "Maximum amount of virtual memory available in bytes (0 if unlimited)."),
    (Kind::Gauge, "process_resident_memory_bytes", Unit::Bytes, "Resident memory size in bytes."),
    (Kind::Gauge, "process_start_time_seconds", Unit::Seconds, "Start time of the process since unix epoch in seconds."),
    (Kind::Gauge, "process_threads", Unit::Count, "Number of OS threads in the process."),
];

/// Gives `recorder` the HELP text and unit of every metric in [`DESCRIPTIONS`], before it is
/// installed: the exporter prints `# HELP` only for described metrics.
fn describe(recorder: &PrometheusRecorder) {
    for &(kind, name, unit, help) in DESCRIPTIONS {
        let (name, unit, help) = (name.into(), Some(unit), help.into());
        match kind {
            Kind::Counter => recorder.describe_counter(name, unit, help),
            Kind::Gauge => recorder.describe_gauge(name, unit, help),
            Kind::Histogram => recorder.describe_histogram(name, unit, help),
        }
    }
}

/// Records the `process_*` metrics of this process.
static PROCESS: LazyLock<metrics_process::Collector> =
    LazyLock::new(metrics_process::Collector::default);

/// Resource use of this process at one moment; `None` where the platform does not tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSample {
    /// Resident memory, in bytes.
    pub rss_bytes: Option<u64>,
    /// User and system CPU time since the process started, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
}

/// Reads this process's resident memory, CPU time and open descriptors (on Linux from
/// `/proc/self`): the figures of `process_resident_memory_bytes`, `process_cpu_seconds_total` and
/// `process_open_fds`.
pub fn process_sample() -> ProcessSample {
    let m = metrics_process::collector::collect();
    ProcessSample {
        rss_bytes: m.resident_memory_bytes,
        cpu_seconds: m.cpu_seconds_total,
        open_fds: m.open_fds,
    }
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
    metrics::gauge!(QUEUE_DEPTH).set(gauges.queue_depth as f64);
    metrics::gauge!(IN_FLIGHT).set(gauges.in_flight as f64);
    metrics::gauge!(SCHEDULED_RETRIES).set(gauges.scheduled_retries as f64);
    metrics::gauge!(DEAD_LETTERS).set(gauges.dead_letters as f64);
    metrics::gauge!(LIVE_WORKERS).set(gauges.live_workers as f64);
    let paused = if gauges.paused_at_ms.is_some() {
        1.0
    } else {
        0.0
    };
    metrics::gauge!(CLAIMING_PAUSED).set(paused);
    let (in_use, waiting) = store.pool_usage();
    metrics::gauge!(DB_POOL_IN_USE).set(in_use as f64);
    metrics::gauge!(DB_POOL_WAITING).set(waiting as f64);
    PROCESS.collect();
    Ok(recorder().render())
}
