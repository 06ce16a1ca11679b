//! Observability: `GET /stats` and `GET /metrics` agree with the database, and a request id is
//! returned, logged on the lines about its order and carried into the order's event.

mod common;

use common::events::Events;
use common::{wait_until, Sent, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
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
