//! deskpool's reconciler: keeps every pool at its target size with linked clones.
//!
//! Shape (after kube-rs): a pass for one pool is `reconcile::reconcile(pool, desktops, ..)
//! -> Result<Action, Error>`; it reads the pool and its desktops once, asks the pure
//! [`deskpool_domain::plan`] what to change, records that and hands desktops to workers
//! (`steps`), which execute the steps [`deskpool_domain::next_step`] decides. The `Action` it
//! returns, and `policy::error_policy` for every failure, tell the `scheduler` when to look
//! at the pool again; the scheduler owns every wake-up, one timer per pool and the backoff.
//!
//! Only the replica holding the leader lease runs passes; every write it makes checks the
//! lease's fencing token in the same transaction.

mod compare;
mod conditions;
mod context;
mod controller;
mod error;
mod gate;
mod inventory;
mod leader;
mod leases;
mod policy;
mod readiness;
mod reconcile;
mod rollout;
mod scheduler;
mod sources;
mod status;
mod steps;
mod vcenter;

use std::sync::Arc;
use std::time::Duration;

pub use error::Error;
pub use status::{Leadership, SnapshotError, StatusHandle};
use tokio_util::sync::CancellationToken;
pub use vcenter::VcenterStatus;

/// The actor name recorded on events the reconciler writes.
pub const ACTOR: &str = "reconciler";
/// The lease row the reconciler replicas compete for.
pub const LEASE: &str = "reconciler";

/// Tunables, from the `[reconciler]` config section.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// Full comparison of database and vCenter inventory this often.
    pub resync_interval: Duration,
    /// Leader lease time to live; renewed every third of it.
    pub lease_ttl: Duration,
    /// Provisioning operations in flight per vCenter, across pools.
    pub max_concurrent_per_vcenter: u32,
    /// Stop provisioning a pool after this many clone failures in a row (0: never).
    pub stop_after_failures: u32,
    /// First retry delay after a transient failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Failed tries to destroy one desktop's VM (vCenter refusing with a fault such as
    /// `NoPermission`) before the desktop is marked failed and left alone (0: never give up).
    pub destroy_tries: u32,
    /// This replica's id in the lease table (host name, pid and a random suffix by default).
    pub replica_id: String,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(300),
            lease_ttl: Duration::from_secs(15),
            max_concurrent_per_vcenter: 20,
            stop_after_failures: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            destroy_tries: 5,
            replica_id: default_replica_id(),
        }
    }
}

/// `host-pid-random`: unique per process, readable in the lease table.
pub fn default_replica_id() -> String {
    // uname(2), not /proc/sys/kernel/hostname: the systemd unit's ProcSubset=pid hides /proc/sys.
    let host = gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Resolves everything a pool's clones need (golden VM, snapshot, folder, resource pool,
/// datastore, customization spec), as the reconciler would before cloning. Ok with a short
/// description of what was found, or Err with what to fix. Used by `deskpool check`.
pub async fn check_pool(
    client: &deskpool_vsphere::Client,
    spec: &deskpool_domain::PoolSpec,
) -> Result<String, String> {
    match inventory::resolve(client, spec).await {
        Ok(inv) => Ok(format!(
            "golden VM {} snapshot {} folder {} resource pool {}{}; placement: {}",
            inv.golden,
            inv.snapshot,
            inv.folder,
            inv.resource_pool,
            inv.datastore
                .map(|d| format!(" datastore {d}"))
                .unwrap_or_default(),
            inv.placement
        )),
        Err(inventory::ResolveError::Permanent(msg)) => Err(msg),
        Err(inventory::ResolveError::Transient(e)) => Err(format!("vCenter did not answer: {e}")),
    }
}

/// A named vCenter connection.
#[derive(Debug, Clone)]
pub struct VcenterSpec {
    /// The name pools refer to.
    pub name: String,
    /// How to connect.
    pub options: deskpool_vsphere::ClientOptions,
}

/// The reconciler of one deskpool replica.
#[derive(Debug)]
pub struct Reconciler {
    db: sqlx::PgPool,
    cfg: ReconcilerConfig,
    vcenters: Vec<Arc<vcenter::Vcenter>>,
    status: StatusHandle,
}

impl Reconciler {
    /// Prepares a reconciler; nothing connects until [`Reconciler::run`].
    pub fn new(db: sqlx::PgPool, vcenters: Vec<VcenterSpec>, cfg: ReconcilerConfig) -> Self {
        let vcenters: Vec<_> = vcenters
            .into_iter()
            .map(|v| Arc::new(vcenter::Vcenter::new(v, cfg.max_concurrent_per_vcenter)))
            .collect();
        let status = StatusHandle::new(vcenters.clone());
        Self {
            db,
            cfg,
            vcenters,
            status,
        }
    }

    /// A handle for `/readyz` and the API: this replica's role and each vCenter's session.
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    /// Connects to every vCenter and competes for the leader lease; while leader, keeps every
    /// pool at its target. Returns when `shutdown` is cancelled (after releasing the lease).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        for vc in &self.vcenters {
            tokio::spawn(vcenter::connect_loop(Arc::clone(vc), shutdown.clone()));
        }
        leader::run(self.db, self.cfg, self.vcenters, self.status, shutdown).await
    }
}
