//! Desktops: one row per desktop, created `pending` before any vCenter call.

use chrono::{DateTime, Utc};
use deskpool_domain::DesktopState;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{to_i32, to_u32, StoreError};

/// A stored desktop.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Desktop {
    /// Database id (also the `deskpool.desktop` marker on the VM).
    pub id: Uuid,
    /// Owning pool.
    pub pool_id: Uuid,
    /// VM name.
    pub name: String,
    /// Index in the pool's naming pattern.
    pub index: u32,
    /// The instance UUID given to the clone; finds the VM again after a crash.
    pub instance_uuid: Uuid,
    /// The VM's managed object id, once known.
    pub vm_moref: Option<String>,
    /// Lifecycle state.
    pub state: DesktopState,
    /// The last task started for this desktop (a hint).
    pub task_moref: Option<String>,
    /// The snapshot this desktop was cloned from.
    pub snapshot_moref: Option<String>,
    /// Last known power state.
    pub powered_on: bool,
    /// The last fault, for `failed` desktops.
    pub last_error: Option<String>,
    /// Row creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When the desktop became ready.
    pub ready_at: Option<DateTime<Utc>>,
    /// Who holds the desktop (a claim), if anyone.
    pub claimed_by: Option<String>,
    /// When the claim was made.
    pub claimed_at: Option<DateTime<Utc>>,
    /// When the claim ends unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The guest's IPv4 address as vCenter last reported it.
    pub ip_address: Option<String>,
    /// The guest's state as vCenter last reported it.
    pub guest_state: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct DesktopRow {
    id: Uuid,
    pool_id: Uuid,
    name: String,
    idx: i32,
    instance_uuid: Uuid,
    vm_moref: Option<String>,
    state: String,
    task_moref: Option<String>,
    snapshot_moref: Option<String>,
    powered_on: bool,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    ready_at: Option<DateTime<Utc>>,
    claimed_by: Option<String>,
    claimed_at: Option<DateTime<Utc>>,
    lease_expires_at: Option<DateTime<Utc>>,
    ip_address: Option<String>,
    guest_state: Option<String>,
}

impl TryFrom<DesktopRow> for Desktop {
    type Error = StoreError;
    fn try_from(r: DesktopRow) -> Result<Self, StoreError> {
        Ok(Desktop {
            state: r
                .state
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("desktop {}: {e}", r.name)))?,
            id: r.id,
            pool_id: r.pool_id,
            name: r.name,
            index: to_u32(r.idx),
            instance_uuid: r.instance_uuid,
            vm_moref: r.vm_moref,
            task_moref: r.task_moref,
            snapshot_moref: r.snapshot_moref,
            powered_on: r.powered_on,
            last_error: r.last_error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            ready_at: r.ready_at,
            claimed_by: r.claimed_by,
            claimed_at: r.claimed_at,
            lease_expires_at: r.lease_expires_at,
            ip_address: r.ip_address,
            guest_state: r.guest_state,
        })
    }
}

pub(crate) fn convert(rows: Vec<DesktopRow>) -> Result<Vec<Desktop>, StoreError> {
    rows.into_iter().map(Desktop::try_from).collect()
}

/// A new desktop, before any vCenter call.
#[derive(Debug, Clone)]
pub struct NewDesktop<'a> {
    /// Owning pool.
    pub pool_id: Uuid,
    /// VM name.
    pub name: &'a str,
    /// Index in the naming pattern.
    pub index: u32,
    /// Instance UUID to give the clone.
    pub instance_uuid: Uuid,
    /// Snapshot the clone will be made from.
    pub snapshot_moref: &'a str,
}

/// Inserts a `pending` desktop. Name, index or UUID clashes are `StoreError::Conflict`.
pub async fn insert_pending(
    conn: &mut PgConnection,
    new: &NewDesktop<'_>,
) -> Result<Desktop, StoreError> {
    let row: DesktopRow = sqlx::query_as(
        "INSERT INTO desktops (id, pool_id, name, idx, instance_uuid, state, snapshot_moref)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6) RETURNING *",
    )
    .bind(Uuid::new_v4())
    .bind(new.pool_id)
    .bind(new.name)
    .bind(to_i32(new.index))
    .bind(new.instance_uuid)
    .bind(new.snapshot_moref)
    .fetch_one(conn)
    .await?;
    row.try_into()
}

/// Every desktop of a pool, by index.
pub async fn list_for_pool(
    conn: &mut PgConnection,
    pool_id: Uuid,
) -> Result<Vec<Desktop>, StoreError> {
    let rows = sqlx::query_as("SELECT * FROM desktops WHERE pool_id = $1 ORDER BY idx")
        .bind(pool_id)
        .fetch_all(conn)
        .await?;
    convert(rows)
}

/// One page of a pool's desktops, by name, optionally filtered by state, after `after` (a
/// name: keyset pagination).
pub async fn page(
    conn: &mut PgConnection,
    pool_id: Uuid,
    state: Option<DesktopState>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Desktop>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT * FROM desktops WHERE pool_id = $1 AND ($2::text IS NULL OR state = $2)
             AND ($3::text IS NULL OR name > $3)
         ORDER BY name LIMIT $4",
    )
    .bind(pool_id)
    .bind(state.map(DesktopState::as_str))
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    convert(rows)
}

/// A desktop of a pool by name.
pub async fn get_by_name(
    conn: &mut PgConnection,
    pool_id: Uuid,
    name: &str,
) -> Result<Option<Desktop>, StoreError> {
    let row: Option<DesktopRow> =
        sqlx::query_as("SELECT * FROM desktops WHERE pool_id = $1 AND name = $2")
            .bind(pool_id)
            .bind(name)
            .fetch_optional(conn)
            .await?;
    row.map(Desktop::try_from).transpose()
}

/// A desktop by id.
pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Desktop>, StoreError> {
    let row: Option<DesktopRow> = sqlx::query_as("SELECT * FROM desktops WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(Desktop::try_from).transpose()
}

/// The fields the reconciler changes as a desktop moves along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// New state.
    pub state: DesktopState,
    /// VM moref, when known (None keeps the stored value).
    pub vm_moref: Option<String>,
    /// Task moref of the step just started (None keeps the stored value).
    pub task_moref: Option<String>,
    /// Power state.
    pub powered_on: bool,
    /// Fault text (None clears it).
    pub last_error: Option<String>,
    /// The snapshot the clone is made from (None keeps the stored value).
    pub snapshot_moref: Option<String>,
}

impl Progress {
    /// Back to `pending`, forgetting the task: the desktop is cloned again.
    pub fn pending() -> Self {
        Self::failed_or_pending(DesktopState::Pending, None)
    }

    /// `failed` with the reason shown to the user; the VM (if any) is forgotten.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::failed_or_pending(DesktopState::Failed, Some(reason.into()))
    }

    fn failed_or_pending(state: DesktopState, last_error: Option<String>) -> Self {
        Self {
            state,
            vm_moref: None,
            task_moref: None,
            powered_on: false,
            last_error,
            snapshot_moref: None,
        }
    }

    /// `cloning`: the clone task `task` runs, from snapshot `snapshot`.
    pub fn clone_started(task: String, snapshot: String) -> Self {
        Self {
            task_moref: Some(task),
            snapshot_moref: Some(snapshot),
            ..Self::pending_with(DesktopState::Cloning)
        }
    }

    /// `cloning` with its VM known (found by instance UUID or ownership marker).
    pub fn adopted(vm: String) -> Self {
        Self {
            vm_moref: Some(vm),
            ..Self::pending_with(DesktopState::Cloning)
        }
    }

    /// The clone made `vm`; the desktop powers on next (`powering_on`) or is `ready` now.
    pub fn cloned(vm: String, power_on: bool) -> Self {
        let state = if power_on {
            DesktopState::PoweringOn
        } else {
            DesktopState::Ready
        };
        Self {
            vm_moref: Some(vm),
            ..Self::pending_with(state)
        }
    }

    /// `ready` and powered on.
    pub fn powered_on() -> Self {
        Self {
            powered_on: true,
            ..Self::pending_with(DesktopState::Ready)
        }
    }

    /// The same state and fault text, with the power state (and VM, if given) vCenter reported.
    pub fn observed(d: &Desktop, vm: Option<String>, powered_on: bool) -> Self {
        Self {
            state: d.state,
            vm_moref: vm,
            task_moref: None,
            powered_on,
            last_error: d.last_error.clone(),
            snapshot_moref: None,
        }
    }

    fn pending_with(state: DesktopState) -> Self {
        Self {
            state,
            ..Self::pending()
        }
    }
}

/// Records a desktop's progress. A desktop already in `deleting` stays there (a helpdesk
/// delete wins over a clone finishing at the same time). Reaching `ready`, `failed` or
/// `pending` clears the task moref (the task has ended, and finished tasks soon vanish). Returns the stored row, or None if the
/// desktop is gone.
pub async fn set_progress(
    conn: &mut PgConnection,
    id: Uuid,
    p: &Progress,
) -> Result<Option<Desktop>, StoreError> {
    let row: Option<DesktopRow> = sqlx::query_as(
        "UPDATE desktops SET
             state = CASE WHEN state = 'deleting' THEN state ELSE $2 END,
             vm_moref = COALESCE($3, vm_moref),
             task_moref = CASE WHEN $2 IN ('ready', 'failed', 'pending') THEN NULL
                          ELSE COALESCE($4, task_moref) END,
             snapshot_moref = COALESCE($7, snapshot_moref),
             powered_on = $5, last_error = $6, updated_at = now(),
             ready_at = CASE WHEN $2 = 'ready' AND ready_at IS NULL THEN now() ELSE ready_at END
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(p.state.as_str())
    .bind(&p.vm_moref)
    .bind(&p.task_moref)
    .bind(p.powered_on)
    .bind(&p.last_error)
    .bind(&p.snapshot_moref)
    .fetch_optional(conn)
    .await?;
    row.map(Desktop::try_from).transpose()
}

/// Moves those of `ids` that no user holds to `deleting` (a claim made since the caller read
/// the rows wins). Returns the ids moved.
pub async fn mark_deleting_unclaimed(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, StoreError> {
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "UPDATE desktops SET state = 'deleting', updated_at = now()
         WHERE id = ANY($1) AND state <> 'deleting' AND claimed_by IS NULL
         RETURNING id",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Moves desktops to `deleting`, claimed or not. Returns how many changed.
pub async fn mark_deleting(conn: &mut PgConnection, ids: &[Uuid]) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE desktops SET state = 'deleting', updated_at = now()
         WHERE id = ANY($1) AND state <> 'deleting'",
    )
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Removes a desktop row (its VM is gone).
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM desktops WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// For the VMs among `morefs` that belong to a desktop of a pool on `vcenter`: (VM moref,
/// pool name).
pub async fn owners_of_vms(
    conn: &mut PgConnection,
    vcenter: &str,
    morefs: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT d.vm_moref, p.name FROM desktops d JOIN pools p ON p.id = d.pool_id
         WHERE p.vcenter = $1 AND d.vm_moref = ANY($2)",
    )
    .bind(vcenter)
    .bind(morefs)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// Desktop counts by pool name and state, for metrics.
pub async fn counts_by_state(
    conn: &mut PgConnection,
) -> Result<Vec<(String, DesktopState, u64)>, StoreError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT p.name, d.state, count(*) FROM desktops d JOIN pools p ON p.id = d.pool_id
         GROUP BY p.name, d.state ORDER BY p.name, d.state",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(pool, state, n)| {
            let state = state
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("desktop state: {e}")))?;
            Ok((pool, state, u64::try_from(n).unwrap_or(0)))
        })
        .collect()
}
