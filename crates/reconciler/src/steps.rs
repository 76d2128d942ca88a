//! Workers: execute one desktop's steps against vCenter and record each result before the
//! next. What the next step is, is decided by [`deskpool_domain::next_step`] from the row and
//! vCenter's last answer; this module only makes the calls, translates their answers into a
//! [`Report`] and writes the rows and events. Each worker holds a permit of its vCenter's
//! provisioning bound (a power slot while powering on).

use std::sync::Arc;
use std::time::Instant;

use deskpool_domain::{
    after_destroy_failure, next_step, AfterDestroyFailure, DesktopState, EventKind, Failure,
    FaultClass, Lookup, NameHolder, PoolState, ReadyWhen, Report, Step, StepDesktop,
    MARKER_DESKTOP, MARKER_INSTALLATION, MARKER_POOL,
};
use deskpool_store::desktops::{self, Desktop, Progress};
use deskpool_store::pools::{self, Pool, Status};
use deskpool_vsphere::{
    Client, Error as VsError, Fault, FaultKind, LinkedCloneSpec, MoRef, PowerState, VmInfo,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::conditions::set_condition;
use crate::context::{Ctx, WorkerKind};
use crate::gate::{Admission, CloneGate, GatePermit, Place};
use crate::inventory::{self, Inventory, ResolveError};
use crate::policy::error_policy;
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

/// What a fault means for the desktop's next step; None when `e` is not a fault at all.
fn fault_class(e: &VsError) -> Option<FaultClass> {
    e.fault_kind().map(|k| match k {
        FaultKind::DuplicateName { .. } => FaultClass::DuplicateName,
        FaultKind::ManagedObjectNotFound { .. } => FaultClass::ObjectGone,
        FaultKind::InvalidDatastore | FaultKind::VmConfigFault | FaultKind::CustomizationFault => {
            FaultClass::Permanent
        }
        _ => FaultClass::Other,
    })
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

/// Handles the end of a worker: frees the desktop and its slot, then asks for the pool's next
/// pass (now when the worker finished, as the error policy says when it failed).
fn finish(ctx: &Arc<Ctx>, pool: &str, desktop: uuid::Uuid, what: &str, result: Result<(), Error>) {
    ctx.release(desktop);
    ctx.scheduler.slot_freed();
    let Err(e) = result else {
        ctx.wake(pool);
        return;
    };
    let action = error_policy(pool, &e, ctx);
    match &e {
        Error::Stopped(_) | Error::Store(deskpool_store::StoreError::Fenced { .. }) => return,
        // The desktop's row changed (pending again, or failed): a pass records that now; the
        // backoff keeps it from provisioning until the action's time.
        Error::Retry(why) => {
            tracing::info!(pool, "{why}; retrying after a backoff");
            ctx.wake(pool);
        }
        // The backoff wakes the pool when it is over; waking it now would only spin.
        _ => tracing::warn!(pool, error = %e, ?action, "{what} interrupted; will retry"),
    }
    ctx.scheduler.apply(pool, action);
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
    /// The pool's clone gate.
    pub(crate) gate: Arc<CloneGate>,
}

/// Claims `d` for a worker of `kind` and runs `work` (which takes the permits it needs) in a
/// span naming the pool and desktop; the end is handled by [`finish`], and only then is the
/// worker's `place` at its pool's clone gate (if it still holds one) freed.
fn spawn_worker<F, Fut>(job: Job, d: Desktop, kind: WorkerKind, place: Arc<Place>, work: F)
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
                gate: _,
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
            place.release();
        }
        .instrument(span),
    );
}

/// Starts a worker that takes a desktop from `pending`, `cloning` or `powering_on` to `ready`.
/// `running`: the place at the pool's clone gate of a clone that already runs in vCenter.
pub(crate) fn spawn_provision(
    job: Job,
    inventory: Option<Arc<Inventory>>,
    d: Desktop,
    running: Option<GatePermit>,
) {
    let place = Arc::new(Place::default());
    if let Some(p) = running {
        place.hold(p);
    }
    let gate = Arc::clone(&job.gate);
    let held = Arc::clone(&place);
    spawn_worker(
        job,
        d,
        WorkerKind::Provision,
        place,
        |ctx, vc, client, pool, d| async move {
            Provision {
                ctx: &ctx,
                vc: &vc,
                client: &client,
                pool: &pool,
                inventory,
                gate,
                place: held,
            }
            .run(d)
            .await
        },
    );
}

/// What a provisioning worker keeps between steps: what vCenter's last answers named.
#[derive(Debug, Default)]
struct Found {
    /// The VM the last lookup, task or name holder named.
    vm: Option<MoRef>,
    /// The power-on task just started.
    task: Option<MoRef>,
    /// The fault of the last failed call.
    fault: Option<VsError>,
    /// How the VM was found, for the adoption event.
    how: &'static str,
    /// When this worker issued the clone.
    clone_started: Option<Instant>,
}

struct Provision<'a> {
    ctx: &'a Arc<Ctx>,
    vc: &'a Vcenter,
    client: &'a Client,
    pool: &'a Pool,
    inventory: Option<Arc<Inventory>>,
    /// The pool's clone gate, and this worker's place at it while it clones.
    gate: Arc<CloneGate>,
    place: Arc<Place>,
}

/// What a step's execution leads to: vCenter's answer for the next step, or the worker's end.
enum Next {
    Report(Report),
    /// The row moved on (or is gone / being deleted: None); the next step starts from it.
    Row(Option<Box<Desktop>>),
    Done,
}

impl Provision<'_> {
    fn pool_name(&self) -> &str {
        &self.pool.spec.name
    }

    /// Takes the desktop step by step to `ready`. Cloning holds a provisioning slot of the
    /// vCenter; powering on holds a power slot instead (Horizon bounds the two separately), so
    /// the next clone starts while this desktop boots.
    async fn run(&self, mut d: Desktop) -> Result<(), Error> {
        let mut fresh = self.ctx.take_fresh(d.id);
        let mut found = Found::default();
        let mut report = Report::Started;
        let mut slot: Option<OwnedSemaphorePermit> = None;
        // The clone task succeeded and its slot was freed; the row is not recorded yet.
        let mut clone_ended = false;
        loop {
            if d.state == DesktopState::Pending && !self.place.is_held() {
                match self.admit(d).await? {
                    Some(row) => d = row,
                    None => return Ok(()),
                }
            }
            if clone_ended && d.state != DesktopState::Cloning {
                // Recorded: the pool's next pass tops its queue of pending desktops up.
                clone_ended = false;
                self.ctx.wake(self.pool_name());
            }
            let wanted = match d.state {
                DesktopState::Pending => Some(&self.vc.permits),
                DesktopState::Cloning if !clone_ended => Some(&self.vc.permits),
                DesktopState::PoweringOn => Some(&self.vc.power_permits),
                _ => None,
            };
            if let Some(sem) = wanted {
                if !slot
                    .as_ref()
                    .is_some_and(|p| Arc::ptr_eq(p.semaphore(), sem))
                {
                    if slot.take().is_some() {
                        // The clone is done: its slot (and its place at the pool's gate, where
                        // the next desktop waits) is free while this one powers on.
                        self.place.release();
                        self.ctx.scheduler.slot_freed();
                        self.ctx.wake(self.pool_name());
                    }
                    slot = Some(permit(self.ctx, sem).await?);
                }
            }
            if !d.state.occupies_clone_slot() {
                // No clone of this desktop runs (any more): the next one may start.
                self.place.release();
            }
            let facts = StepDesktop {
                state: d.state,
                vm_known: d.vm_moref.is_some(),
                task_known: d.task_moref.is_some(),
                fresh,
                may_clone: self.inventory.is_some(),
                power_on: self.pool.spec.power_on,
                wait_for_guest: self.pool.spec.ready_when == ReadyWhen::GuestIp,
            };
            let step = next_step(&facts, report);
            if step == Step::Clone {
                fresh = false;
            }
            // Each step is boxed: a worker waiting for a slot (thousands of them while a large
            // pool fills) then holds only this loop's few locals, not room for the largest
            // step's state.
            match Box::pin(self.execute(step, &d, report, &mut found)).await? {
                Next::Report(r @ Report::TaskEnded { vm: true })
                    if d.state == DesktopState::Cloning =>
                {
                    // The clone exists: its vCenter slot and its place at the pool's gate go
                    // to the next desktop now, before this one's result is recorded (a crash
                    // in between finds the finished task again). A failure is no such end:
                    // its place waits for the error policy.
                    drop(slot.take());
                    self.place.release();
                    self.ctx.scheduler.slot_freed();
                    clone_ended = true;
                    report = r;
                }
                Next::Report(r) => report = r,
                Next::Row(Some(n)) => {
                    let n = *n;
                    if matches!(n.state, DesktopState::Ready | DesktopState::Booting) {
                        if let Some(vm) = n.vm_moref.as_deref() {
                            // So that the VM watch reports it gone even if it vanishes before
                            // the watch has seen it.
                            self.vc.expect_vm(vm_ref(vm));
                            if n.state == DesktopState::Booting {
                                self.vc.await_guest(vm_ref(vm));
                            }
                        }
                    }
                    d = n;
                    report = Report::Started;
                }
                Next::Row(None) | Next::Done => return Ok(()),
            }
        }
    }

    /// Takes a place at the pool's clone gate for pending desktop `d`. A desktop that had to
    /// wait reads its row and pool again (the queue is committed ahead: either may have changed
    /// meanwhile): the row it may go on with, or None when it must not clone now (the row is
    /// gone or no longer pending, the pool stopped provisioning or backs off, its inventory
    /// changed); the pool's next pass decides then.
    async fn admit(&self, mut d: Desktop) -> Result<Option<Desktop>, Error> {
        loop {
            let admission = tokio::select! {
                _ = self.ctx.cancel.cancelled() => return Err(Error::Stopped("leadership ended")),
                a = self.gate.admit() => a,
            };
            let permit = match admission {
                Admission::Now(p) => {
                    self.place.hold(p);
                    return Ok(Some(d));
                }
                Admission::AfterWait(p) => Some(p),
                Admission::Recheck => None,
            };
            let Some(row) = self.still_wanted(d.id).await? else {
                return Ok(None);
            };
            d = row;
            if let Some(p) = permit {
                self.place.hold(p);
                return Ok(Some(d));
            }
        }
    }

    /// `desktop`'s row, read again, if it may still be cloned now: still pending, its pool
    /// (read again too) still provisions with this worker's inventory, and the pool's last
    /// pass did not close the gate (paused, backing off...). A clone that just failed may have
    /// put the pool in `error` or `stopped` before any pass ran.
    async fn still_wanted(&self, desktop: uuid::Uuid) -> Result<Option<Desktop>, Error> {
        let fingerprint = inventory::fingerprint(&self.pool.spec);
        if self.ctx.scheduler.backoff_until(self.pool_name()).is_some()
            || !self.gate.is_open_for(&fingerprint)
        {
            return Ok(None);
        }
        let mut conn = self.ctx.db.acquire().await?;
        let Some((row, pool)) = desktops::get_with_pool(&mut conn, desktop).await? else {
            return Ok(None);
        };
        let provisions = pool.state == PoolState::Ok
            && pool.spec.enabled
            && inventory::fingerprint(&pool.spec) == fingerprint;
        Ok((provisions && row.state == DesktopState::Pending).then_some(row))
    }

    /// Makes the calls and writes of one step. `before` is the answer that led to it.
    async fn execute(
        &self,
        step: Step,
        d: &Desktop,
        before: Report,
        found: &mut Found,
    ) -> Result<Next, Error> {
        let uuid = d.instance_uuid.to_string();
        Ok(match step {
            Step::Lookup(purpose) => {
                found.vm = self.client.find_vm_by_instance_uuid(&uuid).await?;
                found.how = match purpose {
                    Lookup::NameTaken => "DuplicateName resolved by instance UUID",
                    _ => "found by instance UUID",
                };
                Next::Report(Report::Lookup {
                    purpose,
                    found: found.vm.is_some(),
                })
            }
            Step::Clone => self.start_clone(d, found).await?,
            Step::WaitTask if d.state == DesktopState::PoweringOn => {
                let Some(task) = found.task.take() else {
                    return Ok(Next::Done);
                };
                match wait(self.client, &task).await {
                    Ok(_) => Next::Report(Report::TaskEnded { vm: false }),
                    Err(e) if already_on(&e) => Next::Report(Report::TaskEnded { vm: false }),
                    // Host not connected, no active host, datastore outage: try again later.
                    Err(e) if e.is_transient() => return Err(e.into()),
                    Err(e @ VsError::Fault(_)) => self.fault(e, found)?,
                    Err(e) => return Err(e.into()),
                }
            }
            Step::WaitTask => {
                let Some(task) = d.task_moref.as_deref() else {
                    return Ok(Next::Done);
                };
                match wait(self.client, &task_ref(task)).await {
                    Ok(Some(vm)) => {
                        found.vm = Some(vm);
                        Next::Report(Report::TaskEnded { vm: true })
                    }
                    Ok(None) => Next::Report(Report::TaskEnded { vm: false }),
                    // The task itself is gone (finished long ago): a UUID lookup decides.
                    Err(e) if task_gone(&e, task) => Next::Report(Report::TaskGone),
                    Err(e @ VsError::Fault(_)) => self.fault(e, found)?,
                    Err(e) => return Err(e.into()),
                }
            }
            Step::Adopt => {
                let Some(vm) = found.vm.clone() else {
                    return Ok(Next::Done);
                };
                let msg = format!("adopted VM {vm} for desktop {} ({})", d.name, found.how);
                let row = self
                    .record(
                        d,
                        Progress::adopted(vm.value),
                        Some((EventKind::Adopted, msg)),
                    )
                    .await?;
                Next::Row(row.map(Box::new))
            }
            Step::RecordCloned { next } => {
                // The row's VM first, then the one the task or a lookup named.
                let vm = d.vm_moref.as_deref().map(vm_ref).or(found.vm.take());
                let Some(vm) = vm else {
                    return Ok(Next::Done);
                };
                let row = self.record_cloned(d, &vm, next, found.clone_started);
                Next::Row(row.await?.map(Box::new))
            }
            Step::PowerOn => {
                let Some(vm) = d.vm_moref.as_deref().map(vm_ref) else {
                    return Ok(Next::Report(Report::VmGone));
                };
                match self.client.power_on(&vm).await {
                    Ok(t) => {
                        found.task = Some(t);
                        Next::Report(Report::PowerOnStarted)
                    }
                    // Already on (e.g. a retry after a crash); only InvalidPowerState with the
                    // VM on means that, not a disconnected host or a pending question.
                    Err(e) if already_on(&e) => Next::Report(Report::TaskEnded { vm: false }),
                    Err(e) if not_found(&e) => Next::Report(Report::VmGone),
                    Err(e) => return Err(e.into()),
                }
            }
            Step::MarkReady => {
                let msg = format!("desktop {} powered on and ready", d.name);
                let event = Some((EventKind::DesktopReady, msg));
                let row = self.record(d, Progress::powered_on(), event).await?;
                if let Some(r) = &row {
                    crate::readiness::observe_time_to_ready(r);
                }
                Next::Row(row.map(Box::new))
            }
            Step::MarkBooting => {
                let msg = format!(
                    "desktop {} powered on; waiting for its guest (VMware Tools running and an IPv4 address{}, within {} s)",
                    d.name,
                    if self.pool.spec.customization_spec.is_some() {
                        ", and the customization's success"
                    } else {
                        ""
                    },
                    self.pool.spec.ready_timeout_secs
                );
                let event = Some((EventKind::DesktopBooting, msg));
                Next::Row(
                    self.record(d, Progress::booting(), event)
                        .await?
                        .map(Box::new),
                )
            }
            Step::MarkFailed(Failure::VmVanished) => {
                tracing::warn!(desktop = %d.name, "VM vanished before power-on; the desktop will be replaced");
                let failed = Progress::failed("its VM disappeared from vCenter");
                self.record(d, failed, None).await?;
                Next::Done
            }
            Step::MarkFailed(Failure::Fault { permanent }) => {
                let Some(e) = found.fault.take() else {
                    return Ok(Next::Done);
                };
                self.clone_failed(d, e, permanent).await?;
                Next::Done
            }
            Step::Reresolve => {
                // A moref we resolved is gone (snapshot removed, vCenter restarted...): resolve
                // again to tell a stale cache from a real problem.
                self.ctx.forget_inventory(self.pool_name());
                match inventory::resolve(self.client, &self.pool.spec).await {
                    Err(ResolveError::Permanent(msg)) => {
                        set_condition(self.ctx, self.pool, PoolState::Error, msg).await?;
                        Next::Done
                    }
                    Err(ResolveError::Transient(e)) => return Err(e.into()),
                    Ok(_) => Next::Report(Report::InventoryValid),
                }
            }
            Step::FindNameHolder => self.find_name_holder(d, found).await?,
            Step::DestroyNameHolder => {
                if let Some(vm) = found.vm.take() {
                    self.destroy_name_holder(d, &vm).await?;
                }
                Next::Report(Report::HolderDestroyed)
            }
            // Pending again and not fresh: the next round looks the UUID up, then clones.
            Step::BackToPending => Next::Row(
                self.record(d, Progress::pending(), None)
                    .await?
                    .map(Box::new),
            ),
            Step::Retry { forget_inventory } => {
                if forget_inventory {
                    // Cloned again with freshly resolved inventory (vCenter may have restarted).
                    self.ctx.forget_inventory(self.pool_name());
                }
                self.record(d, Progress::pending(), None).await?;
                return Err(Error::Retry(retry_reason(&d.name, before)));
            }
            Step::NameTakenByForeign => {
                let msg = format!("VM name '{}' is taken in '{}' by a VM deskpool does not manage: rename or move that VM, or change the pool's naming_pattern", d.name, self.pool.spec.folder_path());
                set_condition(self.ctx, self.pool, PoolState::Error, msg).await?;
                Next::Done
            }
            Step::Destroy | Step::Forget | Step::Stop => Next::Done,
        })
    }

    /// A fault of a clone or power-on becomes a report; anything else ends the worker.
    fn fault(&self, e: VsError, found: &mut Found) -> Result<Next, Error> {
        if e.is_login_failure() {
            // The vCenter refused the session (its status says so), not this clone.
            return Err(e.into());
        }
        match fault_class(&e) {
            Some(class) => {
                found.fault = Some(e);
                Ok(Next::Report(Report::Fault(class)))
            }
            None => Err(e.into()),
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

    async fn start_clone(&self, d: &Desktop, found: &mut Found) -> Result<Next, Error> {
        let Some(inv) = self.inventory.as_deref() else {
            return Ok(Next::Done);
        };
        found.clone_started = Some(Instant::now());
        let installation = self.ctx.installation().await?;
        let spec = LinkedCloneSpec {
            name: d.name.clone(),
            folder: inv.folder.clone(),
            resource_pool: inv.resource_pool.clone(),
            datastore: inv.datastore.clone(),
            host: inv.host.clone(),
            snapshot: inv.snapshot.clone(),
            instance_uuid: d.instance_uuid.to_string(),
            extra_config: vec![
                (MARKER_INSTALLATION.to_owned(), installation.to_string()),
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
                let started = Progress::clone_started(task.value, inv.snapshot.value.clone());
                let row = self
                    .record(d, started, Some((EventKind::CloneStarted, msg)))
                    .await?;
                Ok(Next::Row(row.map(Box::new)))
            }
            Err(e) => self.fault(e, found),
        }
    }

    /// Records the clone's VM, counts the success and moves on to `next`.
    async fn record_cloned(
        &self,
        d: &Desktop,
        vm: &MoRef,
        next: DesktopState,
        started: Option<Instant>,
    ) -> Result<Option<Desktop>, Error> {
        let secs = started.map(|s| s.elapsed().as_secs_f64());
        if let Some(secs) = secs {
            metrics::histogram!("deskpool_clone_duration_seconds").record(secs);
        }
        let power_on = next == DesktopState::PoweringOn;
        let mut tx = self.ctx.begin().await?;
        let row =
            desktops::set_progress(&mut tx, d.id, &Progress::cloned(vm.value.clone(), power_on))
                .await?;
        pools::record_clone_outcome(&mut tx, self.pool.id, true).await?;
        let took = secs.map(|s| format!(" in {s:.1} s")).unwrap_or_default();
        let name = self.pool_name();
        let desktop = Some(d.name.as_str());
        let msg = format!("linked clone {} created{took} ({vm})", d.name);
        self.ctx
            .event(&mut tx, name, desktop, EventKind::CloneSucceeded, &msg)
            .await?;
        if !power_on {
            let msg = format!("desktop {} is ready (left powered off)", d.name);
            self.ctx
                .event(&mut tx, name, desktop, EventKind::DesktopReady, &msg)
                .await?;
        }
        tx.commit().await?;
        // vCenter works again: retries of this pool need not wait any longer.
        self.ctx.scheduler.clear_backoff(name);
        Ok(row.filter(|r| r.state != DesktopState::Deleting))
    }

    /// The clone (or its power-on) failed with `e`: the desktop is failed; the pool goes to
    /// `error` (a permanent fault) or `stopped` (too many in a row), or retries after a backoff.
    async fn clone_failed(&self, d: &Desktop, e: VsError, permanent: bool) -> Result<(), Error> {
        let fault = e.to_string();
        metrics::counter!("deskpool_clone_failures_total", "pool" => self.pool_name().to_owned(), "kind" => e.kind())
            .increment(1);
        let mut tx = self.ctx.begin().await?;
        desktops::set_progress(&mut tx, d.id, &Progress::failed(fault.clone())).await?;
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
                self.pool.version,
                Some(&format!("last clone failure: {fault}")),
            )
            .await?;
            None
        };
        if let Some((state, kind, msg)) = &condition {
            let status = Status {
                state: *state,
                last_error: Some(msg.clone()),
                consecutive_failures: failures,
            };
            if pools::set_status(&mut tx, self.pool.id, self.pool.version, &status).await? {
                self.ctx
                    .event(&mut tx, self.pool_name(), None, *kind, msg)
                    .await?;
            } else {
                // The spec changed since the pass that started this clone: its failure says
                // nothing about the new spec (the change wakes the pool for a new pass).
                tracing::info!(pool = %self.pool_name(), "pool changed since the clone started; not recording: {msg}");
            }
        }
        tx.commit().await?;
        match condition {
            Some(_) => Ok(()),
            None => Err(Error::Retry(format!(
                "clone of {} failed ({fault})",
                d.name
            ))),
        }
    }

    /// vCenter says the name is taken and no VM has the desktop's UUID: who holds it?
    async fn find_name_holder(&self, d: &Desktop, found: &mut Found) -> Result<Next, Error> {
        let path = format!("{}/{}", self.pool.spec.folder_path(), d.name);
        let Some(vm) = self.client.find_by_inventory_path(&path).await? else {
            return Ok(Next::Report(Report::Holder(NameHolder::Nobody)));
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
        // Markers are copied with a VM: only the instance UUID says whether deskpool made the
        // holder. One this installation issued with no row left (the name is unique in the
        // database, and this desktop's own UUID was looked up already) is a leftover.
        let ours = self.ctx.installation().await?.to_string();
        let other_installation = marker(MARKER_INSTALLATION).is_some_and(|i| i != ours);
        let uuid = info
            .as_ref()
            .and_then(|i| i.instance_uuid.as_deref())
            .and_then(|u| uuid::Uuid::parse_str(u).ok());
        let leftover = match uuid {
            Some(u) if !other_installation => {
                let mut conn = self.ctx.db.acquire().await?;
                deskpool_store::installation::issued(&mut conn, &[u])
                    .await?
                    .contains(&u)
                    && deskpool_store::installation::desktop_pools(&mut conn, &[u])
                        .await?
                        .is_empty()
            }
            _ => false,
        };
        let holder = if leftover {
            NameHolder::OtherDesktop
        } else {
            NameHolder::Foreign
        };
        found.vm = Some(vm);
        Ok(Next::Report(Report::Holder(holder)))
    }

    async fn destroy_name_holder(&self, d: &Desktop, vm: &MoRef) -> Result<(), Error> {
        if destroy_vm(self.client, vm, None).await? {
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
        Ok(())
    }
}

/// Why a desktop is retried later, from the answer that led to the retry.
fn retry_reason(desktop: &str, before: Report) -> String {
    match before {
        Report::Holder(_) => {
            format!("the name of {desktop} is taken by a clone in progress or was just freed")
        }
        Report::InventoryValid => {
            format!(
                "inventory changed under the pool; cloning {desktop} again with fresh references"
            )
        }
        _ => format!("the clone task of {desktop} vanished without a VM; cloning again"),
    }
}

/// Powers a VM off (if needed) and destroys it; a VM already gone is fine. With `owner`
/// (the instance UUID deskpool gave it), a VM with another instance UUID is left alone (a
/// moref can name another VM after a vCenter restart, and markers are copied with a VM):
/// Ok(false).
async fn destroy_vm(client: &Client, vm: &MoRef, owner: Option<&str>) -> Result<bool, VsError> {
    let Some(info) = client.vm_info(vm).await? else {
        return Ok(false);
    };
    if info.inaccessible {
        // Its instance UUID cannot be read, so it cannot be told to be deskpool's: wait until
        // vCenter can read it again.
        return Err(VsError::Fault(Fault::new(
            FaultKind::InaccessibleDatastore,
            format!(
                "VM {} ({vm}) is inaccessible: its datastore cannot be reached",
                info.name
            ),
        )));
    }
    if let Some(uuid) = owner {
        if !info
            .instance_uuid
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(uuid))
        {
            tracing::warn!(vm = %vm, name = %info.name, "not destroying a VM whose instance UUID is not the desktop's");
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
/// A destroy vCenter refuses (see [`counts_against_desktop`]) is tried again by the same
/// worker after the desktop's own delay, holding no slot meanwhile, so the pool is not held
/// back; after `destroy_tries` the desktop is marked failed and left alone.
pub(crate) fn spawn_delete(job: Job, d: Desktop) {
    spawn_worker(
        job,
        d,
        WorkerKind::Delete,
        Arc::default(),
        |ctx, vc, client, pool, mut d| async move {
            loop {
                let slot = permit(&ctx, &vc.permits).await?;
                let after = Box::pin(delete(&ctx, &client, &pool, d)).await?;
                drop(slot);
                let Some((id, delay)) = after else {
                    return Ok(());
                };
                ctx.scheduler.slot_freed();
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Err(Error::Stopped("leadership ended")),
                    _ = tokio::time::sleep(delay) => {}
                }
                match current(&ctx, id).await? {
                    Some(row) if row.state == DesktopState::Deleting => d = row,
                    _ => return Ok(()),
                }
            }
        },
    );
}

/// A failed destroy that is the desktop's own problem, counted against it: vCenter refused
/// with a fault that will not pass by itself (`NoPermission`, say). Transient faults, a
/// refused login and transport errors are the vCenter's, and back the pool off as before.
fn counts_against_desktop(e: &VsError) -> bool {
    e.fault()
        .is_some_and(|f| !f.is_transient() && !f.is_login_failure())
        && !not_found(e)
}

/// Counts the failed destroy of `d`'s VM against it: Some(delay) to try again, or None once
/// deskpool has given up (the desktop is failed, with the reason).
async fn destroy_failed(
    ctx: &Ctx,
    pool: &Pool,
    d: &Desktop,
    vm: Option<&MoRef>,
    e: VsError,
) -> Result<Option<(uuid::Uuid, std::time::Duration)>, Error> {
    let vm = vm.map_or_else(|| "its VM".to_owned(), |v| format!("VM {v}"));
    let mut tx = ctx.begin().await?;
    let Some(failures) =
        desktops::count_destroy_failure(&mut tx, d.id, &format!("cannot destroy {vm}: {e}"))
            .await?
    else {
        return Ok(None);
    };
    let cfg = &ctx.cfg;
    let after = after_destroy_failure(
        failures,
        cfg.destroy_tries,
        cfg.backoff_base,
        cfg.backoff_max,
    );
    let retry = match after {
        AfterDestroyFailure::TryAgainAfter(delay) => {
            tracing::warn!(desktop = %d.name, failures, error = %e, "vCenter refused to destroy the desktop's VM; trying again in {delay:?}");
            Some((d.id, delay))
        }
        AfterDestroyFailure::GiveUp => {
            let why = format!(
                "cannot destroy {vm}: {e}; deskpool gave up after {failures} tries: fix the cause (e.g. grant the permission) or remove the VM by hand, then delete the desktop again"
            );
            desktops::give_up_destroy(&mut tx, d.id, &why).await?;
            ctx.event(
                &mut tx,
                &pool.spec.name,
                Some(&d.name),
                EventKind::DestroyGivenUp,
                &why,
            )
            .await?;
            tracing::warn!(desktop = %d.name, "{why}");
            None
        }
    };
    tx.commit().await?;
    Ok(retry)
}

/// One try at destroying `d`'s VM and removing its row. Some((desktop, delay)) when vCenter
/// refused the destroy and the desktop is to be tried again after the delay.
async fn delete(
    ctx: &Ctx,
    client: &Client,
    pool: &Pool,
    d: Desktop,
) -> Result<Option<(uuid::Uuid, std::time::Duration)>, Error> {
    let mut vm = d.vm_moref.as_deref().map(vm_ref);
    let mut destroyed = false;
    let mut report = Report::Started;
    let facts = StepDesktop {
        state: d.state,
        vm_known: d.vm_moref.is_some(),
        task_known: d.task_moref.is_some(),
        fresh: false,
        may_clone: false,
        power_on: pool.spec.power_on,
        wait_for_guest: pool.spec.ready_when == ReadyWhen::GuestIp,
    };
    loop {
        report = match next_step(&facts, report) {
            Step::WaitTask => {
                let Some(task) = d.task_moref.as_deref() else {
                    return Ok(None);
                };
                match wait(client, &task_ref(task)).await {
                    Ok(Some(r)) if r.kind == "VirtualMachine" && vm.is_none() => {
                        vm = Some(r);
                        Report::TaskEnded { vm: true }
                    }
                    // Still running after our patience: deleting the row now could orphan its VM.
                    Err(e) if is_fault(&e, |k| matches!(k, FaultKind::TaskInProgress)) => {
                        return Err(e.into())
                    }
                    Ok(_) | Err(VsError::Fault(_)) => Report::TaskEnded { vm: false },
                    Err(e) => return Err(e.into()),
                }
            }
            Step::Lookup(purpose) => {
                vm = client
                    .find_vm_by_instance_uuid(&d.instance_uuid.to_string())
                    .await?;
                Report::Lookup {
                    purpose,
                    found: vm.is_some(),
                }
            }
            Step::Destroy => {
                if ctx.cancel.is_cancelled() {
                    return Err(Error::Stopped("leadership ended"));
                }
                let uuid = d.instance_uuid.to_string();
                if let Some(vm) = &vm {
                    destroyed = match destroy_vm(client, vm, Some(&uuid)).await {
                        Ok(destroyed) => destroyed,
                        Err(e) if counts_against_desktop(&e) => {
                            return destroy_failed(ctx, pool, &d, Some(vm), e).await;
                        }
                        // The VM cannot be read (datastore outage): this desktop waits; the
                        // pool is not held back.
                        Err(e) if is_fault(&e, |k| *k == FaultKind::InaccessibleDatastore) => {
                            tracing::warn!(desktop = %d.name, error = %e, "not destroying an inaccessible VM yet");
                            return Ok(Some((d.id, ctx.cfg.backoff_max)));
                        }
                        Err(e) => return Err(e.into()),
                    };
                }
                Report::Destroyed
            }
            Step::Forget => {
                forget(ctx, pool, &d, vm.as_ref().filter(|_| destroyed)).await?;
                return Ok(None);
            }
            _ => return Ok(None),
        };
    }
}

/// Removes a deleted desktop's row, with the event saying whether a VM was destroyed.
async fn forget(
    ctx: &Ctx,
    pool: &Pool,
    d: &Desktop,
    destroyed: Option<&MoRef>,
) -> Result<(), Error> {
    if ctx.cancel.is_cancelled() {
        return Err(Error::Stopped("leadership ended"));
    }
    let mut tx = ctx.begin().await?;
    desktops::delete(&mut tx, d.id).await?;
    let msg = match destroyed {
        Some(vm) => format!("desktop {} destroyed ({vm})", d.name),
        None => format!("desktop {} removed (it had no VM)", d.name),
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
    ctx.scheduler.clear_backoff(&pool.spec.name);
    Ok(())
}

/// Destroys a VM this installation made (its instance UUID was issued) for a desktop that is
/// gone, then forgets the issued UUID. `pool` is the pool its markers name (for the event).
pub(crate) fn spawn_orphan_destroy(
    ctx: &Arc<Ctx>,
    vc: &Arc<Vcenter>,
    client: &Client,
    pool: &str,
    vm: VmInfo,
) {
    let (ctx, vc, client) = (Arc::clone(ctx), Arc::clone(vc), client.clone());
    let pool = pool.to_owned();
    tokio::spawn(async move {
        let Ok(_permit) = permit(&ctx, &vc.permits).await else {
            return;
        };
        let result = destroy_vm(&client, &vm.moref, vm.instance_uuid.as_deref()).await;
        drop(_permit);
        ctx.scheduler.slot_freed();
        match result {
            Ok(true) => {
                let msg = format!(
                    "destroyed VM {} ({}): deskpool made it for a desktop that no longer exists",
                    vm.name, vm.moref
                );
                let recorded = async {
                    let mut tx = ctx.begin().await?;
                    if let Some(u) = vm
                        .instance_uuid
                        .as_deref()
                        .and_then(|u| uuid::Uuid::parse_str(u).ok())
                    {
                        deskpool_store::installation::forget_issued(&mut tx, u).await?;
                    }
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
