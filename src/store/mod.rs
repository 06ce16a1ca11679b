//! PostgreSQL: the pool, migrations and readiness here; the queries by what they serve:
//! [`lifecycle`] (an order's status changes, as workers and the API make them), [`lookup`] (one
//! order, and pages of the list), [`notifications`] (once per completed order), [`repair`]
//! (orders left `processing` too long) and [`stats`].

mod lifecycle;
mod lookup;
mod notifications;
mod repair;
mod stats;
mod tls;

pub use lifecycle::{CancelOutcome, Completion};
pub use lookup::{Cursor, ListQuery, OrderView, StoredHistory};
pub use stats::{OrderStats, Timing, STATS_WINDOW};
pub use tls::UrlError;

use crate::config::Config;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;

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
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(
        "the database is read-only ({0}): DATABASE_URL must reach the primary (with several \
         hosts, add target_session_attrs=read-write)"
    )]
    ReadOnly(&'static str),
    #[error("postgres pool")]
    PoolBuild(#[source] deadpool_postgres::BuildError),
}

/// tokio-postgres says only "db error" for a server error; the server's message is in the source.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

impl StoreError {
    /// Whether PostgreSQL is unreachable or read-only (as opposed to refusing one statement):
    /// workers stop claiming orders until [`Store::ready`] says it takes writes again. A
    /// read-only server is a standby, or a primary being demoted in a failover: every order
    /// claimed meanwhile would only use up an attempt.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Pool(_) | StoreError::ReadOnly(_) => true,
            StoreError::Postgres(e) => {
                e.as_db_error().is_none()
                    || e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
            }
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
        let tls::Connection {
            config: mut pg,
            tls,
        } = tls::connection(&config.database_url)?;
        pg.options(session_options(config.db_statement_timeout_ms));
        pg.connect_timeout(Duration::from_secs(3));
        let manager = Manager::from_config(
            pg,
            tls,
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
            .map_err(StoreError::PoolBuild)?;
        Ok(Store { pool })
    }

    /// Applies the migrations in `sql/` that are not applied yet. An advisory lock keeps several
    /// processes starting at once from applying them twice.
    ///
    /// A read-only server (a standby, most likely, where the URL lists one host, or several
    /// without `target_session_attrs=read-write`) is refused by name rather than by the first
    /// `CREATE TABLE` that fails.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        if let Some(why) = read_only(&client).await? {
            return Err(StoreError::ReadOnly(why));
        }
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

    /// Whether the service can use PostgreSQL, and if not why: unreachable, behind on
    /// migrations, or read-only (a standby, or `default_transaction_read_only`), where every
    /// write of a worker would fail. One round trip when the schema history exists.
    pub async fn ready(&self) -> Readiness {
        let client = match self.pool.get().await {
            Ok(client) => client,
            // Every connection busy is load, not an unreachable server.
            Err(deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) => {
                return Readiness::CheckFailed("no pooled connection came free in time".into())
            }
            Err(e) => return Readiness::Unreachable(crate::telemetry::cause_chain(&e)),
        };
        let latest = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| m.version() as i64)
            .max()
            .unwrap_or(0);
        let checked = client
            .query_one(
                "SELECT (SELECT max(version)::int8 FROM refinery_schema_history), \
                        pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
                &[],
            )
            .await;
        let (applied, read_only) = match checked {
            Ok(row) => (
                row.get::<_, Option<i64>>(0),
                read_only_cause(row.get(1), row.get(2)),
            ),
            // No schema history yet: nothing applied; the rest still matters.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                match read_only(&client).await {
                    Ok(cause) => (None, cause),
                    Err(e) => return Readiness::from_error(e),
                }
            }
            Err(e) => return Readiness::from_error(e),
        };
        if let Some(why) = read_only {
            Readiness::ReadOnly(why)
        } else if applied != Some(latest) {
            Readiness::MigrationsPending { applied, latest }
        } else {
            Readiness::Ready
        }
    }
}

/// Why a session cannot write: `pg_is_in_recovery()` and `transaction_read_only`, in that order.
fn read_only_cause(in_recovery: bool, read_only: bool) -> Option<&'static str> {
    if in_recovery {
        Some("in recovery")
    } else if read_only {
        Some("default_transaction_read_only is on")
    } else {
        None
    }
}

/// [`read_only_cause`] of this session.
async fn read_only(
    client: &tokio_postgres::Client,
) -> Result<Option<&'static str>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
            &[],
        )
        .await?;
    Ok(read_only_cause(row.get(0), row.get(1)))
}

/// What [`Store::ready`] found. Its text is the `postgres` field of `/readyz`: `ok`, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// No connection (refused, timed out, TLS or authentication failed), with the cause chain.
    Unreachable(String),
    MigrationsPending {
        applied: Option<i64>,
        latest: i64,
    },
    /// Connected, but writes would fail.
    ReadOnly(&'static str),
    /// Connected, and the check itself failed (a statement time-out, a missing privilege).
    CheckFailed(String),
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        *self == Readiness::Ready
    }

    fn from_error(e: tokio_postgres::Error) -> Readiness {
        let unreachable = e.as_db_error().is_none();
        let text = crate::telemetry::cause_chain(&StoreError::Postgres(e));
        if unreachable {
            Readiness::Unreachable(text)
        } else {
            Readiness::CheckFailed(text)
        }
    }
}

impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Readiness::Ready => f.write_str("ok"),
            Readiness::Unreachable(why) => write!(f, "not reachable: {why}"),
            Readiness::MigrationsPending {
                applied: None,
                latest,
            } => write!(f, "migrations not applied (none of {latest})"),
            Readiness::MigrationsPending {
                applied: Some(applied),
                latest,
            } => write!(
                f,
                "migrations not applied (at version {applied}, this build needs {latest})"
            ),
            Readiness::ReadOnly(why) => write!(f, "read-only ({why})"),
            Readiness::CheckFailed(why) => write!(f, "readiness check failed: {why}"),
        }
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
    fn readiness_says_why_in_the_words_of_readyz() {
        let said = |r: Readiness| (r.is_ready(), r.to_string());
        assert_eq!(said(Readiness::Ready), (true, "ok".into()));
        let standby = Readiness::ReadOnly(read_only_cause(true, true).unwrap());
        assert_eq!(said(standby), (false, "read-only (in recovery)".into()));
        let read_only = Readiness::ReadOnly(read_only_cause(false, true).unwrap());
        assert_eq!(
            said(read_only),
            (
                false,
                "read-only (default_transaction_read_only is on)".into()
            )
        );
        assert_eq!(read_only_cause(false, false), None);
        let behind = Readiness::MigrationsPending {
            applied: Some(4),
            latest: 6,
        };
        assert_eq!(
            said(behind),
            (
                false,
                "migrations not applied (at version 4, this build needs 6)".into()
            )
        );
    }

    #[test]
    fn sessions_time_out_and_never_jit() {
        let options = session_options(5000);
        assert!(options.contains("-c statement_timeout=5000 "), "{options}");
        assert!(options.contains("-c jit=off"), "{options}");
    }
}
