//! Tracing: an OTLP/HTTP receiver inside the test collects the spans the real binary exports.
//! One order through an API process, a worker process and a notifier process is one trace, with
//! the span tree of `src/trace.rs`, correctly parented; an invalid `traceparent` starts a new
//! trace and never fails the request; with no endpoint, jobs carry no trace context.

mod common;

use common::events::Events;
use common::process::{test_log_path, Process};
use common::{test_env, wait_until, TestApp};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;
use warp::Filter;

/// The caller's trace and span: what the request span must continue.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

/// OTLP span kinds.
const INTERNAL: i32 = 1;
const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// One span as received, ids in hex.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
    start: u64,
    end: u64,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver on a free port: `POST /v1/traces` with protobuf, every span kept.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
    posts: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let posts: Arc<Mutex<Vec<String>>> = Arc::default();
        let (kept, seen) = (spans.clone(), posts.clone());
        let route = warp::post()
            .and(warp::path!("v1" / "traces"))
            .and(warp::header::optional::<String>("content-type"))
            .and(warp::body::bytes())
            .map(move |content_type: Option<String>, body: bytes::Bytes| {
                seen.lock().unwrap().push(content_type.unwrap_or_default());
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                kept.lock().unwrap().extend(spans_of(request));
                // An empty ExportTraceServiceResponse: everything accepted.
                warp::http::Response::builder()
                    .header("content-type", "application/x-protobuf")
                    .body(Vec::new())
                    .unwrap()
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Receiver { url, spans, posts }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    fn in_trace(&self, trace_id: &str) -> Vec<Received> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(&r.attributes));
        let service = resource
            .and_then(|r| r.get("service.name").cloned())
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The environment of a traced service: spans to `receiver`, exported every 100 ms, a short
/// processing time (so the processing span has a length), and a channel of its own.
async fn traced_env(receiver: &Receiver, channel: &str) -> HashMap<String, String> {
    test_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("ORDERS_PROCESSING_DELAY_MS", "30"),
        ("ORDERS_EVENT_CHANNEL", channel),
    ])
    .await
}

/// The eight spans of one order, each once, children as `src/trace.rs` draws the tree, with the
/// request span continuing the caller's; the event carries the publish span; the order's log
/// lines carry the trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_through_three_processes_is_one_trace_correctly_parented() {
    let receiver = Receiver::start().await;
    let channel = format!("test.completed.{}", Uuid::new_v4().simple());
    let vars = traced_env(&receiver, &channel).await;
    let app = TestApp::observe(&vars).await;
    let api = Process::start("api", "api", &vars, test_log_path(&vars, "api")).await;
    let worker = Process::start("worker", "worker", &vars, test_log_path(&vars, "worker")).await;
    let notifier = Process::start(
        "notifier",
        "notifier",
        &vars,
        test_log_path(&vars, "notifier"),
    )
    .await;
    let events = Events::subscribe(&common::redis_url(), &channel).await;

    let response = app
        .http
        .post(api.url("/orders"))
        .header("traceparent", format!("00-{TRACE}-{CALLER}-01"))
        .header("tracestate", "shop=cart7")
        .json(&json!({"customer_id": "traced", "items": ["sku-1"], "total": 12.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let order_id = body["order_id"].as_str().unwrap().to_string();

    let event = events
        .of_order(order_id.parse().unwrap(), Duration::from_secs(30))
        .await;
    let names = [
        "POST /orders",
        "enqueue",
        "queue wait",
        "store",
        "processing",
        "complete",
        "publish",
        "notify",
    ];
    wait_until("the eight spans", Duration::from_secs(30), async || {
        let spans = receiver.in_trace(TRACE);
        names.iter().all(|n| spans.iter().any(|s| s.name == *n))
    })
    .await;
    // Anything late would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spans = receiver.spans();
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE),
        "every span is in the caller's trace: {spans:#?}"
    );
    let mut by_name: HashMap<&str, Received> = HashMap::new();
    for span in &spans {
        let name = names
            .iter()
            .find(|n| **n == span.name)
            .unwrap_or_else(|| panic!("unexpected span {span:?}"));
        assert!(
            by_name.insert(name, span.clone()).is_none(),
            "{name} twice: {spans:#?}"
        );
    }
    let span = |name: &str| by_name[name].clone();
    let (request, enqueue, publish) = (span("POST /orders"), span("enqueue"), span("publish"));

    // The tree.
    assert_eq!(
        request.parent_span_id, CALLER,
        "the request continues the caller"
    );
    assert_eq!(enqueue.parent_span_id, request.span_id);
    for name in ["queue wait", "store", "processing", "complete", "publish"] {
        assert_eq!(span(name).parent_span_id, enqueue.span_id, "{name}");
    }
    assert_eq!(span("notify").parent_span_id, publish.span_id);

    // Who recorded what, and as what kind.
    for (name, service, kind) in [
        ("POST /orders", "orders-api", SERVER),
        ("enqueue", "orders-api", PRODUCER),
        ("queue wait", "orders-worker", CONSUMER),
        ("store", "orders-worker", INTERNAL),
        ("processing", "orders-worker", INTERNAL),
        ("complete", "orders-worker", INTERNAL),
        ("publish", "orders-worker", PRODUCER),
        ("notify", "orders-notifier", CONSUMER),
    ] {
        let s = span(name);
        assert_eq!((s.service.as_str(), s.kind), (service, kind), "{name}");
        assert!(s.start <= s.end, "{name} ends before it starts: {s:?}");
        if name != "POST /orders" && name != "enqueue" {
            assert_eq!(s.attributes["order.id"], order_id, "{name}");
        }
    }
    assert_eq!(request.attributes["http.response.status_code"], "202");
    assert_eq!(request.attributes["http.route"], "/orders");
    assert_eq!(span("complete").attributes["order.outcome"], "completed");

    // In time: the worker's steps follow each other without a gap, and nest in the request's
    // and the enqueue's times where they share a process.
    assert!(request.start <= enqueue.start && enqueue.end <= request.end);
    assert!(span("queue wait").start <= enqueue.end);
    assert!(span("queue wait").end <= span("store").start);
    assert_eq!(span("store").end, span("processing").start);
    assert_eq!(span("processing").end, span("complete").start);
    assert_eq!(span("complete").end, publish.start);
    assert!(span("processing").end - span("processing").start >= 30_000_000);
    assert!(publish.start <= span("notify").start);

    // The event carries the publish span, with the caller's tracestate.
    assert_eq!(
        event["traceparent"],
        format!("00-{TRACE}-{}-01", publish.span_id)
    );
    assert_eq!(event["tracestate"], "shop=cart7");
    assert_eq!(receiver.posts.lock().unwrap()[0], "application/x-protobuf");

    // The order's log lines carry the trace id.
    for (process, msg) in [
        (&api, "order accepted"),
        (&worker, "order processing"),
        (&worker, "order completed"),
    ] {
        let line = process
            .log
            .all(msg)
            .into_iter()
            .find(|l| l["order_id"] == order_id.as_str())
            .unwrap_or_else(|| panic!("{msg} in {}", process.log.path().display()));
        assert_eq!(line["trace_id"], TRACE, "{msg}: {line}");
    }
    assert!(notifier.log.find("reading the event stream").is_some());
    drop((api, worker, notifier));
    app.cleanup().await;
}

/// A traceparent that is not one (garbage, upper case, bytes that are not even ASCII) is
/// ignored: the request is answered as always and its span is the root of a new trace, which
/// the job carries. A valid unsampled one is obeyed: no span, and the job carries it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_traceparent_starts_a_new_trace_and_never_fails_the_request() {
    let receiver = Receiver::start().await;
    let vars = traced_env(&receiver, "test.unused").await;
    let app = TestApp::observe(&vars).await;
    let api = Process::start("api", "api", &vars, test_log_path(&vars, "api")).await;

    let order = json!({"customer_id": "roots", "items": ["a"], "total": 1});
    let bad: Vec<warp::http::HeaderValue> = vec![
        "garbage".parse().unwrap(),
        format!("00-{}-{CALLER}-01", TRACE.to_uppercase())
            .parse()
            .unwrap(),
        format!("00-{}-{CALLER}-01", "0".repeat(32))
            .parse()
            .unwrap(),
        warp::http::HeaderValue::from_bytes(b"00-\xff\xfe-01").unwrap(),
    ];
    let mut roots = Vec::new();
    for header in &bad {
        let response = app
            .http
            .post(api.url("/orders"))
            .header("traceparent", header.clone())
            .header("tracestate", "Upper=case")
            .json(&order)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{header:?}");
        let body: Value = response.json().await.unwrap();
        roots.push(body["order_id"].as_str().unwrap().to_string());
    }
    // A batch, with no traceparent at all: a root too.
    let response = app
        .http
        .post(api.url("/orders/batch"))
        .json(&json!([order.clone(), order.clone()]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let unsampled = format!("00-{TRACE}-{CALLER}-00");
    let response = app
        .http
        .post(api.url("/orders"))
        .header("traceparent", &unsampled)
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let unsampled_order: Value = response.json().await.unwrap();

    // Five requests, each a request span and an enqueue span.
    wait_until("ten spans", Duration::from_secs(30), async || {
        receiver.spans().len() >= 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spans = receiver.spans();
    assert_eq!(
        spans.len(),
        10,
        "nothing of the unsampled request: {spans:#?}"
    );
    let requests: Vec<&Received> = spans.iter().filter(|s| s.kind == SERVER).collect();
    assert_eq!(requests.len(), 5);
    for request in &requests {
        assert_eq!(request.parent_span_id, "", "a root: {request:?}");
        assert_ne!(request.trace_id, TRACE.to_lowercase());
        let enqueue = spans
            .iter()
            .find(|s| s.name == "enqueue" && s.parent_span_id == request.span_id)
            .unwrap_or_else(|| panic!("the enqueue span of {request:?}"));
        assert_eq!(enqueue.trace_id, request.trace_id);
    }
    let mut traces: Vec<&str> = requests.iter().map(|s| s.trace_id.as_str()).collect();
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), 5, "a new trace each");

    // The jobs carry their enqueue span: a trace the receiver has, or the unsampled caller's.
    let mut redis = app.redis.clone();
    let payloads: Vec<String> = redis.lrange(app.key("queue"), 0, -1).await.unwrap();
    assert_eq!(payloads.len(), 7);
    for payload in payloads {
        let job: Value = serde_json::from_str(&payload).unwrap();
        let traceparent = job["traceparent"].as_str().expect("a traceparent");
        assert!(
            job.get("tracestate").is_none(),
            "an invalid tracestate is dropped"
        );
        if job["order_id"] == unsampled_order["order_id"] {
            assert!(traceparent.starts_with(&format!("00-{TRACE}-")));
            assert!(traceparent.ends_with("-00"), "{traceparent}");
            continue;
        }
        let enqueue = spans
            .iter()
            .find(|s| s.name == "enqueue" && traceparent.contains(&s.span_id))
            .unwrap_or_else(|| panic!("{traceparent} is no enqueue span"));
        assert_eq!(
            traceparent,
            format!("00-{}-{}-01", enqueue.trace_id, enqueue.span_id)
        );
    }
    drop(api);
    app.cleanup().await;
}

/// A process stopped with SIGTERM exports the spans it still buffers before it exits, though
/// its next scheduled export is a minute away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_process_exports_its_last_spans() {
    let receiver = Receiver::start().await;
    let vars = test_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
    ])
    .await;
    let app = TestApp::observe(&vars).await;
    let mut api = Process::start("api", "api", &vars, test_log_path(&vars, "api")).await;
    let response = app
        .http
        .post(api.url("/orders"))
        .json(&json!({"customer_id": "last", "items": ["a"], "total": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.spans().is_empty(), "exported before the schedule");
    api.signal("TERM");
    assert!(api.wait_exit(Duration::from_secs(20)).await.success());
    let names: Vec<String> = receiver.spans().into_iter().map(|s| s.name).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"POST /orders".to_string()) && names.contains(&"enqueue".to_string()));
    app.cleanup().await;
}

/// With no endpoint nothing is traced: no span, and jobs carry no trace context, even when the
/// request sends one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_endpoint_jobs_carry_no_trace_context() {
    let vars = test_env(&[]).await;
    let app = TestApp::observe(&vars).await;
    let api = Process::start("api", "api", &vars, test_log_path(&vars, "api")).await;
    let response = app
        .http
        .post(api.url("/orders"))
        .header("traceparent", format!("00-{TRACE}-{CALLER}-01"))
        .header("tracestate", "shop=cart7")
        .json(&json!({"customer_id": "untraced", "items": ["a"], "total": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let mut redis = app.redis.clone();
    let payloads: Vec<String> = redis.lrange(app.key("queue"), 0, -1).await.unwrap();
    assert_eq!(payloads.len(), 1);
    let job: Value = serde_json::from_str(&payloads[0]).unwrap();
    assert!(job.get("order_id").is_some());
    assert!(
        job.get("traceparent").is_none() && job.get("tracestate").is_none(),
        "{job}"
    );
    // The line is written by the logger's own thread, a moment after the answer.
    wait_until(
        "the order accepted line",
        Duration::from_secs(5),
        || async { api.log.find("order accepted").is_some() },
    )
    .await;
    let line = api.log.find("order accepted").expect("order accepted");
    assert!(line.get("trace_id").is_none(), "{line}");
    assert!(api.log.find("tracing").is_none());
    drop(api);
    app.cleanup().await;
}

/// A sampling ratio that is no share, or an endpoint the exporter cannot post to, stops the
/// start with the setting's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tracing_setting_is_a_start_up_error_naming_it() {
    for (name, value) in [
        ("ORDERS_TRACE_SAMPLE_RATIO", "2"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
    ] {
        // Refused while loading the configuration: no database or Redis is reached.
        let prefix = format!("test-{}", Uuid::new_v4().simple());
        let vars = HashMap::from([
            (name.to_string(), value.to_string()),
            ("ORDERS_REDIS_PREFIX".to_string(), prefix),
        ]);
        let (status, output) =
            Process::start_refused("api", "api", &vars, test_log_path(&vars, "refused")).await;
        assert!(!status.success());
        assert!(output.contains(name), "{name}={value}: {output}");
    }
}
