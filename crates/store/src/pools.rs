//! Pools: the admin's spec plus the reconciler's status.

use chrono::{DateTime, Utc};
use deskpool_domain::{
    GuestOs, LogoffPolicy, OnRelease, PoolSpec, PoolState, ReadyWhen, RolloutState,
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{to_i32, to_u32, StoreError};

/// A stored pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Database id.
    pub id: Uuid,
    /// The spec as last written.
    pub spec: PoolSpec,
    /// Provisioning condition.
    pub state: PoolState,
    /// Why the pool is in `error` or `stopped`, or the last transient problem.
    pub last_error: Option<String>,
    /// Clone failures in a row (reset by a success).
    pub consecutive_failures: u32,
    /// The pool's image: the snapshot moref `spec.snapshot` was resolved to and pinned at
    /// (later snapshots of the golden VM do not move it; a new image push does).
    pub snapshot_moref: Option<String>,
    /// The pool's image rollout.
    pub rollout: Rollout,
    /// Bumped on every spec change; the API's ETag.
    pub version: i64,
    /// When the pool was defined.
    pub created_at: DateTime<Utc>,
    /// Last change of spec or status.
    pub updated_at: DateTime<Utc>,
}

/// A pool's image rollout, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Where it stands.
    pub state: RolloutState,
    /// The image (snapshot moref) the pool had before.
    pub from: Option<String>,
    /// The image it rolls to (the pool's pinned `snapshot_moref`).
    pub to: Option<String>,
    /// When the image was pushed.
    pub started_at: Option<DateTime<Utc>>,
    /// Why it stopped (the failed clone's fault).
    pub last_error: Option<String>,
}

/// Desktop counts of one pool, by lifecycle bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolCounts {
    /// Desktops in `ready`.
    pub ready: u32,
    /// Desktops in `pending`, `cloning`, `powering_on` or `booting`.
    pub provisioning: u32,
    /// Of those, desktops in `booting` (powered on, waiting for the guest).
    pub booting: u32,
    /// Desktops in `failed`.
    pub failed: u32,
    /// Desktops in `deleting`.
    pub deleting: u32,
    /// Desktops a user holds (whatever their state; normally `ready`).
    pub claimed: u32,
    /// Desktops `ready` and unclaimed: what the next claim can get.
    pub spare: u32,
}

impl PoolCounts {
    /// Adds `n` desktops in the state named `state` (as stored), claimed or not.
    fn add(&mut self, state: &str, claimed: bool, n: i64) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if claimed {
            self.claimed = self.claimed.saturating_add(n);
        } else if state == "ready" {
            self.spare = self.spare.saturating_add(n);
        }
        let bucket = match state {
            "ready" => &mut self.ready,
            "failed" => &mut self.failed,
            "deleting" => &mut self.deleting,
            _ => &mut self.provisioning,
        };
        *bucket = bucket.saturating_add(n);
        if state == "booting" {
            self.booting = self.booting.saturating_add(n);
        }
    }
}

#[derive(sqlx::FromRow)]
struct PoolRow {
    id: Uuid,
    name: String,
    vcenter: String,
    datacenter: String,
    golden_vm: String,
    snapshot: String,
    folder: String,
    resource_pool: String,
    datastore: Option<String>,
    customization_spec: Option<String>,
    naming_pattern: String,
    guest_os: String,
    target_size: i32,
    min_size: i32,
    max_size: i32,
    power_on: bool,
    max_concurrent_clones: i32,
    enabled: bool,
    min_spare: i32,
    claim_lease_secs: i32,
    on_release: String,
    ready_timeout_secs: i32,
    ready_when: String,
    state: String,
    last_error: Option<String>,
    consecutive_failures: i32,
    snapshot_moref: Option<String>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    max_surge: Option<i32>,
    max_unavailable: i32,
    stop_on_error: bool,
    logoff_policy: String,
    force_after_secs: i32,
    rollout_state: String,
    rollout_from: Option<String>,
    rollout_to: Option<String>,
    rollout_started_at: Option<DateTime<Utc>>,
    rollout_last_error: Option<String>,
}

impl TryFrom<PoolRow> for Pool {
    type Error = StoreError;

    fn try_from(r: PoolRow) -> Result<Self, StoreError> {
        let guest_os = match r.guest_os.as_str() {
            "windows" => GuestOs::Windows,
            "other" => GuestOs::Other,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "pool {}: guest_os '{other}'",
                    r.name
                )))
            }
        };
        let on_release = match r.on_release.as_str() {
            "delete" => OnRelease::Delete,
            "keep" => OnRelease::Keep,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "pool {}: on_release '{other}'",
                    r.name
                )))
            }
        };
        let state = r
            .state
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("pool {}: {e}", r.name)))?;
        let ready_when = ReadyWhen::parse(&r.ready_when).ok_or_else(|| {
            StoreError::Corrupt(format!("pool {}: ready_when '{}'", r.name, r.ready_when))
        })?;
        let rollout_state = r
            .rollout_state
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("pool {}: {e}", r.name)))?;
        let logoff_policy = match r.logoff_policy.as_str() {
            "wait" => LogoffPolicy::Wait,
            "force" => LogoffPolicy::Force,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "pool {}: logoff_policy '{other}'",
                    r.name
                )))
            }
        };
        Ok(Pool {
            id: r.id,
            spec: PoolSpec {
                name: r.name,
                vcenter: r.vcenter,
                datacenter: r.datacenter,
                golden_vm: r.golden_vm,
                snapshot: r.snapshot,
                folder: r.folder,
                resource_pool: r.resource_pool,
                datastore: r.datastore,
                customization_spec: r.customization_spec,
                naming_pattern: r.naming_pattern,
                guest_os,
                target_size: to_u32(r.target_size),
                min_size: to_u32(r.min_size),
                max_size: to_u32(r.max_size),
                power_on: r.power_on,
                max_concurrent_clones: to_u32(r.max_concurrent_clones),
                enabled: r.enabled,
                max_surge: r.max_surge.map(to_u32),
                max_unavailable: to_u32(r.max_unavailable),
                stop_on_error: r.stop_on_error,
                logoff_policy,
                force_after_secs: to_u32(r.force_after_secs),
                min_spare: to_u32(r.min_spare),
                claim_lease_secs: to_u32(r.claim_lease_secs),
                on_release,
                ready_timeout_secs: to_u32(r.ready_timeout_secs),
                ready_when,
            },
            state,
            last_error: r.last_error,
            consecutive_failures: to_u32(r.consecutive_failures),
            snapshot_moref: r.snapshot_moref,
            rollout: Rollout {
                state: rollout_state,
                from: r.rollout_from,
                to: r.rollout_to,
                started_at: r.rollout_started_at,
                last_error: r.rollout_last_error,
            },
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn guest_os_str(g: GuestOs) -> &'static str {
    match g {
        GuestOs::Windows => "windows",
        GuestOs::Other => "other",
    }
}

type PoolQuery<'q> = sqlx::query::QueryAs<'q, sqlx::Postgres, PoolRow, sqlx::postgres::PgArguments>;

/// Binds the spec's fields from `vcenter` to `on_release`, then `ready_timeout_secs` and
/// `ready_when`, in column order (shared by insert and update, whose statements list them in
/// the same order).
fn bind_spec<'q>(query: PoolQuery<'q>, spec: &'q PoolSpec) -> PoolQuery<'q> {
    query
        .bind(&spec.vcenter)
        .bind(&spec.datacenter)
        .bind(&spec.golden_vm)
        .bind(&spec.snapshot)
        .bind(&spec.folder)
        .bind(&spec.resource_pool)
        .bind(&spec.datastore)
        .bind(&spec.customization_spec)
        .bind(&spec.naming_pattern)
        .bind(guest_os_str(spec.guest_os))
        .bind(to_i32(spec.target_size))
        .bind(to_i32(spec.min_size))
        .bind(to_i32(spec.max_size))
        .bind(spec.power_on)
        .bind(to_i32(spec.max_concurrent_clones))
        .bind(spec.enabled)
        .bind(to_i32(spec.min_spare))
        .bind(to_i32(spec.claim_lease_secs))
        .bind(spec.on_release.as_str())
        .bind(to_i32(spec.ready_timeout_secs))
        .bind(spec.ready_when.as_str())
}

fn not_found(name: &str) -> StoreError {
    StoreError::NotFound {
        what: "pool",
        name: name.to_owned(),
    }
}

/// Inserts a new pool. The caller validates the spec first; the database re-checks names and
/// size bounds. A taken name is `StoreError::Conflict` on `pools_name_key`.
pub async fn insert(conn: &mut PgConnection, spec: &PoolSpec) -> Result<Pool, StoreError> {
    let query = sqlx::query_as(
        "INSERT INTO pools (id, name, vcenter, datacenter, golden_vm, snapshot, folder, resource_pool,
             datastore, customization_spec, naming_pattern, guest_os, target_size, min_size, max_size,
             power_on, max_concurrent_clones, enabled, min_spare, claim_lease_secs, on_release,
             ready_timeout_secs, ready_when)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
             $19, $20, $21, $22, $23)
         RETURNING *",
    )
    .bind(Uuid::new_v4())
    .bind(&spec.name);
    let row: PoolRow = bind_spec(query, spec).fetch_one(&mut *conn).await?;
    write_rollout_spec(conn, row.id, spec).await
}

/// Writes the spec's rollout fields (`max_surge` .. `force_after_secs`) of pool `id`, in a
/// statement of their own so the spec's main statements stay as they are.
async fn write_rollout_spec(
    conn: &mut PgConnection,
    id: Uuid,
    spec: &PoolSpec,
) -> Result<Pool, StoreError> {
    let row: PoolRow = sqlx::query_as(
        "UPDATE pools SET max_surge = $2, max_unavailable = $3, stop_on_error = $4,
             logoff_policy = $5, force_after_secs = $6
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(spec.max_surge.map(to_i32))
    .bind(to_i32(spec.max_unavailable))
    .bind(spec.stop_on_error)
    .bind(spec.logoff_policy.as_str())
    .bind(to_i32(spec.force_after_secs))
    .fetch_one(conn)
    .await?;
    row.try_into()
}

/// The pool named `name`, if any.
pub async fn get(conn: &mut PgConnection, name: &str) -> Result<Option<Pool>, StoreError> {
    let row: Option<PoolRow> = sqlx::query_as("SELECT * FROM pools WHERE name = $1")
        .bind(name)
        .fetch_optional(conn)
        .await?;
    row.map(Pool::try_from).transpose()
}

/// The pool with database id `id`, if any.
pub async fn get_by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<Pool>, StoreError> {
    let row: Option<PoolRow> = sqlx::query_as("SELECT * FROM pools WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(Pool::try_from).transpose()
}

/// Every pool's name, by name (cheaper than [`list`] when only names are needed).
pub async fn names(conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT name FROM pools ORDER BY name")
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|(n,)| n).collect())
}

/// Every pool, by name.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<Pool>, StoreError> {
    let rows: Vec<PoolRow> = sqlx::query_as("SELECT * FROM pools ORDER BY name")
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(Pool::try_from).collect()
}

/// Desktop counts for every pool that has desktops, keyed by pool id.
pub async fn counts(
    conn: &mut PgConnection,
) -> Result<std::collections::HashMap<Uuid, PoolCounts>, StoreError> {
    let rows: Vec<(Uuid, String, bool, i64)> = sqlx::query_as(
        "SELECT pool_id, state, claimed_by IS NOT NULL, count(*) FROM desktops
         GROUP BY pool_id, state, 3",
    )
    .fetch_all(conn)
    .await?;
    let mut out = std::collections::HashMap::new();
    for (pool, state, claimed, n) in rows {
        out.entry(pool)
            .or_insert_with(PoolCounts::default)
            .add(&state, claimed, n);
    }
    Ok(out)
}

/// Desktop counts of one pool (an index scan of that pool's desktops only).
pub async fn counts_for(conn: &mut PgConnection, pool: Uuid) -> Result<PoolCounts, StoreError> {
    let rows: Vec<(String, bool, i64)> = sqlx::query_as(
        "SELECT state, claimed_by IS NOT NULL, count(*) FROM desktops WHERE pool_id = $1
         GROUP BY state, 2",
    )
    .bind(pool)
    .fetch_all(conn)
    .await?;
    let mut out = PoolCounts::default();
    for (state, claimed, n) in rows {
        out.add(&state, claimed, n);
    }
    Ok(out)
}

/// Locks the pool row and checks the caller's expected version.
async fn lock_checked(
    conn: &mut PgConnection,
    name: &str,
    expected_version: Option<i64>,
) -> Result<Pool, StoreError> {
    let row: Option<PoolRow> = sqlx::query_as("SELECT * FROM pools WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    let pool: Pool = row.ok_or_else(|| not_found(name))?.try_into()?;
    if let Some(v) = expected_version {
        if v != pool.version {
            return Err(StoreError::VersionMismatch {
                current: pool.version,
            });
        }
    }
    Ok(pool)
}

/// Replaces the spec of pool `name` (whose name must stay the same). With `expected_version`,
/// refuses with `VersionMismatch` if the pool changed since. A pool in `error` goes back to
/// `ok`: a spec change is what an error waits for.
pub async fn update_spec(
    conn: &mut PgConnection,
    name: &str,
    spec: &PoolSpec,
    expected_version: Option<i64>,
) -> Result<Pool, StoreError> {
    let current = lock_checked(conn, name, expected_version).await?;
    if current.state == PoolState::Deleting {
        return Err(StoreError::PoolDeleting {
            name: name.to_owned(),
        });
    }
    if current.spec.vcenter != spec.vcenter || current.spec.datacenter != spec.datacenter {
        // Desktops' morefs belong to the old vCenter: moving them is not a spec edit.
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM desktops WHERE pool_id = $1")
            .bind(current.id)
            .fetch_one(&mut *conn)
            .await?;
        if n > 0 {
            return Err(StoreError::VcenterFixed {
                name: name.to_owned(),
                desktops: n,
                vcenter: current.spec.vcenter,
                datacenter: current.spec.datacenter,
            });
        }
    }
    let query = sqlx::query_as(
        "UPDATE pools SET vcenter = $2, datacenter = $3, golden_vm = $4, snapshot = $5, folder = $6,
             resource_pool = $7, datastore = $8, customization_spec = $9, naming_pattern = $10,
             guest_os = $11, target_size = $12, min_size = $13, max_size = $14, power_on = $15,
             max_concurrent_clones = $16, enabled = $17, min_spare = $18, claim_lease_secs = $19,
             on_release = $20, ready_timeout_secs = $21, ready_when = $22,
             state = CASE WHEN state = 'error' THEN 'ok' ELSE state END,
             last_error = CASE WHEN state = 'error' THEN NULL ELSE last_error END,
             snapshot_moref = CASE WHEN snapshot = $5 AND golden_vm = $4 AND vcenter = $2
                                   AND datacenter = $3 THEN snapshot_moref END,
             version = version + 1, updated_at = now()
         WHERE name = $1 RETURNING *",
    )
    .bind(name);
    let row: PoolRow = bind_spec(query, spec).fetch_one(&mut *conn).await?;
    write_rollout_spec(conn, row.id, spec).await
}

/// Sets the target size (the database re-checks `min_size <= target <= max_size`).
pub async fn set_target(
    conn: &mut PgConnection,
    name: &str,
    target: u32,
    expected_version: Option<i64>,
) -> Result<Pool, StoreError> {
    lock_checked(conn, name, expected_version).await?;
    set_target_locked(conn, name, target).await
}

/// Locks pool `name`'s row (`SELECT ... FOR UPDATE`) for the rest of the caller's transaction
/// and returns it; `NotFound` if there is none.
pub async fn lock(conn: &mut PgConnection, name: &str) -> Result<Pool, StoreError> {
    lock_checked(conn, name, None).await
}

/// Locks pool `name`'s row in share mode for the rest of the caller's transaction (claims take
/// it, so a pool deletion, which locks it for update, waits for claims under way and sees
/// them) and returns it; None if there is none.
pub async fn lock_shared(conn: &mut PgConnection, name: &str) -> Result<Option<Pool>, StoreError> {
    let row: Option<PoolRow> = sqlx::query_as("SELECT * FROM pools WHERE name = $1 FOR SHARE")
        .bind(name)
        .fetch_optional(conn)
        .await?;
    row.map(Pool::try_from).transpose()
}

/// Sets the number of spare desktops (the database re-checks `min_spare <= max_size`), for a
/// caller that holds the row lock ([`lock`]).
pub async fn set_min_spare_locked(
    conn: &mut PgConnection,
    name: &str,
    min_spare: u32,
) -> Result<Pool, StoreError> {
    let row: PoolRow = sqlx::query_as(
        "UPDATE pools SET min_spare = $2, version = version + 1, updated_at = now()
         WHERE name = $1 RETURNING *",
    )
    .bind(name)
    .bind(to_i32(min_spare))
    .fetch_one(conn)
    .await?;
    row.try_into()
}

/// [`set_target`] for a caller that already holds the row lock ([`lock`]) and checked the
/// version itself: one statement instead of two.
pub async fn set_target_locked(
    conn: &mut PgConnection,
    name: &str,
    target: u32,
) -> Result<Pool, StoreError> {
    let row: PoolRow = sqlx::query_as(
        "UPDATE pools SET target_size = $2, version = version + 1, updated_at = now()
         WHERE name = $1 RETURNING *",
    )
    .bind(name)
    .bind(to_i32(target))
    .fetch_one(conn)
    .await?;
    row.try_into()
}

/// Pauses (`enabled = false`) or resumes a pool. Resuming also clears `error` and `stopped`
/// and the failure count, as Horizon's "resume provisioning" does.
pub async fn set_enabled(
    conn: &mut PgConnection,
    name: &str,
    enabled: bool,
) -> Result<Pool, StoreError> {
    let row: Option<PoolRow> = sqlx::query_as(
        "UPDATE pools SET enabled = $2,
             state = CASE WHEN $2 AND state IN ('error', 'stopped') THEN 'ok' ELSE state END,
             last_error = CASE WHEN $2 AND state IN ('error', 'stopped') THEN NULL ELSE last_error END,
             consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures END,
             version = version + 1, updated_at = now()
         WHERE name = $1 RETURNING *",
    )
    .bind(name)
    .bind(enabled)
    .fetch_optional(conn)
    .await?;
    row.ok_or_else(|| not_found(name))?.try_into()
}

/// Marks a pool for deletion; the reconciler removes its desktops, then the row.
pub async fn mark_deleting(conn: &mut PgConnection, name: &str) -> Result<Pool, StoreError> {
    let row: Option<PoolRow> = sqlx::query_as(
        "UPDATE pools SET state = 'deleting', version = version + 1, updated_at = now()
         WHERE name = $1 RETURNING *",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    row.ok_or_else(|| not_found(name))?.try_into()
}

/// Removes a pool row that is being deleted and has no desktops left. Returns false when the
/// pool still has desktops or is not being deleted.
pub async fn delete_if_empty(conn: &mut PgConnection, id: Uuid) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "DELETE FROM pools p WHERE p.id = $1 AND p.state = 'deleting'
             AND NOT EXISTS (SELECT 1 FROM desktops d WHERE d.pool_id = p.id)",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The reconciler's view of a pool's condition. Never leaves `deleting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// New state.
    pub state: PoolState,
    /// Message for `error` / `stopped`, or the last transient problem.
    pub last_error: Option<String>,
    /// Clone failures in a row.
    pub consecutive_failures: u32,
}

/// Records the reconciler's status for a pool (no version bump: status is not spec), but only
/// if the pool's spec is still at `read_version`, the version the pass that decided it read:
/// an admin's fixing `PUT` during a slow pass is never overwritten by that pass's conclusion
/// about the old spec. Returns whether the status was written.
pub async fn set_status(
    conn: &mut PgConnection,
    id: Uuid,
    read_version: i64,
    status: &Status,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE pools SET state = CASE WHEN state = 'deleting' THEN state ELSE $3 END,
             last_error = $4, consecutive_failures = $5, updated_at = now()
         WHERE id = $1 AND version = $2",
    )
    .bind(id)
    .bind(read_version)
    .bind(status.state.as_str())
    .bind(&status.last_error)
    .bind(to_i32(status.consecutive_failures))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records which snapshot moref the pool's `snapshot` resolved to.
pub async fn set_snapshot_moref(
    conn: &mut PgConnection,
    id: Uuid,
    moref: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE pools SET snapshot_moref = $2 WHERE id = $1")
        .bind(id)
        .bind(moref)
        .execute(conn)
        .await?;
    Ok(())
}

/// Counts a clone outcome: a success resets the pool's consecutive failure count, a failure
/// adds one. Returns the new count. A success with no failures to reset writes nothing, so
/// the clones of a filling pool do not queue on its row's lock.
pub async fn record_clone_outcome(
    conn: &mut PgConnection,
    id: Uuid,
    success: bool,
) -> Result<u32, StoreError> {
    if success {
        sqlx::query(
            "UPDATE pools SET consecutive_failures = 0 WHERE id = $1 AND consecutive_failures <> 0",
        )
        .bind(id)
        .execute(conn)
        .await?;
        return Ok(0);
    }
    let (n,): (i32,) = sqlx::query_as(
        "UPDATE pools SET consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures + 1 END
         WHERE id = $1 RETURNING consecutive_failures",
    )
    .bind(id)
    .bind(success)
    .fetch_one(conn)
    .await?;
    Ok(to_u32(n))
}

/// Sets the message shown with a pool that is otherwise `ok` (a transient problem such as an
/// unreachable vCenter), or clears it with None. Leaves pools in any other state untouched, and
/// pools whose spec changed since `read_version` (the note was about the old spec).
pub async fn set_note(
    conn: &mut PgConnection,
    id: Uuid,
    read_version: i64,
    note: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE pools SET last_error = $3, updated_at = now()
         WHERE id = $1 AND version = $2 AND state = 'ok' AND last_error IS DISTINCT FROM $3",
    )
    .bind(id)
    .bind(read_version)
    .bind(note)
    .execute(conn)
    .await?;
    Ok(())
}

/// What pinning an image did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// The pool was already on that image: nothing changed.
    Unchanged,
    /// The pool now has that image; none of its desktops is on another one.
    Pinned,
    /// The pool now has that image and desktops on another: a rollout started.
    RolloutStarted {
        /// The image the outdated desktops are on (the previous pin, or the most common one).
        from: Option<String>,
        /// The new image.
        to: String,
    },
}

/// Pins pool `id` to the image (snapshot moref) `moref`. When any of its desktops (ready or
/// provisioning) is on another image, a rollout starts (`rolling`, from the previous image,
/// its fault cleared); otherwise a rollout in progress is over (`done`). Pinning the image
/// the pool already has changes nothing.
pub async fn pin_image(
    conn: &mut PgConnection,
    id: Uuid,
    moref: &str,
) -> Result<Pinned, StoreError> {
    let (previous,): (Option<String>,) =
        sqlx::query_as("SELECT snapshot_moref FROM pools WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    if previous.as_deref() == Some(moref) {
        return Ok(Pinned::Unchanged);
    }
    let other: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT snapshot_moref FROM desktops
         WHERE pool_id = $1 AND state NOT IN ('failed', 'deleting')
           AND snapshot_moref IS DISTINCT FROM $2
         GROUP BY snapshot_moref ORDER BY count(*) DESC, snapshot_moref LIMIT 1",
    )
    .bind(id)
    .bind(moref)
    .fetch_optional(&mut *conn)
    .await?;
    match other {
        Some((most_common,)) => {
            let from = previous.or(most_common);
            sqlx::query(
                "UPDATE pools SET snapshot_moref = $2, rollout_state = 'rolling',
                     rollout_from = $3, rollout_to = $2, rollout_started_at = now(),
                     rollout_last_error = NULL, updated_at = now()
                 WHERE id = $1",
            )
            .bind(id)
            .bind(moref)
            .bind(&from)
            .execute(conn)
            .await?;
            Ok(Pinned::RolloutStarted {
                from,
                to: moref.to_owned(),
            })
        }
        None => {
            sqlx::query(
                "UPDATE pools SET snapshot_moref = $2,
                     rollout_state = CASE WHEN rollout_state = 'idle' THEN 'idle' ELSE 'done' END,
                     rollout_to = CASE WHEN rollout_state = 'idle' THEN NULL ELSE $2 END,
                     rollout_last_error = NULL, updated_at = now()
                 WHERE id = $1",
            )
            .bind(id)
            .bind(moref)
            .execute(conn)
            .await?;
            Ok(Pinned::Pinned)
        }
    }
}

/// Ends or pauses the rolling rollout of pool `id` toward `to` (`done`, or `stopped` with
/// `fault`). Returns false when the pool is no longer rolling toward `to` (another image was
/// pushed meanwhile), and then changes nothing.
pub async fn set_rollout_outcome(
    conn: &mut PgConnection,
    id: Uuid,
    to: &str,
    state: RolloutState,
    fault: Option<&str>,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE pools SET rollout_state = $3, rollout_last_error = $4, updated_at = now()
         WHERE id = $1 AND rollout_state = 'rolling' AND rollout_to = $2",
    )
    .bind(id)
    .bind(to)
    .bind(state.as_str())
    .bind(fault)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Continues the stopped rollout of pool `name` (`stopped` -> `rolling`, fault cleared); like
/// a pool resume it also clears the pool's `error` or `stopped` the failed clone caused.
/// Returns None when its rollout is not stopped.
pub async fn resume_rollout(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<Pool>, StoreError> {
    let row: Option<PoolRow> = sqlx::query_as(
        "UPDATE pools SET rollout_state = 'rolling', rollout_last_error = NULL,
             state = CASE WHEN state IN ('error', 'stopped') THEN 'ok' ELSE state END,
             last_error = CASE WHEN state IN ('error', 'stopped') THEN NULL ELSE last_error END,
             consecutive_failures = 0, version = version + 1, updated_at = now()
         WHERE name = $1 AND rollout_state = 'stopped' RETURNING *",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    row.map(Pool::try_from).transpose()
}

/// Sets pool `name`'s snapshot selector (`current` or a path) as an image push does, keeping
/// the rest of the spec; bumps the version. The caller pins the resolved moref with
/// [`pin_image`] in the same transaction.
pub async fn set_snapshot_selector(
    conn: &mut PgConnection,
    id: Uuid,
    selector: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE pools SET snapshot = $2, version = version + 1, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(selector)
    .execute(conn)
    .await?;
    Ok(())
}

/// How many counted desktops (provisioning or ready) of one pool are on each image, most
/// first; a desktop with no recorded image counts under None.
pub async fn image_counts(
    conn: &mut PgConnection,
    pool: Uuid,
) -> Result<Vec<(Option<String>, u32)>, StoreError> {
    let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT snapshot_moref, count(*) FROM desktops
         WHERE pool_id = $1 AND state NOT IN ('failed', 'deleting')
         GROUP BY snapshot_moref ORDER BY count(*) DESC, snapshot_moref",
    )
    .bind(pool)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(m, n)| (m, u32::try_from(n).unwrap_or(u32::MAX)))
        .collect())
}

/// [`image_counts`] for every pool that has desktops, keyed by pool id.
pub async fn image_counts_all(
    conn: &mut PgConnection,
) -> Result<std::collections::HashMap<Uuid, Vec<(Option<String>, u32)>>, StoreError> {
    let rows: Vec<(Uuid, Option<String>, i64)> = sqlx::query_as(
        "SELECT pool_id, snapshot_moref, count(*) FROM desktops
         WHERE state NOT IN ('failed', 'deleting')
         GROUP BY pool_id, snapshot_moref ORDER BY pool_id, count(*) DESC, snapshot_moref",
    )
    .fetch_all(conn)
    .await?;
    let mut out: std::collections::HashMap<Uuid, Vec<(Option<String>, u32)>> =
        std::collections::HashMap::new();
    for (pool, m, n) in rows {
        out.entry(pool)
            .or_default()
            .push((m, u32::try_from(n).unwrap_or(u32::MAX)));
    }
    Ok(out)
}
