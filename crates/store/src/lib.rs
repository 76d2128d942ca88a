//! deskpool's PostgreSQL store: pools, desktops and their claims, events, API tokens, the leader lease and the
//! installation's identity.
//!
//! Every function takes `&mut PgConnection` so the caller owns the transaction. No function
//! here talks to vCenter, so no transaction is ever held open across a vCenter call.

pub mod claims;
pub mod desktops;
mod error;
pub mod events;
pub mod installation;
pub mod lease;
pub mod pools;
pub mod tokens;

pub use error::StoreError;

/// The schema migrations in `migrations/`, applied by `deskpool migrate` and on `serve`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The `LISTEN` channel that carries the name of a pool whose spec or status changed.
pub const POOL_CHANNEL: &str = "deskpool_pools";

/// Wakes every reconciler listening for changes to `pool` (delivered at commit).
pub async fn notify_pool(conn: &mut sqlx::PgConnection, pool: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(POOL_CHANNEL)
        .bind(pool)
        .execute(conn)
        .await?;
    Ok(())
}

/// The database's clock now (the clock every `updated_at` uses).
pub async fn db_now(
    conn: &mut sqlx::PgConnection,
) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
    let (now,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT now()").fetch_one(conn).await?;
    Ok(now)
}

/// Converts a count or size stored as `integer` to `u32` (constraints keep it non-negative).
pub(crate) fn to_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// Converts a size to the `integer` column type, saturating.
pub(crate) fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}
