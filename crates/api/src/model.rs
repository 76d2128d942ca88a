//! The JSON shapes the API answers with (requests are `PoolSpec` and [`Resize`]).

use chrono::{DateTime, Utc};
use deskpool_domain::{desired_size, DesktopState, PoolSpec, PoolState, RolloutState};
use deskpool_store::desktops::Desktop;
use deskpool_store::events::Event;
use deskpool_store::pools::{Pool, PoolCounts};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A pool's provisioning condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolStateView {
    /// Provisioning runs normally.
    Ok,
    /// A permanent fault; waits for a spec change.
    Error,
    /// Stopped after repeated clone failures; waits for resume.
    Stopped,
    /// Being deleted.
    Deleting,
}

impl From<PoolState> for PoolStateView {
    fn from(s: PoolState) -> Self {
        match s {
            PoolState::Ok => Self::Ok,
            PoolState::Error => Self::Error,
            PoolState::Stopped => Self::Stopped,
            PoolState::Deleting => Self::Deleting,
        }
    }
}

/// Where a desktop is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesktopStateView {
    /// Row committed, no vCenter call yet.
    Pending,
    /// Clone task running.
    Cloning,
    /// Being powered on.
    PoweringOn,
    /// Powered on, waiting for the guest (VMware Tools and an IPv4 address).
    Booting,
    /// Usable (claimable).
    Ready,
    /// Provisioning failed.
    Failed,
    /// Being destroyed.
    Deleting,
}

impl From<DesktopState> for DesktopStateView {
    fn from(s: DesktopState) -> Self {
        match s {
            DesktopState::Pending => Self::Pending,
            DesktopState::Cloning => Self::Cloning,
            DesktopState::PoweringOn => Self::PoweringOn,
            DesktopState::Booting => Self::Booting,
            DesktopState::Ready => Self::Ready,
            DesktopState::Failed => Self::Failed,
            DesktopState::Deleting => Self::Deleting,
        }
    }
}

/// What the reconciler reports about a pool, with live desktop counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolStatus {
    /// The spec's `target_size`.
    pub target: u32,
    /// The size the pool moves to: `min(max_size, max(target_size, claimed + min_spare))`
    /// (0 while the pool is being deleted).
    pub desired: u32,
    /// Desktops held by users (never removed by sizing).
    pub claimed: u32,
    /// Ready desktops nobody holds: what the next claims get.
    pub spare: u32,
    /// Claimed desktops above `target_size`: the pool shrinks by these as they are released.
    pub over_target: u32,
    /// Desktops ready for use.
    pub ready: u32,
    /// Desktops being provisioned (`pending`, `cloning`, `powering_on`, `booting`).
    pub provisioning: u32,
    /// Of those, desktops powered on and waiting for their guest.
    pub booting: u32,
    /// Desktops whose provisioning failed (awaiting cleanup).
    pub failed: u32,
    /// Desktops being destroyed.
    pub deleting: u32,
    /// Provisioning condition.
    pub state: PoolStateView,
    /// Paused by an admin (`!spec.enabled`): neither grown nor shrunk.
    pub paused: bool,
    /// Why the pool is in `error` or `stopped`, or the last transient problem.
    pub last_error: Option<String>,
    /// Clone failures in a row.
    pub consecutive_failures: u32,
    /// The pool's image: the snapshot moref its snapshot was resolved to and pinned at.
    pub snapshot_moref: Option<String>,
    /// The pool's image rollout.
    pub rollout: RolloutView,
    /// Desktops (provisioning or ready) per image, most first.
    pub images: Vec<ImageCount>,
}

/// Where a pool's image rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutView {
    /// `idle` (never rolled), `rolling`, `stopped` (at its first failed clone) or `done`.
    #[schema(value_type = String, example = "rolling")]
    pub state: RolloutState,
    /// The image (snapshot moref) the pool had before.
    pub from: Option<String>,
    /// The image it rolls to (the pool's `snapshot_moref`).
    pub to: Option<String>,
    /// Desktops (provisioning or ready) on the pool's image.
    pub updated: u32,
    /// Desktops (provisioning or ready) on another image.
    pub outdated: u32,
    /// When the image was pushed.
    pub started_at: Option<DateTime<Utc>>,
    /// Why it stopped.
    pub last_error: Option<String>,
}

/// How many desktops are on one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageCount {
    /// The snapshot moref (None: not recorded).
    pub snapshot_moref: Option<String>,
    /// Desktops (provisioning or ready) on it.
    pub desktops: u32,
}

/// A new image for a pool: `POST /api/v1/pools/{name}/image`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePush {
    /// `current`, or a snapshot path of names such as `base/v3`, on the pool's golden VM.
    pub snapshot: String,
}

/// Counted desktops of `pool` on another image than its pinned one, from its per-image counts.
pub(crate) fn outdated_count(pool: &Pool, images: &[(Option<String>, u32)]) -> u32 {
    images
        .iter()
        .filter(|(m, _)| m.is_some() && pool.snapshot_moref.is_some() && *m != pool.snapshot_moref)
        .map(|(_, n)| n)
        .sum()
}

/// A pool: its spec and status. `version` is also sent as the `ETag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    /// Pool name.
    pub name: String,
    /// The spec as last written.
    pub spec: PoolSpec,
    /// Status and desktop counts.
    pub status: PoolStatus,
    /// Bumped on every spec change; send it back in `If-Match`.
    pub version: i64,
    /// When the pool was defined.
    pub created_at: DateTime<Utc>,
    /// Last change of spec or status.
    pub updated_at: DateTime<Utc>,
}

impl PoolView {
    /// Combines a stored pool with its desktop counts.
    pub fn new(pool: Pool, counts: PoolCounts) -> Self {
        Self {
            name: pool.spec.name.clone(),
            status: PoolStatus {
                target: pool.spec.target_size,
                desired: if pool.state == PoolState::Deleting {
                    0
                } else {
                    desired_size(
                        pool.spec.target_size,
                        pool.spec.min_spare,
                        pool.spec.max_size,
                        counts.claimed,
                    )
                },
                claimed: counts.claimed,
                spare: counts.spare,
                over_target: counts.claimed.saturating_sub(pool.spec.target_size),
                ready: counts.ready,
                provisioning: counts.provisioning,
                booting: counts.booting,
                failed: counts.failed,
                deleting: counts.deleting,
                state: pool.state.into(),
                paused: !pool.spec.enabled,
                last_error: pool.last_error,
                consecutive_failures: pool.consecutive_failures,
                rollout: RolloutView {
                    state: pool.rollout.state,
                    from: pool.rollout.from.clone(),
                    to: pool.rollout.to.clone(),
                    updated: 0,
                    outdated: 0,
                    started_at: pool.rollout.started_at,
                    last_error: pool.rollout.last_error.clone(),
                },
                snapshot_moref: pool.snapshot_moref,
                images: Vec::new(),
            },
            spec: pool.spec,
            version: pool.version,
            created_at: pool.created_at,
            updated_at: pool.updated_at,
        }
    }
}

impl PoolView {
    /// Adds the pool's per-image counts (and the rollout's `updated` and `outdated`).
    pub fn with_images(mut self, images: &[(Option<String>, u32)]) -> Self {
        let pinned = self.status.snapshot_moref.clone();
        self.status.rollout.updated = images
            .iter()
            .filter(|(m, _)| pinned.is_some() && *m == pinned)
            .map(|(_, n)| n)
            .sum();
        self.status.rollout.outdated = images
            .iter()
            .filter(|(m, _)| m.is_some() && pinned.is_some() && *m != pinned)
            .map(|(_, n)| n)
            .sum();
        self.status.images = images
            .iter()
            .map(|(m, n)| ImageCount {
                snapshot_moref: m.clone(),
                desktops: *n,
            })
            .collect();
        self
    }
}

/// Every pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolList {
    /// Pools by name.
    pub pools: Vec<PoolView>,
}

/// A resize request: a new target size, a new number of spares, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// New target size, within the pool's `min_size..=max_size`.
    #[serde(default, deserialize_with = "deskpool_domain::integral::option_u32")]
    #[schema(maximum = 10000)]
    pub target_size: Option<u32>,
    /// New number of ready, unclaimed desktops to keep, within `0..=max_size`.
    #[serde(default, deserialize_with = "deskpool_domain::integral::option_u32")]
    #[schema(maximum = 10000)]
    pub min_spare: Option<u32>,
}

/// One desktop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DesktopView {
    /// VM name.
    pub name: String,
    /// Owning pool.
    pub pool: String,
    /// Index in the pool's naming pattern.
    pub index: u32,
    /// Lifecycle state.
    pub state: DesktopStateView,
    /// Last known power state.
    pub powered_on: bool,
    /// The VM's managed object id, once known.
    pub vm_moref: Option<String>,
    /// The instance UUID given to the clone.
    pub instance_uuid: Uuid,
    /// The snapshot the desktop was cloned from.
    pub snapshot_moref: Option<String>,
    /// The last fault, for failed desktops.
    pub last_error: Option<String>,
    /// When the row was created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When the desktop became ready.
    pub ready_at: Option<DateTime<Utc>>,
    /// Who holds the desktop, if anyone.
    pub claimed_by: Option<String>,
    /// When the claim was made.
    pub claimed_at: Option<DateTime<Utc>>,
    /// When the claim ends unless renewed (by claiming again).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The guest's address as VMware Tools report it (`guest.ipAddress`); deskpool never
    /// connects to it.
    pub ip_address: Option<String>,
    /// VMware Tools' status as vCenter reports it (`guest.toolsRunningStatus`, e.g.
    /// `guestToolsRunning`).
    pub guest_state: Option<String>,
    /// vCenter cannot read the desktop's VM (a datastore outage): the desktop is kept as it
    /// is until the VM is readable again.
    pub inaccessible: bool,
    /// Failed tries to destroy the desktop's VM since it was marked for deletion; once
    /// `reconciler.destroy_tries` is reached the desktop is `failed` and left alone until
    /// deleted again.
    pub destroy_failures: u32,
}

impl DesktopView {
    /// The view of a stored desktop of pool `pool`.
    pub fn new(pool: &str, d: Desktop) -> Self {
        Self {
            name: d.name,
            pool: pool.to_owned(),
            index: d.index,
            state: d.state.into(),
            powered_on: d.powered_on,
            vm_moref: d.vm_moref,
            instance_uuid: d.instance_uuid,
            snapshot_moref: d.snapshot_moref,
            last_error: d.last_error,
            created_at: d.created_at,
            updated_at: d.updated_at,
            ready_at: d.ready_at,
            claimed_by: d.claimed_by,
            claimed_at: d.claimed_at,
            lease_expires_at: d.lease_expires_at,
            ip_address: d.ip_address,
            guest_state: d.guest_state,
            inaccessible: d.inaccessible,
            destroy_failures: d.destroy_failures,
        }
    }
}

/// A claim request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Who the desktop is for (1-256 characters, not blank, no control characters), e.g. a
    /// user name.
    #[schema(
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$",
        max_length = 256
    )]
    pub user: String,
    /// Lease in seconds (60..=604800); the pool's `claim_lease_secs` when absent.
    #[serde(default, deserialize_with = "deskpool_domain::integral::option_u32")]
    #[schema(minimum = 60, maximum = 604800)]
    pub lease_secs: Option<u32>,
}

/// A claimed (or released) desktop, and the pool's status, which says whether new desktops
/// are coming (`paused`, `state`, `last_error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClaimAnswer {
    /// The desktop.
    pub desktop: DesktopView,
    /// True when the user already held this desktop and only its lease was extended.
    pub renewed: bool,
    /// The pool's status after the call.
    pub pool_status: PoolStatus,
}

/// One page of a pool's desktops, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DesktopPage {
    /// Desktops on this page.
    pub desktops: Vec<DesktopView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Monotonic id.
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Pool name, if any.
    pub pool: Option<String>,
    /// Desktop name, if any.
    pub desktop: Option<String>,
    /// Who: an API token's name, `reconciler` or `cli`.
    pub actor: String,
    /// What kind of event, e.g. `pool_resized`.
    pub kind: String,
    /// Readable description.
    pub message: String,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        Self {
            id: e.id,
            at: e.at,
            pool: e.pool,
            desktop: e.desktop,
            actor: e.actor,
            kind: e.kind,
            message: e.message,
        }
    }
}

/// One page of events, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// Events on this page.
    pub events: Vec<EventView>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next: Option<i64>,
}

/// Liveness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Alive {
    /// Always `ok`.
    pub status: String,
}

/// This replica's part in reconciling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaRole {
    /// Holds the leader lease and reconciles.
    Leader,
    /// Serves the API; another replica reconciles.
    Standby,
    /// Has not yet tried for the lease.
    Starting,
}

/// One vCenter connection's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VcenterHealth {
    /// Connection name from the configuration.
    pub name: String,
    /// Whether the session is up.
    pub connected: bool,
    /// The last connection error, if any.
    pub error: Option<String>,
}

/// What the reconciler side reports for readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthSnapshot {
    /// Leader, standby or starting.
    pub role: ReplicaRole,
    /// Every configured vCenter.
    pub vcenters: Vec<VcenterHealth>,
}

/// The database's answer to the readiness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DbHealth {
    /// `SELECT 1` answered within the deadline.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
}

/// Readiness: 200 when `ready`, 503 otherwise; the body is the same either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// Database answers and every vCenter is connected.
    pub ready: bool,
    /// The database check.
    pub database: DbHealth,
    /// This replica's role.
    pub role: ReplicaRole,
    /// Each vCenter connection.
    pub vcenters: Vec<VcenterHealth>,
}
