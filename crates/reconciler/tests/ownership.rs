//! deskpool destroys only what is provably its own (#12 items 1, 2, 7): a VM whose instance
//! UUID this installation issued. Copies of desktops, VMs with markers naming unknown desktops
//! and another installation's VMs are never touched; they are reported.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use deskpool_domain::DesktopState;
use deskpool_store::{installation, pools};
use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor as _, PgPool};

fn sim_opts(folders: &[&str], clone_delay_ms: u64) -> VcsimOptions {
    VcsimOptions {
        clone_delay: Duration::from_millis(clone_delay_ms),
        folders: folders.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    }
}

/// The process-wide metrics recorder (one per test process; nextest runs each test in its own).
fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("metrics recorder")
    })
}

/// The value of `deskpool_foreign_vms{pool="<pool>"}`, if exported.
fn foreign_vms_metric(pool: &str) -> Option<f64> {
    let text = metrics().render();
    let prefix = format!("deskpool_foreign_vms{{pool=\"{pool}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn installation_id(db: &PgPool) -> String {
    let mut c = db.acquire().await.unwrap();
    installation::id(&mut c).await.unwrap().to_string()
}

async fn events_of(db: &PgPool, pool: &str, kind: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT message FROM events WHERE pool = $1 AND kind = $2 ORDER BY id")
        .bind(pool)
        .bind(kind)
        .fetch_all(db)
        .await
        .unwrap()
}

/// Lets the reconciler sweep the inventory several times (resync is 2 s in these tests).
async fn a_few_sweeps() {
    tokio::time::sleep(Duration::from_secs(7)).await;
}

/// Like `converged`, for a pool whose desktops live in `folder` among other VMs: the pool's
/// rows are all ready, each with its own VM (by instance UUID) in `folder`.
async fn converged_in(db: &PgPool, sim: &Vcsim, pool: &str, folder: &str, target: usize) {
    eventually(
        &format!("pool {pool} to have {target} ready desktops in {folder}"),
        || async {
            let r = rows(db, pool).await;
            let vms = sim.vms(Some(folder)).await;
            let ok = r.len() == target
                && r.iter().all(|d| {
                    d.state == DesktopState::Ready
                        && vms.iter().any(|v| {
                            v.instance_uuid == d.instance_uuid.to_string()
                                && d.vm_moref.as_deref() == Some(v.moref.as_str())
                                && v.power_state == "poweredOn"
                        })
                });
            ok.then_some(())
        },
    )
    .await;
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn an_admins_copy_of_a_desktop_survives_and_is_reported(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    metrics();
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab", "templates"], 50)).await;
    create_pool(&db, &spec("lab", 2, 2)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 2).await;
    let source = rows(&db, "lab").await.remove(0);

    // An admin copies the desktop twice (vCenter copies its markers, with a new instance
    // UUID): into another folder under another name, and next to it.
    let away = sim
        .copy_vm(&source.name, "golden-v3", Some("templates"), &[])
        .await;
    let beside = sim
        .copy_vm(&source.name, &format!("{}-copy", source.name), None, &[])
        .await;
    assert_eq!(
        away.extra_config.get("deskpool.desktop"),
        Some(&source.id.to_string()),
        "the harness did not copy the markers"
    );
    a_few_sweeps().await;
    let destroys = sim.stats().await.calls("Destroy_Task");
    assert_eq!(destroys, 0, "something was destroyed");
    for copy in [&away, &beside] {
        assert!(
            sim.vms(None).await.iter().any(|v| v.moref == copy.moref),
            "the copy {} was destroyed",
            copy.name
        );
        assert!(
            rows(&db, "lab")
                .await
                .iter()
                .all(|d| d.vm_moref.as_deref() != Some(copy.moref.as_str())),
            "the copy {} was taken for a desktop by its marker",
            copy.name
        );
    }

    // The copied desktop is removed: its copies are still not deskpool's.
    set_target(&db, "lab", 0).await;
    eventually("the pool's desktops to be destroyed", || async {
        rows(&db, "lab").await.is_empty().then_some(())
    })
    .await;
    a_few_sweeps().await;
    let names: Vec<String> = sim.vms(None).await.into_iter().map(|v| v.name).collect();
    for copy in [&away, &beside] {
        assert!(
            names.contains(&copy.name),
            "the copy {} was destroyed once its desktop was gone: {names:?}",
            copy.name
        );
    }
    assert_eq!(
        sim.stats().await.calls("Destroy_Task"),
        2,
        "only the two desktops are destroyed"
    );

    // Reported: an event per copy, and the metric.
    let reported = events_of(&db, "lab", "foreign_vm").await;
    for copy in [&away, &beside] {
        assert!(
            reported.iter().any(|m| m.contains(&copy.name)),
            "no foreign_vm event for {}: {reported:?}",
            copy.name
        );
    }
    assert_eq!(
        foreign_vms_metric("lab"),
        Some(2.0),
        "{}",
        metrics().render()
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_marker_naming_an_unknown_desktop_is_neither_destroyed_nor_adopted(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    metrics();
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 50)).await;
    create_pool(&db, &spec("lab", 2, 2)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 2).await;
    let id = installation_id(&db).await;
    let nobody = uuid::Uuid::new_v4().to_string();
    // Markers of this installation and pool, and of an older deskpool (no installation id),
    // naming a desktop that does not exist, with instance UUIDs deskpool never issued.
    let marked = sim
        .copy_vm(
            "golden",
            "lab-900",
            Some("lab"),
            &[
                ("deskpool.installation", &id),
                ("deskpool.pool", "lab"),
                ("deskpool.desktop", &nobody),
            ],
        )
        .await;
    let legacy = sim
        .copy_vm(
            "golden",
            "lab-901",
            Some("lab"),
            &[("deskpool.pool", "lab"), ("deskpool.desktop", &nobody)],
        )
        .await;
    // A resize makes new pending desktops while the strays are there.
    set_target(&db, "lab", 4).await;
    a_few_sweeps().await;
    let vms = sim.vms(Some("lab")).await;
    for stray in [&marked, &legacy] {
        assert!(
            vms.iter().any(|v| v.moref == stray.moref),
            "{} was destroyed",
            stray.name
        );
        assert!(
            rows(&db, "lab")
                .await
                .iter()
                .all(|d| d.vm_moref.as_deref() != Some(stray.moref.as_str())),
            "{} was adopted",
            stray.name
        );
    }
    assert_eq!(sim.stats().await.calls("Destroy_Task"), 0);
    eventually("the four desktops", || async {
        let r = rows(&db, "lab").await;
        (r.len() == 4 && r.iter().all(|d| d.state == DesktopState::Ready)).then_some(())
    })
    .await;
    let reported = events_of(&db, "lab", "foreign_vm").await;
    for stray in [&marked, &legacy] {
        assert!(
            reported.iter().any(|m| m.contains(&stray.name)),
            "no foreign_vm event for {}: {reported:?}",
            stray.name
        );
    }
    assert_eq!(
        foreign_vms_metric("lab"),
        Some(2.0),
        "{}",
        metrics().render()
    );
}

/// A second, migrated database on the same server, dropped by `drop_database`.
async fn second_database(opts: &PgConnectOptions) -> (String, PgConnectOptions) {
    let name = format!("deskpool_second_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.clone())
        .await
        .unwrap();
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    admin.close().await;
    let other = opts.clone().database(&name);
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(other.clone())
        .await
        .unwrap();
    deskpool_store::MIGRATOR.run(&db).await.unwrap();
    db.close().await;
    (name, other)
}

async fn drop_database(opts: &PgConnectOptions, name: &str) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.clone())
        .await
        .unwrap();
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn two_installations_with_equal_pool_names_never_touch_each_other(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db_a = pool_opts.connect_with(opts.clone()).await.unwrap();
    let (name_b, opts_b) = second_database(&opts).await;
    let db_b = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts_b.clone())
        .await
        .unwrap();
    assert_ne!(installation_id(&db_a).await, installation_id(&db_b).await);
    let sim = Vcsim::start(sim_opts(&["lab-a", "lab-b"], 100)).await;
    let mut a = spec("lab", 3, 3);
    a.folder = "lab-a".into();
    let mut b = spec("lab", 3, 3);
    b.folder = "lab-b".into();
    create_pool(&db_a, &a).await;
    create_pool(&db_b, &b).await;
    let _ra = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    let _rb = Replica::start(&opts_b, vec![vcenter(&sim)], config("b"));
    converged_in(&db_a, &sim, "lab", "lab-a", 3).await;
    converged_in(&db_b, &sim, "lab", "lab-b", 3).await;
    a_few_sweeps().await;
    let stats = sim.stats().await;
    assert_eq!(
        stats.calls("Destroy_Task"),
        0,
        "one installation destroyed the other's VMs: {stats:?}"
    );
    assert_eq!(
        stats.clone_requests, 6,
        "desktops were made again: {stats:?}"
    );
    converged_in(&db_a, &sim, "lab", "lab-a", 3).await;
    converged_in(&db_b, &sim, "lab", "lab-b", 3).await;
    // Each installation marks its VMs with its own id.
    for (db, folder) in [(&db_a, "lab-a"), (&db_b, "lab-b")] {
        let id = installation_id(db).await;
        for vm in sim.vms(Some(folder)).await {
            assert_eq!(
                vm.extra_config.get("deskpool.installation"),
                Some(&id),
                "{} in {folder}",
                vm.name
            );
        }
    }
    db_b.close().await;
    drop(_rb);
    drop_database(&opts, &name_b).await;
}

/// #12 item 7: killed between `CloneVM_Task` and recording its task, then the pool is
/// deleted: the VM that shows up later was made by this installation and is destroyed.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_late_clone_of_a_deleted_pool_is_destroyed(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 12_000)).await;
    sim.set_faults(serde_json::json!({"clone_response_delay_ms": 2000}))
        .await;
    create_pool(&db, &spec("lab", 1, 1)).await;
    let mut first = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    eventually("the clone to start", || async {
        (sim.stats().await.clone_requests >= 1).then_some(())
    })
    .await;
    first.crash(); // like kill -9, before the task's answer arrived
    let row = rows(&db, "lab").await.remove(0);
    assert_eq!(row.state, DesktopState::Pending, "the task was recorded");
    assert!(row.task_moref.is_none());
    sim.set_faults(serde_json::json!({"clone_response_delay_ms": 0}))
        .await;

    let mut c = db.acquire().await.unwrap();
    pools::mark_deleting(&mut c, "lab").await.unwrap();
    let _second = Replica::start(&opts, vec![vcenter(&sim)], config("b"));
    eventually("the pool to be deleted", || async {
        let mut c = db.acquire().await.unwrap();
        pools::get(&mut c, "lab")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let uuid = row.instance_uuid.to_string();
    eventually("the late clone to appear", || async {
        sim.vms(Some("lab"))
            .await
            .iter()
            .any(|v| v.instance_uuid == uuid)
            .then_some(())
    })
    .await;
    eventually("the late clone to be destroyed", || async {
        sim.vms(Some("lab")).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(sim.stats().await.clone_requests, 1);
}
