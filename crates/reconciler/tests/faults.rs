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
        // The failed desktop is cleaned up in error too.
        eventually(&format!("pool {pool}'s failed desktop removed"), || async {
            rows(&db, pool).await.is_empty().then_some(())
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
