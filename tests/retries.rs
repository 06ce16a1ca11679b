//! Retries: a failed try waits in the schedule and runs again; an order whose tries run out is
//! failed, announced on the failed channel and dead-lettered with its errors, and an admin can list
//! and replay it; orders wait out a database outage and complete.

mod common;

use common::events::Events;
use common::wait::poll_until;
use common::{db, scalar, wait_until, Sent, TestApp, ADMIN_TOKEN};
use orders::Roles;
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_that_keeps_failing_is_dead_lettered_then_replayed() {
    // A failed channel of its own, which no other service on this Redis publishes on.
    let failed_channel = format!("failed-{}", uuid::Uuid::new_v4().simple());
    let app = TestApp::spawn_with(
        Roles::ALL,
        &[
            ("ORDERS_MAX_ATTEMPTS", "3"),
            ("ORDERS_RETRY_BASE_MS", "50"),
            ("ORDERS_ADMIN_TOKEN", ADMIN_TOKEN),
            ("ORDERS_FAILED_CHANNEL", &failed_channel),
        ],
    )
    .await;
    // A fault that hits every try of this customer's order, while the database stays up.
    app.db
        .batch_execute(
            "ALTER TABLE orders ADD CONSTRAINT test_fault
             CHECK (status <> 'processing' OR customer_id <> 'boom')",
        )
        .await
        .unwrap();
    let events = Events::subscribe(&common::redis_url(), &failed_channel).await;

    let id = app.accept_order("boom").await;
    wait_until("the order to fail", Duration::from_secs(20), || async {
        app.count_status("failed").await == 1
    })
    .await;
    let order: Value = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(order["status"], "failed");
    assert!(order["last_error"].as_str().unwrap().contains("test_fault"));

    // One failed event for it, on the configured channel.
    let event = events.of_order(id, Duration::from_secs(5)).await;
    assert_eq!(event["status"], "failed");

    // Listed in the dead letters with its three errors.
    let dead: Value = app
        .request(Method::GET, "/dead-letters")
        .bearer_auth(ADMIN_TOKEN)
        .sent()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dead["total"], 1);
    let entry = &dead["dead_letters"][0];
    assert_eq!(entry["order_id"], id.to_string());
    assert_eq!(entry["errors"].as_array().unwrap().len(), 3);
    assert_eq!(app.get("/dead-letters").await.status(), 401);

    // Mend the fault and replay it: it completes, once.
    app.db
        .batch_execute("ALTER TABLE orders DROP CONSTRAINT test_fault")
        .await
        .unwrap();
    let replay = || {
        app.request(Method::POST, &format!("/dead-letters/{id}/retry"))
            .bearer_auth(ADMIN_TOKEN)
            .sent()
    };
    let response = replay().await;
    assert_eq!(response.status(), 202);
    wait_until(
        "the replayed order to complete",
        Duration::from_secs(10),
        || async { app.count_status("completed").await == 1 },
    )
    .await;
    assert_eq!(app.count_rows("orders").await, 1);
    assert_eq!(app.hash_len("dead:entries").await, 0);
    // Replaying again finds nothing.
    let again = replay().await;
    assert_eq!(again.status(), 404);
    wait_until("one notification", Duration::from_secs(10), || async {
        app.count_rows("notifications").await == 1
    })
    .await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_wait_out_a_database_outage_and_complete() {
    let app = TestApp::spawn_with(Roles::ALL, &[("ORDERS_RETRY_BASE_MS", "100")]).await;
    let admin = db::admin_client().await;
    // Cut this test's database off: no new connections, existing ones terminated.
    db::cut_off(&admin, app.db_name()).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(app.accept_order(&format!("outage-{i}")).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    db::let_in(&admin, app.db_name()).await;
    // The app's observer connection was terminated too: use a new one.
    let db = db::connect(&app.config.database_url).await;
    let mut done: i64 = 0;
    let completed = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || {
            done = scalar(
                &db,
                "SELECT count(*) FROM orders WHERE status = 'completed'",
                &[],
            )
            .await;
            done == 20
        },
    )
    .await;
    assert!(completed, "{done} of 20 completed");
    let rows: i64 = scalar(&db, "SELECT count(*) FROM orders", &[]).await;
    assert_eq!(rows, 20);
    let failed: i64 = scalar(
        &db,
        "SELECT count(*) FROM orders WHERE status = 'failed'",
        &[],
    )
    .await;
    assert_eq!(failed, 0);
    app.cleanup().await;
}
