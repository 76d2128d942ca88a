//! The README's clone-fault table, row by row, against a real PostgreSQL and the vcsim
//! harness's chosen clone faults (`POST /faults/clone`).

mod common;

use std::time::Duration;

use common::*;
use deskpool_domain::{DesktopState, PoolState};
use deskpool_store::pools;
use deskpool_testkit::vcsim::{CloneFault, CloneFaultKind, Vcsim, VcsimOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

fn sim_opts(folders: &[&str]) -> VcsimOptions {
    VcsimOptions {
        clone_delay: Duration::from_millis(50),
        folders: folders.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    }
}

async fn events_of(db: &PgPool, pool: &str, kind: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT message FROM events WHERE pool = $1 AND kind = $2 ORDER BY id")
        .bind(pool)
        .bind(kind)
        .fetch_all(db)
        .await
        .unwrap()
}

/// Clone requests the harness received for one desktop name.
async fn clones_of(sim: &Vcsim, name: &str) -> usize {
    sim.clones().await.iter().filter(|c| c.name == name).count()
}

async fn pool_in_error(db: &PgPool, pool: &str) -> String {
    eventually(&format!("pool {pool} to go to error"), || async {
        match pool_state(db, pool).await {
            (PoolState::Error, Some(m)) => Some(m),
            _ => None,
        }
    })
    .await
}

/// README, DuplicateName: the VM holding the name has the desktop's own instance UUID (the
/// clone made its VM, then vCenter answered DuplicateName): adopted, no second clone, no
/// failure counted.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn duplicate_name_held_by_the_desktops_own_vm_adopts_it(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"])).await;
    sim.add_clone_fault(
        CloneFault::new(CloneFaultKind::DuplicateName)
            .name("lab-001")
            .leave_vm(),
    )
    .await;
    create_pool(&db, &spec("lab", 2, 2)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 2).await;
    assert_eq!(
        sim.clone_faults().await[0].raised,
        1,
        "the fault never fired"
    );
    assert_eq!(clones_of(&sim, "lab-001").await, 1, "cloned a second time");
    let adopted = events_of(&db, "lab", "adopted").await;
    assert!(
        adopted
            .iter()
            .any(|m| m.contains("lab-001") && m.contains("DuplicateName resolved by instance UUID")),
        "{adopted:?}"
    );
    let p = pool(&db, "lab").await;
    assert_eq!((p.state, p.consecutive_failures), (PoolState::Ok, 0));
    assert!(events_of(&db, "lab", "clone_failed").await.is_empty());
}

/// README, DuplicateName: the name is held by a VM whose instance UUID this installation
/// issued and no desktop holds any more: destroyed as an orphan, and the clone retried.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn duplicate_name_held_by_a_leftover_destroys_it_and_clones_again(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"])).await;
    create_pool(&db, &spec("lab", 1, 2)).await;
    // No periodic sweep after the first: the leftover must be met by the clone, not the sweep.
    let mut cfg = config("a");
    cfg.resync_interval = Duration::from_secs(600);
    let _r = Replica::start(&opts, vec![vcenter(&sim)], cfg);
    converged(&db, &sim, "lab", 1).await;
    let leftover = sim.vms(Some("lab")).await.remove(0);
    assert_eq!(leftover.name, "lab-001");
    // The row goes, its issued instance UUID stays: the VM is a leftover of this installation.
    sqlx::query("DELETE FROM desktops WHERE name = 'lab-001'")
        .execute(&db)
        .await
        .unwrap();
    set_target(&db, "lab", 2).await;
    converged(&db, &sim, "lab", 2).await;
    let vms = sim.vms(Some("lab")).await;
    assert!(
        vms.iter().all(|v| v.moref != leftover.moref),
        "the leftover survived"
    );
    assert_eq!(
        sim.stats().await.duplicate_name_errors,
        1,
        "the clone never met the leftover"
    );
    // The first fill's, the one refused, the one after the destroy.
    assert_eq!(clones_of(&sim, "lab-001").await, 3);
    let destroyed = events_of(&db, "lab", "orphan_destroyed").await;
    assert!(
        destroyed
            .iter()
            .any(|m| m.contains(&leftover.moref) && m.contains("held the name of desktop lab-001")),
        "{destroyed:?}"
    );
    let p = pool(&db, "lab").await;
    assert_eq!((p.state, p.consecutive_failures), (PoolState::Ok, 0));
}

/// README, DuplicateName: nobody holds the name (a clone of that name still running, or its
/// holder just gone): retried after a backoff; not a clone failure.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn duplicate_name_held_by_nobody_is_retried(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"])).await;
    sim.add_clone_fault(
        CloneFault::new(CloneFaultKind::DuplicateName)
            .name("lab-001")
            .times(2),
    )
    .await;
    create_pool(&db, &spec("lab", 2, 2)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 2).await;
    assert_eq!(sim.clone_faults().await[0].raised, 2);
    assert_eq!(
        clones_of(&sim, "lab-001").await,
        3,
        "two refusals, one clone"
    );
    let p = pool(&db, "lab").await;
    assert_eq!((p.state, p.consecutive_failures), (PoolState::Ok, 0));
    assert!(events_of(&db, "lab", "clone_failed").await.is_empty());
    assert_eq!(sim.stats().await.calls("Destroy_Task"), 0);
}

/// README, DuplicateName: a VM deskpool does not manage holds the name (an unmarked VM, or a
/// copy of a desktop: markers, but an instance UUID deskpool never issued): the pool goes to
/// `error` saying what to do, and the VM is left alone.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn duplicate_name_held_by_a_foreign_vm_puts_the_pool_in_error(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["plain", "copied"])).await;
    let id: String = sqlx::query_scalar("SELECT id::text FROM installation")
        .fetch_one(&db)
        .await
        .unwrap();
    let plain = sim.copy_vm("golden", "plain-001", Some("plain"), &[]).await;
    let desktop = uuid::Uuid::new_v4().to_string();
    let copied = sim
        .copy_vm(
            "golden",
            "copied-001",
            Some("copied"),
            &[
                ("deskpool.installation", &id),
                ("deskpool.pool", "copied"),
                ("deskpool.desktop", &desktop),
            ],
        )
        .await;
    create_pool(&db, &spec("plain", 1, 1)).await;
    create_pool(&db, &spec("copied", 1, 1)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    for (pool, vm) in [("plain", &plain), ("copied", &copied)] {
        let msg = pool_in_error(&db, pool).await;
        assert!(
            msg.contains(&format!("VM name '{}'", vm.name))
                && msg.contains("does not manage")
                && msg.contains("rename or move that VM"),
            "{msg}"
        );
        assert!(
            sim.vms(Some(pool))
                .await
                .iter()
                .any(|v| v.moref == vm.moref),
            "{} was destroyed",
            vm.name
        );
    }
    assert_eq!(sim.stats().await.calls("Destroy_Task"), 0);
    assert_eq!(sim.stats().await.calls("PowerOffVM_Task"), 0);
}

/// README, clone faults: `InvalidDatastore`, `VmConfigFault` and `CustomizationFault` are
/// permanent: the desktop fails, the pool goes to `error` with vCenter's message and what to
/// fix, no further clone is made; resuming once the cause is fixed fills the pool.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn permanent_clone_faults_put_the_pool_in_error_with_the_message(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let cases = [
        ("ds", CloneFaultKind::InvalidDatastore, "InvalidDatastore"),
        ("cfg", CloneFaultKind::VmConfigFault, "VmConfigFault"),
        (
            "cust",
            CloneFaultKind::CustomizationFault,
            "CustomizationFault",
        ),
    ];
    let folders: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let sim = Vcsim::start(sim_opts(&folders)).await;
    for (pool, kind, type_name) in cases {
        sim.add_clone_fault(
            CloneFault::new(kind)
                .name(&format!("{pool}-*"))
                .always()
                .message(&format!("{type_name} for {pool}: see the vCenter task")),
        )
        .await;
        create_pool(&db, &spec(pool, 3, 1)).await;
    }
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    for (pool, _, type_name) in cases {
        let msg = pool_in_error(&db, pool).await;
        assert!(
            msg.contains(&format!(
                "{type_name}: {type_name} for {pool}: see the vCenter task"
            )) && msg.contains("fix the pool's datastore, customization spec or golden VM"),
            "{msg}"
        );
        assert!(
            events_of(&db, pool, "pool_error")
                .await
                .iter()
                .any(|m| m == &msg),
            "no pool_error event with {msg}"
        );
        assert!(
            !events_of(&db, pool, "clone_failed").await.is_empty(),
            "the desktop was not marked failed"
        );
    }
    // One clone per pool (one in flight at a time), then nothing while in error.
    let before = sim.clones().await.len();
    assert_eq!(before, 3, "{:?}", sim.clones().await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sim.clones().await.len(), before, "kept cloning in error");
    for (pool, _, _) in cases {
        // The failed desktop is cleaned up in error too. What may stay is the refill queue:
        // pending rows committed ahead, which never got a clone (no VM, no task).
        eventually(&format!("pool {pool}'s failed desktop removed"), || async {
            rows(&db, pool)
                .await
                .iter()
                .all(|d| {
                    d.state == DesktopState::Pending
                        && d.vm_moref.is_none()
                        && d.task_moref.is_none()
                })
                .then_some(())
        })
        .await;
    }

    // Fixed: resume each pool, which fills.
    sim.clear_clone_faults().await;
    let mut c = db.acquire().await.unwrap();
    for (pool, _, _) in cases {
        pools::set_enabled(&mut c, pool, true).await.unwrap();
    }
    for (pool, _, _) in cases {
        converged(&db, &sim, pool, 3).await;
        let p = self::pool(&db, pool).await;
        assert_eq!(p.state, PoolState::Ok);
        assert!(rows(&db, pool)
            .await
            .iter()
            .all(|d| d.state == DesktopState::Ready));
    }
}

/// The VM of `desktop` in the pool's folder.
async fn vm_of(sim: &Vcsim, folder: &str, desktop: &str) -> deskpool_testkit::vcsim::VmInfo {
    sim.vms(Some(folder))
        .await
        .into_iter()
        .find(|v| v.name == desktop)
        .unwrap_or_else(|| panic!("no VM {desktop} in {folder}"))
}

/// #12 item 6: a destroy that can never succeed (`NoPermission`) is counted against its
/// desktop, which is marked failed with the reason after the configured number of tries and
/// then left alone; the pool is not held in backoff meanwhile and keeps provisioning. An
/// admin's delete, once the cause is fixed, destroys it.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_vm_that_cannot_be_destroyed_fails_its_desktop_and_the_pool_goes_on(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"])).await;
    create_pool(&db, &spec("lab", 2, 2)).await;
    // Tries 2 s apart: the desktops asked for meanwhile must not wait for the give-up.
    let mut cfg = config("a");
    cfg.backoff_base = Duration::from_secs(2);
    cfg.backoff_max = Duration::from_secs(2);
    let _r = Replica::start(&opts, vec![vcenter(&sim)], cfg);
    converged(&db, &sim, "lab", 2).await;
    let stuck = vm_of(&sim, "lab", "lab-002").await;
    sim.set_faults(
        serde_json::json!({"destroy_fault": "NoPermission", "destroy_fault_vms": [stuck.moref]}),
    )
    .await;
    // Shrink (lab-002 goes) and grow at once: the pool must fill while the destroy fails.
    set_target(&db, "lab", 1).await;
    eventually("the destroy of lab-002 to fail once", || async {
        (sim.faults().await["destroy_faults_raised"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    set_target(&db, "lab", 3).await;
    let failed = eventually("lab-002 marked failed after its tries", || async {
        rows(&db, "lab")
            .await
            .into_iter()
            .find(|d| d.name == "lab-002" && d.state == DesktopState::Failed)
    })
    .await;
    let why = failed.last_error.unwrap_or_default();
    assert!(
        why.contains("NoPermission") && why.contains("5 tries") && why.contains(&stuck.moref),
        "{why}"
    );
    eventually("three ready desktops besides the failed one", || async {
        let r = rows(&db, "lab").await;
        let ready = r.iter().filter(|d| d.state == DesktopState::Ready).count();
        (ready == 3 && r.len() == 4).then_some(())
    })
    .await;
    // The pool was not held back by the failing destroy: its new desktops were ready before
    // deskpool gave up (4 tries, 2 s apart, after the first).
    let order: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT kind, desktop FROM events WHERE pool = 'lab' AND kind IN ('desktop_ready', 'destroy_given_up') ORDER BY id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let given_up = order
        .iter()
        .position(|(k, _)| k == "destroy_given_up")
        .expect("no destroy_given_up event");
    for name in ["lab-003", "lab-004"] {
        let ready = order
            .iter()
            .position(|(k, d)| k == "desktop_ready" && d.as_deref() == Some(name));
        assert!(ready.is_some_and(|r| r < given_up), "{name}: {order:?}");
    }
    // Given up: no further tries, the VM is still there, the pool is fine.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sim.faults().await["destroy_faults_raised"], 5);
    assert!(sim
        .vms(Some("lab"))
        .await
        .iter()
        .any(|v| v.moref == stuck.moref));
    let p = pool(&db, "lab").await;
    assert_eq!((p.state, p.consecutive_failures), (PoolState::Ok, 0));
    let r = rows(&db, "lab").await;
    assert_eq!(r.len(), 4, "{r:?}");
    assert!(
        r.iter()
            .any(|d| d.name == "lab-002" && d.state == DesktopState::Failed),
        "{r:?}"
    );

    // Fixed: an admin's delete destroys it.
    sim.set_faults(serde_json::json!({"destroy_fault": ""}))
        .await;
    let mut tx = db.begin().await.unwrap();
    deskpool_store::desktops::mark_deleting(&mut tx, &[failed.id])
        .await
        .unwrap();
    deskpool_store::notify_pool(&mut tx, "lab").await.unwrap();
    tx.commit().await.unwrap();
    converged(&db, &sim, "lab", 3).await;
    assert!(sim
        .vms(Some("lab"))
        .await
        .iter()
        .all(|v| v.moref != stuck.moref));
}

/// #12 item 3: a desktop whose VM becomes inaccessible (a datastore outage: vCenter cannot
/// read its config, so name aside nothing about it is known) keeps its desktop as it is: not
/// failed, not replaced, its VM not destroyed by the sweep; the desktop shows `inaccessible`
/// and the pool a note. Readable again, all is back to normal.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn an_inaccessible_vm_keeps_its_desktop_until_it_is_readable_again(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"])).await;
    create_pool(&db, &spec("lab", 2, 2)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 2).await;
    let before = rows(&db, "lab").await;
    let vm = vm_of(&sim, "lab", "lab-001").await;
    sim.reset_stats().await;
    sim.set_vm_inaccessible(&vm.moref, true).await;
    // Sweeps every 2 s, and the VM watch's report: several chances to get it wrong.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let during = rows(&db, "lab").await;
    assert_eq!(during.len(), 2, "{during:?}");
    for (b, d) in before.iter().zip(&during) {
        assert_eq!(
            (d.id, d.state, d.vm_moref.as_deref(), d.instance_uuid),
            (
                b.id,
                DesktopState::Ready,
                b.vm_moref.as_deref(),
                b.instance_uuid
            ),
            "desktop {} changed",
            d.name
        );
    }
    let stats = sim.stats().await;
    assert_eq!(stats.calls("Destroy_Task"), 0);
    assert_eq!(stats.calls("PowerOffVM_Task"), 0);
    assert_eq!(stats.clone_requests, 0, "replaced");
    assert!(sim
        .vms(Some("lab"))
        .await
        .iter()
        .any(|v| v.moref == vm.moref));
    let flags: Vec<(&str, bool)> = during
        .iter()
        .map(|d| (d.name.as_str(), d.inaccessible))
        .collect();
    assert_eq!(flags, [("lab-001", true), ("lab-002", false)]);
    let p = pool(&db, "lab").await;
    assert_eq!(p.state, PoolState::Ok);
    let note = p.last_error.unwrap_or_default();
    assert!(
        note.contains("inaccessible VM (lab-001)") && note.contains("check the datastores"),
        "{note}"
    );
    assert_eq!(events_of(&db, "lab", "vm_inaccessible").await.len(), 1);

    // Readable again: back to normal at the next sweep.
    sim.set_vm_inaccessible(&vm.moref, false).await;
    eventually("lab-001 readable again, the note gone", || async {
        let r = rows(&db, "lab").await;
        let p = pool(&db, "lab").await;
        (r.iter().all(|d| !d.inaccessible) && p.last_error.is_none()).then_some(())
    })
    .await;
    assert_eq!(events_of(&db, "lab", "vm_accessible").await.len(), 1);
    converged(&db, &sim, "lab", 2).await;
    let after = rows(&db, "lab").await;
    assert_eq!(
        after.iter().map(|d| d.id).collect::<Vec<_>>(),
        before.iter().map(|d| d.id).collect::<Vec<_>>()
    );
    assert_eq!(sim.stats().await.clone_requests, 0);
}

/// #12 item 3: a desktop marked for deletion whose VM is inaccessible waits (its instance UUID
/// cannot be checked): its row is not forgotten while the VM still exists, and once the VM is
/// readable again it is destroyed.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn deleting_a_desktop_whose_vm_is_inaccessible_waits_for_it(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"])).await;
    create_pool(&db, &spec("lab", 2, 2)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 2).await;
    let vm = vm_of(&sim, "lab", "lab-002").await;
    sim.set_vm_inaccessible(&vm.moref, true).await;
    set_target(&db, "lab", 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = rows(&db, "lab").await;
    assert!(
        r.iter()
            .any(|d| d.name == "lab-002" && d.state == DesktopState::Deleting),
        "{r:?}"
    );
    assert!(sim
        .vms(Some("lab"))
        .await
        .iter()
        .any(|v| v.moref == vm.moref));
    assert_eq!(pool(&db, "lab").await.state, PoolState::Ok);

    sim.set_vm_inaccessible(&vm.moref, false).await;
    converged(&db, &sim, "lab", 1).await;
    assert!(sim
        .vms(Some("lab"))
        .await
        .iter()
        .all(|v| v.moref != vm.moref));
}
