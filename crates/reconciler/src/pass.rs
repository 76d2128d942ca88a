//! One reconcile pass for one pool: read, plan, record, hand work to workers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deskpool_domain::{
    plan, DesktopState, DesktopView, EventKind, PlanInput, PoolState, MARKER_DESKTOP,
};
use deskpool_store::desktops::{self, Desktop, NewDesktop, Progress};
use deskpool_store::pools::{self, Pool, Status};
use deskpool_store::StoreError;
use deskpool_vsphere::{Client, PowerState, VmChange, VmEvent};
use tracing::Instrument;
use uuid::Uuid;

use crate::controller::{Ctx, Sweep, WorkerKind};
use crate::inventory::{self, Inventory, ResolveError};
use crate::vcenter::Vcenter;
use crate::worker;
use crate::Error;

/// How a pass ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Pass done; wait for the next wake-up.
    Done,
    /// The pool no longer exists; its runner stops.
    Gone,
}

/// Puts the pool in `error` or `stopped` with a message that says what to fix (once).
pub(crate) async fn set_condition(
    ctx: &Ctx,
    pool: &Pool,
    state: PoolState,
    message: String,
) -> Result<(), Error> {
    if pool.state == state && pool.last_error.as_deref() == Some(message.as_str()) {
        return Ok(());
    }
    let mut tx = ctx.begin().await?;
    pools::set_status(
        &mut tx,
        pool.id,
        &Status {
            state,
            last_error: Some(message.clone()),
            consecutive_failures: pool.consecutive_failures,
        },
    )
    .await?;
    let kind = if state == PoolState::Stopped {
        EventKind::ProvisioningStopped
    } else {
        EventKind::PoolError
    };
    ctx.event(&mut tx, &pool.spec.name, None, kind, &message)
        .await?;
    tx.commit().await?;
    tracing::error!(pool = %pool.spec.name, state = %state, "{message}");
    Ok(())
}

/// Shows a transient problem on an otherwise healthy pool (or clears it with None).
pub(crate) async fn note(ctx: &Ctx, pool: &Pool, message: Option<String>) -> Result<(), Error> {
    if pool.last_error == message || pool.state != PoolState::Ok {
        return Ok(());
    }
    let mut tx = ctx.begin().await?;
    pools::set_note(&mut tx, pool.id, message.as_deref()).await?;
    tx.commit().await?;
    Ok(())
}

/// Runs one pass for the pool named `name`.
pub(crate) async fn run(
    ctx: &Arc<Ctx>,
    name: &str,
    sweep: Option<Sweep>,
    vm_events: Vec<VmEvent>,
) -> Result<Outcome, Error> {
    let pool = {
        let mut conn = ctx.db.acquire().await?;
        pools::get(&mut conn, name).await?
    };
    let Some(pool) = pool else {
        return Ok(Outcome::Gone);
    };
    let span = tracing::info_span!("reconcile", pool = name);
    pass(ctx, pool, sweep, vm_events).instrument(span).await
}

async fn pass(
    ctx: &Arc<Ctx>,
    pool: Pool,
    sweep: Option<Sweep>,
    vm_events: Vec<VmEvent>,
) -> Result<Outcome, Error> {
    let name = pool.spec.name.clone();
    let deleting = pool.state == PoolState::Deleting;
    let Some(vc) = ctx.vcenters.get(&pool.spec.vcenter).cloned() else {
        let msg = format!(
            "vCenter '{}' is not configured: add it to [[vcenters]] in the config or change the pool's vcenter",
            pool.spec.vcenter
        );
        if !deleting {
            set_condition(ctx, &pool, PoolState::Error, msg).await?;
        }
        return Ok(Outcome::Done);
    };
    let Some(client) = vc.client() else {
        let why = vc.last_error().unwrap_or_else(|| "no session yet".into());
        note(
            ctx,
            &pool,
            Some(format!("vCenter '{}' is unreachable: {why}", vc.name)),
        )
        .await?;
        ctx.wake_after(&name, Duration::from_secs(2));
        return Ok(Outcome::Done);
    };

    if !vm_events.is_empty() {
        apply_vm_events(ctx, &pool, &vm_events).await?;
    }
    if let Some(vms) = sweep {
        resync(ctx, &pool, &vc, &client, vms).await?;
    }

    let rows = {
        let mut conn = ctx.db.acquire().await?;
        desktops::list_for_pool(&mut conn, pool.id).await?
    };
    let counted = rows.iter().filter(|d| d.state.counts_toward_size()).count() as u32;
    let active = !deleting && pool.spec.enabled && pool.state == PoolState::Ok;
    let backing_off = ctx.backoff_until(&name).is_some();
    let wants_clones =
        counted < pool.spec.target_size || rows.iter().any(|d| d.state == DesktopState::Pending);
    let mut problem = None;
    let cache_key = (
        inventory::fingerprint(&pool.spec),
        *client.subscribe_reconnects().borrow(),
    );
    let inventory = if active && wants_clones && !backing_off {
        match ctx.cached_inventory(&name, &cache_key) {
            Some(inv) => Some(inv),
            None => match inventory::resolve(&client, &pool.spec).await {
                Ok(inv) => {
                    let inv = Arc::new(inv);
                    if pool.snapshot_moref.as_deref() != Some(inv.snapshot.value.as_str()) {
                        let mut tx = ctx.begin().await?;
                        pools::set_snapshot_moref(&mut tx, pool.id, &inv.snapshot.value).await?;
                        tx.commit().await?;
                        tracing::info!(pool = %name, snapshot = %inv.snapshot, selector = %pool.spec.snapshot, "snapshot resolved");
                    }
                    ctx.store_inventory(&name, cache_key, Arc::clone(&inv));
                    Some(inv)
                }
                Err(ResolveError::Permanent(msg)) => {
                    set_condition(ctx, &pool, PoolState::Error, msg).await?;
                    return Ok(Outcome::Done);
                }
                Err(ResolveError::Transient(e)) => {
                    problem = Some(format!("cannot resolve the pool's inventory yet: {e}"));
                    ctx.back_off(&name);
                    None
                }
            },
        }
    } else {
        None
    };

    let views: Vec<DesktopView> = rows
        .iter()
        .map(|d| DesktopView {
            id: d.id,
            index: d.index,
            state: d.state,
            powered_on: d.powered_on,
        })
        .collect();
    let global_slots = vc.permits.available_permits() as u32;
    let planned = plan(&PlanInput {
        target: if deleting { 0 } else { pool.spec.target_size },
        may_create: inventory.is_some(),
        may_delete: deleting || pool.spec.enabled,
        max_concurrent: pool.spec.max_concurrent_clones,
        global_slots,
        max_index: pool.spec.max_index(),
        desktops: &views,
    });
    let created = planned.create.len() as u32;
    if inventory.is_some() && counted + created < pool.spec.target_size && created >= global_slots {
        // The vCenter-wide bound held this pool back: a freed slot must wake it.
        ctx.wait_for_slot(&name, &vc);
    }

    let rows = if planned.is_empty() {
        rows
    } else {
        match apply(ctx, &pool, inventory.as_deref(), &rows, &planned).await {
            Ok(()) => {}
            Err(Error::Store(StoreError::Conflict { message, .. })) => {
                let msg = format!("{message}: change the pool's naming_pattern");
                set_condition(ctx, &pool, PoolState::Error, msg).await?;
                return Ok(Outcome::Done);
            }
            Err(e) => return Err(e),
        }
        let mut conn = ctx.db.acquire().await?;
        desktops::list_for_pool(&mut conn, pool.id).await?
    };

    if deleting && rows.is_empty() {
        let mut tx = ctx.begin().await?;
        if pools::delete_if_empty(&mut tx, pool.id).await? {
            ctx.event(
                &mut tx,
                &name,
                None,
                EventKind::PoolDeleted,
                &format!("pool '{name}' deleted: its last desktop is gone"),
            )
            .await?;
            tx.commit().await?;
            ctx.forget_inventory(&name);
            ctx.clear_backoff(&name);
            return Ok(Outcome::Gone);
        }
    }

    if ctx.backoff_until(&name).is_some() {
        // vCenter work waits for the backoff to end (it wakes the pool then).
        if problem.is_some() {
            note(ctx, &pool, problem).await?;
        }
        return Ok(Outcome::Done);
    }
    let pool = Arc::new(pool);
    let max = pool.spec.max_concurrent_clones as usize;
    let mut deleting_started = ctx.running(pool.id, WorkerKind::Delete);
    let job = || worker::Job {
        ctx: Arc::clone(ctx),
        vc: Arc::clone(&vc),
        client: client.clone(),
        pool: Arc::clone(&pool),
    };
    for d in rows {
        if ctx.has_worker(d.id) {
            continue;
        }
        match d.state {
            DesktopState::Pending if active && inventory.is_some() => {
                worker::spawn_provision(job(), inventory.clone(), d)
            }
            DesktopState::Cloning | DesktopState::PoweringOn => {
                worker::spawn_provision(job(), inventory.clone(), d)
            }
            DesktopState::Deleting if deleting_started < max => {
                deleting_started += 1;
                worker::spawn_delete(job(), d)
            }
            _ => {}
        }
    }

    if problem.is_some() || ctx.backoff_until(&name).is_none() {
        note(ctx, &pool, problem).await?;
    }
    Ok(Outcome::Done)
}

/// Records the plan: pending rows for new desktops (name and instance UUID committed before
/// any vCenter call) and `deleting` for the removed ones, with their events.
async fn apply(
    ctx: &Arc<Ctx>,
    pool: &Pool,
    inventory: Option<&Inventory>,
    rows: &[Desktop],
    planned: &deskpool_domain::Plan,
) -> Result<(), Error> {
    let name = &pool.spec.name;
    let mut tx = ctx.begin().await?;
    let mut fresh = Vec::new();
    if let Some(inv) = inventory.filter(|_| !planned.create.is_empty()) {
        let naming = pool
            .spec
            .naming()
            .map_err(|e| Error::Store(StoreError::Corrupt(format!("pool {name}: {e}"))))?;
        for index in &planned.create {
            let desktop = naming.render(*index);
            let d = desktops::insert_pending(
                &mut tx,
                &NewDesktop {
                    pool_id: pool.id,
                    name: &desktop,
                    index: *index,
                    instance_uuid: Uuid::new_v4(),
                    snapshot_moref: &inv.snapshot.value,
                },
            )
            .await?;
            fresh.push(d.id);
        }
        tracing::info!(pool = %name, count = planned.create.len(), target = pool.spec.target_size, "provisioning new desktops");
    }
    if !planned.delete.is_empty() {
        desktops::mark_deleting(&mut tx, &planned.delete).await?;
        let by_id: HashMap<Uuid, &Desktop> = rows.iter().map(|d| (d.id, d)).collect();
        for id in &planned.delete {
            let Some(d) = by_id.get(id) else { continue };
            let why = if pool.state == PoolState::Deleting {
                "the pool is being deleted".to_owned()
            } else if d.state == DesktopState::Failed {
                format!(
                    "it failed ({})",
                    d.last_error.as_deref().unwrap_or("no detail")
                )
            } else {
                format!("scaling down to {}", pool.spec.target_size)
            };
            ctx.event(
                &mut tx,
                name,
                Some(&d.name),
                EventKind::DesktopDeleting,
                &format!("removing desktop {}: {why}", d.name),
            )
            .await?;
        }
    }
    tx.commit().await?;
    for id in fresh {
        ctx.mark_fresh(id);
    }
    Ok(())
}

/// Applies the VM changes vCenter reported for ready desktops: a VM gone means the desktop
/// failed (the plan replaces it); a power change is recorded. Desktops with a worker are
/// left to it (their own power-on or destroy causes these changes).
async fn apply_vm_events(ctx: &Arc<Ctx>, pool: &Pool, events: &[VmEvent]) -> Result<(), Error> {
    let rows = {
        let mut conn = ctx.db.acquire().await?;
        desktops::list_for_pool(&mut conn, pool.id).await?
    };
    let mut later = Vec::new();
    for e in events {
        let Some(d) = rows
            .iter()
            .find(|d| d.vm_moref.as_deref() == Some(e.vm.value.as_str()))
        else {
            continue;
        };
        if ctx.has_worker(d.id) {
            // The worker may be about to finish (a new desktop's VM removed at once): judge
            // the change once it has; its end wakes the pool.
            later.push(e.clone());
            continue;
        }
        if d.state != DesktopState::Ready {
            continue;
        }
        let progress = match e.change {
            VmChange::Gone => {
                tracing::warn!(pool = %pool.spec.name, desktop = %d.name, "vCenter reports the VM gone; the desktop will be replaced");
                Progress {
                    state: DesktopState::Failed,
                    vm_moref: None,
                    task_moref: None,
                    powered_on: false,
                    last_error: Some("its VM was removed from vCenter".into()),
                    snapshot_moref: None,
                }
            }
            VmChange::Power(p) if d.powered_on != (p == PowerState::PoweredOn) => Progress {
                state: d.state,
                vm_moref: None,
                task_moref: None,
                powered_on: p == PowerState::PoweredOn,
                last_error: d.last_error.clone(),
                snapshot_moref: None,
            },
            _ => continue,
        };
        let mut tx = ctx.begin().await?;
        desktops::set_progress(&mut tx, d.id, &progress).await?;
        tx.commit().await?;
    }
    ctx.defer_vm_events(&pool.spec.name, later);
    Ok(())
}

/// Compares the periodic inventory sweep with the database: adopts VMs that belong to known
/// rows, destroys this pool's orphans, notices desktops whose VM vanished, refreshes power
/// states. The sweep's VMs were listed before the rows are read, so every VM a worker made
/// already has its row.
async fn resync(
    ctx: &Arc<Ctx>,
    pool: &Pool,
    vc: &Arc<Vcenter>,
    client: &Client,
    (listed_at, vms): Sweep,
) -> Result<(), Error> {
    let rows = {
        let mut conn = ctx.db.acquire().await?;
        desktops::list_for_pool(&mut conn, pool.id).await?
    };
    let by_uuid: HashMap<Uuid, &Desktop> = rows.iter().map(|d| (d.instance_uuid, d)).collect();
    let mut seen = HashSet::new();
    for vm in vms {
        let uuid = vm
            .instance_uuid
            .as_deref()
            .and_then(|u| Uuid::parse_str(u).ok());
        let marker = vm
            .extra_config
            .iter()
            .find(|(k, _)| k == MARKER_DESKTOP)
            .map(|(_, v)| v.as_str());
        // Matched by instance UUID, else by moref or desktop marker (a VM adopted after a
        // DuplicateName may carry another instance UUID than the row's).
        let row = uuid
            .and_then(|u| by_uuid.get(&u).copied())
            .or_else(|| {
                rows.iter()
                    .find(|d| d.vm_moref.as_deref() == Some(vm.moref.value.as_str()))
            })
            .or_else(|| marker.and_then(|m| rows.iter().find(|d| d.id.to_string() == m)));
        match row {
            Some(d) => {
                seen.insert(d.id);
                if ctx.has_worker(d.id) {
                    continue;
                }
                let on = vm.power_state == PowerState::PoweredOn;
                let adopt = d.vm_moref.is_none() && d.state == DesktopState::Pending;
                if adopt || (d.state == DesktopState::Ready && d.powered_on != on) {
                    let mut tx = ctx.begin().await?;
                    desktops::set_progress(
                        &mut tx,
                        d.id,
                        &Progress {
                            state: if adopt {
                                DesktopState::Cloning
                            } else {
                                d.state
                            },
                            vm_moref: Some(vm.moref.value.clone()),
                            task_moref: None,
                            powered_on: on,
                            last_error: d.last_error.clone(),
                            snapshot_moref: None,
                        },
                    )
                    .await?;
                    if adopt {
                        ctx.event(
                            &mut tx,
                            &pool.spec.name,
                            Some(&d.name),
                            EventKind::Adopted,
                            &format!(
                                "adopted VM {} ({}) found by instance UUID for pending desktop {}",
                                vm.name, vm.moref, d.name
                            ),
                        )
                        .await?;
                    }
                    tx.commit().await?;
                }
            }
            None => {
                tracing::warn!(pool = %pool.spec.name, vm = %vm.name, moref = %vm.moref, desktop_marker = marker, "VM carries this pool's marker but no desktop row matches its instance UUID: destroying the orphan");
                worker::spawn_orphan_destroy(ctx, vc, client, pool, vm);
            }
        }
    }
    // Rows whose VM vanished (deleted by hand, or vCenter lost it): fail them so the plan
    // replaces them. Only rows settled before the listing are judged.
    let settle = chrono::Duration::seconds(5);
    for d in &rows {
        if d.state == DesktopState::Ready
            && !seen.contains(&d.id)
            && !ctx.has_worker(d.id)
            && d.updated_at + settle < listed_at
        {
            let mut tx = ctx.begin().await?;
            desktops::set_progress(
                &mut tx,
                d.id,
                &Progress {
                    state: DesktopState::Failed,
                    vm_moref: None,
                    task_moref: None,
                    powered_on: false,
                    last_error: Some("its VM is no longer in vCenter".into()),
                    snapshot_moref: None,
                },
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(pool = %pool.spec.name, desktop = %d.name, "VM vanished from vCenter; the desktop will be replaced");
        }
    }
    Ok(())
}
