//! Workers: drive one desktop through its vCenter steps (clone, power on, or power off and
//! destroy), each holding a permit of its vCenter's provisioning bound. Every step is
//! recorded before the next begins, and every step can be resumed after a crash: a pending
//! desktop is looked up by its instance UUID before a clone is issued again.

use std::sync::Arc;
use std::time::Instant;

use deskpool_domain::{DesktopState, EventKind, PoolState, MARKER_DESKTOP, MARKER_POOL};
use deskpool_store::desktops::{self, Desktop, Progress};
use deskpool_store::pools::{self, Pool, Status};
use deskpool_vsphere::{
    Client, Error as VsError, Fault, FaultKind, LinkedCloneSpec, MoRef, PowerState, VmInfo,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::controller::{Ctx, WorkerKind};
use crate::inventory::{self, Inventory, ResolveError};
use crate::pass::set_condition;
use crate::vcenter::Vcenter;
use crate::Error;

fn task_ref(value: &str) -> MoRef {
    MoRef::new("Task", value)
}

fn vm_ref(value: &str) -> MoRef {
    MoRef::new("VirtualMachine", value)
}

fn is_fault(e: &VsError, f: impl Fn(&FaultKind) -> bool) -> bool {
    e.fault_kind().is_some_and(f)
}

fn not_found(e: &VsError) -> bool {
    is_fault(e, |k| matches!(k, FaultKind::ManagedObjectNotFound { .. }))
}

/// `ManagedObjectNotFound` naming the task itself (not an object the task worked on).
fn task_gone(e: &VsError, task: &str) -> bool {
    is_fault(e, |k| match k {
        FaultKind::ManagedObjectNotFound { obj: Some(o) } => o.value == task,
        FaultKind::ManagedObjectNotFound { obj: None } => true,
        _ => false,
    })
}

/// A power-off refused in the VM's current state (already off, typically); the destroy that
/// follows decides.
fn invalid_state(e: &VsError) -> bool {
    is_fault(e, |k| {
        matches!(
            k,
            FaultKind::InvalidState | FaultKind::InvalidPowerState { .. }
        )
    })
}

/// The power-on failed because the VM is already on (only `InvalidPowerState` with the VM
/// on; a disconnected host or a pending question is no such thing).
fn already_on(e: &VsError) -> bool {
    e.fault()
        .is_some_and(deskpool_vsphere::Fault::means_already_on)
}

/// Longest wait for one task (a clone with guest customization can take minutes; a task
/// queued behind vCenter's limits waits too). Past it the worker gives up for now and a later
/// pass waits again, so a lost update can never pin a provisioning slot forever.
const TASK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

async fn wait(client: &Client, task: &MoRef) -> Result<Option<MoRef>, VsError> {
    match tokio::time::timeout(TASK_PATIENCE, client.wait_task(task)).await {
        Ok(r) => r,
        // Reported as the task still being busy: transient for deletions (retried later);
        // for a clone it counts as a failed clone, and the sweep removes a VM it makes later.
        Err(_) => Err(VsError::Fault(Fault::new(
            FaultKind::TaskInProgress,
            format!(
                "task {task} did not finish within {} minutes",
                TASK_PATIENCE.as_secs() / 60
            ),
        ))),
    }
}

async fn permit(ctx: &Ctx, sem: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, Error> {
    tokio::select! {
        _ = ctx.cancel.cancelled() => Err(Error::Stopped("leadership ended")),
        p = Arc::clone(sem).acquire_owned() => p.map_err(|_| Error::Stopped("vCenter bound closed")),
    }
}

/// Handles the end of a worker: frees the desktop, backs off on trouble, wakes the pool.
fn finish(ctx: &Arc<Ctx>, pool: &str, desktop: uuid::Uuid, what: &str, result: Result<(), Error>) {
    ctx.release(desktop);
    ctx.slot_freed();
    match result {
        Ok(()) => {}
        Err(Error::Stopped(_)) => return,
        Err(Error::Store(deskpool_store::StoreError::Fenced { .. })) => {
            // This term is over even if the leader loop has not noticed: end it, so a fresh
            // controller starts once the lease is (re)taken.
            ctx.cancel.cancel();
            return;
        }
        Err(e) => {
            // The backoff wakes the pool when it is over; waking it now would only spin.
            let delay = ctx.back_off(pool);
            tracing::warn!(pool, error = %e, retry_in_ms = delay.as_millis() as u64, "{what} interrupted; will retry");
            return;
        }
    }
    ctx.wake(pool);
}

/// The desktop's row as it is now.
async fn current(ctx: &Ctx, id: uuid::Uuid) -> Result<Option<Desktop>, Error> {
    let mut conn = ctx.db.acquire().await?;
    Ok(desktops::get(&mut conn, id).await?)
}

/// Everything a worker needs, owned so it can move into the spawned task.
pub(crate) struct Job {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) vc: Arc<Vcenter>,
    pub(crate) client: Client,
    pub(crate) pool: Arc<Pool>,
}

/// Claims `d` for a worker of `kind` and runs `work` (which takes the permits it needs) in a
/// span naming the pool and desktop; the end is handled by [`finish`].
fn spawn_worker<F, Fut>(job: Job, d: Desktop, kind: WorkerKind, work: F)
where
    F: FnOnce(Arc<Ctx>, Arc<Vcenter>, Client, Arc<Pool>, Desktop) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send + 'static,
{
    if !job.ctx.claim(d.id, job.pool.id, kind) {
        return;
    }
    let (what, span) = match kind {
        WorkerKind::Provision => (
            "provisioning",
            tracing::info_span!("provision", pool = %job.pool.spec.name, desktop = %d.name),
        ),
        WorkerKind::Delete => (
            "deletion",
            tracing::info_span!("delete", pool = %job.pool.spec.name, desktop = %d.name),
        ),
    };
    tokio::spawn(
        async move {
            let Job {
                ctx,
                vc,
                client,
                pool,
            } = job;
            let id = d.id;
            // The pass read `d` before claiming it: a worker that ended in between (the
            // desktop became ready, say) must not be repeated from that stale state. A desktop
            // this term just made has had no worker yet and is read again only when needed.
            let d = if ctx.is_fresh(id) {
                d
            } else {
                match current(&ctx, id).await {
                    Ok(Some(d)) => d,
                    Ok(None) => return finish(&ctx, &pool.spec.name, id, what, Ok(())),
                    Err(e) => return finish(&ctx, &pool.spec.name, id, what, Err(e)),
                }
            };
            // Run the work as a task of its own so that a panic in it still ends here: the
            // desktop is released and retried after a backoff instead of staying claimed.
            let work = tokio::spawn(
                work(Arc::clone(&ctx), vc, client, Arc::clone(&pool), d).in_current_span(),
            );
            let result = match work.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "{what} worker panicked");
                    Err(Error::Panicked(format!("{what} worker panicked: {e}")))
                }
            };
            finish(&ctx, &pool.spec.name, id, what, result);
        }
        .instrument(span),
    );
}

/// Starts a worker that takes a desktop from `pending`, `cloning` or `powering_on` to `ready`.
pub(crate) fn spawn_provision(job: Job, inventory: Option<Arc<Inventory>>, d: Desktop) {
    spawn_worker(
        job,
        d,
        WorkerKind::Provision,
        |ctx, vc, client, pool, d| async move {
            Provision {
                ctx: &ctx,
                vc: &vc,
                client: &client,
                pool: &pool,
                inventory,
            }
            .run(d)
            .await
        },
    );
}

struct Provision<'a> {
    ctx: &'a Arc<Ctx>,
    vc: &'a Vcenter,
    client: &'a Client,
    pool: &'a Pool,
    inventory: Option<Arc<Inventory>>,
}

impl Provision<'_> {
    fn pool_name(&self) -> &str {
        &self.pool.spec.name
    }

    /// Takes the desktop step by step to `ready`. Cloning holds a provisioning slot of the
    /// vCenter; powering on holds a power slot instead (Horizon bounds the two separately), so
    /// the next clone starts while this desktop boots.
    async fn run(&self, mut d: Desktop) -> Result<(), Error> {
        let mut clone_started = None;
        let mut slot: Option<OwnedSemaphorePermit> = None;
        loop {
            let wanted = match d.state {
                DesktopState::Pending | DesktopState::Cloning => Some(&self.vc.permits),
                DesktopState::PoweringOn => Some(&self.vc.power_permits),
                _ => None,
            };
            if let Some(sem) = wanted {
                if !slot
                    .as_ref()
                    .is_some_and(|p| Arc::ptr_eq(p.semaphore(), sem))
                {
                    if slot.take().is_some() {
                        // The clone is done: its slot (and the pool's clone bound) is free for
                        // the next desktop while this one powers on.
                        self.ctx.slot_freed();
                        self.ctx.wake(self.pool_name());
                    }
                    slot = Some(permit(self.ctx, sem).await?);
                }
            }
            // Each step is boxed: a worker waiting for a slot (thousands of them while a large
            // pool fills) then holds only this loop's few locals, not room for the largest
            // step's state.
            let next = match d.state {
                DesktopState::Pending => {
                    clone_started = Some(Instant::now());
                    Box::pin(self.start_clone(d)).await?
                }
                DesktopState::Cloning => Box::pin(self.finish_clone(d, clone_started)).await?,
                DesktopState::PoweringOn => Box::pin(self.power_on(d)).await?,
                _ => return Ok(()),
            };
            match next {
                Some(n) => {
                    if n.state == DesktopState::Ready {
                        if let Some(vm) = n.vm_moref.as_deref() {
                            // So that the VM watch reports it gone even if it vanishes before
                            // the watch has seen it.
                            self.vc.expect_vm(vm_ref(vm));
                        }
                    }
                    d = n
                }
                None => return Ok(()),
            }
        }
    }

    /// Writes progress and an event in one fenced transaction. None when the desktop is gone
    /// or was marked for deletion meanwhile (the worker then stops; a delete worker follows).
    async fn record(
        &self,
        d: &Desktop,
        progress: Progress,
        event: Option<(EventKind, String)>,
    ) -> Result<Option<Desktop>, Error> {
        let mut tx = self.ctx.begin().await?;
        let row = desktops::set_progress(&mut tx, d.id, &progress).await?;
        if let Some((kind, msg)) = event {
            self.ctx
                .event(&mut tx, self.pool_name(), Some(&d.name), kind, &msg)
                .await?;
        }
        tx.commit().await?;
        Ok(row.filter(|r| r.state != DesktopState::Deleting))
    }

    async fn start_clone(&self, d: Desktop) -> Result<Option<Desktop>, Error> {
        let uuid = d.instance_uuid.to_string();
        if !self.ctx.take_fresh(d.id) {
            // A clone may have been issued before a crash: find it instead of making another.
            if let Some(vm) = self.client.find_vm_by_instance_uuid(&uuid).await? {
                return self.adopt(&d, &vm, "found by instance UUID").await;
            }
        }
        let Some(inv) = self.inventory.as_deref() else {
            return Ok(None);
        };
        let spec = LinkedCloneSpec {
            name: d.name.clone(),
            folder: inv.folder.clone(),
            resource_pool: inv.resource_pool.clone(),
            datastore: inv.datastore.clone(),
            host: inv.host.clone(),
            snapshot: inv.snapshot.clone(),
            instance_uuid: uuid,
            extra_config: vec![
                (MARKER_POOL.to_owned(), self.pool_name().to_owned()),
                (MARKER_DESKTOP.to_owned(), d.id.to_string()),
            ],
            customization: inv.customization.clone(),
            power_on: false,
        };
        if self.ctx.cancel.is_cancelled() {
            // Leadership ended while this worker waited: the new leader owns this desktop.
            return Err(Error::Stopped("leadership ended"));
        }
        match self.client.clone_linked(&inv.golden, &spec).await {
            Ok(task) => {
                let msg = format!(
                    "linked clone {} of {} from snapshot {} started ({task})",
                    d.name, self.pool.spec.golden_vm, inv.snapshot
                );
                self.record(
                    &d,
                    Progress {
                        state: DesktopState::Cloning,
                        vm_moref: None,
                        task_moref: Some(task.value),
                        powered_on: false,
                        last_error: None,
                        snapshot_moref: Some(inv.snapshot.value.clone()),
                    },
                    Some((EventKind::CloneStarted, msg)),
                )
                .await
            }
            Err(e) => self.clone_failed(d, e).await,
        }
    }

    async fn adopt(&self, d: &Desktop, vm: &MoRef, how: &str) -> Result<Option<Desktop>, Error> {
        self.record(
            d,
            Progress {
                state: DesktopState::Cloning,
                vm_moref: Some(vm.value.clone()),
                task_moref: None,
                powered_on: false,
                last_error: None,
                snapshot_moref: None,
            },
            Some((
                EventKind::Adopted,
                format!("adopted VM {vm} for desktop {} ({how})", d.name),
            )),
        )
        .await
    }

    async fn finish_clone(
        &self,
        d: Desktop,
        started: Option<Instant>,
    ) -> Result<Option<Desktop>, Error> {
        let mut vm = d.vm_moref.as_deref().map(vm_ref);
        if let Some(task) = d.task_moref.as_deref().filter(|_| vm.is_none()) {
            match wait(self.client, &task_ref(task)).await {
                Ok(Some(result)) => vm = Some(result),
                Ok(None) => {}
                // The task itself is gone (finished long ago): the UUID lookup below decides.
                Err(e) if task_gone(&e, task) => {}
                Err(e @ VsError::Fault(_)) => return self.clone_failed(d, e).await,
                Err(e) => return Err(e.into()),
            }
        }
        let vm = match vm {
            Some(vm) => vm,
            None => match self
                .client
                .find_vm_by_instance_uuid(&d.instance_uuid.to_string())
                .await?
            {
                Some(vm) => vm,
                None => {
                    // No VM and no running task: the clone never happened. Start over, in a
                    // new worker with freshly resolved inventory (vCenter may have restarted).
                    tracing::warn!(desktop = %d.name, "clone task vanished without a VM; cloning again");
                    self.ctx.forget_inventory(self.pool_name());
                    self.ctx.back_off(self.pool_name());
                    self.back_to_pending(&d).await?;
                    return Ok(None);
                }
            },
        };
        let secs = started.map(|s| s.elapsed().as_secs_f64());
        if let Some(secs) = secs {
            metrics::histogram!("deskpool_clone_duration_seconds").record(secs);
        }
        let power_on = self.pool.spec.power_on;
        let mut tx = self.ctx.begin().await?;
        let row = desktops::set_progress(
            &mut tx,
            d.id,
            &Progress {
                state: if power_on {
                    DesktopState::PoweringOn
                } else {
                    DesktopState::Ready
                },
                vm_moref: Some(vm.value.clone()),
                task_moref: None,
                powered_on: false,
                last_error: None,
                snapshot_moref: None,
            },
        )
        .await?;
        pools::record_clone_outcome(&mut tx, self.pool.id, true).await?;
        let took = secs.map(|s| format!(" in {s:.1} s")).unwrap_or_default();
        self.ctx
            .event(
                &mut tx,
                self.pool_name(),
                Some(&d.name),
                EventKind::CloneSucceeded,
                &format!("linked clone {} created{took} ({vm})", d.name),
            )
            .await?;
        if !power_on {
            self.ctx
                .event(
                    &mut tx,
                    self.pool_name(),
                    Some(&d.name),
                    EventKind::DesktopReady,
                    &format!("desktop {} is ready (left powered off)", d.name),
                )
                .await?;
        }
        tx.commit().await?;
        // vCenter works again: retries of this pool need not wait any longer.
        self.ctx.clear_backoff(self.pool_name());
        Ok(row.filter(|r| r.state != DesktopState::Deleting))
    }

    async fn power_on(&self, d: Desktop) -> Result<Option<Desktop>, Error> {
        let Some(vm) = d.vm_moref.as_deref().map(vm_ref) else {
            return self.vanished(d).await;
        };
        let task = match self.client.power_on(&vm).await {
            Ok(t) => Some(t),
            Err(e) if already_on(&e) => None, // e.g. a retry after a crash
            Err(e) if not_found(&e) => return self.vanished(d).await,
            Err(e) => return Err(e.into()),
        };
        if let Some(task) = task {
            match wait(self.client, &task).await {
                Ok(_) => {}
                Err(e) if already_on(&e) => {}
                // Host not connected, no active host, datastore outage: try again later.
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e @ VsError::Fault(_)) => return self.clone_failed(d, e).await,
                Err(e) => return Err(e.into()),
            }
        }
        self.record(
            &d,
            Progress {
                state: DesktopState::Ready,
                vm_moref: None,
                task_moref: None,
                powered_on: true,
                last_error: None,
                snapshot_moref: None,
            },
            Some((
                EventKind::DesktopReady,
                format!("desktop {} powered on and ready", d.name),
            )),
        )
        .await
    }

    async fn vanished(&self, d: Desktop) -> Result<Option<Desktop>, Error> {
        tracing::warn!(desktop = %d.name, "VM vanished before power-on; the desktop will be replaced");
        self.record(
            &d,
            Progress {
                state: DesktopState::Failed,
                vm_moref: None,
                task_moref: None,
                powered_on: false,
                last_error: Some("its VM disappeared from vCenter".into()),
                snapshot_moref: None,
            },
            None,
        )
        .await?;
        Ok(None)
    }

    /// A clone (or its power-on) failed with `e`.
    async fn clone_failed(&self, d: Desktop, e: VsError) -> Result<Option<Desktop>, Error> {
        if e.is_login_failure() {
            // The vCenter refused the session (its status says so), not this clone.
            return Err(e.into());
        }
        let kind = e.fault_kind().cloned();
        match kind {
            Some(FaultKind::DuplicateName { .. }) => return self.duplicate_name(d).await,
            Some(FaultKind::ManagedObjectNotFound { .. }) => {
                // A moref we resolved is gone (snapshot removed, vCenter restarted...): resolve
                // again to tell a stale cache from a real problem.
                self.ctx.forget_inventory(self.pool_name());
                match inventory::resolve(self.client, &self.pool.spec).await {
                    Err(ResolveError::Permanent(msg)) => {
                        set_condition(self.ctx, self.pool, PoolState::Error, msg).await?;
                        return Ok(None);
                    }
                    Err(ResolveError::Transient(e)) => return Err(e.into()),
                    Ok(_) => {
                        tracing::warn!(desktop = %d.name, error = %e, "inventory changed under the pool; cloning again with fresh references");
                        self.back_to_pending(&d).await?;
                        self.ctx.back_off(self.pool_name());
                        return Ok(None);
                    }
                }
            }
            None => return Err(e.into()),
            Some(_) => {}
        }
        let fault = e.to_string();
        metrics::counter!("deskpool_clone_failures_total", "pool" => self.pool_name().to_owned(), "kind" => e.kind())
            .increment(1);
        let permanent = matches!(
            kind,
            Some(
                FaultKind::InvalidDatastore
                    | FaultKind::VmConfigFault
                    | FaultKind::CustomizationFault
            )
        );
        let mut tx = self.ctx.begin().await?;
        desktops::set_progress(
            &mut tx,
            d.id,
            &Progress {
                state: DesktopState::Failed,
                vm_moref: None,
                task_moref: None,
                powered_on: false,
                last_error: Some(fault.clone()),
                snapshot_moref: None,
            },
        )
        .await?;
        let failures = pools::record_clone_outcome(&mut tx, self.pool.id, false).await?;
        self.ctx
            .event(
                &mut tx,
                self.pool_name(),
                Some(&d.name),
                EventKind::CloneFailed,
                &format!("provisioning {} failed: {fault}", d.name),
            )
            .await?;
        let stop_after = self.ctx.cfg.stop_after_failures;
        let condition = if permanent {
            Some((
                PoolState::Error,
                EventKind::PoolError,
                format!("clone of {} failed with {fault}: fix the pool's datastore, customization spec or golden VM, then save the pool", d.name),
            ))
        } else if stop_after > 0 && failures >= stop_after {
            Some((
                PoolState::Stopped,
                EventKind::ProvisioningStopped,
                format!("provisioning stopped after {failures} clone failures in a row (last: {fault}); resume the pool once the cause is fixed"),
            ))
        } else {
            pools::set_note(
                &mut tx,
                self.pool.id,
                Some(&format!("last clone failure: {fault}")),
            )
            .await?;
            None
        };
        if let Some((state, kind, msg)) = &condition {
            pools::set_status(
                &mut tx,
                self.pool.id,
                &Status {
                    state: *state,
                    last_error: Some(msg.clone()),
                    consecutive_failures: failures,
                },
            )
            .await?;
            self.ctx
                .event(&mut tx, self.pool_name(), None, *kind, msg)
                .await?;
        }
        tx.commit().await?;
        if condition.is_none() {
            self.ctx.back_off(self.pool_name());
        }
        Ok(None)
    }

    /// Puts the desktop back to `pending` (forgetting its task), to be cloned again.
    async fn back_to_pending(&self, d: &Desktop) -> Result<Option<Desktop>, Error> {
        self.record(
            d,
            Progress {
                state: DesktopState::Pending,
                vm_moref: None,
                task_moref: None,
                powered_on: false,
                last_error: None,
                snapshot_moref: None,
            },
            None,
        )
        .await
    }

    /// vCenter says the name is taken: find out by whom, never clone a second VM.
    async fn duplicate_name(&self, d: Desktop) -> Result<Option<Desktop>, Error> {
        if let Some(vm) = self
            .client
            .find_vm_by_instance_uuid(&d.instance_uuid.to_string())
            .await?
        {
            return self
                .adopt(&d, &vm, "DuplicateName resolved by instance UUID")
                .await;
        }
        let path = format!("{}/{}", self.pool.spec.folder_path(), d.name);
        let Some(vm) = self.client.find_by_inventory_path(&path).await? else {
            // A clone of that name is still running (started before a restart), or the holder
            // was just destroyed: try again after a pause.
            tracing::info!(desktop = %d.name, "name taken by a clone in progress or just freed; retrying later");
            self.back_to_pending(&d).await?;
            self.ctx.back_off(self.pool_name());
            return Ok(None);
        };
        let info = self.client.vm_info(&vm).await?;
        let marker = |key: &str| {
            info.as_ref().and_then(|i| {
                i.extra_config
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            })
        };
        let ours = marker(MARKER_POOL).as_deref() == Some(self.pool_name());
        if ours && marker(MARKER_DESKTOP) == Some(d.id.to_string()) {
            return self
                .adopt(&d, &vm, "DuplicateName resolved by ownership marker")
                .await;
        }
        if ours {
            // The name holder carries this pool's marker but another desktop id: the row it
            // belonged to is gone (the name is unique in the database), so it is an orphan.
            if destroy_vm(self.client, &vm, None).await? {
                let msg = format!(
                    "destroyed orphan VM {} ({vm}) that held the name of desktop {}",
                    d.name, d.name
                );
                let mut tx = self.ctx.begin().await?;
                self.ctx
                    .event(
                        &mut tx,
                        self.pool_name(),
                        Some(&d.name),
                        EventKind::OrphanDestroyed,
                        &msg,
                    )
                    .await?;
                tx.commit().await?;
            }
            // Pending again and not fresh: the next round looks the UUID up, then clones.
            return self.back_to_pending(&d).await;
        }
        let msg = format!("VM name '{}' is taken in '{}' by a VM deskpool does not manage: rename or move that VM, or change the pool's naming_pattern", d.name, self.pool.spec.folder_path());
        set_condition(self.ctx, self.pool, PoolState::Error, msg).await?;
        Ok(None)
    }
}

/// Powers a VM off (if needed) and destroys it; a VM already gone is fine. With `owner`
/// (pool, desktop id), a VM whose markers say otherwise is left alone (a moref can name
/// another VM after a vCenter restart): Ok(false).
async fn destroy_vm(
    client: &Client,
    vm: &MoRef,
    owner: Option<(&str, &str)>,
) -> Result<bool, VsError> {
    let Some(info) = client.vm_info(vm).await? else {
        return Ok(false);
    };
    if let Some((pool, desktop)) = owner {
        let marker = |key: &str| {
            info.extra_config
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if marker(MARKER_POOL) != Some(pool) || marker(MARKER_DESKTOP) != Some(desktop) {
            tracing::warn!(vm = %vm, name = %info.name, "not destroying a VM whose markers name another owner");
            return Ok(false);
        }
    }
    if info.power_state != PowerState::PoweredOff {
        match client.power_off(vm).await {
            Ok(task) => match wait(client, &task).await {
                Ok(_) => {}
                Err(e) if invalid_state(&e) => {}
                Err(e) => return Err(e),
            },
            Err(e) if invalid_state(&e) => {}
            Err(e) if not_found(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    match client.destroy(vm).await {
        Ok(task) => match wait(client, &task).await {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(e),
        },
        Err(e) if not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Starts a worker that powers off and destroys a `deleting` desktop's VM, then removes its row.
pub(crate) fn spawn_delete(job: Job, d: Desktop) {
    spawn_worker(
        job,
        d,
        WorkerKind::Delete,
        |ctx, vc, client, pool, d| async move {
            let _slot = permit(&ctx, &vc.permits).await?;
            Box::pin(delete(&ctx, &client, &pool, d)).await
        },
    );
}

async fn delete(ctx: &Ctx, client: &Client, pool: &Pool, d: Desktop) -> Result<(), Error> {
    let mut vm = d.vm_moref.as_deref().map(vm_ref);
    // A clone or power-on started earlier may still run: let it end first, so the VM it
    // makes is destroyed too.
    if let Some(task) = d.task_moref.as_deref() {
        match wait(client, &task_ref(task)).await {
            Ok(Some(r)) if r.kind == "VirtualMachine" && vm.is_none() => vm = Some(r),
            // Still running after our patience: deleting the row now could orphan its VM.
            Err(e) if is_fault(&e, |k| matches!(k, FaultKind::TaskInProgress)) => {
                return Err(e.into())
            }
            Ok(_) | Err(VsError::Fault(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if vm.is_none() {
        vm = client
            .find_vm_by_instance_uuid(&d.instance_uuid.to_string())
            .await?;
    }
    let desktop_id = d.id.to_string();
    if ctx.cancel.is_cancelled() {
        return Err(Error::Stopped("leadership ended"));
    }
    let destroyed = match &vm {
        Some(vm) => destroy_vm(client, vm, Some((&pool.spec.name, &desktop_id))).await?,
        None => false,
    };
    let mut tx = ctx.begin().await?;
    desktops::delete(&mut tx, d.id).await?;
    let msg = match (&vm, destroyed) {
        (Some(vm), true) => format!("desktop {} destroyed ({vm})", d.name),
        _ => format!("desktop {} removed (it had no VM)", d.name),
    };
    ctx.event(
        &mut tx,
        &pool.spec.name,
        Some(&d.name),
        EventKind::DesktopDestroyed,
        &msg,
    )
    .await?;
    tx.commit().await?;
    ctx.clear_backoff(&pool.spec.name);
    Ok(())
}

/// Destroys a VM that carries this pool's marker but matches no desktop row.
pub(crate) fn spawn_orphan_destroy(
    ctx: &Arc<Ctx>,
    vc: &Arc<Vcenter>,
    client: &Client,
    pool: &Pool,
    vm: VmInfo,
) {
    let (ctx, vc, client) = (Arc::clone(ctx), Arc::clone(vc), client.clone());
    let pool = pool.spec.name.clone();
    tokio::spawn(async move {
        let Ok(_permit) = permit(&ctx, &vc.permits).await else {
            return;
        };
        let result = destroy_vm(&client, &vm.moref, None).await;
        drop(_permit);
        ctx.slot_freed();
        match result {
            Ok(true) => {
                let msg = format!(
                    "destroyed orphan VM {} ({}): it carries this pool's marker but no desktop matches it",
                    vm.name, vm.moref
                );
                let recorded = async {
                    let mut tx = ctx.begin().await?;
                    ctx.event(
                        &mut tx,
                        &pool,
                        Some(&vm.name),
                        EventKind::OrphanDestroyed,
                        &msg,
                    )
                    .await?;
                    tx.commit().await?;
                    Ok::<_, Error>(())
                };
                if let Err(e) = recorded.await {
                    tracing::warn!(error = %e, "cannot record the orphan_destroyed event");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(pool, vm = %vm.name, error = %e, "cannot destroy orphan VM; next sweep retries")
            }
        }
    });
}
