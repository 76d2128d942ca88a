//! The controller: one runner per pool (at most one pass at a time), woken by Postgres
//! notifications, by workers, by backoff timers and by the periodic inventory sweep.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskpool_domain::{EventKind, MARKER_POOL};
use deskpool_store::{events, lease, pools, POOL_CHANNEL};
use deskpool_vsphere::{VmChange, VmEvent, VmInfo};
use futures::FutureExt as _;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::inventory::Inventory;
use crate::pass::{self, Outcome};
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

/// An inventory sweep: when its listing started (database clock) and the VMs found.
pub(crate) type Sweep = (chrono::DateTime<chrono::Utc>, Vec<VmInfo>);

#[derive(Debug, Default)]
pub(crate) struct Runner {
    notify: Notify,
    /// The last inventory sweep's VMs carrying this pool's marker, for the next pass.
    sweep: Mutex<Option<Sweep>>,
    /// Changes vCenter reported for this pool's VMs since the last pass.
    vm_events: Mutex<Vec<VmEvent>>,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// Shared by the runners and workers of one term of leadership.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) db: PgPool,
    pub(crate) cfg: ReconcilerConfig,
    pub(crate) vcenters: HashMap<String, Arc<Vcenter>>,
    pub(crate) fence: lease::Fence,
    pub(crate) cancel: CancellationToken,
    runners: Mutex<HashMap<String, Arc<Runner>>>,
    /// desktop id -> (pool id, kind) of its running worker.
    workers: Mutex<HashMap<Uuid, (Uuid, WorkerKind)>>,
    /// Pending desktops created by this term and not yet attempted: they cannot have a VM,
    /// so the FindByUuid check before cloning is skipped.
    fresh: Mutex<HashSet<Uuid>>,
    /// pool name -> ((spec version, vCenter session generation), resolved inventory). A new
    /// session may mean a restarted vCenter, so morefs are resolved again after a re-login.
    inventory: Mutex<HashMap<String, (InventoryKey, Arc<Inventory>)>>,
    backoff: Mutex<HashMap<String, Backoff>>,
    /// Pools that wanted to clone but found their vCenter's provisioning slots all taken:
    /// woken when a slot frees, since no worker of their own may be left to wake them.
    slot_waiters: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    pub(crate) fn new(
        db: PgPool,
        cfg: ReconcilerConfig,
        vcenters: &[Arc<Vcenter>],
        fence: lease::Fence,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            db,
            cfg,
            vcenters: vcenters
                .iter()
                .map(|v| (v.name.clone(), Arc::clone(v)))
                .collect(),
            fence,
            cancel,
            runners: Mutex::default(),
            workers: Mutex::default(),
            fresh: Mutex::default(),
            inventory: Mutex::default(),
            backoff: Mutex::default(),
            slot_waiters: Mutex::default(),
        }
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

    /// The pool's runner, started if it is not running.
    fn runner(self: &Arc<Self>, pool: &str) -> Arc<Runner> {
        let mut runners = lock(&self.runners);
        if let Some(r) = runners.get(pool) {
            return Arc::clone(r);
        }
        let r = Arc::new(Runner::default());
        runners.insert(pool.to_owned(), Arc::clone(&r));
        tokio::spawn(run_pool(Arc::clone(self), pool.to_owned(), Arc::clone(&r)));
        r
    }

    /// Runs a pass for `pool` soon (coalesced with any pass already asked for).
    pub(crate) fn wake(self: &Arc<Self>, pool: &str) {
        if self.cancel.is_cancelled() {
            return;
        }
        self.runner(pool).notify.notify_one();
    }

    /// Wakes `pool` after `delay`.
    pub(crate) fn wake_after(self: &Arc<Self>, pool: &str, delay: Duration) {
        let ctx = Arc::clone(self);
        let pool = pool.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                _ = ctx.cancel.cancelled() => {}
                _ = tokio::time::sleep(delay) => ctx.wake(&pool),
            }
        });
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

    /// When the pool may provision again after transient failures, if it must wait.
    pub(crate) fn backoff_until(&self, pool: &str) -> Option<Instant> {
        lock(&self.backoff)
            .get(pool)
            .map(|b| b.until)
            .filter(|u| *u > Instant::now())
    }

    /// Schedules the next attempt after a transient failure: exponential with jitter, capped.
    pub(crate) fn back_off(self: &Arc<Self>, pool: &str) -> Duration {
        let delay = {
            let mut map = lock(&self.backoff);
            let b = map.entry(pool.to_owned()).or_insert(Backoff {
                failures: 0,
                until: Instant::now(),
            });
            b.failures = b.failures.saturating_add(1);
            let exp = self
                .cfg
                .backoff_base
                .saturating_mul(1u32 << (b.failures - 1).min(16))
                .min(self.cfg.backoff_max);
            // Full jitter in [exp/2, exp] keeps retries of many pools apart.
            let delay = exp.mul_f64(0.5 + rand::random::<f64>() * 0.5);
            b.until = Instant::now() + delay;
            delay
        };
        self.wake_after(pool, delay);
        delay
    }

    /// Remembers that `pool` waits for a provisioning slot of its vCenter; if one freed
    /// meanwhile, wakes it at once (a slot freed between reading the free count and
    /// registering would otherwise be missed).
    pub(crate) fn wait_for_slot(self: &Arc<Self>, pool: &str, vc: &Vcenter) {
        lock(&self.slot_waiters).insert(pool.to_owned());
        if vc.permits.available_permits() > 0 {
            self.slot_freed();
        }
    }

    /// A provisioning slot was freed: every pool waiting for one gets a pass.
    pub(crate) fn slot_freed(self: &Arc<Self>) {
        let waiting: Vec<String> = lock(&self.slot_waiters).drain().collect();
        for pool in waiting {
            self.wake(&pool);
        }
    }

    pub(crate) fn clear_backoff(&self, pool: &str) {
        lock(&self.backoff).remove(pool);
    }

    fn drop_runner(&self, pool: &str, runner: &Arc<Runner>) {
        let mut runners = lock(&self.runners);
        if runners.get(pool).is_some_and(|r| Arc::ptr_eq(r, runner)) {
            runners.remove(pool);
        }
    }

    fn hand_vm_events(self: &Arc<Self>, pool: &str, events: Vec<VmEvent>) {
        if self.cancel.is_cancelled() {
            return;
        }
        let runner = self.runner(pool);
        lock(&runner.vm_events).extend(events);
        runner.notify.notify_one();
    }

    /// Keeps VM changes (older than any queued since) for the pool's next pass, without waking it.
    pub(crate) fn defer_vm_events(self: &Arc<Self>, pool: &str, events: Vec<VmEvent>) {
        if events.is_empty() || self.cancel.is_cancelled() {
            return;
        }
        // Before anything that arrived meanwhile: a later change of the same VM wins.
        lock(&self.runner(pool).vm_events).splice(0..0, events);
    }

    fn hand_sweep(self: &Arc<Self>, pool: &str, sweep: Sweep) {
        if self.cancel.is_cancelled() {
            return;
        }
        let runner = self.runner(pool);
        *lock(&runner.sweep) = Some(sweep);
        runner.notify.notify_one();
    }
}

/// One pool's runner: passes one at a time, coalescing wake-ups.
async fn run_pool(ctx: Arc<Ctx>, pool: String, runner: Arc<Runner>) {
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = runner.notify.notified() => {}
        }
        let sweep = lock(&runner.sweep).take();
        let vm_events = std::mem::take(&mut *lock(&runner.vm_events));
        let started = Instant::now();
        let result = pass::run(&ctx, &pool, sweep, vm_events).await;
        metrics::histogram!("deskpool_reconcile_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(Outcome::Done) => {}
            Ok(Outcome::Gone) => {
                ctx.drop_runner(&pool, &runner);
                // A wake that reached this runner after the pass (e.g. the pool was created
                // again under the same name) goes to a new runner.
                if runner.notify.notified().now_or_never().is_some() {
                    ctx.wake(&pool);
                }
                return;
            }
            Err(Error::Stopped(_)) => {
                tracing::warn!(pool, "leadership ended; pool runner stops");
                return;
            }
            Err(Error::Store(deskpool_store::StoreError::Fenced { .. })) => {
                tracing::warn!(pool, "leadership lost; ending this term");
                ctx.cancel.cancel();
                return;
            }
            Err(e) => {
                metrics::counter!("deskpool_reconcile_errors_total", "kind" => e.metric_label())
                    .increment(1);
                let delay = ctx.back_off(&pool);
                tracing::warn!(pool, error = %e, retry_in_ms = delay.as_millis() as u64, "reconcile pass failed");
            }
        }
    }
}

/// Runs one term of leadership until `ctx.cancel` fires.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    tracing::info!("reconciler controller started");
    let listener = tokio::spawn(listen(Arc::clone(&ctx)));
    let watchers: Vec<_> = ctx
        .vcenters
        .values()
        .map(|vc| tokio::spawn(watch_vms(Arc::clone(&ctx), Arc::clone(vc))))
        .collect();
    // Sweep at once (finds work left by a previous leader or a crash), then periodically.
    let mut tick = tokio::time::interval(ctx.cfg.resync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = sweep(&ctx).await {
                    tracing::warn!(error = %e, "inventory sweep failed; next one at the next interval");
                }
            }
        }
    }
    listener.abort();
    watchers.iter().for_each(|w| w.abort());
    tracing::info!("reconciler controller stopped");
}

/// Wakes every pool on `LISTEN` notifications. After a lost connection every pool is woken,
/// since notifications sent meanwhile are gone.
async fn listen(ctx: Arc<Ctx>) {
    let mut delay = Duration::from_millis(200);
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&ctx.db).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for pool changes; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(e) = listener.listen(POOL_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(delay).await;
            continue;
        }
        delay = Duration::from_millis(200);
        wake_all(&ctx).await;
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => ctx.wake(n.payload()),
                Ok(None) => {
                    tracing::warn!("pool change notifications interrupted; waking every pool");
                    wake_all(&ctx).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pool change listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}

async fn wake_all(ctx: &Arc<Ctx>) {
    let names: Result<Vec<(String,)>, _> = sqlx::query_as("SELECT name FROM pools")
        .fetch_all(&ctx.db)
        .await;
    match names {
        Ok(names) => names.iter().for_each(|(n,)| ctx.wake(n)),
        Err(e) => tracing::warn!(error = %e, "cannot list pools"),
    }
}

/// Follows vCenter's reports of VM changes (one long poll per vCenter) and hands the changes
/// of desktops' VMs to their pools: a VM destroyed by hand or powered off is noticed at once,
/// not at the next sweep.
async fn watch_vms(ctx: Arc<Ctx>, vc: Arc<Vcenter>) {
    let client = loop {
        if let Some(c) = vc.client() {
            break c;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let mut watch = client.watch_vms();
    vc.set_vm_expect(watch.expecter());
    while let Some(batch) = watch.recv().await {
        // `Present` only restates what the sweep already knows; act on real changes.
        let changed: Vec<VmEvent> = batch
            .into_iter()
            .filter(|e| !matches!(e.change, VmChange::Present(_)))
            .collect();
        if changed.is_empty() {
            continue;
        }
        let morefs: Vec<String> = changed.iter().map(|e| e.vm.value.clone()).collect();
        let owners: Result<Vec<(String, String)>, _> = sqlx::query_as(
            "SELECT d.vm_moref, p.name FROM desktops d JOIN pools p ON p.id = d.pool_id
             WHERE p.vcenter = $1 AND d.vm_moref = ANY($2)",
        )
        .bind(&vc.name)
        .bind(&morefs)
        .fetch_all(&ctx.db)
        .await;
        let owners = match owners {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot map VM changes to pools; the next sweep catches up");
                continue;
            }
        };
        let mut by_pool: HashMap<String, Vec<VmEvent>> = HashMap::new();
        for e in changed {
            if let Some((_, pool)) = owners.iter().find(|(m, _)| *m == e.vm.value) {
                by_pool.entry(pool.clone()).or_default().push(e);
            }
        }
        for (pool, events) in by_pool {
            tracing::debug!(
                pool,
                count = events.len(),
                "vCenter reported changes to desktops' VMs"
            );
            ctx.hand_vm_events(&pool, events);
        }
    }
}

/// The periodic full comparison: one inventory read per vCenter (all VMs with deskpool
/// markers), handed to each pool's next pass.
async fn sweep(ctx: &Arc<Ctx>) -> Result<(), Error> {
    // Resolve inventory afresh from now on: with `snapshot = "current"` a new snapshot of the
    // golden VM is picked up within one resync interval (only pools that clone pay for it).
    lock(&ctx.inventory).clear();
    let all = {
        let mut conn = ctx.db.acquire().await?;
        pools::list(&mut conn).await?
    };
    for (name, vc) in &ctx.vcenters {
        let on_vc: Vec<_> = all.iter().filter(|p| &p.spec.vcenter == name).collect();
        if on_vc.is_empty() {
            continue;
        }
        let Some(client) = vc.client() else {
            on_vc.iter().for_each(|p| ctx.wake(&p.spec.name));
            continue;
        };
        // Rows changed after this instant may have VMs the listing missed (the database's
        // clock, the one their `updated_at` uses).
        let (listed_at,): (chrono::DateTime<chrono::Utc>,) =
            sqlx::query_as("SELECT now()").fetch_one(&ctx.db).await?;
        let vms = match client.list_all_vms().await {
            Ok(vms) => vms,
            Err(e) => {
                tracing::warn!(vcenter = %name, error = %e, "inventory sweep failed");
                on_vc.iter().for_each(|p| ctx.wake(&p.spec.name));
                continue;
            }
        };
        let mut by_pool: HashMap<String, Vec<VmInfo>> = HashMap::new();
        for vm in vms {
            if let Some((_, pool)) = vm.extra_config.iter().find(|(k, _)| k == MARKER_POOL) {
                by_pool.entry(pool.clone()).or_default().push(vm);
            }
        }
        for p in on_vc {
            let vms = by_pool.remove(&p.spec.name).unwrap_or_default();
            ctx.hand_sweep(&p.spec.name, (listed_at, vms));
        }
        // VMs marked for pools that no longer exist are left alone but reported.
        for (pool, vms) in by_pool {
            if !all.iter().any(|p| p.spec.name == pool) {
                tracing::warn!(vcenter = %name, pool, count = vms.len(), "VMs carry the marker of a pool that does not exist; left untouched");
            }
        }
    }
    // Pools on unknown vCenters still get a pass, which reports the problem.
    for p in &all {
        if !ctx.vcenters.contains_key(&p.spec.vcenter) {
            ctx.wake(&p.spec.name);
        }
    }
    Ok(())
}
