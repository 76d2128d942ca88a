//! Claims: a ready desktop handed to a user for a lease, and its end (release or expiry).
//!
//! A claim is not a desktop state: a claimed desktop is `ready` with `claimed_by` set, and a
//! desktop is claimable when it is `ready` and `claimed_by` is NULL (the `desktops_claimable`
//! index). Claiming takes the first claimable row with `FOR UPDATE SKIP LOCKED`, so concurrent
//! claims never wait for each other and never get the same desktop.

use deskpool_domain::OnRelease;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::desktops::{Desktop, DesktopRow};
use crate::StoreError;

/// What a claim call got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The desktop now held by the user.
    pub desktop: Desktop,
    /// True when the user already held it and only the lease was extended.
    pub renewed: bool,
    /// True when this lease now ends before every other claim's in the pool (as of the
    /// statement's snapshot): the reconciler's lease timer for the pool must be re-armed.
    pub earliest_lease: bool,
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    #[sqlx(flatten)]
    row: DesktopRow,
    renewed: bool,
    earliest_lease: bool,
}

/// Hands one ready, unclaimed desktop of pool `pool_id` to `user` for `lease_secs` seconds,
/// in one statement. If `user` already holds a desktop of this pool, that desktop comes back
/// with its lease extended instead. None when no desktop is claimable.
///
/// The caller checks that the pool is not being deleted (holding its row with
/// [`crate::pools::lock_shared`] so a pool deletion waits for the claim).
pub async fn claim(
    conn: &mut PgConnection,
    pool_id: Uuid,
    user: &str,
    lease_secs: u32,
) -> Result<Option<Claim>, StoreError> {
    let row: Option<ClaimRow> = sqlx::query_as(
        "WITH held AS (
             UPDATE desktops
                SET lease_expires_at = now() + make_interval(secs => $3), updated_at = now()
              WHERE pool_id = $1 AND claimed_by = $2
             RETURNING *
         ), candidate AS (
             SELECT id FROM desktops
              WHERE pool_id = $1 AND state = 'ready' AND claimed_by IS NULL
                AND NOT EXISTS (SELECT 1 FROM held)
              -- During an image rollout, desktops on the pool's image are handed out first.
              ORDER BY snapshot_moref IS NOT DISTINCT FROM
                           (SELECT snapshot_moref FROM pools WHERE id = $1) DESC, idx
              LIMIT 1
              FOR UPDATE SKIP LOCKED
         ), taken AS (
             UPDATE desktops d
                SET claimed_by = $2, claimed_at = now(),
                    lease_expires_at = now() + make_interval(secs => $3), updated_at = now()
               FROM candidate c
              WHERE d.id = c.id
             RETURNING d.*
         ), others AS (
             SELECT min(lease_expires_at) AS ends FROM desktops
              WHERE pool_id = $1 AND claimed_by IS NOT NULL AND claimed_by <> $2
         )
         SELECT h.*, true AS renewed, (o.ends IS NULL OR h.lease_expires_at < o.ends) AS earliest_lease
           FROM held h, others o
         UNION ALL
         SELECT t.*, false AS renewed, (o.ends IS NULL OR t.lease_expires_at < o.ends) AS earliest_lease
           FROM taken t, others o",
    )
    .bind(pool_id)
    .bind(user)
    .bind(f64::from(lease_secs))
    .fetch_optional(&mut *conn)
    .await
    .map_err(StoreError::from)?;
    match row {
        Some(r) => Ok(Some(Claim {
            desktop: r.row.try_into()?,
            renewed: r.renewed,
            earliest_lease: r.earliest_lease,
        })),
        None => Ok(None),
    }
}

/// A claim that ended, and what became of its desktop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The desktop as stored after the release (`deleting` when the pool's `on_release` is
    /// `delete`, otherwise unchanged and unclaimed).
    pub desktop: Desktop,
    /// Who held it.
    pub user: String,
}

#[derive(sqlx::FromRow)]
struct ReleasedRow {
    #[sqlx(flatten)]
    row: DesktopRow,
    released_from: String,
}

fn released(rows: Vec<ReleasedRow>) -> Result<Vec<Released>, StoreError> {
    rows.into_iter()
        .map(|r| {
            Ok(Released {
                desktop: r.row.try_into()?,
                user: r.released_from,
            })
        })
        .collect()
}

/// Ends the claim on desktop `id` and applies `on_release` (`delete`: the desktop goes to
/// `deleting` and the reconciler replaces it; `keep`: it is claimable again). None when the
/// desktop is not claimed (or gone).
pub async fn release(
    conn: &mut PgConnection,
    id: Uuid,
    on_release: OnRelease,
) -> Result<Option<Released>, StoreError> {
    let rows: Vec<ReleasedRow> = sqlx::query_as(
        "WITH held AS (
             SELECT id, claimed_by FROM desktops WHERE id = $1 AND claimed_by IS NOT NULL
             FOR UPDATE
         )
         UPDATE desktops d
            SET claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL,
                state = CASE WHEN $2 = 'delete' THEN 'deleting' ELSE d.state END,
                updated_at = now()
           FROM held h
          WHERE d.id = h.id
         RETURNING d.*, h.claimed_by AS released_from",
    )
    .bind(id)
    .bind(on_release.as_str())
    .fetch_all(conn)
    .await?;
    Ok(released(rows)?.pop())
}

/// Ends every claim of pool `pool_id` whose lease has run out (by the database's clock) and
/// applies the pool's `on_release`, as [`release`] does. Returns the released desktops.
pub async fn expire(conn: &mut PgConnection, pool_id: Uuid) -> Result<Vec<Released>, StoreError> {
    let rows: Vec<ReleasedRow> = sqlx::query_as(
        "WITH held AS (
             SELECT d.id, d.claimed_by, p.on_release
               FROM desktops d JOIN pools p ON p.id = d.pool_id
              WHERE d.pool_id = $1 AND d.claimed_by IS NOT NULL AND d.lease_expires_at <= now()
             FOR UPDATE OF d SKIP LOCKED
         )
         UPDATE desktops d
            SET claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL,
                state = CASE WHEN h.on_release = 'delete' THEN 'deleting' ELSE d.state END,
                updated_at = now()
           FROM held h
          WHERE d.id = h.id
         RETURNING d.*, h.claimed_by AS released_from",
    )
    .bind(pool_id)
    .fetch_all(conn)
    .await?;
    released(rows)
}

/// Removes desktop `id` whatever its claim (a forced helpdesk delete): the claim ends and the
/// desktop goes to `deleting`. Returns who held it, if anyone, and None for the user when
/// it was not claimed. None when the desktop is gone.
pub async fn force_remove(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<(Desktop, Option<String>)>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        row: DesktopRow,
        released_from: Option<String>,
    }
    let row: Option<Row> = sqlx::query_as(
        "WITH held AS (SELECT id, claimed_by FROM desktops WHERE id = $1 FOR UPDATE)
         UPDATE desktops d
            SET claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL,
                state = 'deleting', updated_at = now()
           FROM held h
          WHERE d.id = h.id
         RETURNING d.*, h.claimed_by AS released_from",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| Ok((r.row.try_into()?, r.released_from)))
        .transpose()
}

/// Ends every claim of pool `pool_id` (a forced pool deletion), leaving the desktops' states
/// alone: the deleting pool's reconciler removes them. Returns (desktop name, user) pairs.
pub async fn drop_all(
    conn: &mut PgConnection,
    pool_id: Uuid,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "WITH held AS (
             SELECT id, claimed_by FROM desktops WHERE pool_id = $1 AND claimed_by IS NOT NULL
             FOR UPDATE
         )
         UPDATE desktops d
            SET claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL, updated_at = now()
           FROM held h
          WHERE d.id = h.id
         RETURNING d.name, h.claimed_by",
    )
    .bind(pool_id)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// How many desktops of pool `pool_id` are claimed.
pub async fn claimed_count(conn: &mut PgConnection, pool_id: Uuid) -> Result<u32, StoreError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM desktops WHERE pool_id = $1 AND claimed_by IS NOT NULL",
    )
    .bind(pool_id)
    .fetch_one(conn)
    .await?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Claimed desktops by pool name, for metrics.
pub async fn claimed_by_pool(conn: &mut PgConnection) -> Result<Vec<(String, u64)>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT p.name, count(*) FROM desktops d JOIN pools p ON p.id = d.pool_id
         WHERE d.claimed_by IS NOT NULL GROUP BY p.name ORDER BY p.name",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(p, n)| (p, u64::try_from(n).unwrap_or(0)))
        .collect())
}
