//! Observability: `GET /stats` and `GET /metrics` agree with the database, and a request id is
//! returned, logged on the lines about its order and carried into the order's event.

mod common;

use common::events::Events;
use common::{wait_until, Sent, TestApp};
use orders::stats;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// Counter and gauge values of a Prometheus text exposition, by series (name and labels).
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A percentile of sorted values as PostgreSQL's `percentile_cont` has it: interpolated between
/// the two nearest ranks.
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let rank = fraction * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// Processing and end-to-end times of the completed orders in milliseconds, sorted, computed
/// here from their timestamps.
async fn completed_timings(app: &TestApp) -> (Vec<f64>, Vec<f64>) {
    let ms = |d: time::Duration| d.as_seconds_f64() * 1000.0;
    let rows = app
        .db
        .query(
            "SELECT accepted_at, processing_started_at, completed_at FROM orders
             WHERE status = 'completed'",
            &[],
        )
        .await
        .unwrap();
    let (mut processing, mut end_to_end) = (Vec::new(), Vec::new());
    for row in rows {
        let (accepted, started, completed): (
            time::OffsetDateTime,
            time::OffsetDateTime,
            time::OffsetDateTime,
        ) = (row.get(0), row.get(1), row.get(2));
        processing.push(ms(completed - started));
        end_to_end.push(ms(completed - accepted));
    }
    processing.sort_by(f64::total_cmp);
    end_to_end.sort_by(f64::total_cmp);
    (processing, end_to_end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics_agree_with_the_database() {
    // Processing times spread over a range, so that the percentiles checked below differ.
    let app = TestApp::spawn_with(
        orders::Roles::ALL,
        &[
            ("ORDERS_ADMIN_TOKEN", common::ADMIN_TOKEN),
            ("ORDERS_PROCESSING_DELAY_MS", "1-50"),
        ],
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(app.accept_order(&format!("stats-{i}")).await);
    }
    wait_until(
        "12 completed and notified",
        Duration::from_secs(10),
        || async {
            app.count_status("completed").await == 12 && app.count_rows("notifications").await == 12
        },
    )
    .await;
    // Other statuses too: a deleted order, and bad requests.
    let deleted = app
        .delete_order(&ids[0].to_string(), Some(&common::admin_bearer()))
        .await;
    assert_eq!(deleted.status(), 204);
    let bad = app
        .post_order(&json!({"customer_id": "", "items": ["a"], "total": 1}))
        .await;
    assert_eq!(bad.status(), 422);

    let stats: Value = app.get_json("/stats").await;
    let actual: HashMap<String, i64> = app
        .db
        .query("SELECT status, count(*) FROM orders GROUP BY status", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for status in ["queued", "processing", "completed", "failed", "cancelled"] {
        assert_eq!(
            stats["orders"][status].as_i64().unwrap(),
            actual.get(status).copied().unwrap_or(0),
            "{status} in {stats}"
        );
    }
    assert_eq!(stats["orders"]["total"], 11);
    assert_eq!(stats["queue_depth"], 0);
    assert_eq!(stats["in_flight"], 0);
    assert_eq!(stats["live_workers"], 1);
    // Completions, including the one deleted afterwards.
    assert_eq!(stats["completed_last_minute"], 12);
    assert!(stats["processing_ms"]["p99"].as_f64().unwrap() >= 0.0);
    assert!(stats["end_to_end_ms"]["p50"].as_f64().unwrap() >= 0.0);
    // The timings are those of the 11 completed orders, as their timestamps give them.
    let (processing, end_to_end) = completed_timings(&app).await;
    assert_eq!(processing.len(), 11);
    for (name, values) in [("processing_ms", processing), ("end_to_end_ms", end_to_end)] {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        for (key, expected) in [
            ("avg", mean),
            ("p50", percentile(&values, 0.5)),
            ("p95", percentile(&values, 0.95)),
            ("p99", percentile(&values, 0.99)),
        ] {
            let got = stats[name][key].as_f64().unwrap();
            assert!(
                (got - expected).abs() < 1e-6,
                "{name}.{key} is {got}; the completed orders give {expected} ({values:?})"
            );
        }
    }

    let response = app.get("/metrics").await;
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let metrics = parse_metrics(&response.text().await.unwrap());
    assert_eq!(metrics["orders_accepted_total"], 12.0);
    assert_eq!(metrics["orders_completed_total"], 12.0);
    assert_eq!(metrics["notifications_sent_total"], 12.0);
    assert_eq!(
        metrics["orders_rejected_total{reason=\"invalid_field\"}"],
        1.0
    );
    assert_eq!(metrics["orders_live_workers"], 1.0);
    assert_eq!(metrics["orders_queue_depth"], 0.0);
    assert_eq!(metrics["order_end_to_end_seconds_count"], 12.0);
    assert!(metrics
        .keys()
        .any(|k| k.starts_with("http_request_duration_seconds_bucket{")));
    app.cleanup().await;
}

/// The order id of a 202 from `POST /orders`.
async fn order_id(response: reqwest::Response) -> Uuid {
    let body: Value = response.json().await.unwrap();
    body["order_id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_returned_logged_and_carried_into_the_event() {
    let channel = format!("test.completed.{}", Uuid::new_v4().simple());
    let app = TestApp::spawn_with(orders::Roles::ALL, &[("ORDERS_EVENT_CHANNEL", &channel)]).await;
    let events = Events::subscribe(&common::redis_url(), &channel).await;

    let order = json!({"customer_id": "rid", "items": ["a"], "total": 1});
    let response = app
        .request(Method::POST, "/orders")
        .header("x-request-id", "req-abc-123")
        .json(&order)
        .sent()
        .await;
    assert_eq!(response.headers()["x-request-id"], "req-abc-123");
    let id = order_id(response).await;
    let event = events.of_order(id, Duration::from_secs(10)).await;
    assert_eq!(event["request_id"], "req-abc-123");
    // Logged on the lines of its acceptance and of its completion.
    for msg in ["order accepted", "order completed"] {
        let of_order = || -> Vec<Value> {
            let mut lines = app.log.all(msg);
            lines.retain(|l| l["order_id"] == id.to_string());
            lines
        };
        let what = format!("an {msg:?} line for {id}");
        wait_until(&what, Duration::from_secs(10), async || {
            !of_order().is_empty()
        })
        .await;
        for line in of_order() {
            assert_eq!(line["request_id"], "req-abc-123", "{msg}: {line}");
        }
    }

    // Without one, the id the response names is the one the order's event carries.
    let response = app.post_order(&order).await;
    let generated_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let id = order_id(response).await;
    let event = events.of_order(id, Duration::from_secs(10)).await;
    assert_eq!(event["request_id"], generated_id.as_str());

    // Generated when absent or invalid, on errors too.
    let generated = app.get("/nope").await;
    assert_eq!(generated.status(), 404);
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!id.is_empty());
    let replaced = app
        .request(Method::GET, "/healthz")
        .header("x-request-id", "has space")
        .sent()
        .await;
    assert_ne!(replaced.headers()["x-request-id"], "has space");
    app.cleanup().await;
}

/// One metric family of a text exposition: its `# HELP` and `# TYPE` lines and its samples.
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<Sample>,
}

/// One sample line: its full name (with a histogram's suffix), labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Family {
    /// The value of the only sample named `name` with no labels.
    fn value(&self, name: &str) -> f64 {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels.is_empty())
            .collect();
        assert_eq!(found.len(), 1, "one unlabelled {name} in {self:?}");
        found[0].value
    }
}

/// A sample line's name, labels and value (a timestamp after it is allowed); label values may
/// hold escaped quotes, backslashes and newlines.
fn parse_sample(line: &str) -> Sample {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    let (name, mut rest) = line.split_at(end);
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    assert!(valid_name(name), "metric name in {line:?}");
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
            assert!(
                valid_name(label) && !label.contains(':'),
                "label in {line:?}"
            );
            let mut value = String::new();
            let mut chars = after.char_indices();
            let close = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        other => panic!("escape {other:?} in {line:?}"),
                    },
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            labels.push((label.to_string(), value));
            rest = &after[close + 1..];
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("value in {line:?}"));
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .unwrap_or_else(|_| panic!("timestamp in {line:?}"));
    }
    assert_eq!(fields.next(), None, "trailing fields in {line:?}");
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// The families of a Prometheus text exposition (format 0.0.4), by name. A histogram's
/// `_bucket`, `_sum` and `_count` samples (a summary's `_sum` and `_count`) belong to its family.
/// Fails on what the format forbids: a family in two groups, a second HELP or TYPE, a TYPE after
/// the family's samples, an unknown type.
fn parse_families(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut done = HashSet::new();
    let mut current: Option<String> = None;
    let mut enter = |name: &str, current: &mut Option<String>| {
        if current.as_deref() != Some(name) {
            if let Some(previous) = current.take() {
                done.insert(previous);
            }
            assert!(!done.contains(name), "{name} is split into two groups");
            *current = Some(name.to_string());
        }
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let keyword = words.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a plain comment
            }
            let name = words.next().unwrap_or_else(|| panic!("{line:?}"));
            let rest = words.next().unwrap_or("").to_string();
            enter(name, &mut current);
            let family = families.entry(name.to_string()).or_default();
            if keyword == "HELP" {
                assert!(family.help.is_none(), "a second HELP: {line:?}");
                family.help = Some(rest);
            } else {
                assert!(family.kind.is_none(), "a second TYPE: {line:?}");
                assert!(family.samples.is_empty(), "TYPE after samples: {line:?}");
                let kinds = ["counter", "gauge", "histogram", "summary", "untyped"];
                assert!(kinds.contains(&rest.as_str()), "type in {line:?}");
                family.kind = Some(rest);
            }
            continue;
        }
        let sample = parse_sample(line);
        let of = |suffixes: &[&str], kind: &str| {
            suffixes.iter().find_map(|suffix| {
                let base = sample.name.strip_suffix(suffix)?;
                let family = families.get(base)?;
                (family.kind.as_deref() == Some(kind)).then(|| base.to_string())
            })
        };
        let name = of(&["_bucket", "_sum", "_count"], "histogram")
            .or_else(|| of(&["_sum", "_count"], "summary"))
            .unwrap_or_else(|| sample.name.clone());
        enter(&name, &mut current);
        families.entry(name).or_default().samples.push(sample);
    }
    families
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_has_help_and_type_and_the_process_metrics_are_exported() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        app.accept_order(&format!("help-{i}")).await;
    }
    // The worker logs a completion after recording its metrics.
    wait_until("3 completed", Duration::from_secs(10), async || {
        app.log.all("order completed").len() == 3
    })
    .await;
    let bad = app
        .post_order(&json!({"customer_id": "", "items": ["a"], "total": 1}))
        .await;
    assert_eq!(bad.status(), 422);

    let text = app.get_text("/metrics").await;
    let families = parse_families(&text);
    // The counters, gauges and histograms these requests and orders touched, so that the checks
    // below cover each kind.
    let expected = [
        (stats::ACCEPTED, "counter"),
        (stats::REJECTED, "counter"),
        (stats::COMPLETED, "counter"),
        (stats::CONNECTIONS_OPEN, "gauge"),
        (stats::QUEUE_DEPTH, "gauge"),
        (stats::IN_FLIGHT, "gauge"),
        (stats::SCHEDULED_RETRIES, "gauge"),
        (stats::DEAD_LETTERS, "gauge"),
        (stats::LIVE_WORKERS, "gauge"),
        (stats::DB_POOL_IN_USE, "gauge"),
        (stats::DB_POOL_WAITING, "gauge"),
        (stats::HTTP_DURATION, "histogram"),
        (stats::PROCESSING, "histogram"),
        (stats::END_TO_END, "histogram"),
        (stats::QUEUE_WAIT, "histogram"),
        ("process_cpu_seconds_total", "counter"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("process_threads", "gauge"),
    ];
    for (name, kind) in expected {
        let family = families
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        assert_eq!(family.kind.as_deref(), Some(kind), "{name}");
    }
    for (name, family) in &families {
        let help = family.help.as_deref().unwrap_or_default();
        assert!(!help.trim().is_empty(), "{name} has no HELP text:\n{text}");
        assert!(family.kind.is_some(), "{name} has no TYPE:\n{text}");
        assert!(!family.samples.is_empty(), "{name} has no samples");
        if family.kind.as_deref() == Some("histogram") {
            // Each series has its buckets up to +Inf, which holds every observation.
            for count in family.samples.iter().filter(|s| s.name.ends_with("_count")) {
                let inf = family.samples.iter().find(|s| {
                    s.name == format!("{name}_bucket")
                        && s.labels.iter().any(|(k, v)| k == "le" && v == "+Inf")
                        && s.labels
                            .iter()
                            .filter(|(k, _)| k != "le")
                            .eq(count.labels.iter())
                });
                assert_eq!(inf.map(|s| s.value), Some(count.value), "{name} {count:?}");
            }
        }
    }

    let value = |name: &str| families[name].value(name);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let rss = value("process_resident_memory_bytes");
    assert!(rss > 0.0, "rss {rss}");
    assert!(value("process_virtual_memory_bytes") >= rss);
    let started = value("process_start_time_seconds");
    // Whole seconds from the boot time and the clock ticks: a little slack after now.
    assert!(
        started > now - 86_400.0 && started <= now + 5.0,
        "started at {started}, now {now}"
    );
    let open_fds = value("process_open_fds");
    assert!(open_fds > 0.0, "open fds {open_fds}");
    let max_fds = value("process_max_fds");
    assert!(
        max_fds == 0.0 || open_fds <= max_fds,
        "{open_fds} of {max_fds}"
    );
    // The test's main thread and the runtime's two workers at least.
    assert!(value("process_threads") >= 3.0);
    let cpu = value("process_cpu_seconds_total");

    // The service runs in this process: the sample reads the same figures, a moment later.
    let sample = stats::process_sample();
    assert!(sample.rss_bytes.is_some_and(|b| b > 0), "{sample:?}");
    assert!(sample.open_fds.is_some_and(|n| n > 0), "{sample:?}");
    assert!(
        sample.cpu_seconds.is_some_and(|s| s >= cpu),
        "{sample:?}, scraped {cpu}"
    );
    app.cleanup().await;
}

#[test]
fn the_exposition_parser_groups_a_histogram_and_reads_escaped_labels() {
    let text = "# HELP h_seconds A histogram.\n# TYPE h_seconds histogram\n\
        h_seconds_bucket{le=\"1\"} 1\nh_seconds_bucket{le=\"+Inf\"} 2\n\
        h_seconds_sum 1.5\nh_seconds_count 2\n\n\
        # TYPE c_total counter\nc_total{reason=\"a \\\"b\\\" \\\\ c}\"} 3 1700000000000\n\
        g 4\n";
    let families = parse_families(text);
    let names: Vec<&str> = families.keys().map(String::as_str).collect();
    assert_eq!(names, ["c_total", "g", "h_seconds"]);
    assert_eq!(families["h_seconds"].samples.len(), 4);
    assert_eq!(families["h_seconds"].value("h_seconds_count"), 2.0);
    let counter = &families["c_total"].samples[0];
    assert_eq!(counter.labels, [("reason".into(), "a \"b\" \\ c}".into())]);
    assert_eq!(counter.value, 3.0);
    // Untyped and undescribed: what the HELP check of the scrape rejects.
    assert!(families["g"].help.is_none() && families["g"].kind.is_none());
    assert_eq!(families["c_total"].help, None);
}

#[test]
#[should_panic(expected = "split into two groups")]
fn the_exposition_parser_rejects_a_family_in_two_groups() {
    parse_families("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x=\"y\"} 2\n");
}
