//! The fault-injection suite, where recovery is proven: each scenario starts its own Redis
//! (append-only file on) and PostgreSQL on free ports, runs the real `orders` binary as separate
//! processes, drives load through the HTTP API, breaks something on purpose, and then checks that
//! every accepted order ended in exactly one final row, with one notification and at most (or
//! exactly) one distinct `order.completed` event (a repeat carries the same `event_id`). Each
//! prints one line:
//!
//! `<scenario>: accepted N, completed N, failed N, lost 0, duplicated 0`
//!
//! and fails on any loss, duplicate, order not completed, order not notified, or order left
//! behind in Redis. Run with `just chaos` (or `cargo nextest run --test chaos --no-capture`).
//! The logs of every process and server, and `tally.txt` (what was counted, order by order), are
//! kept in `target/chaos-logs/<scenario>/` (the run before in `<scenario>.previous/`).

#[path = "chaos/cluster.rs"]
mod cluster;
mod common;

use cluster::{Cluster, Fsync};
use common::db::try_scalar;
use common::events::distinct_per_order;
use common::http::batch_ids;
use common::process::Process;
use common::tally::{wait_until_settled, EventRule, Tally};
use common::{wait_until, Sent};
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a scenario waits for everything to settle after the fault (the PostgreSQL outage
/// waits longer: retries back off exponentially).
const SETTLE: Duration = Duration::from_secs(60);
/// No event for this long: the subscriber has seen everything there is to see.
const QUIET: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// 1. kill -9 of a worker process holding at least 500 orders; the other, already running,
//    recovers them through its reaper, without a restart.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_holding_500_orders_loses_nothing() {
    let cluster = Cluster::start("sigkill-worker", Fsync::EverySec).await;
    let settings = [
        ("ORDERS_PROCESSING_DELAY_MS", "1000-3000"),
        ("ORDERS_LEASE_MS", "1000"),
    ];
    let api = cluster
        .start_service("api", "api,notifier", &settings)
        .await;
    let mut doomed = cluster.start_service("doomed", "worker", &settings).await;
    let events = cluster.subscribe().await;

    // The doomed worker gets a head start, so that it surely holds 500 orders...
    let mut accepted = post_orders(&api, 1000, 500).await;
    let doomed_list = cluster.key(&format!("processing:{}", doomed.worker_id()));
    wait_until(
        "the doomed worker holds 500 orders",
        Duration::from_secs(30),
        || async { list_len(&cluster, &doomed_list).await >= 500 },
    )
    .await;
    // ... then the survivor starts, and both work on more orders.
    let mut survivor = cluster.start_service("survivor", "worker", &settings).await;
    accepted.extend(post_orders(&api, 1000, 500).await);
    wait_until(
        "the doomed worker holds 500 orders while the survivor works",
        Duration::from_secs(30),
        || async { list_len(&cluster, &doomed_list).await >= 500 },
    )
    .await;
    let held = list_len(&cluster, &doomed_list).await;
    doomed.signal("KILL");
    doomed.wait_exit(Duration::from_secs(5)).await;
    assert!(
        held >= 500,
        "the doomed worker held {held} orders when killed"
    );

    wait_until_settled(&cluster, &accepted, SETTLE).await;
    let tally = Tally::count(&cluster, &accepted, &events.finish(QUIET).await).await;
    // A worker killed between its completion commit and its acknowledgement left that order
    // final with no event: the redelivery finds it final and sends its event.
    tally.report(EventRule::ExactlyOne);
    assert_one_row_each(&cluster, &tally, &accepted).await;

    assert!(
        survivor.is_running(),
        "the survivor recovered them without a restart"
    );
    assert!(
        survivor
            .log
            .find("returned orders of dead workers to the queue")
            .is_some(),
        "the survivor's reaper returned the dead worker's orders"
    );
    assert!(redelivered(&cluster).await > 0, "orders were redelivered");
}

// ---------------------------------------------------------------------------------------------
// 2. SIGTERM under load: exit 0 within the deadline, the unfinished orders back on the queue,
//    and a new process finishes them.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_zero_in_time_and_returns_the_rest() {
    let cluster = Cluster::start("sigterm-worker", Fsync::EverySec).await;
    let shutdown_ms: u64 = 1500;
    let settings = [
        ("ORDERS_PROCESSING_DELAY_MS", "1000-3000"),
        ("ORDERS_SHUTDOWN_TIMEOUT_MS", &shutdown_ms.to_string()),
    ];
    let api = cluster
        .start_service("api", "api,notifier", &settings)
        .await;
    let mut first = cluster.start_service("worker-1", "worker", &settings).await;
    let events = cluster.subscribe().await;

    let accepted = post_orders(&api, 800, 400).await;
    let first_list = cluster.key(&format!("processing:{}", first.worker_id()));
    wait_until(
        "the worker holds 400 orders",
        Duration::from_secs(30),
        || async { list_len(&cluster, &first_list).await >= 400 },
    )
    .await;
    let sent = Instant::now();
    first.signal("TERM");
    let status = first.wait_exit(Duration::from_secs(10)).await;
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    // The deadline counts from when the fetch loops have stopped, which waits for the pop in
    // flight (up to 1 s); then the final round trips, on a busy machine.
    let allowed = Duration::from_millis(shutdown_ms + 2500);
    assert!(
        took <= allowed,
        "exited after {took:?}, allowed {allowed:?}"
    );

    // The rest is back on the queue and nothing is held: every order is completed or queued.
    let stopped = first
        .log
        .find("worker stopped")
        .expect("the worker logged its stop");
    let returned = stopped["returned_to_queue"].as_u64().unwrap_or(0);
    assert!(returned > 0, "in-flight orders past the deadline went back");
    assert_eq!(list_len(&cluster, &first_list).await, 0);
    let queued: HashSet<Uuid> = queued_ids(&cluster).await.into_iter().collect();
    let completed: HashSet<Uuid> = ids_in_status(&cluster, "completed")
        .await
        .into_iter()
        .collect();
    let nowhere: Vec<&Uuid> = accepted
        .iter()
        .filter(|id| !queued.contains(id) && !completed.contains(id))
        .collect();
    assert!(
        nowhere.is_empty(),
        "{} orders neither completed nor queued",
        nowhere.len()
    );
    let unfinished = accepted.iter().filter(|id| !completed.contains(id)).count();
    assert_eq!(
        queued_ids(&cluster).await.len(),
        unfinished,
        "every unfinished order is on the queue, once"
    );
    let mut redis = cluster.redis().await;
    let held: Vec<String> = redis.keys(cluster.key("processing:*")).await.unwrap();
    assert!(held.is_empty(), "processing lists left: {held:?}");

    let _second = cluster
        .start_service(
            "worker-2",
            "worker",
            &[("ORDERS_PROCESSING_DELAY_MS", "100-500")],
        )
        .await;
    wait_until_settled(&cluster, &accepted, SETTLE).await;
    let tally = Tally::count(&cluster, &accepted, &events.finish(QUIET).await).await;
    // A graceful stop is not a crash: an order whose completion was committed must also have
    // been published before the process let go of it, so every event is required here.
    tally.report(EventRule::ExactlyOne);
    assert_one_row_each(&cluster, &tally, &accepted).await;
}

// ---------------------------------------------------------------------------------------------
// 3. PostgreSQL stopped for 10 s under load (fast shutdown, as `pg_ctl stop -m fast`), then
//    started again on the same port and data: every order retried and completed.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_10_s_under_load_every_order_completes() {
    let mut cluster = Cluster::start("postgres-down", Fsync::EverySec).await;
    let settings = [("ORDERS_PROCESSING_DELAY_MS", "500-1500")];
    let front = cluster
        .start_service("front", "api,worker,notifier", &settings)
        .await;
    let _second = cluster.start_service("worker-2", "worker", &settings).await;
    let events = cluster.subscribe().await;

    let mut accepted = post_orders(&front, 600, 200).await;
    wait_until("200 orders processing", Duration::from_secs(30), || async {
        ids_in_status(&cluster, "processing").await.len() >= 200
    })
    .await;
    cluster.postgres.stop_fast();
    let down = Instant::now();
    // The API only needs Redis to accept: it keeps answering 202 with the database down.
    accepted.extend(post_orders(&front, 300, 100).await);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    cluster.postgres.restart().await;

    // Transient failures back off exponentially (ORDERS_MAX_ATTEMPTS, default 8): be generous.
    wait_until_settled(&cluster, &accepted, Duration::from_secs(120)).await;
    let tally = Tally::count(&cluster, &accepted, &events.finish(QUIET).await).await;
    tally.report(EventRule::ExactlyOne);
}

// ---------------------------------------------------------------------------------------------
// 4. Redis killed with kill -9 under load and started again from its append-only file (same
//    port, same directory): every order that got a 202 ends final with its event in the stream,
//    the notifier reconnects and notifies each completed order once, and the API answers 503
//    (never 500) while Redis is down.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_from_its_aof_loses_no_accepted_order() {
    // `appendfsync always` for this scenario: Redis writes and syncs every command to its
    // append-only file before it answers, so the load can run right up to the kill and every
    // 202 must survive it. With `everysec` an order answered within about the last second
    // before a kill -9 could be lost by Redis itself (the write to the file can be postponed
    // while a background fsync is slow), which is not what this checks.
    let mut cluster = Cluster::start("redis-restart", Fsync::Always).await;
    let settings = [
        ("ORDERS_PROCESSING_DELAY_MS", "300-1000"),
        ("ORDERS_LEASE_MS", "2000"),
    ];
    let front = cluster
        .start_service("front", "api,worker,notifier", &settings)
        .await;
    let second = cluster
        .start_service("second", "api,worker", &settings)
        .await;
    let events = cluster.subscribe().await;

    let load = Load::start(
        vec![front.url("/orders/batch"), second.url("/orders/batch")],
        10,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.redis.kill9();
    let down = Instant::now();
    // While Redis is down the API answers 503 with `unavailable`, not 500.
    for api in [&front, &second] {
        let response = common::http::client()
            .post(api.url("/orders"))
            .json(&order("chaos-redis-down"))
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .expect("the API answers while Redis is down");
        assert_eq!(response.status(), 503, "POST /orders with Redis down");
        let body: Value = response.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], "unavailable");
        let ready = common::http::client()
            .get(api.url("/readyz"))
            .timeout(Duration::from_secs(15))
            .sent()
            .await;
        assert_eq!(ready.status(), 503, "{} ready with Redis down", api.name);
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down.elapsed())).await;
    cluster.redis.restart().await;
    // Each API takes orders again by itself.
    let mut after = Vec::new();
    for api in [&front, &second] {
        let what = format!("{} accepting orders again once Redis is back", api.name);
        wait_until(&what, Duration::from_secs(15), async || {
            match post_batch(&common::http::client(), &api.url("/orders/batch"), 1).await {
                Ok(ids) => {
                    after.extend(ids);
                    true
                }
                Err(_) => false,
            }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut load = load.stop().await;
    load.accepted.extend(after);

    let statuses = format!("{:?}", load.statuses);
    assert!(
        load.statuses.keys().all(|s| *s == 202 || *s == 503),
        "only 202 and 503 under the outage: {statuses}"
    );
    assert!(
        load.statuses.contains_key(&503),
        "the load saw the outage: {statuses}"
    );
    assert_eq!(load.transport_errors, 0, "the API always answered");
    wait_until_settled(&cluster, &load.accepted, SETTLE).await;
    let tally = Tally::count(&cluster, &load.accepted, &events.finish(QUIET).await).await;
    // Events published while Redis was down reach no subscriber: count duplicates, not
    // absences, on the channel. The stream, in the append-only file, has them all.
    tally.report(EventRule::AtMostOne);
    let in_stream = event_ids(&stream_events(&cluster).await);
    let completed = ids_in_status(&cluster, "completed").await;
    let without: Vec<&Uuid> = completed
        .iter()
        .filter(|id| !in_stream.contains_key(id))
        .collect();
    assert!(
        without.is_empty(),
        "{} completed orders have no event in the stream, e.g. {:?}",
        without.len(),
        &without[..without.len().min(5)]
    );
    assert!(
        front
            .log
            .find("event stream read failed, reconnecting")
            .is_some(),
        "the notifier noticed the restart"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. A poison payload and a duplicated valid job, pushed on the queue by hand: the first is
//    dead-lettered, the second makes no second row, and the workers carry on.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_dead_lettered_and_a_duplicate_job_makes_one_row() {
    let cluster = Cluster::start("poison-and-duplicate", Fsync::EverySec).await;
    let settings = [("ORDERS_PROCESSING_DELAY_MS", "100-300")];
    let front = cluster
        .start_service("front", "api,worker,notifier", &settings)
        .await;
    let _second = cluster.start_service("worker-2", "worker", &settings).await;
    let events = cluster.subscribe().await;

    let mut accepted = post_orders(&front, 200, 100).await;
    let mut redis = cluster.redis().await;
    let queue = cluster.key("queue");
    // Garbage, the wrong types, and a well-formed job that breaks a rule.
    let poison = [
        "this is not an order {".to_string(),
        r#"{"order_id": 42, "customer_id": []}"#.to_string(),
        json!({
            "order_id": Uuid::now_v7(), "customer_id": "", "items": ["a"], "total": 1,
            "accepted_at": "2026-01-01T00:00:00Z"
        })
        .to_string(),
    ];
    for garbage in &poison {
        let _: () = redis.lpush(&queue, garbage).await.expect("LPUSH poison");
    }
    // One valid job, pushed twice in one LPUSH while the workers are busy: the copies may be
    // taken together, or by two fetch loops (of one process or two) as two deliveries.
    let job_id = Uuid::now_v7();
    let job = json!({
        "order_id": job_id, "customer_id": "chaos-dup", "items": ["a"], "total": 1.5,
        "accepted_at": "2026-01-01T00:00:00Z"
    })
    .to_string();
    let _: () = redis
        .lpush(&queue, vec![&job, &job])
        .await
        .expect("LPUSH the job twice");
    accepted.push(job_id);
    // And once more after it completed, as a late redelivery would.
    wait_until("the duplicated job completed", SETTLE, async || {
        let sql = "SELECT count(*) FROM orders WHERE order_id = $1 AND status = 'completed'";
        count(&cluster, sql, &[&job_id]).await == 1
    })
    .await;
    let _: () = redis
        .lpush(&queue, &job)
        .await
        .expect("LPUSH the job again");
    // Workers carry on: orders sent after the poison complete.
    accepted.extend(post_orders(&front, 300, 100).await);

    wait_until_settled(&cluster, &accepted, SETTLE).await;
    let tally = Tally::count(&cluster, &accepted, &events.finish(QUIET).await).await;
    tally.report(EventRule::ExactlyOne);
    assert_eq!(tally.failed, 0);
    assert_eq!(tally.unexpected_rows, 0, "no row for a poison payload");
    let notified = count(&cluster, "SELECT count(*) FROM notifications", &[]).await;
    assert_eq!(notified, accepted.len() as i64);

    let dead: Vec<String> = redis
        .hvals(cluster.key("dead:entries"))
        .await
        .expect("HVALS dead:entries");
    let payloads: HashSet<String> = dead
        .iter()
        .map(|d| {
            let entry: Value = serde_json::from_str(d).expect("a dead letter is JSON");
            entry["payload"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        dead.len(),
        poison.len(),
        "exactly the poison payloads are dead letters: {dead:?}"
    );
    assert_eq!(payloads, poison.iter().cloned().collect());
}

// ---------------------------------------------------------------------------------------------
// 6. The notifier (a process of its own) stopped while orders complete, then started again:
//    every completed order notified exactly once, by row and by log line.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_stopped_and_started_again_notifies_each_order_once() {
    let cluster = Cluster::start("notifier-restart", Fsync::EverySec).await;
    let settings = [("ORDERS_PROCESSING_DELAY_MS", "200-800")];
    let front = cluster
        .start_service("front", "api,worker", &settings)
        .await;
    let mut first = cluster
        .start_service("notifier-1", "notifier", &settings)
        .await;
    let events = cluster.subscribe().await;

    let mut accepted = post_orders(&front, 300, 100).await;
    wait_until("100 notifications", Duration::from_secs(30), || async {
        count(&cluster, "SELECT count(*) FROM notifications", &[]).await >= 100
    })
    .await;
    // SIGTERM, not SIGKILL: the notifier writes its line before its transaction commits
    // (at-least-once sending), so a SIGKILL in between could log one order twice by design, and
    // a line still in the async logger's buffer would be lost; neither is what this checks.
    first.signal("TERM");
    assert!(first.wait_exit(Duration::from_secs(10)).await.success());

    // These complete with no notifier running.
    accepted.extend(post_orders(&front, 300, 100).await);
    let n = accepted.len();
    wait_until("every order completed", SETTLE, || async {
        ids_in_status(&cluster, "completed").await.len() == n
    })
    .await;
    let notified = count(&cluster, "SELECT count(*) FROM notifications", &[]).await;
    assert!(
        notified < n as i64,
        "orders completed while no notifier ran"
    );

    let second = cluster
        .start_service("notifier-2", "notifier", &settings)
        .await;
    // And these complete with the new one subscribed.
    accepted.extend(post_orders(&front, 200, 100).await);
    wait_until_settled(&cluster, &accepted, SETTLE).await;
    let tally = Tally::count(&cluster, &accepted, &events.finish(QUIET).await).await;
    tally.report(EventRule::ExactlyOne);

    for notifier in [&first, &second] {
        let sent = notifier
            .log
            .lines()
            .iter()
            .filter(|l| {
                l["msg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Email sent to customer"))
            })
            .count();
        assert!(sent > 0, "{} sent notifications", notifier.name);
    }
}

// ---------------------------------------------------------------------------------------------
// 7. A worker paused with SIGSTOP past its lease while it holds orders, then continued: another
//    worker reclaimed its orders, and none is completed, published or notified twice.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_completes_nothing_twice() {
    let cluster = Cluster::start("worker-paused", Fsync::EverySec).await;
    const FETCH_LOOPS: usize = 2;
    let settings = [
        ("ORDERS_PROCESSING_DELAY_MS", "1000-3000"),
        ("ORDERS_LEASE_MS", "1000"),
        ("ORDERS_FETCH_LOOPS", &FETCH_LOOPS.to_string()),
    ];
    let api = cluster
        .start_service("api", "api,notifier", &settings)
        .await;
    let paused = cluster.start_service("paused", "worker", &settings).await;
    let events = cluster.subscribe().await;

    // The worker to pause gets a head start, so that it surely holds orders...
    let mut accepted = post_orders(&api, 400, 200).await;
    let paused_list = cluster.key(&format!("processing:{}", paused.worker_id()));
    wait_until(
        "the worker to pause holds 200 orders",
        Duration::from_secs(30),
        || async { list_len(&cluster, &paused_list).await >= 200 },
    )
    .await;
    // ... then the other starts, and both work on more orders.
    let other = cluster.start_service("other", "worker", &settings).await;
    accepted.extend(post_orders(&api, 200, 200).await);
    paused.signal("STOP");
    let held: Vec<Uuid> = list_ids(&cluster, &paused_list).await;
    assert!(!held.is_empty(), "the paused worker holds orders");
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Its lease expired: the other worker's reaper took back what it held. Each of its fetch
    // loops may have had a blocking pop waiting on the server when it was stopped; Redis serves
    // those as soon as the reaper refills the queue, so at most one order per fetch loop lands in
    // its list again (and waits for it to continue, or for the reaper's periodic scan).
    let returned = other
        .log
        .logged_count("returned orders of dead workers to the queue");
    assert!(
        returned as usize >= held.len(),
        "the other worker's reaper returned {returned} orders; the paused one held {}",
        held.len()
    );
    let again = list_len(&cluster, &paused_list).await;
    assert!(
        again <= FETCH_LOOPS,
        "{again} orders in the paused worker's list after the reaper emptied it"
    );
    paused.signal("CONT");

    wait_until_settled(&cluster, &accepted, SETTLE).await;
    let tally = Tally::count(&cluster, &accepted, &events.finish(QUIET).await).await;
    tally.report(EventRule::ExactlyOne);

    let retaken = count(
        &cluster,
        "SELECT count(*) FROM orders WHERE order_id = ANY($1) AND attempts > 1",
        &[&held],
    )
    .await;
    assert!(
        retaken > 0,
        "orders held by the paused worker were delivered again"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. A claim whose reply was lost (Redis killed after it wrote the move to its append-only file):
//    the orders sit in a live worker's processing list, which no reaper touches. When the worker's
//    connections drop, it puts back on the queue what its list holds beyond what it holds itself,
//    and leaves the orders it is processing alone.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_moved_by_a_claim_whose_reply_was_lost_are_still_processed() {
    let cluster = Cluster::start("lost-claim-reply", Fsync::EverySec).await;
    let settings = [("ORDERS_PROCESSING_DELAY_MS", "5000")];
    let service = cluster
        .start_service("all", "api,worker,notifier", &settings)
        .await;
    let events = cluster.subscribe().await;

    // Orders the worker holds, in their processing time...
    let mut accepted = post_orders(&service, 10, 10).await;
    let list = cluster.key(&format!("processing:{}", service.worker_id()));
    wait_until(
        "the worker holds 10 orders",
        Duration::from_secs(10),
        || async { list_len(&cluster, &list).await == 10 },
    )
    .await;
    // ... and what a lost reply leaves behind: accepted orders (pending) in its list, not in the
    // queue, and not known to the worker.
    let mut redis = cluster.redis().await;
    let mut stranded = Vec::new();
    for i in 0..3 {
        let body = order(&format!("chaos-lost-reply-{i}")).to_string();
        let new = orders::order::NewOrder::parse(body.as_bytes()).expect("a valid order");
        let job = orders::order::Job::accept(new, time::OffsetDateTime::now_utc(), None);
        let payload = job.to_payload();
        let _: () = redis
            .hset(cluster.key("pending"), job.order_id.to_string(), &payload)
            .await
            .expect("HSET");
        let _: () = redis.lpush(&list, &payload).await.expect("LPUSH");
        stranded.push(job.order_id);
    }
    // The worker claims on (its pops find nothing) and the orders stay where they are.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        list_len(&cluster, &list).await,
        13,
        "the orders wait in the list"
    );

    // Every connection of the service drops, as when Redis restarts.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut redis)
        .await
        .expect("CLIENT KILL");
    assert!(killed > 0, "the service's connections were killed");

    accepted.extend(&stranded);
    wait_until_settled(&cluster, &accepted, SETTLE).await;
    let tally = Tally::count(&cluster, &accepted, &events.finish(QUIET).await).await;
    tally.report(EventRule::ExactlyOne);
    let returned = service.log.logged_count(
        "returned orders this worker does not hold to the queue after a failed claim",
    );
    assert_eq!(
        returned, 3,
        "the worker put back the 3 orders it did not hold"
    );
    assert_eq!(
        redelivered(&cluster).await,
        0,
        "the orders it held were not delivered again"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. 5,000 orders with no processing time while worker processes are killed with SIGKILL at 20
//    random moments (each replaced at once): every completed order has its event on the channel
//    and in the stream, and an event sent again (a redelivered order found final) carries the
//    same event_id.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_20_times_leave_no_completed_order_without_its_event() {
    let cluster = Cluster::start("sigkill-events", Fsync::EverySec).await;
    let settings = [
        ("ORDERS_PROCESSING_DELAY_MS", "0"),
        ("ORDERS_LEASE_MS", "1000"),
    ];
    let api = cluster
        .start_service("api", "api,notifier", &settings)
        .await;
    let mut workers = vec![
        cluster.start_service("worker-0", "worker", &settings).await,
        cluster.start_service("worker-1", "worker", &settings).await,
    ];
    let events = cluster.subscribe().await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("sigkill-events: seed {seed}");
    let mut random = Lcg(seed | 1);

    // The orders go in at about 500 a second, while the kills come every 100-600 ms.
    let posting = tokio::spawn({
        let url = api.url("/orders/batch");
        async move {
            let http = common::http::client();
            let mut ids = Vec::with_capacity(5000);
            while ids.len() < 5000 {
                match post_batch(&http, &url, 50).await {
                    Ok(batch) => ids.extend(batch),
                    Err(status) => panic!("POST /orders/batch answered {status}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ids
        }
    });
    for kill in 0..20 {
        tokio::time::sleep(Duration::from_millis(100 + random.below(500))).await;
        let victim = random.below(workers.len() as u64) as usize;
        let mut doomed = workers.swap_remove(victim);
        doomed.signal("KILL");
        doomed.wait_exit(Duration::from_secs(5)).await;
        let name = format!("worker-{}", kill + 2);
        workers.push(cluster.start_service(&name, "worker", &settings).await);
    }
    let accepted = posting.await.expect("the posting task");
    assert!(
        wait_until_settled(&cluster, &accepted, SETTLE).await,
        "settled"
    );

    let published = events.finish_all(QUIET).await;
    let tally = Tally::count(&cluster, &accepted, &distinct_per_order(&published)).await;
    tally.report(EventRule::ExactlyOne);

    // The stream holds the same events: at least one per completed order, each with the id that
    // order's completion event has on the channel (and only one id per order).
    let stream = stream_events(&cluster).await;
    let (on_channel, in_stream) = (event_ids(&published), event_ids(&stream));
    let completed = ids_in_status(&cluster, "completed").await;
    for id in &completed {
        let expected = Uuid::new_v5(id, b"completed").to_string();
        for (what, ids) in [("channel", &on_channel), ("stream", &in_stream)] {
            assert_eq!(
                ids.get(id).map(|v| v.iter().collect::<HashSet<_>>()),
                Some(HashSet::from([&expected])),
                "order {id}: one event id on the {what}, UUIDv5(order, \"completed\")"
            );
        }
    }
    let repeats = |ids: &std::collections::HashMap<Uuid, Vec<String>>| -> usize {
        ids.values().map(|v| v.len() - 1).sum()
    };
    // Orders a killed worker had committed and not acknowledged: before the event stream,
    // these were left without an event.
    let sent_again: usize = std::fs::read_dir(&cluster.log_dir)
        .expect("the scenario's log dir")
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .map(|log| {
            log.matches("order already final, sending its event again")
                .count()
        })
        .sum();
    println!(
        "sigkill-events: 20 kills, {} completed with an event on the channel and in the stream; \
         redelivered {}, found final and sent again {}; repeats with the same event_id: {} on \
         the channel, {} in the stream",
        completed.len(),
        redelivered(&cluster).await,
        sent_again,
        repeats(&on_channel),
        repeats(&in_stream),
    );
    assert_eq!(completed.len(), accepted.len());
}

// ---------------------------------------------------------------------------------------------
// 10. A notifier (consumer group member) killed with SIGKILL in the middle of a batch: another
//     member takes its pending entries over, and each customer is notified once.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_killed_mid_batch_has_its_pending_events_taken_over() {
    let cluster = Cluster::start("notifier-killed", Fsync::EverySec).await;
    // Only the group can notify here: the catch-up from PostgreSQL would wait 10 minutes.
    let settings = [
        ("ORDERS_NOTIFIER_CATCH_UP_MS", "600000"),
        ("ORDERS_NOTIFIER_CLAIM_IDLE_MS", "1000"),
    ];
    let front = cluster
        .start_service("front", "api,worker", &settings)
        .await;
    let events = cluster.subscribe().await;
    let accepted = post_orders(&front, 300, 100).await;
    wait_until("300 completed", SETTLE, || async {
        ids_in_status(&cluster, "completed").await.len() == 300
    })
    .await;

    // The notifications table locked: the first notifier reads its batch (the 300 events wait
    // in the stream) and then hangs in the middle of recording it.
    let mut lock = cluster.db().await;
    let held = lock.transaction().await.expect("begin");
    held.batch_execute("LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock notifications");
    let mut first = cluster
        .start_service("notifier-1", "notifier", &settings)
        .await;
    let mut redis = cluster.redis().await;
    // XPENDING's summary: the count, the smallest and largest id, the count per member.
    let pending_of = async |redis: &mut redis::aio::MultiplexedConnection| -> i64 {
        let (n, ..): (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(cluster.key("events"))
            .arg("notifier")
            .query_async(redis)
            .await
            .expect("XPENDING");
        n
    };
    wait_until("the first notifier holds 300 events", SETTLE, async || {
        pending_of(&mut redis).await == 300
    })
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5)).await;
    held.rollback().await.expect("unlock");
    assert_eq!(
        count(&cluster, "SELECT count(*) FROM notifications", &[]).await,
        0,
        "the killed notifier recorded nothing"
    );

    let second = cluster
        .start_service("notifier-2", "notifier", &settings)
        .await;
    wait_until_settled(&cluster, &accepted, SETTLE).await;
    let tally = Tally::count(&cluster, &accepted, &events.finish(QUIET).await).await;
    tally.report(EventRule::ExactlyOne);
    assert!(
        second
            .log
            .find("took over events another member left unacknowledged")
            .is_some(),
        "the second notifier took the pending events over"
    );
    wait_until("nothing pending in the group", SETTLE, async || {
        pending_of(&mut redis).await == 0
    })
    .await;
    println!(
        "notifier-killed: 300 events pending for the killed member, taken over, each notified once"
    );
}

/// A small random sequence (the seed is printed, so a failing run can be told apart).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Every event in the scenario's event stream, oldest first.
async fn stream_events(cluster: &Cluster) -> Vec<Value> {
    let mut redis = cluster.redis().await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(cluster.key("events"))
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .expect("XRANGE");
    entries
        .iter()
        .map(|(_, fields)| serde_json::from_str(&fields[0].1).expect("an event"))
        .collect()
}

/// The event ids of each order's events, in the order they came.
fn event_ids(events: &[Value]) -> std::collections::HashMap<Uuid, Vec<String>> {
    let mut ids: std::collections::HashMap<Uuid, Vec<String>> = Default::default();
    for event in events {
        let order = event["order_id"].as_str().and_then(|s| s.parse().ok());
        let id = event["event_id"].as_str();
        if let (Some(order), Some(id)) = (order, id) {
            ids.entry(order).or_default().push(id.to_string());
        }
    }
    ids
}

// ---------------------------------------------------------------------------------------------
// Load and small queries.
// ---------------------------------------------------------------------------------------------

fn order(customer: &str) -> Value {
    json!({"customer_id": customer, "items": ["sku-1", "sku-2"], "total": 12.34})
}

/// POSTs one batch of `size` orders; the ids on a 202, the status otherwise.
async fn post_batch(
    http: &reqwest::Client,
    url: &str,
    size: usize,
) -> Result<Vec<Uuid>, reqwest::StatusCode> {
    let batch: Vec<Value> = (0..size)
        .map(|i| order(&format!("chaos-{}", i % 50)))
        .collect();
    let response = http
        .post(url)
        .json(&batch)
        .timeout(Duration::from_secs(20))
        .sent()
        .await;
    if response.status() != 202 {
        return Err(response.status());
    }
    Ok(batch_ids(response).await)
}

/// POSTs `n` orders to the API of `service` in batches of `batch`, each answered 202; their ids.
async fn post_orders(service: &Process, n: usize, batch: usize) -> Vec<Uuid> {
    let http = common::http::client();
    let url = service.url("/orders/batch");
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let size = batch.min(n - ids.len());
        match post_batch(&http, &url, size).await {
            Ok(batch_ids) => ids.extend(batch_ids),
            Err(status) => panic!("POST /orders/batch to {} answered {status}", service.name),
        }
    }
    ids
}

/// Batches of orders sent one after the other, round robin over some APIs, until stopped; for
/// load that runs across a fault.
struct Load {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<LoadResult>,
}

#[derive(Default)]
struct LoadResult {
    /// Orders answered 202.
    accepted: Vec<Uuid>,
    /// Responses by status.
    statuses: BTreeMap<u16, usize>,
    transport_errors: usize,
}

impl Load {
    fn start(urls: Vec<String>, batch: usize) -> Load {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let http = common::http::client();
                let mut result = LoadResult::default();
                let batch_of = |i: usize| -> Vec<Value> {
                    (0..batch)
                        .map(|j| order(&format!("chaos-{}", (i + j) % 50)))
                        .collect()
                };
                let mut i = 0;
                while !stop.is_cancelled() {
                    let sent = http
                        .post(&urls[i % urls.len()])
                        .json(&batch_of(i))
                        .timeout(Duration::from_secs(20))
                        .send()
                        .await;
                    i += 1;
                    match sent {
                        Err(_) => result.transport_errors += 1,
                        Ok(response) => {
                            let status = response.status().as_u16();
                            *result.statuses.entry(status).or_default() += 1;
                            if status == 202 {
                                result.accepted.extend(batch_ids(response).await);
                            } else {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                result
            }
        });
        Load { stop, task }
    }

    async fn stop(self) -> LoadResult {
        self.stop.cancel();
        self.task.await.expect("the load task")
    }
}

async fn list_len(cluster: &Cluster, key: &str) -> usize {
    let mut redis = cluster.redis().await;
    redis.llen(key).await.expect("LLEN")
}

/// The order ids of the jobs in a Redis list.
async fn list_ids(cluster: &Cluster, key: &str) -> Vec<Uuid> {
    let mut redis = cluster.redis().await;
    let payloads: Vec<String> = redis.lrange(key, 0, -1).await.expect("LRANGE");
    payloads
        .iter()
        .filter_map(|p| {
            serde_json::from_str::<Value>(p).ok()?["order_id"]
                .as_str()?
                .parse()
                .ok()
        })
        .collect()
}

async fn queued_ids(cluster: &Cluster) -> Vec<Uuid> {
    list_ids(cluster, &cluster.key("queue")).await
}

/// Ids of the orders in a status (empty while PostgreSQL is unreachable).
async fn ids_in_status(cluster: &Cluster, status: &str) -> Vec<Uuid> {
    let Ok(db) = cluster.postgres.connect("orders").await else {
        return Vec::new();
    };
    db.query("SELECT order_id FROM orders WHERE status = $1", &[&status])
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

/// A `SELECT count(*) …` (0 while PostgreSQL is unreachable).
async fn count(cluster: &Cluster, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
    let Ok(db) = cluster.postgres.connect("orders").await else {
        return 0;
    };
    try_scalar(&db, sql, params).await.unwrap_or(0)
}

/// Orders delivered more than once.
async fn redelivered(cluster: &Cluster) -> i64 {
    count(
        cluster,
        "SELECT count(*) FROM orders WHERE attempts > 1",
        &[],
    )
    .await
}

/// Beyond the tally: PostgreSQL holds one row per accepted order and nothing else, each with
/// the two items of [`order`], and one notification row each.
async fn assert_one_row_each(cluster: &Cluster, tally: &Tally, accepted: &[Uuid]) {
    let n = accepted.len() as i64;
    assert_eq!(tally.unexpected_rows, 0, "rows of orders never accepted");
    let items = count(
        cluster,
        "SELECT count(*) FROM order_items WHERE order_id = ANY($1)",
        &[&accepted],
    )
    .await;
    assert_eq!(items, 2 * n, "two items per order");
    let notified = count(cluster, "SELECT count(*) FROM notifications", &[]).await;
    assert_eq!(notified, n, "one notification per order");
}
