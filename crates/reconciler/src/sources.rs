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
use crate::steps;
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
pub(crate) async fn sweep(ctx: &Arc<Ctx>) -> Result<(), Error> {
    // Resolve inventory afresh from now on: with `snapshot = "current"` a new snapshot of the
    // golden VM is picked up within one resync interval (only pools that clone pay for it).
    ctx.forget_all_inventory();
    let all = {
        let mut conn = ctx.db.acquire().await?;
        pools::list(&mut conn).await?
    };
    for (name, vc) in &ctx.vcenters {
        // Listed even without pools: a clone that finished after its pool was deleted is
        // still this installation's to destroy.
        let on_vc: Vec<_> = all.iter().filter(|p| &p.spec.vcenter == name).collect();
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
        let by_pool = judge_vms(ctx, vc, &client, vms).await?;
        let mut by_pool = by_pool;
        for p in on_vc {
            let vms = by_pool.remove(&p.spec.name).unwrap_or_default();
            if !ctx.cancel.is_cancelled() {
                ctx.scheduler.hand_sweep(&p.spec.name, (listed_at, vms));
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

/// Judges every listed VM by the destruction rule (`deskpool_domain::judge`): the VMs of
/// desktop rows go to their row's pool (found by instance UUID, whatever the markers say);
/// VMs this installation made for desktops that are gone are destroyed; VMs with deskpool's
/// markers but an instance UUID it never issued are reported and left alone; another
/// installation's VMs are ignored.
async fn judge_vms(
    ctx: &Arc<Ctx>,
    vc: &Arc<Vcenter>,
    client: &deskpool_vsphere::Client,
    vms: Vec<VmInfo>,
) -> Result<HashMap<String, Vec<VmInfo>>, Error> {
    use deskpool_domain::{judge, SeenVm, Verdict, MARKER_INSTALLATION};
    let ours = ctx.installation().await?.to_string();
    let marker = |vm: &VmInfo, key: &str| {
        vm.extra_config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let uuid_of = |vm: &VmInfo| {
        vm.instance_uuid
            .as_deref()
            .and_then(|u| uuid::Uuid::parse_str(u).ok())
    };
    let uuids: Vec<uuid::Uuid> = vms.iter().filter_map(uuid_of).collect();
    // An inaccessible VM (datastore outage) shows neither instance UUID nor markers: unknown,
    // not absent. It goes to the pool of the desktop whose row names its moref, and is never
    // judged a leftover or foreign (so never destroyed) on what cannot be read.
    let unreadable: Vec<String> = vms
        .iter()
        .filter(|vm| vm.inaccessible)
        .map(|vm| vm.moref.value.clone())
        .collect();
    let (rows, issued, unreadable_owners) = {
        let mut conn = ctx.db.acquire().await?;
        (
            deskpool_store::installation::desktop_pools(&mut conn, &uuids).await?,
            deskpool_store::installation::issued(&mut conn, &uuids).await?,
            if unreadable.is_empty() {
                Vec::new()
            } else {
                desktops::owners_of_vms(&mut conn, &vc.name, &unreadable).await?
            },
        )
    };
    let mut by_pool: HashMap<String, Vec<VmInfo>> = HashMap::new();
    let mut foreign: HashMap<String, u64> = HashMap::new();
    for vm in vms {
        if vm.inaccessible {
            if let Some((_, pool)) = unreadable_owners.iter().find(|(m, _)| *m == vm.moref.value) {
                by_pool.entry(pool.clone()).or_default().push(vm);
            }
            continue;
        }
        let uuid = uuid_of(&vm);
        let installation = marker(&vm, MARKER_INSTALLATION);
        let claimed_pool = marker(&vm, MARKER_POOL);
        let seen = SeenVm {
            installation: installation.as_deref(),
            marked: claimed_pool.is_some()
                || vm
                    .extra_config
                    .iter()
                    .any(|(k, _)| k.starts_with("deskpool.")),
            has_row: uuid.is_some_and(|u| rows.contains_key(&u)),
            issued: uuid.is_some_and(|u| issued.contains(&u)),
        };
        match judge(&seen, &ours) {
            Verdict::NotOurs => {}
            Verdict::Desktop => {
                if let Some(pool) = uuid.and_then(|u| rows.get(&u)) {
                    by_pool.entry(pool.clone()).or_default().push(vm);
                }
            }
            Verdict::Leftover => {
                let pool = claimed_pool.unwrap_or_default();
                tracing::warn!(pool, vm = %vm.name, moref = %vm.moref, "VM made by this installation for a desktop that is gone: destroying it");
                steps::spawn_orphan_destroy(ctx, vc, client, &pool, vm);
            }
            Verdict::Foreign => {
                let pool = claimed_pool.unwrap_or_default();
                *foreign.entry(pool.clone()).or_default() += 1;
                if ctx.first_report(&vm.moref.value) {
                    let msg = format!(
                        "VM {} ({}) carries deskpool's markers but an instance UUID ({}) deskpool never gave a desktop (a copy or restore of a desktop?); it is left alone",
                        vm.name,
                        vm.moref,
                        vm.instance_uuid.as_deref().unwrap_or("none")
                    );
                    tracing::warn!(pool, vm = %vm.name, moref = %vm.moref, "{msg}");
                    let recorded = async {
                        let mut tx = ctx.begin().await?;
                        ctx.event(
                            &mut tx,
                            &pool,
                            Some(&vm.name),
                            deskpool_domain::EventKind::ForeignVm,
                            &msg,
                        )
                        .await?;
                        tx.commit().await?;
                        Ok::<_, Error>(())
                    };
                    if let Err(e) = recorded.await {
                        tracing::warn!(error = %e, "cannot record the foreign_vm event");
                    }
                }
            }
        }
    }
    let mut known = lock_foreign_pools();
    for pool in known.iter() {
        if !foreign.contains_key(pool) {
            metrics::gauge!("deskpool_foreign_vms", "pool" => pool.clone()).set(0.0);
        }
    }
    for (pool, n) in &foreign {
        metrics::gauge!("deskpool_foreign_vms", "pool" => pool.clone()).set(*n as f64);
        known.insert(pool.clone());
    }
    Ok(by_pool)
}

/// Pools a `deskpool_foreign_vms` gauge was set for (set back to 0 once their VMs are gone).
fn lock_foreign_pools() -> std::sync::MutexGuard<'static, std::collections::HashSet<String>> {
    static POOLS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}
