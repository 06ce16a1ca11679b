//! What a scenario checks at the end: every accepted order in PostgreSQL with one final row, one
//! notification row, one `Email sent to customer` log line and (where Redis stayed up) one
//! `order.completed` event; and the one line each scenario prints.

use super::log::Log;
use super::wait::poll_until;
use redis::AsyncCommands;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

/// The channel completion events go to (the service's default).
pub const COMPLETED_CHANNEL: &str = "order.completed";

/// The servers of one scenario, as the tally reads them: whatever the Redis topology, the
/// database the service writes and the Redis node that holds the queue keys now.
// Only the test binaries implement and call it, so `Send` bounds on the futures do not matter.
#[allow(async_fn_in_trait)]
pub trait Scene {
    /// The scenario's name, which starts its printed line.
    fn scenario(&self) -> &str;
    /// Where the scenario's service logs (`*.log`) and `tally.txt` are.
    fn log_dir(&self) -> &Path;
    /// A fresh connection to the service's database.
    async fn try_db(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error>;
    /// A fresh connection to the Redis node that holds the queue keys (in a cluster, the owner
    /// of their slot; with sentinels, the current master).
    async fn queue_redis(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection>;
    /// A key under the service's prefix, e.g. `queue` → `{orders}:queue`.
    fn key(&self, name: &str) -> String;
}

/// Whether every completed order must have had its event seen by the test's subscriber. Either
/// way an order with two distinct events (two `event_id`s) is a duplicate; the same event sent
/// twice is one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EventRule {
    /// Exactly one event per completed order.
    ExactlyOne,
    /// At most one: events can be missed by a subscriber for a reason the scenario explains
    /// (Redis down when they were published).
    AtMostOne,
}

/// Waits until every order in `accepted` is final and every completed one notified, and Redis
/// holds nothing of them any more (queue, processing lists, pending hash); for up to `timeout`.
/// Returns whether it got there; the tally says what is missing if not.
pub async fn wait_until_settled(scene: &impl Scene, accepted: &[Uuid], timeout: Duration) -> bool {
    let ids = accepted.to_vec();
    // Each check opens connections of its own: a few a second are enough.
    poll_until(timeout, Duration::from_millis(250), async || {
        settled(scene, &ids).await.unwrap_or(false)
    })
    .await
}

async fn settled(scene: &impl Scene, ids: &Vec<Uuid>) -> Result<bool, Box<dyn std::error::Error>> {
    let db = scene.try_db().await?;
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE o.status IN ('completed', 'failed', 'cancelled')),
                    count(*) FILTER (WHERE o.status = 'completed' AND n.order_id IS NULL)
             FROM orders o LEFT JOIN notifications n USING (order_id)
             WHERE o.order_id = ANY($1)",
            &[ids],
        )
        .await?;
    let (final_, unnotified): (i64, i64) = (row.get(0), row.get(1));
    if final_ != ids.len() as i64 || unnotified != 0 {
        return Ok(false);
    }
    Ok(redis_leftovers(scene).await?.is_empty())
}

/// What Redis still holds: the queue, non-empty processing lists, the pending hash.
pub async fn redis_leftovers(scene: &impl Scene) -> Result<Vec<String>, redis::RedisError> {
    let mut redis = scene.queue_redis().await?;
    let mut left = Vec::new();
    let queued: usize = redis.llen(scene.key("queue")).await?;
    if queued > 0 {
        left.push(format!("{queued} in {}", scene.key("queue")));
    }
    let pending: usize = redis.hlen(scene.key("pending")).await?;
    if pending > 0 {
        left.push(format!("{pending} in {}", scene.key("pending")));
    }
    let lists: Vec<String> = redis.keys(scene.key("processing:*")).await?;
    for list in lists {
        let held: usize = redis.llen(&list).await?;
        if held > 0 {
            left.push(format!("{held} in {list}"));
        }
    }
    Ok(left)
}

/// The final count of one scenario.
#[derive(Debug, Default)]
pub struct Tally {
    pub scenario: String,
    pub accepted: usize,
    pub completed: usize,
    pub failed: usize,
    /// Accepted orders with no row, or a row that is not final.
    pub lost: Vec<(Uuid, String)>,
    /// Orders with more than one row, event, notification row or notification log line.
    pub duplicated: Vec<(Uuid, String)>,
    /// Completed orders with no notification row or no `Email sent` line.
    pub unnotified: Vec<(Uuid, String)>,
    /// Completed orders whose event the test's subscriber did not see.
    pub missing_events: Vec<Uuid>,
    /// Rows of orders the test never got a 202 for (say, a POST answered 503 after Redis took
    /// it): not a loss, not counted, but said.
    pub unexpected_rows: usize,
    /// What Redis still held at the end.
    pub leftovers: Vec<String>,
    log_dir: Option<std::path::PathBuf>,
}

impl Tally {
    /// Counts, for each accepted order, its rows and status in PostgreSQL, its notification rows,
    /// its `Email sent to customer` lines in every service log of the scenario, and its events.
    pub async fn count(
        scene: &impl Scene,
        accepted: &[Uuid],
        events: &HashMap<Uuid, usize>,
    ) -> Tally {
        let db = scene.try_db().await.expect("connect to the database");
        let mut rows: HashMap<Uuid, Vec<String>> = HashMap::new();
        for row in db
            .query("SELECT order_id, status FROM orders", &[])
            .await
            .expect("orders")
        {
            rows.entry(row.get(0)).or_default().push(row.get(1));
        }
        let mut notifications: HashMap<Uuid, i64> = HashMap::new();
        for row in db
            .query(
                "SELECT order_id, count(*) FROM notifications GROUP BY order_id",
                &[],
            )
            .await
            .expect("notifications")
        {
            notifications.insert(row.get(0), row.get(1));
        }
        let emails = email_lines(scene);

        let mut tally = Tally {
            scenario: scene.scenario().to_string(),
            accepted: accepted.len(),
            log_dir: Some(scene.log_dir().to_path_buf()),
            ..Tally::default()
        };
        let wanted: std::collections::HashSet<&Uuid> = accepted.iter().collect();
        tally.unexpected_rows = rows.keys().filter(|id| !wanted.contains(id)).count();
        for id in accepted {
            let statuses = rows.get(id).cloned().unwrap_or_default();
            let mut duplicate = Vec::new();
            if statuses.len() > 1 {
                duplicate.push(format!("{} rows", statuses.len()));
            }
            match statuses.first().map(String::as_str) {
                None => tally.lost.push((*id, "no row".into())),
                Some("completed") => {
                    tally.completed += 1;
                    let notes = notifications.get(id).copied().unwrap_or(0);
                    let lines = emails.get(id).copied().unwrap_or(0);
                    let seen = events.get(id).copied().unwrap_or(0);
                    if notes == 0 {
                        tally.unnotified.push((*id, "no notifications row".into()));
                    }
                    if lines == 0 {
                        tally.unnotified.push((*id, "no `Email sent` line".into()));
                    }
                    if seen == 0 {
                        tally.missing_events.push(*id);
                    }
                    for (what, n) in [
                        ("notification rows", notes),
                        ("`Email sent` lines", lines as i64),
                        ("completed events", seen as i64),
                    ] {
                        if n > 1 {
                            duplicate.push(format!("{n} {what}"));
                        }
                    }
                }
                Some("failed") => tally.failed += 1,
                Some("cancelled") => {}
                Some(other) => tally.lost.push((*id, format!("still {other}"))),
            }
            if !duplicate.is_empty() {
                tally.duplicated.push((*id, duplicate.join(", ")));
            }
        }
        tally.leftovers = redis_leftovers(scene)
            .await
            .unwrap_or_else(|e| vec![format!("cannot read Redis: {e}")]);
        tally
    }

    /// The one line of the scenario.
    pub fn line(&self) -> String {
        format!(
            "{}: accepted {}, completed {}, failed {}, lost {}, duplicated {}",
            self.scenario,
            self.accepted,
            self.completed,
            self.failed,
            self.lost.len(),
            self.duplicated.len()
        )
    }

    /// Prints the line, then fails on any loss, duplicate, order not completed, missing
    /// notification, leftover in Redis, or (with [`EventRule::ExactlyOne`]) missing event.
    pub fn report(&self, rule: EventRule) {
        println!("{}", self.line());
        self.write_details();
        let sample = |v: &[(Uuid, String)]| -> String {
            v.iter()
                .take(5)
                .map(|(id, why)| format!("{id} ({why})"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        assert!(
            self.lost.is_empty(),
            "{}: {} orders lost, e.g. {}",
            self.scenario,
            self.lost.len(),
            sample(&self.lost)
        );
        assert!(
            self.duplicated.is_empty(),
            "{}: {} orders duplicated, e.g. {}",
            self.scenario,
            self.duplicated.len(),
            sample(&self.duplicated)
        );
        assert_eq!(
            self.completed, self.accepted,
            "{}: every accepted order should be completed ({} failed)",
            self.scenario, self.failed
        );
        assert!(
            self.unnotified.is_empty(),
            "{}: {} completed orders not notified, e.g. {}",
            self.scenario,
            self.unnotified.len(),
            sample(&self.unnotified)
        );
        assert!(
            self.leftovers.is_empty(),
            "{}: Redis still holds {:?}",
            self.scenario,
            self.leftovers
        );
        if rule == EventRule::ExactlyOne {
            assert!(
                self.missing_events.is_empty(),
                "{}: no order.completed event for {} completed orders, e.g. {:?}",
                self.scenario,
                self.missing_events.len(),
                &self.missing_events[..self.missing_events.len().min(5)]
            );
        }
    }

    /// Everything counted, to `target/chaos-logs/<scenario>/tally.txt` (the line stays one line).
    fn write_details(&self) {
        use std::fmt::Write;
        let Some(dir) = &self.log_dir else { return };
        let mut text = format!("{}\n", self.line());
        for (what, list) in [
            ("lost", &self.lost),
            ("duplicated", &self.duplicated),
            ("unnotified", &self.unnotified),
        ] {
            let _ = writeln!(text, "{what}: {}", list.len());
            for (id, why) in list {
                let _ = writeln!(text, "  {id} {why}");
            }
        }
        let _ = writeln!(text, "missing events: {}", self.missing_events.len());
        for id in &self.missing_events {
            let _ = writeln!(text, "  {id}");
        }
        let _ = writeln!(text, "unexpected rows: {}", self.unexpected_rows);
        let _ = writeln!(text, "left in Redis: {:?}", self.leftovers);
        let _ = std::fs::write(dir.join("tally.txt"), text);
    }
}

/// `Email sent to customer … for Order #<id> …` lines per order id, over every service log of
/// the scenario.
pub fn email_lines(scene: &impl Scene) -> HashMap<Uuid, usize> {
    let mut counts = HashMap::new();
    let entries = std::fs::read_dir(scene.log_dir()).expect("the scenario's log dir");
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        for line in Log::File(path).lines() {
            let Some(msg) = line["msg"].as_str() else {
                continue;
            };
            if !msg.starts_with("Email sent to customer") {
                continue;
            }
            let id = msg
                .split_once("Order #")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|id| id.parse::<Uuid>().ok())
                .unwrap_or_else(|| panic!("an Email sent line names its order: {msg}"));
            *counts.entry(id).or_default() += 1;
        }
    }
    counts
}
