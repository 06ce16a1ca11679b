//! The orders left `processing` for too long: after a Redis failover, or a Redis that lost its
//! last second of writes, an order can be `processing` here with no trace left in Redis, and
//! nothing else would ever finish it.

use super::{Store, StoreError};
use crate::order::{Job, Money};
use std::time::Duration;

impl Store {
    /// Up to `limit` orders `processing` since before `older_than` ago, oldest accepted first,
    /// rebuilt as jobs from their rows (failures and errors start again from none: the row does
    /// not keep them). Served by `orders_by_status` (status, accepted_at, order_id); the items by
    /// the key of `order_items`.
    pub async fn stuck_processing(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<Job>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT o.order_id, o.customer_id, (o.total * 100)::int8, o.accepted_at,
                        ARRAY(SELECT i.item FROM order_items i
                              WHERE i.order_id = o.order_id ORDER BY i.position)
                 FROM orders o
                 WHERE o.status = 'processing'
                   AND o.processing_started_at < now() - $1::int8 * interval '1 millisecond'
                 ORDER BY o.accepted_at, o.order_id
                 LIMIT $2",
            )
            .await?;
        let ms = older_than.as_millis() as i64;
        let rows = client.query(&stmt, &[&ms, &limit]).await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(Job {
                    order_id: r.get(0),
                    customer_id: r.get(1),
                    total: Money::from_cents(r.get(2))?,
                    accepted_at: r.get(3),
                    items: r.get(4),
                    failures: 0,
                    errors: Vec::new(),
                    request_id: None,
                    traceparent: None,
                    tracestate: None,
                })
            })
            .collect())
    }
}
