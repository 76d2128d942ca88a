//! A pass's part of an image rollout: which desktops are outdated, pinning an image, and the
//! rollout's transitions (`rolling` -> `stopped` at the first failed clone from the new
//! image, `rolling` -> `done` once nothing is outdated) with their events. What to create and
//! remove while rolling is decided by the pure `plan()` ([`deskpool_domain::plan_rollout`]).

use std::collections::HashSet;
use std::sync::Arc;

use deskpool_domain::{
    force_release_due, rollout_transition, DesktopState, EventKind, LogoffPolicy, RolloutSeen,
    RolloutState, RolloutTransition,
};
use deskpool_store::claims;
use deskpool_store::desktops::Desktop;
use deskpool_store::pools::{self, Pinned, Pool};
use deskpool_vsphere::MoRef;
use uuid::Uuid;

use crate::context::Ctx;
use crate::inventory::Inventory;
use crate::Error;

/// Whether desktop `d` is on another image than the pool's (a desktop whose image was never
/// recorded, or a pool not pinned yet, is not outdated).
pub(crate) fn is_outdated(pool: &Pool, d: &Desktop) -> bool {
    match (&pool.snapshot_moref, &d.snapshot_moref) {
        (Some(pinned), Some(own)) => pinned != own,
        _ => false,
    }
}

/// The pool's counted desktops (provisioning or ready) on another image.
pub(crate) fn outdated(pool: &Pool, rows: &[Desktop]) -> HashSet<Uuid> {
    rows.iter()
        .filter(|d| d.state.counts_toward_size() && is_outdated(pool, d))
        .map(|d| d.id)
        .collect()
}

/// The inventory to clone with: `inv`, with the pool's pinned image as its snapshot.
pub(crate) fn on_pinned_image(inv: Arc<Inventory>, pool: &Pool) -> Arc<Inventory> {
    match &pool.snapshot_moref {
        Some(pinned) if *pinned != inv.snapshot.value => Arc::new(Inventory {
            snapshot: MoRef::new("VirtualMachineSnapshot", pinned.clone()),
            ..(*inv).clone()
        }),
        _ => inv,
    }
}

/// Pins the pool to image `moref` (its selector's resolution) and records a rollout it starts.
pub(crate) async fn pin(ctx: &Ctx, pool: &mut Pool, moref: &str) -> Result<(), Error> {
    let mut tx = ctx.begin().await?;
    let pinned = pools::pin_image(&mut tx, pool.id, moref).await?;
    if let Pinned::RolloutStarted { from, .. } = &pinned {
        let msg = format!(
            "rolling out image {moref} (snapshot '{}') from {}",
            pool.spec.snapshot,
            from.as_deref().unwrap_or("an unrecorded image")
        );
        ctx.event(
            &mut tx,
            &pool.spec.name,
            None,
            EventKind::RolloutStarted,
            &msg,
        )
        .await?;
    }
    let fresh = pools::get_by_id(&mut tx, pool.id).await?;
    tx.commit().await?;
    if let Some(fresh) = fresh {
        *pool = fresh;
    }
    Ok(())
}

/// Applies the transition this pass sees, if any (stop at a failed clone from the new image,
/// finish once nothing is outdated), with its event; `pool` is updated to match.
pub(crate) async fn advance(ctx: &Ctx, pool: &mut Pool, rows: &[Desktop]) -> Result<(), Error> {
    let Some(to) = pool.snapshot_moref.clone() else {
        return Ok(());
    };
    let failure = rows
        .iter()
        .find(|d| d.state == DesktopState::Failed && d.snapshot_moref.as_deref() == Some(&to))
        .map(|d| {
            format!(
                "clone {} from {to} failed: {}",
                d.name,
                d.last_error.as_deref().unwrap_or("no detail")
            )
        });
    let seen = RolloutSeen {
        state: pool.rollout.state,
        outdated: outdated(pool, rows).len() as u32,
        new_image_failure: failure.as_deref(),
        stop_on_error: pool.spec.stop_on_error,
    };
    let Some(transition) = rollout_transition(&seen) else {
        return Ok(());
    };
    let name = pool.spec.name.clone();
    let (state, fault, kind, msg) = match &transition {
        RolloutTransition::Stop { fault } => (
            RolloutState::Stopped,
            Some(fault.as_str()),
            EventKind::RolloutStopped,
            format!(
                "rollout to {to} stopped at its first failure ({fault}); the outdated desktops stay: \
                 fix the image and POST /api/v1/pools/{name}/image/resume, or push the previous snapshot to roll back"
            ),
        ),
        RolloutTransition::Finish => (
            RolloutState::Done,
            None,
            EventKind::RolloutFinished,
            format!("rollout to {to} finished: every desktop is on it"),
        ),
    };
    let mut tx = ctx.begin().await?;
    if pools::set_rollout_outcome(&mut tx, pool.id, &to, state, fault).await? {
        ctx.event(&mut tx, &name, None, kind, &msg).await?;
        tx.commit().await?;
        pool.rollout.state = state;
        pool.rollout.last_error = fault.map(str::to_owned);
    }
    Ok(())
}

/// With `logoff_policy: "force"`, releases the claimed outdated desktops of a rolling pool
/// whose grace is over (the pool's `on_release` applies, as for any release), each with a
/// `forced_release` event naming the user; `rows` is updated to match.
pub(crate) async fn force_releases(
    ctx: &Ctx,
    pool: &Pool,
    rows: &mut [Desktop],
) -> Result<(), Error> {
    if pool.rollout.state != RolloutState::Rolling || pool.spec.logoff_policy != LogoffPolicy::Force
    {
        return Ok(());
    }
    let Some(started) = pool.rollout.started_at else {
        return Ok(());
    };
    let now = chrono::Utc::now();
    for d in rows.iter_mut() {
        let Some(claimed_at) = d.claimed_at else {
            continue;
        };
        if d.claimed_by.is_none() || !d.state.counts_toward_size() || !is_outdated(pool, d) {
            continue;
        }
        let due = force_release_due(
            pool.spec.logoff_policy,
            pool.spec.force_after_secs,
            (now - started).num_seconds(),
            (now - claimed_at).num_seconds(),
        );
        if !due {
            continue;
        }
        let mut tx = ctx.begin().await?;
        let Some(released) = claims::release(&mut tx, d.id, pool.spec.on_release).await? else {
            continue;
        };
        let msg = format!(
            "desktop {} released from {} by force: it is on image {} and the rollout's grace of {} s is over",
            d.name,
            released.user,
            d.snapshot_moref.as_deref().unwrap_or("?"),
            pool.spec.force_after_secs
        );
        ctx.event(
            &mut tx,
            &pool.spec.name,
            Some(&d.name),
            EventKind::ForcedRelease,
            &msg,
        )
        .await?;
        tx.commit().await?;
        *d = released.desktop;
    }
    Ok(())
}
