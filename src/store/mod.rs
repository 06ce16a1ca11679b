//! PostgreSQL: the pool, migrations and readiness here; the queries by what they serve:
//! [`lifecycle`] (an order's status changes, as workers and the API make them), [`lookup`] (one
//! order, and pages of the list), [`notifications`] (once per completed order), [`repair`]
//! (orders left `processing` too long) and [`stats`].

mod lifecycle;
mod lookup;
mod notifications;
mod repair;
mod stats;

pub use lifecycle::CancelOutcome;
pub use lookup::{Cursor, ListQuery, OrderView};
pub use stats::{OrderStats, Timing, STATS_WINDOW};

use crate::config::Config;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use tokio_postgres::NoTls;

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

/// The PostgreSQL side of the service.
///
/// Every statement is prepared once per connection and runs on its generic plan
/// (`plan_cache_mode=force_generic_plan`): at small batches, planning would cost more than the
/// statement. With `enable_seqscan=off` the generic plans look orders up by their key however
/// small the table was when they were made: a plan made on a nearly empty `orders` otherwise
/// scans the whole table, and keeps doing so at a million rows. Every query of the service has
/// an index to go by. `list` is the one statement planned at each call (see there).
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
        pg.options(session_options(config.db_statement_timeout_ms));
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
}

/// The settings of every session of the pool. random_page_cost 1.1 is the usual value for data
/// in memory or on SSDs (the default, 4, is for spinning disks); generic plans that never scan a
/// whole table: see [`Store`]. No JIT: compiling a plan costs far more than running any query the
/// service makes, and without statistics PostgreSQL may think a query big enough to compile.
fn session_options(statement_timeout_ms: u64) -> String {
    format!(
        "-c statement_timeout={statement_timeout_ms} -c random_page_cost=1.1 \
         -c plan_cache_mode=force_generic_plan -c enable_seqscan=off -c jit=off"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_time_out_and_never_jit() {
        let options = session_options(5000);
        assert!(options.contains("-c statement_timeout=5000 "), "{options}");
        assert!(options.contains("-c jit=off"), "{options}");
    }
}
