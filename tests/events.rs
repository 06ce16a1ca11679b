//! Events and notifications: one `order.completed` event and one notification per completed
//! order, under load; and a notification whose event no notifier saw is sent once from the
//! database. (The event of one order, field by field, is checked in `orders.rs`.)

mod common;

use common::events::Events;
use common::http::batch_ids;
use common::{scalar, wait_until, TestApp};
use futures_util::StreamExt;
use orders::Roles;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_orders_complete_exactly_once_with_one_event_each() {
    let channel = format!("test.completed.{}", Uuid::new_v4().simple());
    // Give this test a channel of its own, so the count of events is exact.
    let app = TestApp::spawn_with(Roles::ALL, &[("ORDERS_EVENT_CHANNEL", &channel)]).await;
    let events = Events::subscribe(&common::redis_url(), &channel).await;

    // 2,000 orders: 20 batches of 50 and 1,000 single POSTs, 50 at a time.
    let order = json!({"customer_id": "bulk", "items": ["a"], "total": 0.01});
    let batch = Value::Array((0..50).map(|_| order.clone()).collect());
    let mut ids = HashSet::new();
    for _ in 0..20 {
        ids.extend(batch_ids(app.post_json("/orders/batch", &batch).await).await);
    }
    let singles = futures_util::stream::iter(0..1000)
        .map(|_| app.post_order(&order))
        .buffer_unordered(50)
        .then(|r| async move { r.json::<Value>().await.unwrap() })
        .collect::<Vec<Value>>()
        .await;
    for body in singles {
        ids.insert(body["order_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    assert_eq!(ids.len(), 2000);

    wait_until("2,000 completed", Duration::from_secs(60), || async {
        app.count_status("completed").await == 2000
    })
    .await;
    wait_until("2,000 notifications", Duration::from_secs(30), || async {
        app.count_rows("notifications").await == 2000
    })
    .await;
    let events = events.finish(Duration::from_secs(5)).await;
    assert_eq!(events.len(), 2000, "one event per order");
    assert!(events.values().all(|&n| n == 1), "no order published twice");
    assert!(events.keys().all(|id| ids.contains(id)));
    assert_eq!(app.count_rows("orders").await, 2000);
    assert_eq!(app.count_rows("order_items").await, 2000);
    let attempts: i64 = scalar(
        &app.db,
        "SELECT count(*) FROM orders WHERE attempts <> 1",
        &[],
    )
    .await;
    assert_eq!(attempts, 0);
    app.cleanup().await;
}

/// The completion makes a notification due in PostgreSQL; when Redis lost the events (the
/// stream is gone) before any notifier read them, the notifier's catch-up finds the orders due
/// there and sends each once, and a due order deleted meanwhile is dropped without sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_whose_event_was_missed_is_sent_once_from_the_database() {
    let app = TestApp::spawn_with(
        Roles::parse("api,worker").unwrap(),
        &[("ORDERS_ADMIN_TOKEN", common::ADMIN_TOKEN)],
    )
    .await;
    let kept = app.accept_order("due-kept").await;
    let deleted = app.accept_order("due-deleted").await;
    wait_until(
        "both completed and due",
        Duration::from_secs(10),
        || async {
            app.count_status("completed").await == 2
                && app.count_rows("notifications_due").await == 2
        },
    )
    .await;
    assert_eq!(app.count_rows("notifications").await, 0, "no notifier ran");
    let response = app
        .delete_order(&deleted.to_string(), Some(&common::admin_bearer()))
        .await;
    assert_eq!(response.status(), 204);

    // As if Redis lost its last writes: no stream, so no group to read them from. The catch-up
    // (500 ms in tests) finds what is due.
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("DEL")
        .arg(app.key("events"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let notifier = app.sibling(Roles::parse("notifier").unwrap()).await;
    wait_until("nothing due any more", Duration::from_secs(10), || async {
        app.count_rows("notifications_due").await == 0
    })
    .await;
    let sent: Vec<Uuid> = app
        .db
        .query("SELECT order_id FROM notifications", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sent, vec![kept]);
    notifier.cleanup().await;
    app.cleanup().await;
}
