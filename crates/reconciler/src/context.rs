//! What the scheduler, passes and workers of one term of leadership share: the database with
//! fencing, the configured vCenters, the scheduler, the registry of running workers and the
//! resolved inventory of each pool.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use deskpool_domain::EventKind;
use deskpool_store::{events, lease};
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::gate::CloneGate;
use crate::inventory::Inventory;
use crate::scheduler::Scheduler;
use crate::vcenter::Vcenter;
use crate::{Error, ReconcilerConfig, ACTOR};

/// What a running worker does, so a pass never starts a second one for the same desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerKind {
    Provision,
    Delete,
}

/// What a resolved inventory is valid for: the spec fields it was resolved from (a resize
/// changes none of them) and the vCenter session generation.
pub(crate) type InventoryKey = (String, u64);

/// Shared by the passes and workers of one term of leadership.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) db: PgPool,
    pub(crate) cfg: ReconcilerConfig,
    pub(crate) vcenters: HashMap<String, Arc<Vcenter>>,
    pub(crate) fence: lease::Fence,
    pub(crate) cancel: CancellationToken,
    /// When each pool is looked at next.
    pub(crate) scheduler: Scheduler,
    /// desktop id -> (pool id, kind) of its running worker.
    workers: Mutex<HashMap<Uuid, (Uuid, WorkerKind)>>,
    /// Pending desktops created by this term and not yet attempted: they cannot have a VM,
    /// so the FindByUuid check before cloning is skipped.
    fresh: Mutex<HashSet<Uuid>>,
    /// pool name -> ((spec fingerprint, vCenter session generation), resolved inventory). A
    /// new session may mean a restarted vCenter, so morefs are resolved again after a re-login.
    inventory: Mutex<HashMap<String, (InventoryKey, Arc<Inventory>)>>,
    /// This installation's id (read once per term): goes into every clone's markers.
    installation: tokio::sync::OnceCell<Uuid>,
    /// Foreign VMs (morefs) already reported this term: one event each, not one per sweep.
    pub(crate) reported_foreign: Mutex<HashSet<String>>,
    /// pool id -> its clone gate (`max_concurrent_clones` clones running at once).
    clone_gates: Mutex<HashMap<Uuid, Arc<CloneGate>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    /// This installation's id, read from the database once per term.
    pub(crate) async fn installation(&self) -> Result<Uuid, Error> {
        let id = self
            .installation
            .get_or_try_init(|| async {
                let mut conn = self.db.acquire().await?;
                Ok::<_, Error>(deskpool_store::installation::id(&mut conn).await?)
            })
            .await?;
        Ok(*id)
    }

    /// True the first time a foreign VM is seen this term.
    pub(crate) fn first_report(&self, moref: &str) -> bool {
        lock(&self.reported_foreign).insert(moref.to_owned())
    }

    pub(crate) fn new(
        db: PgPool,
        cfg: ReconcilerConfig,
        vcenters: &[Arc<Vcenter>],
        fence: lease::Fence,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            scheduler: Scheduler::new(cfg.backoff_base, cfg.backoff_max),
            db,
            cfg,
            vcenters: vcenters
                .iter()
                .map(|v| (v.name.clone(), Arc::clone(v)))
                .collect(),
            fence,
            cancel,
            workers: Mutex::default(),
            fresh: Mutex::default(),
            inventory: Mutex::default(),
            installation: tokio::sync::OnceCell::new(),
            reported_foreign: Mutex::default(),
            clone_gates: Mutex::default(),
        }
    }

    /// The pool's clone gate, its bound set to `limit` (the pool's `max_concurrent_clones`).
    pub(crate) fn clone_gate(&self, pool: Uuid, limit: u32) -> Arc<CloneGate> {
        let gate = Arc::clone(lock(&self.clone_gates).entry(pool).or_default());
        gate.set_limit(limit);
        gate
    }

    /// Starts a transaction in which the fencing token is checked first: if this replica is
    /// no longer the leader, nothing is written.
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>, Error> {
        if self.cancel.is_cancelled() {
            return Err(Error::Stopped("leadership ended"));
        }
        let mut tx = self.db.begin().await?;
        lease::check(&mut tx, &self.fence).await?;
        Ok(tx)
    }

    /// Records an event inside `tx` and logs it.
    pub(crate) async fn event(
        &self,
        tx: &mut sqlx::PgConnection,
        pool: &str,
        desktop: Option<&str>,
        kind: EventKind,
        message: &str,
    ) -> Result<(), Error> {
        tracing::info!(pool, desktop, kind = kind.as_str(), "{message}");
        events::record(
            tx,
            &events::NewEvent {
                pool: Some(pool),
                desktop,
                actor: ACTOR,
                kind,
                message,
            },
        )
        .await?;
        Ok(())
    }

    /// Runs a pass for `pool` soon, unless this term is over.
    pub(crate) fn wake(&self, pool: &str) {
        if !self.cancel.is_cancelled() {
            self.scheduler.wake(pool);
        }
    }

    /// Claims a desktop for a worker; false if one already runs for it.
    pub(crate) fn claim(&self, desktop: Uuid, pool: Uuid, kind: WorkerKind) -> bool {
        let mut w = lock(&self.workers);
        if w.contains_key(&desktop) {
            return false;
        }
        w.insert(desktop, (pool, kind));
        true
    }

    pub(crate) fn release(&self, desktop: Uuid) {
        lock(&self.workers).remove(&desktop);
    }

    pub(crate) fn has_worker(&self, desktop: Uuid) -> bool {
        lock(&self.workers).contains_key(&desktop)
    }

    pub(crate) fn running(&self, pool: Uuid, kind: WorkerKind) -> usize {
        lock(&self.workers)
            .values()
            .filter(|(p, k)| *p == pool && *k == kind)
            .count()
    }

    pub(crate) fn mark_fresh(&self, desktop: Uuid) {
        lock(&self.fresh).insert(desktop);
    }

    /// True once for a desktop made by this term (no VM can exist for it yet).
    pub(crate) fn take_fresh(&self, desktop: Uuid) -> bool {
        lock(&self.fresh).remove(&desktop)
    }

    /// Made by this term and not yet worked on (see [`Ctx::take_fresh`]).
    pub(crate) fn is_fresh(&self, desktop: Uuid) -> bool {
        lock(&self.fresh).contains(&desktop)
    }

    pub(crate) fn cached_inventory(
        &self,
        pool: &str,
        key: &InventoryKey,
    ) -> Option<Arc<Inventory>> {
        lock(&self.inventory)
            .get(pool)
            .filter(|(k, _)| k == key)
            .map(|(_, inv)| Arc::clone(inv))
    }

    pub(crate) fn store_inventory(&self, pool: &str, version: InventoryKey, inv: Arc<Inventory>) {
        lock(&self.inventory).insert(pool.to_owned(), (version, inv));
    }

    /// Forgets resolved morefs (a snapshot or folder may have gone, or vCenter restarted).
    pub(crate) fn forget_inventory(&self, pool: &str) {
        lock(&self.inventory).remove(pool);
    }

    /// Forgets every pool's resolved morefs (before a sweep: picks up a new "current" snapshot).
    pub(crate) fn forget_all_inventory(&self) {
        lock(&self.inventory).clear();
    }

    /// The pool is gone: nothing of it is kept.
    pub(crate) fn forget_pool(&self, pool: &str) {
        self.forget_inventory(pool);
        self.scheduler.forget(pool);
    }
}
