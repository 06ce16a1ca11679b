//! PostgreSQL for tests: connections, scalar queries, and cutting a database off.

use tokio_postgres::types::{FromSqlOwned, ToSql};
use tokio_postgres::Client;

/// PostgreSQL server the tests make their databases on.
pub fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be running (just services)");
    tokio::spawn(conn);
    client
}

/// The maintenance database of the test server.
pub async fn admin_client() -> Client {
    connect(&format!("{}/postgres", postgres_base())).await
}

/// The one value of a one-row, one-column query, such as `SELECT count(*) …`.
pub async fn scalar<T: FromSqlOwned>(db: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> T {
    try_scalar(db, sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// [`scalar`], for a server that may be unreachable.
pub async fn try_scalar<T: FromSqlOwned>(
    db: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<T, tokio_postgres::Error> {
    db.query_one(sql, params).await?.try_get(0)
}

/// Refuses new connections to `db_name` and closes the open ones: for whoever uses it, it is as if
/// PostgreSQL were down, while nothing else on the server is touched.
pub async fn cut_off(admin: &Client, db_name: &str) {
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db_name} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = '{db_name}' AND pid <> pg_backend_pid();"
        ))
        .await
        .expect("cut the database off");
}

/// Lets connections to `db_name` in again.
pub async fn let_in(admin: &Client, db_name: &str) {
    admin
        .batch_execute(&format!("ALTER DATABASE {db_name} ALLOW_CONNECTIONS true"))
        .await
        .expect("let connections in again");
}
