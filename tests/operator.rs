//! The operator's API, which the console calls: dead letters found, paged, retried, deleted and
//! purged by id and by filter (an index, no scan); the list of an earlier version adopted;
//! scheduled retries listed and run now; claiming paused and resumed; the workers; the
//! per-second history; one order's history.

mod common;

use common::{scalar, wait_until, Sent, TestApp, ADMIN_TOKEN};
use orders::Roles;
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

/// A fault that fails every try of the orders of customers whose id starts with `boom`, while
/// the database stays up.
const FAULT: &str = "ALTER TABLE orders ADD CONSTRAINT test_fault
                     CHECK (status <> 'processing' OR customer_id NOT LIKE 'boom%')";
const MEND: &str = "ALTER TABLE orders DROP CONSTRAINT test_fault";

async fn admin_json(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app.request(method, path).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.sent().await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Every page of `GET /dead-letters` with this query, following `next_cursor`.
async fn all_pages(app: &TestApp, query: &str) -> Vec<Value> {
    let mut letters = Vec::new();
    let mut cursor = String::new();
    for _ in 0..100 {
        let (status, page) = admin_json(
            app,
            Method::GET,
            &format!("/dead-letters?{query}&cursor={cursor}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        letters.extend(page["dead_letters"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return letters,
        }
    }
    panic!("more than 100 pages");
}

fn ids_of(letters: &[Value]) -> Vec<String> {
    letters
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_paged_filtered_retried_deleted_and_purged_by_id() {
    let app = TestApp::spawn_with(
        Roles::ALL,
        &[
            ("ORDERS_MAX_ATTEMPTS", "1"),
            ("ORDERS_ADMIN_TOKEN", ADMIN_TOKEN),
            ("ORDERS_PROCESSING_DELAY_MS", "0"),
        ],
    )
    .await;
    app.db.batch_execute(FAULT).await.unwrap();
    let mut a = Vec::new();
    for _ in 0..5 {
        a.push(app.accept_order("boom-a").await);
    }
    let mut b = Vec::new();
    for _ in 0..3 {
        b.push(app.accept_order("boom-b").await);
    }
    wait_until("8 dead letters", Duration::from_secs(20), || async {
        app.hash_len("dead:entries").await == 8
    })
    .await;

    // Pages of 3 by cursor: every dead letter once, newest first.
    let letters = all_pages(&app, "limit=3").await;
    let ids = ids_of(&letters);
    assert_eq!(ids.len(), 8);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 8, "{ids:?}");
    let times: Vec<&str> = letters
        .iter()
        .map(|l| l["failed_at"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    let first = &letters[0];
    assert_eq!(first["errors"].as_array().unwrap().len(), 1);
    assert!(first["errors"][0].as_str().unwrap().contains("test_fault"));
    assert!(first["payload"].as_str().unwrap().contains("boom"));
    // Filters: by customer, by error text (any case), and one that matches nothing.
    let only_b = ids_of(&all_pages(&app, "limit=2&customer_id=boom-b").await);
    let expected_b: HashSet<String> = b.iter().map(Uuid::to_string).collect();
    assert_eq!(only_b.iter().cloned().collect::<HashSet<_>>(), expected_b);
    assert_eq!(all_pages(&app, "limit=50&error=TEST_FAULT").await.len(), 8);
    assert!(all_pages(&app, "limit=50&error=no-such-error")
        .await
        .is_empty());
    // A cursor this API did not make is refused.
    let (status, _) = admin_json(&app, Method::GET, "/dead-letters?cursor=nonsense", None).await;
    assert_eq!(status, 422);
    // Without the token, every dead-letter route is refused.
    for (method, path) in [
        (Method::GET, "/dead-letters".to_string()),
        (Method::DELETE, "/dead-letters".to_string()),
        (Method::POST, "/dead-letters/retry".to_string()),
        (Method::DELETE, format!("/dead-letters/{}", a[0])),
        (Method::POST, format!("/dead-letters/{}/retry", a[0])),
    ] {
        let status = app.request(method.clone(), &path).sent().await.status();
        assert_eq!(status, 401, "{method} {path}");
    }
    assert_eq!(app.hash_len("dead:entries").await, 8);

    app.db.batch_execute(MEND).await.unwrap();
    // One by id.
    let (status, body) = admin_json(
        &app,
        Method::POST,
        &format!("/dead-letters/{}/retry", a[0]),
        None,
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (202, Some("queued")));
    // Some by id: two known, one unknown, one that is no id at all.
    let (status, body) = admin_json(
        &app,
        Method::POST,
        "/dead-letters/retry",
        Some(json!({"ids": [a[1], a[2], Uuid::new_v4(), "x"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["retried"].as_u64(), body["skipped"].as_u64()),
        (Some(2), Some(2))
    );
    // All that match a filter, slice by slice.
    let mut retried = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut request = json!({"filter": {"customer_id": "boom-b"}});
        if let Some(c) = &cursor {
            request["cursor"] = json!(c);
        }
        let (status, body) =
            admin_json(&app, Method::POST, "/dead-letters/retry", Some(request)).await;
        assert_eq!(status, 200, "{body}");
        retried += body["retried"].as_u64().unwrap();
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(retried, 3);
    // Neither ids nor a filter, or both: refused, nothing changed.
    let (status, _) = admin_json(&app, Method::POST, "/dead-letters/retry", Some(json!({}))).await;
    assert_eq!(status, 422);
    // Delete one: gone from the index, the order stays failed.
    let (status, _) = admin_json(
        &app,
        Method::DELETE,
        &format!("/dead-letters/{}", a[3]),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = admin_json(
        &app,
        Method::DELETE,
        &format!("/dead-letters/{}", a[3]),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // Purge what is left: one.
    let (status, body) = admin_json(&app, Method::DELETE, "/dead-letters", None).await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(1)));
    let (_, page) = admin_json(&app, Method::GET, "/dead-letters", None).await;
    assert_eq!(page["total"], 0);
    assert_eq!(page["dead_letters"], json!([]));

    wait_until(
        "the 6 retried orders to complete",
        Duration::from_secs(20),
        || async { app.count_status("completed").await == 6 },
    )
    .await;
    assert_eq!(app.count_status("failed").await, 2);
    assert_eq!(app.count_rows("orders").await, 8);
    // The history counted them: 8 dead-lettered, 6 completed, in the last ten minutes.
    let history = app.get_json("/stats/history").await;
    let sum = |name: &str| -> u64 {
        let series = history[name].as_array().unwrap();
        assert_eq!(series.len(), 600, "{name}");
        series.iter().map(|v| v.as_u64().unwrap()).sum()
    };
    assert_eq!((sum("failed"), sum("completed")), (8, 6));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_list_of_an_earlier_version_is_adopted_at_start() {
    let api = TestApp::spawn_with(
        Roles::parse("api").unwrap(),
        &[("ORDERS_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    let mut redis = api.redis.clone();
    let order_id = Uuid::now_v7();
    let payload = json!({"order_id": order_id, "customer_id": "old-1", "items": ["a"],
                         "total": "1.00", "accepted_at": "2026-01-01T00:00:00Z"});
    let entries = [
        json!({"order_id": order_id, "payload": payload.to_string(),
               "errors": ["try 1", "try 2"], "failed_at": "2026-01-01T00:00:05Z"})
        .to_string(),
        json!({"order_id": null, "payload": "not json", "errors": ["invalid payload: x"],
               "failed_at": "2026-01-02T00:00:00Z"})
        .to_string(),
        "put there by hand".to_string(),
    ];
    for entry in &entries {
        let _: () = redis.lpush(api.key("dead"), entry).await.unwrap();
    }
    // A process started now moves them into the index.
    let _worker = api.sibling(Roles::parse("worker").unwrap()).await;
    assert_eq!(api.list_len("dead").await, 0);
    assert_eq!(api.hash_len("dead:entries").await, 3);
    let letters = all_pages(&api, "limit=50").await;
    assert_eq!(letters.len(), 3);
    let old = letters
        .iter()
        .find(|l| l["order_id"] == json!(order_id))
        .expect("the order's dead letter");
    assert_eq!(old["id"], json!(order_id.to_string()));
    assert_eq!(old["errors"], json!(["try 1", "try 2"]));
    assert_eq!(old["customer_id"], "old-1");
    assert_eq!(old["failed_at"], "2026-01-01T00:00:05Z");
    // Found by id, no scan.
    let (status, _) = admin_json(
        &api,
        Method::DELETE,
        &format!("/dead-letters/{order_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    api.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_claiming_while_intake_goes_on_and_resume_drains() {
    let app = TestApp::spawn_with(
        Roles::ALL,
        &[
            ("ORDERS_ADMIN_TOKEN", ADMIN_TOKEN),
            ("ORDERS_PROCESSING_DELAY_MS", "1500"),
        ],
    )
    .await;
    // One order in flight when the pause comes: it finishes.
    let in_flight = app.accept_order("pause-0").await;
    wait_until(
        "the first order to be processing",
        Duration::from_secs(10),
        || async { app.count_status("processing").await == 1 },
    )
    .await;
    let (status, body) = admin_json(&app, Method::POST, "/workers/pause", None).await;
    assert_eq!((status, body["claiming"].as_str()), (200, Some("paused")));
    let paused_at = body["paused_at"].as_str().unwrap().to_string();
    // Pausing again keeps the first time.
    let (_, again) = admin_json(&app, Method::POST, "/workers/pause", None).await;
    assert_eq!(again["paused_at"], json!(paused_at));
    let mut waiting = Vec::new();
    for i in 1..=10 {
        waiting.push(app.accept_order(&format!("pause-{i}")).await);
    }
    wait_until(
        "the in-flight order to complete",
        Duration::from_secs(10),
        || async { app.count_status("completed").await == 1 },
    )
    .await;
    let completed: String = scalar(
        &app.db,
        "SELECT order_id::text FROM orders WHERE status = 'completed'",
        &[],
    )
    .await;
    assert_eq!(completed, in_flight.to_string());
    // Well past a claim's wait and the pause check: nothing else was taken.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        app.count_rows("orders").await,
        1,
        "no order claimed while paused"
    );
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["claiming"], "paused");
    assert_eq!(stats["paused_at"], json!(paused_at));
    assert_eq!(stats["queue_depth"], 10);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200, "paused is not unready");
    assert_eq!(ready.json::<Value>().await.unwrap()["claiming"], "paused");
    let metrics = app.get_text("/metrics").await;
    assert!(metrics.contains("orders_claiming_paused 1"), "{metrics}");
    // Only the admin may pause and resume.
    for path in ["/workers/pause", "/workers/resume"] {
        assert_eq!(app.request(Method::POST, path).sent().await.status(), 401);
    }

    let (status, body) = admin_json(&app, Method::POST, "/workers/resume", None).await;
    assert_eq!((status, body["claiming"].as_str()), (200, Some("running")));
    wait_until(
        "every order to complete",
        Duration::from_secs(20),
        || async { app.count_status("completed").await == 11 },
    )
    .await;
    assert_eq!(app.get_json("/stats").await["claiming"], "running");
    assert!(app
        .get_text("/metrics")
        .await
        .contains("orders_claiming_paused 0"));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_listed_with_what_they_hold_and_a_silent_one_is_stuck() {
    let app = TestApp::spawn_with(
        Roles::ALL,
        &[
            ("ORDERS_PROCESSING_DELAY_MS", "5000"),
            // A reaper that runs rarely, so the silent worker below stays listed.
            ("ORDERS_LEASE_MS", "60000"),
        ],
    )
    .await;
    for i in 0..3 {
        app.accept_order(&format!("held-{i}")).await;
    }
    wait_until(
        "the worker to hold 3 orders",
        Duration::from_secs(10),
        || async {
            let workers = app.get_json("/workers").await;
            workers["workers"][0]["held"] == 3
        },
    )
    .await;
    // A registered worker that stopped renewing its lease: its entry says when it last did.
    let mut redis = app.redis.clone();
    let _: () = redis.sadd(app.key("workers"), "silent").await.unwrap();
    let old = json!({"id": "silent", "host": "elsewhere", "pid": 7,
                     "started_at": "2026-01-01T00:00:00Z", "beat_ms": 1_000_000_000_000u64});
    let _: () = redis
        .set(app.key("worker:silent"), old.to_string())
        .await
        .unwrap();
    let listed = app.get_json("/workers").await;
    assert_eq!(listed["lease_ms"], 60000);
    let workers = listed["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{listed}");
    let live = workers.iter().find(|w| w["id"] != "silent").unwrap();
    assert_eq!(live["pid"], std::process::id());
    assert!(!live["host"].as_str().unwrap().is_empty());
    assert!(live["heartbeat_age_ms"].as_u64().unwrap() < 60000, "{live}");
    assert_eq!(live["stuck"], false);
    assert_eq!(live["held"], 3);
    assert!(live["oldest_held_age_ms"].as_u64().is_some(), "{live}");
    assert!(live["rss_bytes"].as_u64().unwrap() > 0, "{live}");
    assert!(live["open_fds"].as_u64().unwrap() > 0, "{live}");
    assert!(live["started_at"].is_string());
    let silent = workers.iter().find(|w| w["id"] == "silent").unwrap();
    assert_eq!(silent["stuck"], true, "{silent}");
    assert_eq!(silent["host"], "elsewhere");
    assert_eq!(silent["held"], 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_history_keeps_its_errors_across_a_retry_run_now() {
    let app = TestApp::spawn_with(
        Roles::ALL,
        &[
            ("ORDERS_ADMIN_TOKEN", ADMIN_TOKEN),
            ("ORDERS_MAX_ATTEMPTS", "5"),
            // The retry would wait a minute: "retry now" is what runs it.
            ("ORDERS_RETRY_BASE_MS", "60000"),
            ("ORDERS_RETRY_MAX_MS", "60000"),
            ("ORDERS_PROCESSING_DELAY_MS", "0"),
        ],
    )
    .await;
    app.db.batch_execute(FAULT).await.unwrap();
    let response = app
        .request(Method::POST, "/orders")
        .header("x-request-id", "req-history-1")
        .json(&json!({"customer_id": "boom-h", "items": ["sku-1"], "total": 5.5}))
        .sent()
        .await;
    assert_eq!(response.status(), 202);
    let id: Uuid = response.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    wait_until(
        "its retry to be scheduled",
        Duration::from_secs(10),
        || async { app.get_json("/stats").await["scheduled_retries"] == 1 },
    )
    .await;
    let (status, scheduled) = admin_json(&app, Method::GET, "/scheduled?limit=10", None).await;
    assert_eq!(status, 200);
    assert_eq!(scheduled["total"], 1);
    let entry = &scheduled["scheduled"][0];
    assert_eq!(entry["order_id"], json!(id));
    assert_eq!(entry["failures"], 1);
    assert!(entry["errors"][0].as_str().unwrap().contains("test_fault"));
    let waiting = app.get_json(&format!("/orders/{id}/history")).await;
    assert!(waiting["retry_due_at"].is_string(), "{waiting}");
    assert_eq!(waiting["errors"].as_array().unwrap().len(), 1);
    assert_eq!(waiting["request_id"], "req-history-1");

    app.db.batch_execute(MEND).await.unwrap();
    let (status, _) = admin_json(&app, Method::POST, &format!("/scheduled/{id}/retry"), None).await;
    assert_eq!(status, 202);
    let (status, _) = admin_json(
        &app,
        Method::POST,
        &format!("/scheduled/{}/retry", Uuid::new_v4()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    wait_until(
        "it to complete and be notified",
        Duration::from_secs(10),
        || async { app.count_rows("notifications").await == 1 },
    )
    .await;
    let history = app.get_json(&format!("/orders/{id}/history")).await;
    assert_eq!(history["order"]["status"], "completed");
    // The failed try never stored the order (the fault refuses the row): one attempt counted.
    assert_eq!(history["order"]["attempts"], 1);
    assert_eq!(history["request_id"], "req-history-1");
    let errors = history["errors"].as_array().unwrap();
    assert_eq!(
        errors.len(),
        1,
        "the failed try is kept after the retry: {history}"
    );
    assert!(errors[0].as_str().unwrap().contains("test_fault"));
    let events: Vec<&str> = history["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["accepted", "processing", "completed", "notified"]);
    assert!(history["notification"]["sent_at"].is_string());
    assert_eq!(history["dead_letter"], false);
    assert_eq!(history["retry_due_at"], Value::Null);
    assert_eq!(
        app.get(&format!("/orders/{}/history", Uuid::new_v4()))
            .await
            .status(),
        404
    );
    app.cleanup().await;
}
