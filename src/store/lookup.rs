//! Reading orders: one by id, and pages of the list, newest first, by keyset.

use super::{Store, StoreError};
use crate::order::{Job, Money, Status};
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

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

/// An order and what [`Store::history`] reads besides.
#[derive(Debug, Clone)]
pub struct StoredHistory {
    pub order: OrderView,
    pub request_id: Option<String>,
    /// The error of each failed try, oldest first.
    pub errors: Vec<String>,
    pub notified_at: Option<OffsetDateTime>,
}

/// About the most bytes of orders one page of `GET /orders` holds: a page is cut short of its
/// limit, with a cursor to the rest, rather than grow past it (500 ordinary orders take about
/// 150 KB).
pub const PAGE_BYTES: usize = 256 * 1024;

const ORDER_COLUMNS: &str = "o.order_id, o.customer_id, (o.total * 100)::int8 AS total_cents, \
     o.status, o.attempts, o.last_error, o.accepted_at, o.processing_started_at, \
     o.completed_at, o.updated_at, \
     ARRAY(SELECT i.item FROM order_items i WHERE i.order_id = o.order_id ORDER BY i.position) AS items";

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
    /// Orders are accepted after 1970, so an earlier time is not one (and PostgreSQL could not
    /// even compare with the earliest ones `time` can hold).
    pub fn decode(text: &str) -> Option<Cursor> {
        let (micros, id) = text.split_once('_')?;
        let micros: i128 = micros.parse().ok().filter(|m| *m >= 0)?;
        let accepted_at =
            OffsetDateTime::from_unix_timestamp_nanos(micros.checked_mul(1000)?).ok()?;
        let order_id = Uuid::try_parse(id).ok()?;
        Some(Cursor {
            accepted_at,
            order_id,
        })
    }
}

impl Store {
    /// Which of these orders are final (completed, failed or cancelled), with the status and,
    /// for a completed one, when: a redelivery that finds its order final sends its event again.
    pub async fn final_statuses(
        &self,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, Status, Option<OffsetDateTime>)>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT order_id, status, completed_at FROM orders
                 WHERE order_id = ANY($1::uuid[])
                   AND status IN ('completed', 'failed', 'cancelled')",
            )
            .await?;
        let rows = client.query(&stmt, &[&ids]).await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let status = Status::parse(r.get(1))?;
                Some((r.get(0), status, r.get(2)))
            })
            .collect())
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

    /// One order with what its detail page shows besides: the request that placed it, the
    /// error of each failed try, when its notification was sent.
    pub async fn history(&self, order_id: Uuid) -> Result<Option<StoredHistory>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ORDER_COLUMNS}, o.request_id, o.errors::text AS errors,
                        (SELECT n.sent_at FROM notifications n WHERE n.order_id = o.order_id)
                            AS notified_at
                 FROM orders o WHERE o.order_id = $1"
            ))
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&order_id]).await? else {
            return Ok(None);
        };
        let errors: Option<String> = row.get("errors");
        Ok(Some(StoredHistory {
            order: OrderView::from_row(&row),
            request_id: row.get("request_id"),
            errors: errors
                .and_then(|e| serde_json::from_str(&e).ok())
                .unwrap_or_default(),
            notified_at: row.get("notified_at"),
        }))
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
        // generic plan of `LIMIT $n` expects a tenth of the table and sorts all of it, where a
        // known limit walks the index. Planned at each call, so
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
        // At most `limit` orders, and no more than PAGE_BYTES of them (past the first): a page
        // of 500 orders of 100 long items each would be a 25 MB response, held until the client
        // has read it.
        let mut bytes = 0;
        let fits = orders.iter().position(|o| {
            bytes += 256 + o.customer_id.len() + o.items.iter().map(|i| i.len() + 8).sum::<usize>();
            bytes > PAGE_BYTES
        });
        let keep = (query.limit as usize).min(fits.map_or(usize::MAX, |i| i.max(1)));
        let next = if orders.len() > keep {
            orders.truncate(keep);
            orders.last().map(|o| Cursor {
                accepted_at: o.accepted_at,
                order_id: o.order_id,
            })
        } else {
            None
        };
        Ok((orders, next))
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
            &format!("-377705116800000000_{}", Uuid::now_v7().simple()),
            &format!("-1_{}", Uuid::now_v7().simple()),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
