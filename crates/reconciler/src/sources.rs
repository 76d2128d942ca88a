//! Where a pool's wake-ups come from, besides its own passes and workers: Postgres `LISTEN`
//! (the API changed a pool), vCenter's VM watch (a desktop's VM changed or vanished) and the
//! periodic inventory sweep. Each hands what it learned to the scheduler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deskpool_domain::MARKER_POOL;
use deskpool_store::{desktops, pools, POOL_CHANNEL};
use deskpool_vsphere::{VmChange, VmEvent, VmInfo};

use crate::context::Ctx;
use crate::vcenter::Vcenter;
use crate::Error;

/// Wakes every pool on `LISTEN` notifications. After a lost connection every pool is woken,
/// since notifications sent meanwhile are gone.
pub(crate) async fn listen(ctx: Arc<Ctx>) {
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

async fn wake_all(ctx: &Ctx) {
    let names = match ctx.db.acquire().await {
        Ok(mut conn) => pools::names(&mut conn).await,
        Err(e) => Err(e.into()),
    };
    match names {
        Ok(names) => names.iter().for_each(|n| ctx.wake(n)),
        Err(e) => tracing::warn!(error = %e, "cannot list pools"),
    }
}

/// Follows vCenter's reports of VM changes (one long poll per vCenter) and hands the changes
/// of desktops' VMs to their pools: a VM destroyed by hand or powered off is noticed at once,
/// not at the next sweep.
pub(crate) async fn watch_vms(ctx: Arc<Ctx>, vc: Arc<Vcenter>) {
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
        let owners = match ctx.db.acquire().await {
            Ok(mut conn) => desktops::owners_of_vms(&mut conn, &vc.name, &morefs).await,
            Err(e) => Err(e.into()),
        };
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
            if !ctx.cancel.is_cancelled() {
                ctx.scheduler.hand_vm_events(&pool, events);
            }
        }
    }
}

/// The periodic full comparison: one inventory read per vCenter (all VMs with deskpool
/// markers), handed to each pool's next pass.
pub(crate) async fn sweep(ctx: &Ctx) -> Result<(), Error> {
    // Resolve inventory afresh from now on: with `snapshot = "current"` a new snapshot of the
    // golden VM is picked up within one resync interval (only pools that clone pay for it).
    ctx.forget_all_inventory();
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
        let listed_at = {
            let mut conn = ctx.db.acquire().await?;
            deskpool_store::db_now(&mut conn).await?
        };
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
            if !ctx.cancel.is_cancelled() {
                ctx.scheduler.hand_sweep(&p.spec.name, (listed_at, vms));
            }
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
