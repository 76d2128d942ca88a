//! One pass for one pool: `reconcile(pool, desktops, inputs, ctx) -> Result<Action, Error>`.
//! It is given the pool and its desktops as read once at its start, folds in what vCenter
//! reported since the last pass, asks the pure [`deskpool_domain::plan`] what to create and
//! remove, records that, and hands desktops that need vCenter work to workers. It returns
//! when to look at the pool again; a failure goes to `policy::error_policy` instead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskpool_domain::{
    desired_size, plan_with_rollout, DesktopState, EventKind, PlanDesktop, PlanInput, PoolState,
    RolloutLimits, RolloutState,
};
use deskpool_store::desktops::{self, Desktop, NewDesktop};
use deskpool_store::pools::{self, Pool};
use deskpool_store::StoreError;
use uuid::Uuid;

use crate::compare;
use crate::conditions::{note, set_condition};
use crate::context::{Ctx, WorkerKind};
use crate::gate::CloneGate;
use crate::inventory::{self, Inventory, ResolveError};
use crate::leases;
use crate::policy::error_policy;
use crate::readiness;
use crate::rollout;
use crate::scheduler::{Action, Inputs};
use crate::steps;
use crate::Error;

/// How soon a pool whose vCenter has no session yet is looked at again.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(2);

/// The pool's next look: `wanted`, or the end of its backoff if that comes first (vCenter
/// work waits for it, and nothing else may wake the pool then).
fn next_look(ctx: &Ctx, pool: &str, wanted: Action) -> Action {
    let Some(until) = ctx.scheduler.backoff_until(pool) else {
        return wanted;
    };
    let backoff = until.saturating_duration_since(Instant::now());
    match wanted {
        Action::RequeueAfter(d) if d < backoff => wanted,
        _ => Action::RequeueAfter(backoff),
    }
}

/// The pool's desired size now ([`desired_size`] of its spec and claimed desktops; 0 when
/// the pool is being deleted).
fn desired_for(pool: &Pool, rows: &[Desktop]) -> u32 {
    if pool.state == PoolState::Deleting {
        return 0;
    }
    let claimed = rows
        .iter()
        .filter(|d| d.claimed_by.is_some() && d.state.counts_toward_size())
        .count() as u32;
    desired_size(
        pool.spec.target_size,
        pool.spec.min_spare,
        pool.spec.max_size,
        claimed,
    )
}

/// Runs one pass over `pool` and `rows` (its desktops, by index): first ends the claims whose
/// lease ran out (a database matter, done whatever vCenter's state), then the pass proper; the
/// pool is looked at again by the time the earliest remaining lease runs out.
pub(crate) async fn reconcile(
    pool: Pool,
    mut rows: Vec<Desktop>,
    inputs: Inputs,
    ctx: &Arc<Ctx>,
) -> Result<Action, Error> {
    leases::expire_due(ctx, &pool, &mut rows).await?;
    let next_lease_end = leases::earliest(&rows);
    let action = pass(pool, rows, inputs, ctx).await?;
    Ok(leases::with_lease_timer(action, next_lease_end))
}

/// The pass proper over `pool` and `rows`.
async fn pass(
    pool: Pool,
    mut rows: Vec<Desktop>,
    inputs: Inputs,
    ctx: &Arc<Ctx>,
) -> Result<Action, Error> {
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
        return Ok(next_look(ctx, &name, Action::AwaitChange));
    };
    let Some(client) = vc.client() else {
        let why = vc.last_error().unwrap_or_else(|| "no session yet".into());
        let msg = format!("vCenter '{}' is unreachable: {why}", vc.name);
        note(ctx, &pool, Some(msg)).await?;
        return Ok(next_look(
            ctx,
            &name,
            Action::RequeueAfter(UNREACHABLE_RETRY),
        ));
    };

    if !inputs.vm_events.is_empty() {
        compare::apply_vm_events(ctx, &pool, &mut rows, &inputs.vm_events).await?;
    }
    if let Some(sweep) = inputs.sweep {
        compare::resync(ctx, &pool, &mut rows, sweep).await?;
    }
    if let Some(deadline) = readiness::judge_booting(ctx, &pool, &mut rows).await? {
        // The earliest booting desktop's ready timeout: judged again then at the latest.
        ctx.scheduler.apply(&name, Action::RequeueAfter(deadline));
    }

    let mut pool = pool;
    if !deleting {
        rollout::advance(ctx, &mut pool, &rows).await?;
        rollout::force_releases(ctx, &pool, &mut rows).await?;
    }
    let rolling = !deleting && pool.rollout.state == RolloutState::Rolling;
    let outdated = rollout::outdated(&pool, &rows);
    let counted = rows.iter().filter(|d| d.state.counts_toward_size()).count() as u32;
    let desired = desired_for(&pool, &rows);
    let active = !deleting && pool.spec.enabled && pool.state == PoolState::Ok;
    let backing_off = ctx.scheduler.backoff_until(&name).is_some();
    let wants_clones = counted < desired
        || rows.iter().any(|d| d.state == DesktopState::Pending)
        || (rolling && !outdated.is_empty());
    let mut problem = None;
    let inventory = if active && wants_clones && !backing_off {
        let cache_key = (
            inventory::fingerprint(&pool.spec),
            *client.subscribe_reconnects().borrow(),
        );
        match ctx.cached_inventory(&name, &cache_key) {
            Some(inv) => Some(inv),
            None => match inventory::resolve(&client, &pool.spec).await {
                Ok(inv) => {
                    let inv = Arc::new(inv);
                    if pool.snapshot_moref.is_none() {
                        // Not pinned yet (a new pool, or a spec change the API did not
                        // resolve): pin what the selector names now.
                        rollout::pin(ctx, &mut pool, &inv.snapshot.value).await?;
                        tracing::info!(pool = %name, snapshot = %inv.snapshot, selector = %pool.spec.snapshot, "snapshot resolved and pinned");
                    }
                    ctx.store_inventory(&name, cache_key, Arc::clone(&inv));
                    Some(inv)
                }
                Err(ResolveError::Permanent(msg)) => {
                    set_condition(ctx, &pool, PoolState::Error, msg).await?;
                    return Ok(next_look(ctx, &name, Action::AwaitChange));
                }
                Err(ResolveError::Transient(e)) => {
                    problem = Some(format!("cannot resolve the pool's inventory yet: {e}"));
                    // The pass goes on without cloning; the policy backs the pool off.
                    error_policy(&name, &Error::Vsphere(e), ctx);
                    None
                }
            },
        }
    } else {
        None
    };
    // Clones are made from the pool's pinned image, whatever the selector names today.
    let inventory = inventory.map(|inv| rollout::on_pinned_image(inv, &pool));

    let views: Vec<PlanDesktop> = rows
        .iter()
        .map(|d| PlanDesktop {
            id: d.id,
            index: d.index,
            state: d.state,
            powered_on: d.powered_on,
            claimed: d.claimed_by.is_some(),
            destroy_given_up: d.destroy_given_up_at.is_some(),
            outdated: outdated.contains(&d.id),
        })
        .collect();
    let global_slots = vc.permits.available_permits() as u32;
    let rollout_limits = (rolling && !deleting).then(|| RolloutLimits {
        max_surge: pool.spec.surge(),
        max_unavailable: pool.spec.max_unavailable,
    });
    let planned = plan_with_rollout(
        &PlanInput {
            target: if deleting { 0 } else { pool.spec.target_size },
            min_spare: if deleting { 0 } else { pool.spec.min_spare },
            max_size: pool.spec.max_size,
            may_create: inventory.is_some(),
            may_delete: deleting || pool.spec.enabled,
            max_concurrent: pool.spec.max_concurrent_clones,
            queue_ahead: queue_ahead(&pool),
            global_slots,
            max_index: pool.spec.max_index(),
            desktops: &views,
        },
        rollout_limits,
    );
    let created = planned.create.len() as u32;
    let gate = ctx.clone_gate(pool.id, pool.spec.max_concurrent_clones);
    // Desktops waiting at the gate read their rows again when the pool stops provisioning
    // (or its inventory changes), and when some were marked for deletion.
    let may_clone = active && inventory.is_some() && !backing_off;
    gate.set_open_for(may_clone.then(|| inventory::fingerprint(&pool.spec)));
    if !planned.delete.is_empty() {
        gate.recheck();
    }
    if inventory.is_some() && counted + created < desired && created >= global_slots {
        // The vCenter-wide bound held this pool back: a freed slot must wake it.
        ctx.scheduler.wait_for_slot(&name, &vc);
    }

    if !planned.is_empty() {
        match record_plan(ctx, &pool, inventory.as_deref(), &mut rows, &planned).await {
            Ok(()) => {}
            Err(Error::Store(StoreError::Conflict { message, .. })) => {
                let msg = format!("{message}: change the pool's naming_pattern");
                set_condition(ctx, &pool, PoolState::Error, msg).await?;
                return Ok(next_look(ctx, &name, Action::AwaitChange));
            }
            Err(e) => return Err(e),
        }
    }

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
            ctx.forget_pool(&name);
            return Ok(Action::AwaitChange);
        }
    }

    let problem = problem.or_else(|| compare::inaccessible_note(&rows));
    if ctx.scheduler.backoff_until(&name).is_some() {
        // vCenter work waits for the backoff to end (the pool is looked at again then).
        if problem.is_some() {
            note(ctx, &pool, problem).await?;
        }
        return Ok(next_look(ctx, &name, Action::AwaitChange));
    }
    start_workers(
        ctx,
        Arc::new(pool.clone()),
        &vc,
        &client,
        (inventory, &gate),
        rows,
        active,
    );
    note(ctx, &pool, problem).await?;
    Ok(next_look(ctx, &name, Action::AwaitChange))
}

/// Pending desktops kept committed ahead of the pool's clone bound: as many again, so each
/// freed place is refilled at once, a whole wave deep.
fn queue_ahead(pool: &Pool) -> u32 {
    pool.spec.max_concurrent_clones
}

/// Hands every desktop that needs vCenter work, and has no worker yet, to one. A clone that
/// already runs in vCenter takes its place at the pool's gate here, before any pending
/// desktop of this pass can.
fn start_workers(
    ctx: &Arc<Ctx>,
    pool: Arc<Pool>,
    vc: &Arc<crate::vcenter::Vcenter>,
    client: &deskpool_vsphere::Client,
    (inventory, gate): (Option<Arc<Inventory>>, &Arc<CloneGate>),
    rows: Vec<Desktop>,
    active: bool,
) {
    let max = pool.spec.max_concurrent_clones as usize;
    let mut deleting_started = ctx.running(pool.id, WorkerKind::Delete);
    let job = || steps::Job {
        ctx: Arc::clone(ctx),
        vc: Arc::clone(vc),
        client: client.clone(),
        pool: Arc::clone(&pool),
        gate: Arc::clone(gate),
    };
    let (running, rest): (Vec<Desktop>, Vec<Desktop>) = rows
        .into_iter()
        .filter(|d| !ctx.has_worker(d.id))
        .partition(|d| d.state == DesktopState::Cloning);
    for d in running {
        let place = gate.take_running();
        steps::spawn_provision(job(), inventory.clone(), d, Some(place));
    }
    for d in rest {
        match d.state {
            DesktopState::Pending if active && inventory.is_some() => {
                steps::spawn_provision(job(), inventory.clone(), d, None)
            }
            DesktopState::PoweringOn => steps::spawn_provision(job(), inventory.clone(), d, None),
            DesktopState::Deleting if deleting_started < max => {
                deleting_started += 1;
                steps::spawn_delete(job(), d)
            }
            _ => {}
        }
    }
}

/// Records the plan: pending rows for new desktops (name and instance UUID committed before
/// any vCenter call) and `deleting` for the removed ones, with their events. `rows` is
/// updated to what was committed.
async fn record_plan(
    ctx: &Arc<Ctx>,
    pool: &Pool,
    inventory: Option<&Inventory>,
    rows: &mut Vec<Desktop>,
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
            fresh.push(d);
        }
        tracing::info!(pool = %name, count = planned.create.len(), target = pool.spec.target_size, "provisioning new desktops");
    }
    // A desktop claimed since the pass read its rows is kept: the claim wins.
    let mut removed = Vec::new();
    if !planned.delete.is_empty() {
        removed = desktops::mark_deleting_unclaimed(&mut tx, &planned.delete).await?;
        let by_id: HashMap<Uuid, &Desktop> = rows.iter().map(|d| (d.id, d)).collect();
        for id in &removed {
            let Some(d) = by_id.get(id) else { continue };
            let why = if pool.state == PoolState::Deleting {
                "the pool is being deleted".to_owned()
            } else if d.state == DesktopState::Failed {
                format!(
                    "it failed ({})",
                    d.last_error.as_deref().unwrap_or("no detail")
                )
            } else if pool.rollout.state == RolloutState::Rolling
                && d.snapshot_moref.is_some()
                && d.snapshot_moref != pool.snapshot_moref
            {
                format!(
                    "rolling out image {}: it is on {}",
                    pool.snapshot_moref.as_deref().unwrap_or("?"),
                    d.snapshot_moref.as_deref().unwrap_or("?")
                )
            } else {
                format!("scaling down to {}", desired_for(pool, rows))
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
    for d in rows.iter_mut().filter(|d| removed.contains(&d.id)) {
        d.state = DesktopState::Deleting;
    }
    for d in fresh {
        ctx.mark_fresh(d.id);
        rows.push(d);
    }
    rows.sort_by_key(|d| d.index);
    Ok(())
}
