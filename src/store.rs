//! PostgreSQL: the pool, migrations, and every query the service makes.

use crate::config::Config;
use crate::order::{Job, Money, Status};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

mod embedded {
    refinery::embed_migrations!("sql");
}

/// Why a database call failed. All of these are transient from the caller's point of view
/// (PostgreSQL unreachable, a timeout, a pool that could not hand out a connection).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("migrations: {0}")]
    Migration(#[from] refinery::Error),
    #[error("postgres configuration: {0}")]
    Config(String),
}

/// tokio-postgres says only "db error" for a server error; the server's message is in the source.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

impl StoreError {
    /// Whether PostgreSQL is unreachable (as opposed to refusing one statement): workers stop
    /// claiming orders until it answers again.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Pool(_) => true,
            StoreError::Postgres(e) => e.as_db_error().is_none(),
            _ => false,
        }
    }
}

/// An order as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderView {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<String>,
    pub total: Money,
    pub status: Status,
    pub attempts: i32,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub processing_started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
}

impl OrderView {
    /// An accepted order that no worker has taken yet (it lives only in Redis).
    pub fn queued(job: Job) -> OrderView {
        OrderView {
            order_id: job.order_id,
            customer_id: job.customer_id,
            items: job.items,
            total: job.total,
            status: Status::Queued,
            attempts: 0,
            last_error: None,
            accepted_at: job.accepted_at,
            processing_started_at: None,
            completed_at: None,
            updated_at: None,
        }
    }

    fn from_row(row: &Row) -> OrderView {
        OrderView {
            order_id: row.get("order_id"),
            customer_id: row.get("customer_id"),
            items: row.get("items"),
            // The column's CHECK and numeric(12,2) keep it in range.
            total: Money::from_cents(row.get("total_cents")).unwrap_or_default(),
            status: Status::parse(row.get("status")).unwrap_or(Status::Queued),
            attempts: row.get("attempts"),
            last_error: row.get("last_error"),
            accepted_at: row.get("accepted_at"),
            processing_started_at: row.get("processing_started_at"),
            completed_at: row.get("completed_at"),
            updated_at: row.get("updated_at"),
        }
    }
}

const ORDER_COLUMNS: &str = "o.order_id, o.customer_id, (o.total * 100)::int8 AS total_cents, \
     o.status, o.attempts, o.last_error, o.accepted_at, o.processing_started_at, \
     o.completed_at, o.updated_at, \
     ARRAY(SELECT i.item FROM order_items i WHERE i.order_id = o.order_id ORDER BY i.position) AS items";

/// Percentiles of a duration over the recent completions, in milliseconds; `None` without any.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    pub avg: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// What `GET /stats` reads from PostgreSQL.
#[derive(Debug, Clone, Default)]
pub struct OrderStats {
    /// Orders per status, from the counters the triggers keep.
    pub counts: HashMap<String, i64>,
    pub processing_ms: Timing,
    pub end_to_end_ms: Timing,
}

/// How many recent completions the timings of `GET /stats` cover.
pub const STATS_WINDOW: i64 = 10_000;

/// Filters and page of `GET /orders`.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub customer_id: Option<String>,
    pub limit: i64,
    pub after: Option<Cursor>,
}

/// Where a page ends: the sort key of its last order. Opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub accepted_at: OffsetDateTime,
    pub order_id: Uuid,
}

impl Cursor {
    /// The text form handed to clients.
    pub fn encode(&self) -> String {
        let micros = self.accepted_at.unix_timestamp_nanos() / 1000;
        format!("{micros}_{}", self.order_id.simple())
    }

    /// Reads a cursor a client sent back; `None` when it was not made by [`Cursor::encode`].
    pub fn decode(text: &str) -> Option<Cursor> {
        let (micros, id) = text.split_once('_')?;
        let micros: i128 = micros.parse().ok()?;
        let accepted_at =
            OffsetDateTime::from_unix_timestamp_nanos(micros.checked_mul(1000)?).ok()?;
        let order_id = Uuid::try_parse(id).ok()?;
        Some(Cursor {
            accepted_at,
            order_id,
        })
    }
}

/// What happened to a cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    NotFound,
    /// The order is already final in this status.
    Final(Status),
}

/// The PostgreSQL side of the service.
///
/// Every statement is prepared once per connection and runs on its generic plan
/// (`plan_cache_mode=force_generic_plan`): planning was over half of PostgreSQL's time per order
/// at small batches (pgbench: 0.25-0.4 ms per statement). With `enable_seqscan=off` the generic
/// plans look orders up by their key however small the table was when they were made: a plan
/// made on a nearly empty `orders` otherwise hash-joins a scan of the whole table, and keeps
/// doing so at a million rows (seen with EXPLAIN EXECUTE). Every query of the service has an
/// index to go by. `list` is the one statement planned at each call (see there).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl Store {
    /// Builds the pool; connections are opened lazily, so this succeeds with PostgreSQL down.
    pub fn new(config: &Config) -> Result<Store, StoreError> {
        let mut pg: tokio_postgres::Config = config
            .database_url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Config(e.to_string()))?;
        // random_page_cost 1.1, the usual value for data in memory or on SSDs (the default, 4, is
        // for spinning disks); generic plans that never scan a whole table: see [`Store`].
        pg.options(format!(
            "-c statement_timeout={} -c random_page_cost=1.1 \
             -c plan_cache_mode=force_generic_plan -c enable_seqscan=off",
            config.db_statement_timeout_ms
        ));
        pg.connect_timeout(Duration::from_secs(3));
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.db_pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(Store { pool })
    }

    /// Applies the migrations in `sql/` that are not applied yet. An advisory lock keeps several
    /// processes starting at once from applying them twice.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        client
            .execute("SELECT pg_advisory_lock(7263514)", &[])
            .await?;
        let result = embedded::migrations::runner()
            .run_async(&mut **client)
            .await;
        client
            .execute("SELECT pg_advisory_unlock(7263514)", &[])
            .await?;
        result?;
        Ok(())
    }

    /// Connections of the pool: (in use, waiting for one).
    pub fn pool_usage(&self) -> (usize, usize) {
        let status = self.pool.status();
        (status.size.saturating_sub(status.available), status.waiting)
    }

    /// Counts by status (maintained counters, not a table count) and the timings of the last
    /// [`STATS_WINDOW`] completions (an index range): cheap at any table size.
    pub async fn stats(&self) -> Result<OrderStats, StoreError> {
        let client = self.pool.get().await?;
        let counts = client
            .prepare_cached("SELECT status, sum(n)::int8 FROM order_counts GROUP BY status")
            .await?;
        let timings = client
            .prepare_cached(
                "SELECT avg(p), percentile_cont(0.5) WITHIN GROUP (ORDER BY p),
                        percentile_cont(0.95) WITHIN GROUP (ORDER BY p),
                        percentile_cont(0.99) WITHIN GROUP (ORDER BY p),
                        avg(e)::float8, percentile_cont(0.5) WITHIN GROUP (ORDER BY e),
                        percentile_cont(0.95) WITHIN GROUP (ORDER BY e),
                        percentile_cont(0.99) WITHIN GROUP (ORDER BY e)
                 FROM (
                    SELECT extract(epoch FROM completed_at - processing_started_at)::float8 * 1000 AS p,
                           extract(epoch FROM completed_at - accepted_at)::float8 * 1000 AS e
                    FROM orders WHERE status = 'completed'
                    ORDER BY completed_at DESC LIMIT $1
                 ) recent",
            )
            .await?;
        let rows = client.query(&counts, &[]).await?;
        let t = client.query_one(&timings, &[&STATS_WINDOW]).await?;
        Ok(OrderStats {
            counts: rows
                .iter()
                .map(|r| (r.get(0), r.get::<_, Option<i64>>(1).unwrap_or(0)))
                .collect(),
            processing_ms: Timing {
                avg: t.get(0),
                p50: t.get(1),
                p95: t.get(2),
                p99: t.get(3),
            },
            end_to_end_ms: Timing {
                avg: t.get(4),
                p50: t.get(5),
                p95: t.get(6),
                p99: t.get(7),
            },
        })
    }

    /// Whether PostgreSQL answers and every embedded migration is applied.
    pub async fn ready(&self) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let latest = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| m.version() as i64)
            .max()
            .unwrap_or(0);
        let row = client
            .query_opt(
                "SELECT max(version)::int8 FROM refinery_schema_history",
                &[],
            )
            .await;
        Ok(matches!(row, Ok(Some(r)) if r.get::<_, Option<i64>>(0) == Some(latest)))
    }

    /// Stores delivered orders with status `processing` (with their items, in one statement and
    /// so one transaction), counting the delivery in `attempts`. Returns, for each order that may
    /// go on, the attempt number that fences this delivery's later updates; orders already final
    /// (a duplicate or stale delivery, or an order cancelled while queued) are left out.
    /// The order ids must be distinct.
    ///
    /// This commit does not wait for its WAL flush (`synchronous_commit` off for this one
    /// statement): until the order is acknowledged its truth is the worker's processing list in
    /// Redis, and the completion's commit, which does wait, flushes this one with it. A crash of
    /// PostgreSQL before then can only undo the `processing` row, which the redelivery writes
    /// again.
    pub async fn begin_processing(&self, jobs: &[&Job]) -> Result<HashMap<Uuid, i32>, StoreError> {
        let mut ids = Vec::with_capacity(jobs.len());
        let mut customers = Vec::with_capacity(jobs.len());
        let mut cents = Vec::with_capacity(jobs.len());
        let mut accepted = Vec::with_capacity(jobs.len());
        let (mut item_ids, mut positions, mut items) = (Vec::new(), Vec::new(), Vec::new());
        for job in jobs {
            ids.push(job.order_id);
            customers.push(job.customer_id.as_str());
            cents.push(job.total.cents());
            accepted.push(job.accepted_at);
            for (i, item) in job.items.iter().enumerate() {
                item_ids.push(job.order_id);
                positions.push(i as i32 + 1);
                items.push(item.as_str());
            }
        }
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "WITH o AS (
                    INSERT INTO orders (order_id, customer_id, total, status, attempts,
                                        accepted_at, processing_started_at)
                    SELECT t.order_id, t.customer_id, t.cents / 100.0, 'processing', 1,
                           t.accepted_at, now()
                    FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::timestamptz[])
                         AS t(order_id, customer_id, cents, accepted_at)
                    ON CONFLICT (order_id) DO UPDATE
                        SET status = 'processing', attempts = orders.attempts + 1,
                            processing_started_at = now(), updated_at = now()
                        WHERE orders.status IN ('queued', 'processing')
                    RETURNING order_id, attempts, (xmax = 0) AS inserted
                 ), i AS (
                    INSERT INTO order_items (order_id, position, item)
                    SELECT t.order_id, t.position, t.item
                    FROM unnest($5::uuid[], $6::int4[], $7::text[]) AS t(order_id, position, item)
                    WHERE t.order_id IN (SELECT order_id FROM o WHERE inserted)
                    ON CONFLICT DO NOTHING
                 ), lazy AS (
                    SELECT set_config('synchronous_commit', 'off', true)
                 )
                 SELECT order_id, attempts FROM o, lazy",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &ids, &customers, &cents, &accepted, &item_ids, &positions, &items,
                ],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Marks orders completed if each is still `processing` under its attempt, and makes their
    /// notifications due, in one statement. (`IS NOT DISTINCT FROM`, which is `=` for a status
    /// that is never null, is no index condition: the orders are found by their key, never
    /// through the status index, whose `processing` entries are mostly orders completed since the
    /// last vacuum.) Returns the completion time of those it completed, by order and attempt (two
    /// deliveries of one order can be in one batch); the others were cancelled or redelivered
    /// meanwhile.
    pub async fn complete(
        &self,
        ids: &[Uuid],
        attempts: &[i32],
    ) -> Result<HashMap<(Uuid, i32), OffsetDateTime>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "WITH c AS (
                    UPDATE orders o
                    SET status = 'completed', completed_at = now(), updated_at = now()
                    FROM unnest($1::uuid[], $2::int4[]) AS t(order_id, attempts)
                    WHERE o.order_id = t.order_id AND o.attempts = t.attempts
                      AND o.status IS NOT DISTINCT FROM 'processing'
                    RETURNING o.order_id, o.attempts, o.completed_at, o.customer_id
                 ), due AS (
                    INSERT INTO notifications_due (order_id, customer_id, due_at)
                    SELECT order_id, customer_id, completed_at FROM c
                    ON CONFLICT DO NOTHING
                 )
                 SELECT order_id, attempts, completed_at FROM c",
            )
            .await?;
        let rows = client.query(&stmt, &[&ids, &attempts]).await?;
        Ok(rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }

    /// Marks an order failed (it exhausted its attempts), creating its row if no worker stored
    /// it. Returns whether this call made it final.
    pub async fn fail(&self, job: &Job, error: &str) -> Result<bool, StoreError> {
        self.finalize(job, Status::Failed, Some(error)).await
    }

    /// Makes a `queued` or `processing` order final (failed or cancelled), creating its row with
    /// its items when no worker stored it yet. Returns whether this call made it final.
    async fn finalize(
        &self,
        job: &Job,
        status: Status,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "WITH o AS (
                    INSERT INTO orders (order_id, customer_id, total, status, attempts,
                                        accepted_at, last_error)
                    VALUES ($1, $2, $3::int8 / 100.0, $6, 0, $4, $7)
                    ON CONFLICT (order_id) DO UPDATE
                        SET status = $6, last_error = coalesce($7, orders.last_error),
                            updated_at = now()
                        WHERE orders.status IN ('queued', 'processing')
                    RETURNING (xmax = 0) AS inserted
                 ), i AS (
                    INSERT INTO order_items (order_id, position, item)
                    SELECT $1, t.position, t.item
                    FROM unnest($5::text[]) WITH ORDINALITY AS t(item, position)
                    WHERE EXISTS (SELECT 1 FROM o WHERE o.inserted)
                    ON CONFLICT DO NOTHING
                 )
                 SELECT 1 FROM o",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &job.order_id,
                    &job.customer_id,
                    &job.total.cents(),
                    &job.accepted_at,
                    &job.items,
                    &status.as_str(),
                    &error,
                ],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Makes a failed order `queued` again (a dead letter replayed by an admin). `Ok(false)` when
    /// the order is in another final status; an order with no row yet is fine.
    pub async fn requeue_failed(&self, order_id: Uuid) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let changed = client
            .execute(
                "UPDATE orders SET status = 'queued', updated_at = now()
                 WHERE order_id = $1 AND status IN ('failed', 'queued')",
                &[&order_id],
            )
            .await?;
        if changed > 0 {
            return Ok(true);
        }
        let row = client
            .query_opt("SELECT 1 FROM orders WHERE order_id = $1", &[&order_id])
            .await?;
        Ok(row.is_none())
    }

    /// Cancels an order that is `queued` or `processing`. `queued` is the order as it waits in
    /// Redis when no worker has stored it yet; its row is then created as `cancelled`, so the
    /// worker that takes it later finds it final and leaves it.
    pub async fn cancel(
        &self,
        order_id: Uuid,
        queued: Option<&Job>,
    ) -> Result<CancelOutcome, StoreError> {
        let changed = match queued {
            Some(job) => self.finalize(job, Status::Cancelled, None).await?,
            None => {
                let client = self.pool.get().await?;
                let n = client
                    .execute(
                        "UPDATE orders SET status = 'cancelled', updated_at = now()
                         WHERE order_id = $1 AND status IN ('queued', 'processing')",
                        &[&order_id],
                    )
                    .await?;
                n > 0
            }
        };
        if changed {
            return Ok(CancelOutcome::Cancelled);
        }
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT status FROM orders WHERE order_id = $1",
                &[&order_id],
            )
            .await?;
        Ok(match row {
            None => CancelOutcome::NotFound,
            Some(r) => CancelOutcome::Final(Status::parse(r.get(0)).unwrap_or(Status::Failed)),
        })
    }

    /// One order with its items.
    pub async fn get(&self, order_id: Uuid) -> Result<Option<OrderView>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ORDER_COLUMNS} FROM orders o WHERE o.order_id = $1"
            ))
            .await?;
        let row = client.query_opt(&stmt, &[&order_id]).await?;
        Ok(row.as_ref().map(OrderView::from_row))
    }

    /// A page of orders, newest first, and the cursor of the next page if there is one.
    pub async fn list(
        &self,
        query: &ListQuery,
    ) -> Result<(Vec<OrderView>, Option<Cursor>), StoreError> {
        // Only the predicates in use go into the SQL, so each variant is planned on its index.
        let mut filter = String::new();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        let status = query.status.map(Status::as_str);
        if let Some(status) = &status {
            params.push(status);
            filter += &format!(" AND o.status = ${}", params.len());
        }
        if let Some(customer) = &query.customer_id {
            params.push(customer);
            filter += &format!(" AND o.customer_id = ${}", params.len());
        }
        if let Some(after) = &query.after {
            params.push(&after.accepted_at);
            params.push(&after.order_id);
            filter += &format!(
                " AND (o.accepted_at, o.order_id) < (${}, ${})",
                params.len() - 1,
                params.len()
            );
        }
        // The limit is written into the statement (it is a validated number, at most 501): the
        // generic plan of `LIMIT $n` expects a tenth of the table and sorts all of it (100 ms
        // at 230,000 orders), where a known limit walks the index. Planned at each call, so
        // not cached: a statement per limit would pile up on every connection.
        let fetch = query.limit + 1;
        let newest = "ORDER BY o.accepted_at DESC, o.order_id DESC";
        let sql = if status.is_none() && query.customer_id.is_none() {
            // No filter: the newest of each status (orders_by_status), merged. An index on
            // (accepted_at, order_id) alone would serve this one query and cost every order two
            // more index writes (migration V6).
            let each: Vec<String> = Status::ALL
                .iter()
                .map(|s| {
                    format!(
                        "(SELECT o.* FROM orders o WHERE o.status = '{}'{filter} {newest} LIMIT {fetch})",
                        s.as_str()
                    )
                })
                .collect();
            format!(
                "SELECT {ORDER_COLUMNS} FROM ({}) o {newest} LIMIT {fetch}",
                each.join(" UNION ALL ")
            )
        } else {
            format!(
                "SELECT {ORDER_COLUMNS} FROM orders o WHERE true{filter} {newest} LIMIT {fetch}"
            )
        };
        let client = self.pool.get().await?;
        let rows = client.query(&sql, &params).await?;
        let mut orders: Vec<OrderView> = rows.iter().map(OrderView::from_row).collect();
        let next = if orders.len() as i64 > query.limit {
            orders.truncate(query.limit as usize);
            orders.last().map(|o| Cursor {
                accepted_at: o.accepted_at,
                order_id: o.order_id,
            })
        } else {
            None
        };
        Ok((orders, next))
    }

    /// Deletes an order, its items and its notification; whether there was one.
    pub async fn delete(&self, order_id: Uuid) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "WITH gone AS (DELETE FROM orders WHERE order_id = $1 RETURNING order_id),
                      items AS (DELETE FROM order_items WHERE order_id = $1),
                      sent AS (DELETE FROM notifications WHERE order_id = $1)
                 SELECT count(*) FROM gone",
                &[&order_id],
            )
            .await?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    /// Records the notifications of completed orders and, inside the same transaction, runs
    /// `send` for each order whose notification was due; returns how many it sent. A crash after
    /// `send` and before the commit sends again later (at-least-once sending); a repeated event
    /// never does, since its due row is gone. Due rows of orders no longer stored as completed
    /// (deleted meanwhile) are dropped without sending.
    pub async fn notify_once(
        &self,
        ids: &[Uuid],
        mut send: impl FnMut(Uuid, &str),
    ) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "WITH due AS (
                    DELETE FROM notifications_due WHERE order_id = ANY($1::uuid[])
                    RETURNING order_id, customer_id
                 )
                 INSERT INTO notifications (order_id, customer_id)
                 SELECT due.order_id, due.customer_id
                 FROM due JOIN orders o ON o.order_id = due.order_id
                 WHERE o.status IS NOT DISTINCT FROM 'completed'
                 ON CONFLICT (order_id) DO NOTHING
                 RETURNING order_id, customer_id",
            )
            .await?;
        let tx = client.transaction().await?;
        let rows = tx.query(&stmt, &[&ids]).await?;
        for row in &rows {
            send(row.get(0), row.get(1));
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Orders whose notification has been due for more than `grace`: their event was missed
    /// (notifier down, Redis restarted, subscription dropped). Only due rows are read, oldest
    /// order first (ids are UUIDv7, in order of acceptance).
    pub async fn missed_notifications(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT order_id FROM notifications_due
                 WHERE due_at < now() - make_interval(secs => $1::int8 / 1000.0)
                 ORDER BY order_id LIMIT $2",
            )
            .await?;
        let grace_ms = grace.as_millis() as i64;
        let rows = client.query(&stmt, &[&grace_ms, &limit]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            accepted_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000)
                .unwrap(),
            order_id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in [
            "",
            "x",
            "12_",
            "_abc",
            "1_not-a-uuid",
            "99999999999999999999999999_0",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
