//! What `GET /stats` reads from PostgreSQL: counts by status and recent timings.

use super::{Store, StoreError};
use serde::Serialize;
use std::collections::HashMap;

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

impl Store {
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
                    SELECT date_part('epoch', completed_at - processing_started_at) * 1000 AS p,
                           date_part('epoch', completed_at - accepted_at) * 1000 AS e
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
}
