//! The leader lease: one active reconciler per database, with a fencing token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::StoreError;

/// Proof of leadership: every reconciler write checks it with [`check`] in its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease's name.
    pub lease: String,
    /// This replica's id.
    pub owner: String,
    /// Fencing token: bumped whenever the lease changes hands.
    pub token: i64,
}

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Holder {
    /// Replica id.
    pub owner: String,
    /// Fencing token.
    pub token: i64,
    /// When the lease runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

fn interval(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

/// Takes or renews the lease for `ttl`. Returns the fence when this replica holds it, None
/// when another replica holds an unexpired lease. The token changes only on a change of owner.
pub async fn acquire(
    conn: &mut PgConnection,
    lease: &str,
    owner: &str,
    ttl: Duration,
) -> Result<Option<Fence>, StoreError> {
    let row: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO leases (name, owner, token, expires_at)
         VALUES ($1, $2, 1, now() + make_interval(secs => $3))
         ON CONFLICT (name) DO UPDATE SET
             owner = EXCLUDED.owner,
             token = CASE WHEN leases.owner = EXCLUDED.owner THEN leases.token ELSE leases.token + 1 END,
             expires_at = EXCLUDED.expires_at
         WHERE leases.owner = EXCLUDED.owner OR leases.expires_at < now()
         RETURNING token",
    )
    .bind(lease)
    .bind(owner)
    .bind(interval(ttl))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(token,)| Fence {
        lease: lease.to_owned(),
        owner: owner.to_owned(),
        token,
    }))
}

/// Renews a held lease only if the fence is still current (no takeover happened in between).
pub async fn renew(
    conn: &mut PgConnection,
    fence: &Fence,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE leases SET expires_at = now() + make_interval(secs => $4)
         WHERE name = $1 AND owner = $2 AND token = $3 AND expires_at > now()",
    )
    .bind(&fence.lease)
    .bind(&fence.owner)
    .bind(fence.token)
    .bind(interval(ttl))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease up at once (graceful shutdown) so a standby takes over without waiting.
pub async fn release(conn: &mut PgConnection, fence: &Fence) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE leases SET expires_at = now() - interval '1 second'
         WHERE name = $1 AND owner = $2 AND token = $3",
    )
    .bind(&fence.lease)
    .bind(&fence.owner)
    .bind(fence.token)
    .execute(conn)
    .await?;
    Ok(())
}

/// Current holder of a lease, if any.
pub async fn holder(conn: &mut PgConnection, lease: &str) -> Result<Option<Holder>, StoreError> {
    Ok(
        sqlx::query_as("SELECT owner, token, expires_at FROM leases WHERE name = $1")
            .bind(lease)
            .fetch_optional(conn)
            .await?,
    )
}

/// Checks, inside the caller's transaction, that the fence is still current, and locks the
/// lease row (FOR SHARE) so no takeover can commit before this transaction does.
pub async fn check(conn: &mut PgConnection, fence: &Fence) -> Result<(), StoreError> {
    let ok: Option<(i64,)> = sqlx::query_as(
        "SELECT token FROM leases WHERE name = $1 AND owner = $2 AND token = $3
             AND expires_at > now() FOR SHARE",
    )
    .bind(&fence.lease)
    .bind(&fence.owner)
    .bind(fence.token)
    .fetch_optional(conn)
    .await?;
    ok.map(|_| ())
        .ok_or(StoreError::Fenced { token: fence.token })
}
