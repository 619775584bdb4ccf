//! SQL, one file per table group. Queries are written by hand as `sqlx::query!` macros, checked
//! at compile time against the committed `.sqlx/` data (regenerate it with `ops/sqlx-prepare`);
//! the few statements whose shape is only known at run time say why next to them. Constraint
//! names from the migrations are exposed so callers can map violations to API errors.

pub mod assistants;
pub mod events;
pub mod keys;
pub mod knowledge;
pub mod maintenance;
pub mod messages;
pub mod runs;
pub mod threads;
pub mod token_revocations;
pub mod usage;
pub mod webhooks;

use std::{str::FromStr, time::Duration};

use sqlx::{
    ConnectOptions, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::{Config, ExposeSecret};

/// Opens the pool for `DATABASE_URL`.
pub async fn connect(config: &Config, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(config.database.url.expose_secret())?
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1))
        .log_statements(tracing::log::LevelFilter::Trace);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// Creates the database named in `DATABASE_URL` when it does not exist yet.
pub async fn create_database_if_missing(config: &Config) -> Result<(), sqlx::Error> {
    use sqlx::migrate::MigrateDatabase;
    let url = config.database.url.expose_secret();
    if !sqlx::Postgres::database_exists(url).await? {
        sqlx::Postgres::create_database(url).await?;
    }
    Ok(())
}

/// Whether Postgres answers (readiness probes).
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!("SELECT 1 AS ping").fetch_one(pool).await?;
    Ok(())
}

/// The name of the constraint a database error violated, if any.
pub fn violated_constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

/// Whether the error means Postgres is unreachable or overloaded (→ 503, retry later).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        // Connection exceptions (class 08) and a server shutting down, restarting or terminating
        // the connection (57P01-57P03).
        sqlx::Error::Database(e) => {
            e.code().is_some_and(|c| c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

/// A page of rows plus the cursor of the next page.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The rows.
    pub rows: Vec<T>,
    /// Whether more rows follow the last one.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Splits `limit + 1` fetched rows into a page.
    pub fn from_overfetch(mut rows: Vec<T>, limit: i64) -> Self {
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit.max(0) as usize);
        Self { rows, has_more }
    }
}
