//! Notifications: each completed order is notified once.

use super::{Store, StoreError};
use std::time::Duration;
use uuid::Uuid;

impl Store {
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
