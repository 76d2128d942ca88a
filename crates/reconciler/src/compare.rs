//! What vCenter reported (the VM watch's changes, the periodic inventory sweep) compared with
//! the pool's rows, inside a pass. The rows are the pass's one read; every write here also
//! updates them, so the rest of the pass sees the rows as stored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deskpool_domain::{DesktopState, EventKind};
use deskpool_store::desktops::{self, Desktop, Progress};
use deskpool_store::pools::Pool;
use deskpool_vsphere::{PowerState, VmChange, VmEvent};
use uuid::Uuid;

use crate::context::Ctx;
use crate::scheduler::Sweep;
use crate::Error;

/// Writes `progress` for `rows[i]` and puts the stored row in its place.
async fn record(
    ctx: &Ctx,
    rows: &mut [Desktop],
    i: usize,
    progress: &Progress,
) -> Result<(), Error> {
    let mut tx = ctx.begin().await?;
    let stored = desktops::set_progress(&mut tx, rows[i].id, progress).await?;
    tx.commit().await?;
    if let Some(stored) = stored {
        rows[i] = stored;
    }
    Ok(())
}

/// The row whose VM `moref` names now. After a vCenter restart morefs are reused for other
/// objects, so rows made before it may still name a moref that is now another desktop's VM:
/// the newest row naming it is the VM's owner (the older ones' VMs are gone or were
/// registered again under other morefs; the sweep, which matches by instance UUID, sorts
/// them out).
fn row_of_vm(rows: &[Desktop], moref: &str) -> Option<usize> {
    rows.iter()
        .enumerate()
        .filter(|(_, d)| d.vm_moref.as_deref() == Some(moref))
        .max_by_key(|(_, d)| d.created_at)
        .map(|(i, _)| i)
}

/// Records that vCenter can (not) read the VM of `rows[i]`, with an event, when that changed.
/// An inaccessible desktop is kept as it is: not failed, not replaced, its VM not destroyed.
async fn set_inaccessible(
    ctx: &Ctx,
    pool: &Pool,
    rows: &mut [Desktop],
    i: usize,
    inaccessible: bool,
) -> Result<(), Error> {
    let d = &rows[i];
    if d.inaccessible == inaccessible {
        return Ok(());
    }
    let vm = d.vm_moref.as_deref().unwrap_or("?");
    let (kind, msg) = if inaccessible {
        (
            EventKind::VmInaccessible,
            format!("the VM of desktop {} ({vm}) is inaccessible in vCenter (its datastore cannot be reached?): the desktop is kept as it is until the VM is readable again", d.name),
        )
    } else {
        (
            EventKind::VmAccessible,
            format!("the VM of desktop {} ({vm}) is readable again", d.name),
        )
    };
    let mut tx = ctx.begin().await?;
    let changed = desktops::set_inaccessible(&mut tx, d.id, inaccessible).await?;
    if changed {
        ctx.event(&mut tx, &pool.spec.name, Some(&d.name), kind, &msg)
            .await?;
    }
    tx.commit().await?;
    if inaccessible {
        tracing::warn!(pool = %pool.spec.name, desktop = %d.name, "{msg}");
    } else {
        tracing::info!(pool = %pool.spec.name, desktop = %d.name, "{msg}");
    }
    rows[i].inaccessible = inaccessible;
    Ok(())
}

/// The note shown on the pool while some of its desktops' VMs are inaccessible.
pub(crate) fn inaccessible_note(rows: &[Desktop]) -> Option<String> {
    let names: Vec<&str> = rows
        .iter()
        .filter(|d| d.inaccessible)
        .map(|d| d.name.as_str())
        .collect();
    if names.is_empty() {
        return None;
    }
    let shown = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    let more = names.len().saturating_sub(5);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Some(format!(
        "{} desktop(s) with an inaccessible VM ({shown}{more}): kept as they are until vCenter can read them again; check the datastores",
        names.len()
    ))
}

/// Applies the VM changes vCenter reported for ready and booting desktops: a VM gone means
/// the desktop failed (the plan replaces it); a power change is recorded; what VMware Tools
/// report of the guest, and customization events, are recorded for any desktop. Desktops
/// with a worker are left to it (their own power-on or destroy causes these changes).
pub(crate) async fn apply_vm_events(
    ctx: &Arc<Ctx>,
    pool: &Pool,
    rows: &mut [Desktop],
    events: &[VmEvent],
) -> Result<(), Error> {
    let mut later = Vec::new();
    for e in events {
        let Some(i) = row_of_vm(rows, &e.vm.value) else {
            continue;
        };
        let d = &rows[i];
        if ctx.has_worker(d.id) {
            // The worker may be about to finish (a new desktop's VM removed at once): judge
            // the change once it has; its end wakes the pool.
            later.push(e.clone());
            continue;
        }
        if matches!(e.change, VmChange::Guest(_) | VmChange::Customization(_)) {
            // What Tools report is kept whatever the state (a booting desktop is judged on it
            // later in this pass; a ready one shows it).
            if d.state != DesktopState::Deleting {
                if let Some(stored) = crate::readiness::record_guest(ctx, d, &e.change).await? {
                    rows[i] = stored;
                }
            }
            continue;
        }
        if !matches!(d.state, DesktopState::Ready | DesktopState::Booting) {
            continue;
        }
        if e.change == VmChange::Inaccessible {
            set_inaccessible(ctx, pool, rows, i, true).await?;
            continue;
        }
        let progress = match e.change {
            VmChange::Gone => {
                tracing::warn!(pool = %pool.spec.name, desktop = %d.name, "vCenter reports the VM gone; the desktop will be replaced");
                Progress::failed("its VM was removed from vCenter")
            }
            VmChange::Power(p) if d.powered_on != (p == PowerState::PoweredOn) => {
                Progress::observed(d, None, p == PowerState::PoweredOn)
            }
            _ => continue,
        };
        record(ctx, rows, i, &progress).await?;
    }
    if !ctx.cancel.is_cancelled() {
        ctx.scheduler.defer_vm_events(&pool.spec.name, later);
    }
    Ok(())
}

/// Compares the periodic inventory sweep with the database: adopts VMs that belong to known
/// rows, destroys this pool's orphans, notices desktops whose VM vanished, refreshes power
/// states. The sweep's VMs were listed before the rows were read, so every VM a worker made
/// already has its row.
pub(crate) async fn resync(
    ctx: &Arc<Ctx>,
    pool: &Pool,
    rows: &mut [Desktop],
    (listed_at, vms): Sweep,
) -> Result<(), Error> {
    let by_uuid: HashMap<Uuid, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, d)| (d.instance_uuid, i))
        .collect();
    let mut seen = HashSet::new();
    for vm in vms {
        if vm.inaccessible {
            // Routed here by moref (see `sources::judge_vms`): the desktop is kept as it is.
            let Some(i) = row_of_vm(rows, &vm.moref.value) else {
                continue;
            };
            seen.insert(rows[i].id);
            if rows[i].state == DesktopState::Ready && !ctx.has_worker(rows[i].id) {
                set_inaccessible(ctx, pool, rows, i, true).await?;
            }
            continue;
        }
        let uuid = vm
            .instance_uuid
            .as_deref()
            .and_then(|u| Uuid::parse_str(u).ok());
        // Matched by instance UUID only: markers are copied with a VM, and a moref can name
        // another VM after a vCenter restart. The sweep judged every VM (see
        // `sources::judge_vms`); one whose row went since is judged again at the next sweep.
        let Some(i) = uuid.and_then(|u| by_uuid.get(&u).copied()) else {
            continue;
        };
        seen.insert(rows[i].id);
        if ctx.has_worker(rows[i].id) {
            continue;
        }
        if rows[i].inaccessible {
            set_inaccessible(ctx, pool, rows, i, false).await?;
        }
        let d = &rows[i];
        let on = vm.power_state == PowerState::PoweredOn;
        let adopt = d.vm_moref.is_none() && d.state == DesktopState::Pending;
        let power_changed = d.state == DesktopState::Ready && d.powered_on != on;
        if !adopt && !power_changed {
            continue;
        }
        let mut progress = Progress::observed(d, Some(vm.moref.value.clone()), on);
        if adopt {
            progress.state = DesktopState::Cloning;
        }
        let mut tx = ctx.begin().await?;
        let stored = desktops::set_progress(&mut tx, d.id, &progress).await?;
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
        if let Some(stored) = stored {
            rows[i] = stored;
        }
    }
    // Rows whose VM vanished (deleted by hand, or vCenter lost it): fail them so the plan
    // replaces them. Only rows settled before the listing are judged.
    let settle = chrono::Duration::seconds(5);
    for i in 0..rows.len() {
        let d = &rows[i];
        if matches!(d.state, DesktopState::Ready | DesktopState::Booting)
            && !seen.contains(&d.id)
            && !ctx.has_worker(d.id)
            && d.updated_at + settle < listed_at
        {
            let name = d.name.clone();
            record(
                ctx,
                rows,
                i,
                &Progress::failed("its VM is no longer in vCenter"),
            )
            .await?;
            tracing::warn!(pool = %pool.spec.name, desktop = %name, "VM vanished from vCenter; the desktop will be replaced");
        }
    }
    Ok(())
}
