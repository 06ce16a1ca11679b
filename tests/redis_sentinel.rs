//! The service on a primary with two replicas watched by three sentinels (private servers on
//! free ports), in `ORDERS_REDIS_MODE=sentinel` with `ORDERS_REDIS_MIN_REPLICAS=1`: a 202 means a
//! replica has the order. The primary is killed with SIGKILL while clients post orders, each
//! with an `Idempotency-Key` and retrying a 503 or a connection error with the same key; every
//! order that got a 202 ends completed exactly once, posting works again within 15 s of the kill,
//! and the notifier hears the new master. Prints
//!
//! `sentinel-failover: accepted N, completed N, failed 0, lost 0, duplicated 0`
//!
//! Logs in `target/chaos-logs/<scenario>/` (servers in `servers/`, what was counted in
//! `tally.txt`).

mod common;

use common::events::Events;
use common::load::KeyedLoad;
use common::redis_servers::RedisSentinel;
use common::servers::Stage;
use common::tally::{wait_until_settled, EventRule, Tally, COMPLETED_CHANNEL};
use common::wait_until;
use std::time::Duration;

/// Orders accepted before the primary is killed.
const BEFORE_KILL: usize = 150;
/// Clients posting at once, and each one's pause between orders.
const CLIENTS: usize = 16;
const PAUSE: Duration = Duration::from_millis(40);
/// How soon after the kill posting must work again (the figure).
const RECOVERY: Duration = Duration::from_secs(15);
/// How often the notifier looks for notifications it missed: an order notified sooner than this
/// after it completed was notified from its event, not by the catch-up.
const CATCH_UP: Duration = Duration::from_secs(4);
/// How long everything may take to settle after the load.
const SETTLE: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_killed_mid_load_fails_over_and_loses_no_accepted_order() {
    let mut stage = Stage::launch("sentinel-failover", async |servers| {
        RedisSentinel::start(&servers, 2, 3).await
    })
    .await;
    let master_name = stage.redis.name.clone();
    let catch_up = CATCH_UP.as_millis().to_string();
    let settings = [
        ("ORDERS_REDIS_MODE", "sentinel"),
        ("ORDERS_REDIS_SENTINEL_MASTER", master_name.as_str()),
        ("ORDERS_REDIS_MIN_REPLICAS", "1"),
        ("ORDERS_REDIS_REPLICA_TIMEOUT_MS", "500"),
        ("ORDERS_PROCESSING_DELAY_MS", "50-300"),
        ("ORDERS_NOTIFIER_CATCH_UP_MS", catch_up.as_str()),
    ];
    let front = stage
        .start_service("front", "api,worker,notifier", &settings)
        .await;
    let second = stage.start_service("second", "api,worker", &settings).await;
    // On the last replica, which survives the kill whichever replica is promoted; the sentinels
    // close its clients when they reconfigure it, and the subscriber subscribes again.
    let last_replica = stage.redis.data.last().expect("a replica").url();
    let events = Events::subscribe(&last_replica, COMPLETED_CHANNEL).await;

    let load = KeyedLoad::start(
        vec![front.url("/orders"), second.url("/orders")],
        CLIENTS,
        None,
        PAUSE,
    );
    load.wait_accepted(BEFORE_KILL).await;
    let (old, killed) = stage.redis.kill_primary().await;
    let new = stage.redis.wait_failover(old, RECOVERY * 2).await;
    let failover = killed.elapsed();
    let db = stage.db().await;
    let promoted_at: std::time::SystemTime = common::scalar(&db, "SELECT now()", &[]).await;
    wait_until(
        "a 202 to an order posted after the kill",
        RECOVERY * 2,
        async || load.first_accepted_after(killed).is_some(),
    )
    .await;
    // Some more orders through the new master, then the clients finish what they are retrying.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let load = load.finish(true).await;
    let gap = load
        .first_accepted_after(killed)
        .expect("an order accepted after the kill");
    println!(
        "primary (node {old}) killed with SIGKILL after {BEFORE_KILL}+ orders; sentinels named \
         node {new} master {failover:?} later; the first 202 to a POST sent after the kill came \
         {gap:?} after it"
    );
    load.report();
    assert!(
        gap <= RECOVERY,
        "posting worked again {gap:?} after the kill, more than {RECOVERY:?}"
    );

    let ids = load.ids();
    wait_until_settled(&stage, &ids, SETTLE).await;
    let tally = Tally::count(&stage, &ids, &events.finish(Duration::from_secs(2)).await).await;
    // Events published while the subscriber was being reconnected (the sentinels close the
    // clients of a replica they reconfigure) reach no one: count duplicates, not absences.
    tally.report(EventRule::AtMostOne);
    println!(
        "events missed by the test's subscriber across the failover: {}",
        tally.missing_events.len()
    );
    // A retry with the same key finds the order its first try enqueued (when that one reached a
    // replica), so nothing is enqueued that no client got a 202 for.
    assert_eq!(
        tally.unexpected_rows, 0,
        "orders in PostgreSQL that no client got a 202 for"
    );

    // The notifier hears the new master: orders completed after the failover are notified from
    // their events, sooner than the catch-up would.
    let row = db
        .query_one(
            "SELECT count(*),
                    count(*) FILTER (WHERE n.sent_at - o.completed_at < make_interval(secs => $2))
             FROM orders o JOIN notifications n USING (order_id)
             WHERE o.completed_at > $1 AND o.order_id = ANY($3)",
            &[&promoted_at, &CATCH_UP.as_secs_f64(), &ids],
        )
        .await
        .expect("notification times");
    let (after, live): (i64, i64) = (row.get(0), row.get(1));
    println!(
        "orders completed after the failover: {after}, notified from their event: {live}, by \
         the catch-up: {}",
        after - live
    );
    assert!(after > 0, "orders completed after the failover");
    assert!(live > 0, "the notifier received events from the new master");
}
