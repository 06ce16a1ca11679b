//! An order's status changes: stored as `processing`, completed, failed, cancelled, failed
//! made `queued` again, deleted. Each change is one conditional statement, so a stale or
//! duplicate delivery changes nothing; cancel and requeue then read the status to say why not.

use super::{Store, StoreError};
use crate::order::{Job, Status};
use std::collections::HashMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// What happened to a cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    NotFound,
    /// The order is already final in this status.
    Final(Status),
}

/// What [`Store::complete`] did with one delivery it did not leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Completed at this time.
    Completed(OffsetDateTime),
    /// A later delivery of the order is processing it.
    TakenOver,
}

/// The errors of a job's failed tries as stored (JSON), `None` when it has none.
fn errors_json(job: &Job) -> Option<String> {
    (!job.errors.is_empty()).then(|| serde_json::to_string(&job.errors).unwrap_or_default())
}

impl Store {
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
        let mut request_ids = Vec::with_capacity(jobs.len());
        let mut errors = Vec::with_capacity(jobs.len());
        let (mut item_ids, mut positions, mut items) = (Vec::new(), Vec::new(), Vec::new());
        for job in jobs {
            ids.push(job.order_id);
            customers.push(job.customer_id.as_str());
            cents.push(job.total.cents());
            accepted.push(job.accepted_at);
            request_ids.push(job.request_id.as_deref());
            errors.push(errors_json(job));
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
                                        accepted_at, processing_started_at, request_id, errors)
                    SELECT t.order_id, t.customer_id, t.cents / 100.0, 'processing', 1,
                           t.accepted_at, now(), t.request_id, t.errors::jsonb
                    FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::timestamptz[],
                                $8::text[], $9::text[])
                         AS t(order_id, customer_id, cents, accepted_at, request_id, errors)
                    ON CONFLICT (order_id) DO UPDATE
                        SET status = 'processing', attempts = orders.attempts + 1,
                            processing_started_at = now(), updated_at = now(),
                            errors = coalesce(excluded.errors, orders.errors)
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
                    &ids,
                    &customers,
                    &cents,
                    &accepted,
                    &item_ids,
                    &positions,
                    &items,
                    &request_ids,
                    &errors,
                ],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Marks orders completed if each is still `processing` under its attempt, and makes their
    /// notifications due, in one statement. (`IS NOT DISTINCT FROM`, which is `=` for a status
    /// that is never null, is no index condition: the orders are found by their key, never
    /// through the status index, whose `processing` entries are mostly orders completed since the
    /// last vacuum.) Returns, by order and attempt (two deliveries of one order can be in one
    /// batch), the completion time of those it completed, and which were taken over by a later
    /// delivery still `processing` (from the statement's snapshot, taken before its update); the
    /// others are final (cancelled, or completed by another delivery).
    pub async fn complete(
        &self,
        ids: &[Uuid],
        attempts: &[i32],
    ) -> Result<HashMap<(Uuid, i32), Completion>, StoreError> {
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
                 SELECT order_id, attempts, completed_at FROM c
                 UNION ALL
                 SELECT o.order_id, t.attempts, NULL FROM orders o
                 JOIN unnest($1::uuid[], $2::int4[]) AS t(order_id, attempts)
                   ON o.order_id = t.order_id
                 WHERE o.status IS NOT DISTINCT FROM 'processing' AND o.attempts > t.attempts",
            )
            .await?;
        let rows = client.query(&stmt, &[&ids, &attempts]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let outcome = match r.get::<_, Option<OffsetDateTime>>(2) {
                    Some(at) => Completion::Completed(at),
                    None => Completion::TakenOver,
                };
                ((r.get(0), r.get(1)), outcome)
            })
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
                                        accepted_at, last_error, request_id, errors)
                    VALUES ($1, $2, $3::int8 / 100.0, $6, 0, $4, $7, $8, $9::text::jsonb)
                    ON CONFLICT (order_id) DO UPDATE
                        SET status = $6, last_error = coalesce($7, orders.last_error),
                            errors = coalesce($9::text::jsonb, orders.errors), updated_at = now()
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
                    &job.request_id,
                    &errors_json(job),
                ],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Makes failed orders `queued` again (dead letters replayed by an admin), in one statement.
    /// Returns those that may go back on the queue: made `queued` (or already so), or with no
    /// row yet; an order in another final status is left out.
    pub async fn requeue_failed(&self, order_ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "WITH changed AS (
                    UPDATE orders SET status = 'queued', updated_at = now()
                    WHERE order_id = ANY($1) AND status IN ('failed', 'queued')
                    RETURNING order_id
                 )
                 SELECT order_id FROM changed
                 UNION ALL
                 SELECT t.id FROM unnest($1::uuid[]) AS t(id)
                 WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.order_id = t.id)",
            )
            .await?;
        let rows = client.query(&stmt, &[&order_ids]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
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
                let from = [Status::Queued, Status::Processing];
                self.change_status(order_id, Status::Cancelled, &from)
                    .await?
            }
        };
        if changed {
            return Ok(CancelOutcome::Cancelled);
        }
        Ok(match self.status_of(order_id).await? {
            None => CancelOutcome::NotFound,
            Some(status) => CancelOutcome::Final(status),
        })
    }

    /// Sets status `to` on an order whose status is one of `from`; whether it did.
    async fn change_status(
        &self,
        order_id: Uuid,
        to: Status,
        from: &[Status],
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let changed = client
            .execute(
                "UPDATE orders SET status = $2, updated_at = now()
                 WHERE order_id = $1 AND status = ANY($3)",
                &[&order_id, &to.as_str(), &from],
            )
            .await?;
        Ok(changed > 0)
    }

    /// The stored status of an order; `None` when it has no row.
    async fn status_of(&self, order_id: Uuid) -> Result<Option<Status>, StoreError> {
        Ok(self.statuses_of(&[order_id]).await?.remove(&order_id))
    }

    /// The stored status of each of these orders that has a row, in one query.
    pub async fn statuses_of(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Status>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT order_id, status FROM orders WHERE order_id = ANY($1)",
                &[&ids],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), Status::parse(r.get(1)).unwrap_or(Status::Failed)))
            .collect())
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
}
