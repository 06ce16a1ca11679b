//! Tracing: one trace per order across processes, exported over OTLP/HTTP.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `ORDERS_TRACE_ENDPOINT`) set, [`init`] starts a tracer
//! provider whose batch span processor runs on the process's tokio runtime and posts protobuf to
//! `<endpoint>/v1/traces`. Unset, nothing is started: every function here first asks [`on`] (one
//! load of a `OnceLock`) and does nothing more, and no job or event gets a trace field.
//!
//! The W3C trace context travels in the request headers (`traceparent`, `tracestate`), then in
//! the job on the queue and in the order's event (fields of the same names). The span tree of one
//! order:
//!
//! ```text
//! POST /orders                  server    API       parent: the caller's traceparent, or a root
//! └─ enqueue                    producer  API       the enqueue script call
//!    ├─ queue wait              consumer  worker    accepted_at → claimed
//!    ├─ store                   internal  worker    begin_processing (its batch's statement)
//!    ├─ processing              internal  worker    stored → completion begins
//!    ├─ complete                internal  worker    store.complete (its batch's statement)
//!    └─ publish                 producer  worker    the publish-and-acknowledge script call
//!       └─ notify               consumer  notifier  event received → notification committed
//! ```
//!
//! The worker's spans are all children of the enqueue span, whose context the job carries; the
//! notify span is the child of the publish span, whose context the event carries. Workers and the
//! notifier work in batches: each order gets its own span with its batch's start and end times.

use crate::config::Config;
use crate::order::Job;
use crate::Roles;
pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{span_processor_with_async_runtime, Sampler, SdkTracer};
use opentelemetry_sdk::trace::{SdkTracerProvider, Span as SdkSpan};
use std::collections::HashMap;
use std::convert::Infallible;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use uuid::Uuid;
use warp::Filter;

/// The tracer of this process, once [`init`] has made one.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Longest `tracestate` carried; a longer one is dropped (the traceparent is kept). W3C asks
/// that at least 512 characters be propagated.
const MAX_TRACESTATE: usize = 512;

/// How long one export may take before its spans are given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether this process records spans.
pub fn on() -> bool {
    TRACER.get().is_some()
}

/// The current time, when tracing is on: the start or end of a batch's step.
pub fn now() -> Option<SystemTime> {
    on().then(SystemTime::now)
}

/// Why tracing could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT (trace_endpoint): cannot build the OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// The running tracer provider: shut it down at exit, so that the last spans are exported.
pub struct Tracing {
    provider: SdkTracerProvider,
}

/// Starts tracing when an endpoint is configured (`None` when not), for a process running
/// `roles`; its `service.name` is `OTEL_SERVICE_NAME` or `orders-<roles>` (`orders` for all).
/// Call it once, inside the tokio runtime.
pub fn init(config: &Config, roles: Roles) -> Result<Option<Tracing>, TraceError> {
    let endpoint = config.trace_endpoint.trim().trim_end_matches('/');
    if endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(TraceError::Exporter)?;
    let processor = span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name(roles));
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.trace_sample_ratio,
        ))))
        .with_resource(resource.build())
        .build();
    let _ = TRACER.set(provider.tracer("orders"));
    Ok(Some(Tracing { provider }))
}

/// `orders` for a process of every role, else `orders-` and its roles (`orders-api`).
fn service_name(roles: Roles) -> String {
    if roles == Roles::ALL {
        return "orders".into();
    }
    let names = [
        (roles.api, "api"),
        (roles.worker, "worker"),
        (roles.notifier, "notifier"),
    ];
    let names: Vec<&str> = names
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
    format!("orders-{}", names.join("-"))
}

impl Tracing {
    /// Exports what is still buffered and stops the exporter. The processor's shutdown blocks its
    /// thread until the export task (on this runtime) answers, so it runs on a blocking thread.
    pub async fn shutdown(self) -> Result<(), String> {
        let provider = self.provider;
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Parses a W3C `traceparent` strictly (lower-case hex, ids not all zero, version `ff` refused,
/// a later version's extra fields allowed), with its `tracestate` when that is valid and short
/// enough (else the traceparent alone). `None` for anything else: such a header starts a new trace.
pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let tp = traceparent.trim().as_bytes();
    let hex = |b: &[u8]| !b.is_empty() && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if tp.len() < 55 || [2, 35, 52].iter().any(|&i| tp[i] != b'-') {
        return None;
    }
    let (version, trace_id, span_id, flags) = (&tp[..2], &tp[3..35], &tp[36..52], &tp[53..55]);
    if !hex(version) || version == b"ff" || !hex(trace_id) || !hex(span_id) || !hex(flags) {
        return None;
    }
    // Version 00 has exactly these fields; a later one may add some, after a dash.
    if (version == b"00" && tp.len() != 55) || (tp.len() > 55 && tp[55] != b'-') {
        return None;
    }
    fn text(b: &[u8]) -> Option<&str> {
        std::str::from_utf8(b).ok()
    }
    let trace_id = TraceId::from_hex(text(trace_id)?).ok()?;
    let span_id = SpanId::from_hex(text(span_id)?).ok()?;
    let flags = u8::from_str_radix(text(flags)?, 16).ok()?;
    let state = tracestate
        .filter(|s| s.len() <= MAX_TRACESTATE)
        .and_then(|s| TraceState::from_str(s.trim()).ok())
        .unwrap_or_default();
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    );
    context.is_valid().then_some(context)
}

/// The `traceparent` of a span context (version 00).
pub fn traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        (context.trace_flags() & TraceFlags::SAMPLED).to_u8()
    )
}

/// The `tracestate` of a span context, when it has one.
pub fn tracestate(context: &SpanContext) -> Option<String> {
    Some(context.trace_state().header()).filter(|s| !s.is_empty())
}

/// The parent context a carried `traceparent` and `tracestate` name, when valid.
fn carried(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Context> {
    let context = parse(traceparent?, tracestate)?;
    Some(Context::new().with_remote_span_context(context))
}

/// A span being recorded, or nothing (tracing off, or no context to continue).
#[derive(Debug, Default)]
pub struct Span(Option<SdkSpan>);

impl Span {
    /// Starts a span at `start` under `parent` (a root when `parent` is empty).
    fn start(
        parent: &Context,
        name: &'static str,
        kind: SpanKind,
        start: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> Span {
        let Some(tracer) = TRACER.get() else {
            return Span(None);
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        Span(Some(span))
    }

    /// A child of this span, starting now.
    pub fn child(&self, name: &'static str, kind: SpanKind) -> Span {
        match &self.0 {
            Some(span) => {
                // A parent in this process: not remote, as the OTLP span flags will say.
                let sc = span.span_context();
                let local = SpanContext::new(
                    sc.trace_id(),
                    sc.span_id(),
                    sc.trace_flags(),
                    false,
                    sc.trace_state().clone(),
                );
                let parent = Context::new().with_remote_span_context(local);
                Span::start(&parent, name, kind, SystemTime::now(), Vec::new())
            }
            None => Span(None),
        }
    }

    /// Its `traceparent` and `tracestate`, for a job or an event to carry.
    pub fn carrier(&self) -> (Option<String>, Option<String>) {
        match &self.0 {
            Some(span) => (
                Some(traceparent(span.span_context())),
                tracestate(span.span_context()),
            ),
            None => (None, None),
        }
    }

    /// Adds an attribute (when recording).
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(span) = &mut self.0 {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks it failed with this error.
    pub fn fail(&mut self, error: &dyn std::fmt::Display) {
        if let Some(span) = &mut self.0 {
            span.set_status(Status::error(error.to_string()));
        }
    }

    /// Ends it now, failed when `result` is an error.
    pub fn ended<T, E: std::fmt::Display>(mut self, result: &Result<T, E>) {
        if let Err(e) = result {
            self.fail(e);
        }
        self.end();
    }

    /// Ends it now.
    pub fn end(self) {
        if let Some(mut span) = self.0 {
            span.end();
        }
    }

    /// Ends it at `at`.
    fn end_at(self, at: SystemTime) {
        if let Some(mut span) = self.0 {
            span.end_with_timestamp(at);
        }
    }
}

// ---- The API ----

/// What a request brings for its trace: the caller's context (when valid) and when it arrived;
/// nothing with tracing off.
#[derive(Debug, Default)]
pub struct Incoming(Option<(Context, SystemTime)>);

/// A trace context header's value, kept only with tracing on. Never refused: an invalid one
/// is read as none.
pub struct Header(Option<String>);

impl FromStr for Header {
    type Err = Infallible;

    fn from_str(value: &str) -> Result<Header, Infallible> {
        Ok(Header(on().then(|| value.to_string())))
    }
}

/// The trace context of a request (`traceparent`, `tracestate`) and its arrival time. A header
/// that is not even visible ASCII is read as none, like any other invalid one: never a 400.
pub fn incoming() -> impl Filter<Extract = (Incoming,), Error = Infallible> + Clone {
    let header = |name: &'static str| {
        warp::header::optional::<Header>(name)
            .or(warp::any().map(|| None))
            .unify()
    };
    header("traceparent").and(header("tracestate")).map(
        |parent: Option<Header>, state: Option<Header>| {
            if !on() {
                return Incoming(None);
            }
            let parent = parent.and_then(|h| h.0);
            let state = state.and_then(|h| h.0);
            let context = carried(parent.as_deref(), state.as_deref()).unwrap_or_default();
            Incoming(Some((context, SystemTime::now())))
        },
    )
}

impl Incoming {
    /// The server span of the request `name` (`POST /orders`), from its arrival.
    pub fn request(self, name: &'static str, route: &'static str) -> Span {
        let Some((parent, arrived)) = self.0 else {
            return Span(None);
        };
        let attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", route),
        ];
        Span::start(&parent, name, SpanKind::Server, arrived, attributes)
    }
}

impl Span {
    /// Records the answer of a request span: its status code, and an error for a 5xx.
    pub fn answered(&mut self, status: u16) {
        self.set("http.response.status_code", i64::from(status));
        if status >= 500 {
            if let Some(span) = &mut self.0 {
                span.set_status(Status::error(format!("HTTP {status}")));
            }
        }
    }
}

// ---- The worker ----

/// One order's trace in a worker: the context its job carries (the enqueue span's), when its
/// store ended (when its processing began), and its publish span once that began. Nothing for an
/// order whose job carries no context, or with tracing off.
#[derive(Debug, Default)]
pub struct Order(Option<Box<Traced>>);

#[derive(Debug)]
struct Traced {
    parent: Context,
    order_id: Uuid,
    stored: SystemTime,
    publish: Span,
}

impl Order {
    /// Records the queue wait (acceptance to `claimed`) and the store (`store` start and end, its
    /// batch's) of a stored order, and returns its trace for the steps that follow.
    pub fn stored(
        job: &Job,
        attempt: i32,
        claimed: Option<SystemTime>,
        store: (Option<SystemTime>, Option<SystemTime>),
    ) -> Order {
        let (Some(begun), Some(stored)) = store else {
            return Order(None);
        };
        let Some(parent) = carried(job.traceparent.as_deref(), job.tracestate.as_deref()) else {
            return Order(None);
        };
        let id = KeyValue::new("order.id", job.order_id.to_string());
        let attrs = || {
            vec![
                id.clone(),
                KeyValue::new("order.attempt", i64::from(attempt)),
            ]
        };
        let claimed = claimed.unwrap_or(begun);
        let accepted = SystemTime::from(job.accepted_at).min(claimed);
        Span::start(&parent, "queue wait", SpanKind::Consumer, accepted, attrs()).end_at(claimed);
        Span::start(&parent, "store", SpanKind::Internal, begun, attrs()).end_at(stored);
        Order(Some(Box::new(Traced {
            parent,
            order_id: job.order_id,
            stored,
            publish: Span(None),
        })))
    }

    /// Records the processing (stored to `complete`'s start) and the completion (`complete`'s
    /// start and end, its batch's; `outcome` what it did) of an order, and starts its publish
    /// span at the completion's end: the event carries that span's context ([`Order::carrier`]),
    /// and [`Order::published`] ends it.
    pub fn completed(&mut self, complete: (Option<SystemTime>, Option<SystemTime>), outcome: &str) {
        let (Some(traced), (Some(begun), Some(done))) = (&mut self.0, complete) else {
            return;
        };
        let id = || vec![KeyValue::new("order.id", traced.order_id.to_string())];
        let parent = &traced.parent;
        Span::start(
            parent,
            "processing",
            SpanKind::Internal,
            traced.stored,
            id(),
        )
        .end_at(begun);
        let mut attributes = id();
        attributes.push(KeyValue::new("order.outcome", outcome.to_string()));
        Span::start(parent, "complete", SpanKind::Internal, begun, attributes).end_at(done);
        traced.publish = Span::start(parent, "publish", SpanKind::Producer, done, id());
    }

    /// The `traceparent` and `tracestate` of its publish span, for its event.
    pub fn carrier(&self) -> (Option<String>, Option<String>) {
        match &self.0 {
            Some(traced) => traced.publish.carrier(),
            None => (None, None),
        }
    }

    /// Ends its publish span at `at` (its batch's publish end).
    pub fn published(&mut self, at: Option<SystemTime>) {
        if let (Some(traced), Some(at)) = (&mut self.0, at) {
            std::mem::take(&mut traced.publish).end_at(at);
        }
    }
}

/// The `trace_id` of an order's log lines: the trace its job carries, when it carries one.
pub struct LogTraceId<'a>(Option<&'a str>);

/// The `trace_id` key of `job`'s log lines (nothing when it carries no trace).
pub fn log_kv(job: &Job) -> LogTraceId<'_> {
    LogTraceId(job.traceparent.as_deref().and_then(trace_id_of))
}

/// The trace id of a `traceparent`, without parsing it all (the worker parsed it already).
fn trace_id_of(traceparent: &str) -> Option<&str> {
    traceparent.get(3..35)
}

impl slog::KV for LogTraceId<'_> {
    fn serialize(&self, _: &slog::Record, out: &mut dyn slog::Serializer) -> slog::Result {
        match self.0 {
            Some(id) => out.emit_str("trace_id", id),
            None => Ok(()),
        }
    }
}

// ---- The notifier ----

/// Notify spans waiting for their notification's commit, by order: the notifier receives an
/// event in one task and records the notification in another, a batch at a time.
static NOTIFYING: Mutex<Option<HashMap<Uuid, Span>>> = Mutex::new(None);

/// Notify spans waiting at once, at most; past it an event's span is not recorded (a notifier
/// far behind, or events whose notification was sent before).
const MAX_NOTIFYING: usize = 10_000;

/// An event of a completed order has arrived: starts its notify span, the child of the publish
/// span the event carries. [`notified`] ends it.
pub fn event_received(event: &crate::events::Event) {
    if !on() {
        return;
    }
    let Some(parent) = carried(event.traceparent.as_deref(), event.tracestate.as_deref()) else {
        return;
    };
    let id = KeyValue::new("order.id", event.order_id.to_string());
    let span = Span::start(
        &parent,
        "notify",
        SpanKind::Consumer,
        SystemTime::now(),
        vec![id],
    );
    let mut waiting = NOTIFYING.lock().unwrap_or_else(|e| e.into_inner());
    let waiting = waiting.get_or_insert_with(HashMap::new);
    if waiting.len() < MAX_NOTIFYING {
        waiting.insert(event.order_id, span);
    }
}

/// The notifications of these orders were recorded (or failed to be, with `error`): ends their
/// notify spans.
pub fn notified(order_ids: &[Uuid], error: Option<&dyn std::fmt::Display>) {
    if !on() {
        return;
    }
    let mut waiting = NOTIFYING.lock().unwrap_or_else(|e| e.into_inner());
    let Some(waiting) = waiting.as_mut() else {
        return;
    };
    for order_id in order_ids {
        if let Some(mut span) = waiting.remove(order_id) {
            if let Some(error) = error {
                span.fail(error);
            }
            span.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn a_valid_traceparent_parses_and_formats_back() {
        let header = format!("00-{TRACE}-{SPAN}-01");
        let context = parse(&header, Some("vendor=x,other=y")).unwrap();
        assert_eq!(context.trace_id().to_string(), TRACE);
        assert_eq!(context.span_id().to_string(), SPAN);
        assert!(context.is_sampled());
        assert_eq!(traceparent(&context), header);
        assert_eq!(tracestate(&context).as_deref(), Some("vendor=x,other=y"));
        let unsampled = parse(&format!("00-{TRACE}-{SPAN}-00"), None).unwrap();
        assert!(!unsampled.is_sampled());
        assert_eq!(tracestate(&unsampled), None);
        // A later version may add fields; its flags other than sampled are dropped.
        let later = parse(&format!("01-{TRACE}-{SPAN}-09-whatever"), None).unwrap();
        assert_eq!(traceparent(&later), format!("00-{TRACE}-{SPAN}-01"));
    }

    #[test]
    fn an_invalid_traceparent_is_none() {
        let zeros = "0".repeat(32);
        for bad in [
            String::new(),
            "garbage".into(),
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{TRACE}-{SPAN}-"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("0x-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
            format!("00-{zeros}-{SPAN}-01"),
            format!("00-{TRACE}-0000000000000000-01"),
            format!("00-{}-{SPAN}-01", &TRACE[..30]),
            format!("00_{TRACE}_{SPAN}_01"),
            format!("01-{TRACE}-{SPAN}-01x"),
            format!("00-{TRACE}-{SPAN}-0g"),
        ] {
            assert!(parse(&bad, None).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn an_invalid_or_long_tracestate_is_dropped_and_the_traceparent_kept() {
        let header = format!("00-{TRACE}-{SPAN}-01");
        let long = format!("a={}", "x".repeat(MAX_TRACESTATE));
        for state in ["not a tracestate", "Upper=x", "a=b=c", long.as_str()] {
            let context = parse(&header, Some(state)).unwrap();
            assert_eq!(tracestate(&context), None, "{state:?}");
        }
    }

    #[test]
    fn the_log_key_is_the_carried_trace_id() {
        assert_eq!(trace_id_of(&format!("00-{TRACE}-{SPAN}-01")), Some(TRACE));
        assert_eq!(service_name(Roles::ALL), "orders");
        assert_eq!(service_name(Roles::parse("api").unwrap()), "orders-api");
        assert_eq!(
            service_name(Roles::parse("notifier,worker").unwrap()),
            "orders-worker-notifier"
        );
    }

    #[test]
    fn with_tracing_off_nothing_is_recorded_or_carried() {
        // This test binary never calls init.
        assert!(!on());
        assert_eq!(now(), None);
        let span = Incoming::default().request("POST /orders", "/orders");
        assert_eq!(
            span.child("enqueue", SpanKind::Producer).carrier(),
            (None, None)
        );
    }
}
