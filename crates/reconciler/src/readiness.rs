//! Ready means usable, inside a pass: what the VM watch reported of desktops' guests (VMware
//! Tools' status, the address, the customization's events) is recorded with the rows, and
//! every `booting` desktop is judged by [`deskpool_domain::judge_boot`]: `ready` once its
//! guest is usable, `failed` (then replaced by the plan) when its customization failed or its
//! ready timeout passed. The pass is looked at again at the earliest booting deadline.

use std::sync::Arc;
use std::time::Duration;

use deskpool_domain::{judge_boot, BootVerdict, CustomizationState, DesktopState, EventKind};
use deskpool_domain::{GuestFacts, ReadyWhen};
use deskpool_store::desktops::{self, Desktop, Progress};
use deskpool_store::pools::Pool;
use deskpool_vsphere::{Customization, VmChange};

use crate::context::Ctx;
use crate::Error;

/// Records the time from the desktop's creation (its clone starts then, unless every clone
/// slot of its vCenter is busy) to ready.
pub(crate) fn observe_time_to_ready(d: &Desktop) {
    let ready = d.ready_at.unwrap_or_else(chrono::Utc::now);
    let secs = (ready - d.created_at).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!("deskpool_time_to_ready_seconds").record(secs);
}

/// Records a guest or customization change of `d`'s VM; the stored row, or None when the
/// change is of another kind (or the row is gone).
pub(crate) async fn record_guest(
    ctx: &Ctx,
    d: &Desktop,
    change: &VmChange,
) -> Result<Option<Desktop>, Error> {
    if let VmChange::Guest(g) = change {
        let same = |reported: &Option<String>, stored: &Option<String>| {
            reported
                .as_deref()
                .is_none_or(|r| r == stored.as_deref().unwrap_or(""))
        };
        if same(&g.tools_running_status, &d.guest_state) && same(&g.ip_address, &d.ip_address) {
            return Ok(None); // e.g. every VM restated after a restart of the watch
        }
    }
    let mut tx = ctx.begin().await?;
    let stored = match change {
        VmChange::Guest(g) => {
            desktops::set_guest(
                &mut tx,
                d.id,
                g.tools_running_status.as_deref(),
                g.ip_address.as_deref(),
            )
            .await?
        }
        VmChange::Customization(c) => {
            let (state, message) = match c {
                Customization::Started => (CustomizationState::Started, None),
                Customization::Succeeded => (CustomizationState::Succeeded, None),
                Customization::Failed(m) => (CustomizationState::Failed, Some(m.as_str())),
            };
            desktops::set_customization(&mut tx, d.id, state, message).await?
        }
        _ => return Ok(None),
    };
    tx.commit().await?;
    Ok(stored)
}

/// Judges every booting desktop without a worker; returns how long until the earliest
/// booting deadline, if any desktop still boots.
pub(crate) async fn judge_booting(
    ctx: &Arc<Ctx>,
    pool: &Pool,
    rows: &mut [Desktop],
) -> Result<Option<Duration>, Error> {
    let booting: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, d)| d.state == DesktopState::Booting && !ctx.has_worker(d.id))
        .map(|(i, _)| i)
        .collect();
    if booting.is_empty() {
        return Ok(None);
    }
    // The database's clock: the one `booting_at` was written with.
    let now = {
        let mut conn = ctx.db.acquire().await?;
        deskpool_store::db_now(&mut conn).await?
    };
    let name = &pool.spec.name;
    let mut earliest: Option<u64> = None;
    for i in booting {
        let d = &rows[i];
        // A pool changed to `powered_on` meanwhile: its booting desktops are ready now.
        let verdict = if pool.spec.ready_when == ReadyWhen::PoweredOn {
            BootVerdict::Ready
        } else {
            let since = d.booting_at.unwrap_or(d.updated_at);
            judge_boot(&GuestFacts {
                tools_running_status: d.guest_state.as_deref(),
                ip_address: d.ip_address.as_deref(),
                needs_customization: pool.spec.customization_spec.is_some(),
                customization: d.customization,
                customization_message: d.last_error.as_deref(),
                booting_secs: (now - since).num_seconds().max(0) as u64,
                timeout_secs: pool.spec.ready_timeout_secs,
            })
        };
        let (progress, kind, msg) = match verdict {
            BootVerdict::Wait { remaining_secs } => {
                earliest = Some(earliest.map_or(remaining_secs, |e| e.min(remaining_secs)));
                continue;
            }
            BootVerdict::Ready => {
                let addr = d
                    .ip_address
                    .as_deref()
                    .unwrap_or("no address: ready_when powered_on");
                let msg = format!("desktop {} is ready: its guest is up ({addr})", d.name);
                let mut p = Progress::powered_on();
                p.powered_on = d.powered_on;
                (p, EventKind::DesktopReady, msg)
            }
            BootVerdict::Failed(reason) => {
                tracing::warn!(pool = %name, desktop = %d.name, %reason, "desktop failed while booting; it will be replaced");
                let msg = format!("desktop {} failed: {reason}; it will be replaced", d.name);
                let mut p = Progress::failed(reason);
                // The VM stays named so the plan's removal destroys it.
                p.vm_moref = d.vm_moref.clone();
                (p, EventKind::DesktopFailed, msg)
            }
        };
        let mut tx = ctx.begin().await?;
        let stored = desktops::set_progress(&mut tx, d.id, &progress).await?;
        ctx.event(&mut tx, name, Some(&d.name), kind, &msg).await?;
        tx.commit().await?;
        if let Some(stored) = stored {
            if stored.state == DesktopState::Ready {
                observe_time_to_ready(&stored);
            }
            rows[i] = stored;
        }
    }
    Ok(earliest.map(Duration::from_secs))
}
