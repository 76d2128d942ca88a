//! Claims and the reconciler, against a real PostgreSQL and the vcsim harness: a claimed
//! desktop is never removed by sizing; a release replaces it (or keeps it); a lease that runs
//! out releases it, woken by the pool's lease timer alone.

mod common;

use std::time::Duration;

use common::*;
use deskpool_domain::{DesktopState, OnRelease};
use deskpool_store::{claims, desktops, pools};
use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

fn sim_opts() -> VcsimOptions {
    VcsimOptions {
        clone_delay: Duration::from_millis(100),
        folders: vec!["lab".into()],
        ..Default::default()
    }
}

async fn claim(db: &PgPool, pool: &str, user: &str, lease_secs: u32) -> desktops::Desktop {
    let mut c = db.acquire().await.unwrap();
    let p = pools::get(&mut c, pool).await.unwrap().unwrap();
    let got = claims::claim(&mut c, p.id, user, lease_secs)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no desktop for {user}"));
    deskpool_store::notify_pool(&mut c, pool).await.unwrap();
    got.desktop
}

/// Releases as the API does: the pool's `on_release`, then a wake-up for the reconciler.
async fn release(db: &PgPool, pool: &str, d: &desktops::Desktop) -> desktops::Desktop {
    let mut c = db.acquire().await.unwrap();
    let p = pools::get(&mut c, pool).await.unwrap().unwrap();
    let done = claims::release(&mut c, d.id, p.spec.on_release)
        .await
        .unwrap()
        .unwrap();
    deskpool_store::notify_pool(&mut c, pool).await.unwrap();
    done.desktop
}

async fn set_on_release(db: &PgPool, pool: &str, on_release: OnRelease) {
    let mut c = db.acquire().await.unwrap();
    let mut p = pools::get(&mut c, pool).await.unwrap().unwrap();
    p.spec.on_release = on_release;
    pools::update_spec(&mut c, pool, &p.spec, None)
        .await
        .unwrap();
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn claimed_desktops_survive_a_shrink_and_releases_refill(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts()).await;
    create_pool(&db, &spec("lab", 3, 4)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 3).await;
    let alice = claim(&db, "lab", "alice", 3600).await;
    set_target(&db, "lab", 0).await;
    eventually("only the claimed desktop left", || async {
        let r = rows(&db, "lab").await;
        let vms = sim.vms(Some("lab")).await;
        (r.len() == 1 && vms.len() == 1).then_some(())
    })
    .await;
    let left = rows(&db, "lab").await.remove(0);
    assert_eq!(left.id, alice.id);
    assert_eq!(
        (left.state, left.claimed_by.as_deref()),
        (DesktopState::Ready, Some("alice"))
    );
    assert_eq!(
        sim.vms(Some("lab")).await[0].instance_uuid,
        alice.instance_uuid.to_string()
    );

    // Release with `delete` at target 1: the desktop goes, a fresh one (a new VM) comes.
    set_target(&db, "lab", 1).await;
    release(&db, "lab", &alice).await;
    eventually("a fresh desktop replaces the released one", || async {
        let r = rows(&db, "lab").await;
        let vms = sim.vms(Some("lab")).await;
        (r.len() == 1
            && r[0].state == DesktopState::Ready
            && r[0].id != alice.id
            && vms.len() == 1
            && vms[0].instance_uuid != alice.instance_uuid.to_string())
        .then_some(())
    })
    .await;
    let fresh = rows(&db, "lab").await.remove(0);
    assert_ne!(fresh.instance_uuid, alice.instance_uuid);
    assert!(fresh.claimed_by.is_none());

    // Release with `keep`: the same VM, claimable again.
    set_on_release(&db, "lab", OnRelease::Keep).await;
    let bob = claim(&db, "lab", "bob", 3600).await;
    assert_eq!(bob.id, fresh.id);
    let kept = release(&db, "lab", &bob).await;
    assert_eq!(
        (kept.state, kept.claimed_by.as_deref()),
        (DesktopState::Ready, None)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = rows(&db, "lab").await;
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].id, r[0].vm_moref.as_deref()),
        (fresh.id, fresh.vm_moref.as_deref())
    );
    let kinds = event_kinds(&db, "lab").await;
    assert!(!kinds.contains(&"claim_expired".to_owned()), "{kinds:?}");
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn spares_grow_the_pool_as_desktops_are_claimed(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts()).await;
    let mut s = spec("lab", 0, 4);
    s.min_spare = 2;
    create_pool(&db, &s).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 2).await;
    claim(&db, "lab", "alice", 3600).await;
    claim(&db, "lab", "bob", 3600).await;
    eventually("two new spares next to the two claimed", || async {
        let r = rows(&db, "lab").await;
        let spare = r
            .iter()
            .filter(|d| d.state == DesktopState::Ready && d.claimed_by.is_none())
            .count();
        (r.len() == 4 && spare == 2).then_some(())
    })
    .await;
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn an_expired_lease_releases_the_desktop_on_its_timer(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts()).await;
    create_pool(&db, &spec("lab", 1, 4)).await;
    // No periodic sweep during the test: only the lease timer can wake the pool.
    let mut cfg = config("a");
    cfg.resync_interval = Duration::from_secs(3600);
    let _r = Replica::start(&opts, vec![vcenter(&sim)], cfg);
    converged(&db, &sim, "lab", 1).await;
    let carol = {
        let mut c = db.acquire().await.unwrap();
        let p = pools::get(&mut c, "lab").await.unwrap().unwrap();
        let got = claims::claim(&mut c, p.id, "carol", 60)
            .await
            .unwrap()
            .unwrap();
        // A short lease (below what the API accepts), then one wake-up to arm the timer.
        sqlx::query(
            "UPDATE desktops SET lease_expires_at = now() + interval '2 seconds' WHERE id = $1",
        )
        .bind(got.desktop.id)
        .execute(&mut *c)
        .await
        .unwrap();
        deskpool_store::notify_pool(&mut c, "lab").await.unwrap();
        got.desktop
    };
    eventually(
        "the lease ran out and a fresh desktop replaced it",
        || async {
            let r = rows(&db, "lab").await;
            (r.len() == 1 && r[0].id != carol.id && r[0].state == DesktopState::Ready).then_some(())
        },
    )
    .await;
    let kinds = event_kinds(&db, "lab").await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "claim_expired").count(),
        1,
        "{kinds:?}"
    );
    assert!(sim
        .vms(Some("lab"))
        .await
        .iter()
        .all(|vm| vm.instance_uuid != carol.instance_uuid.to_string()));
}
