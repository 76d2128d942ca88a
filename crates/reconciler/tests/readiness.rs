//! Ready means usable (#10): a desktop becomes `ready` only once vCenter reports its guest up
//! (VMware Tools running, a usable IPv4 address, the customization's success), against a real
//! PostgreSQL and the vcsim harness (whose guests boot a configurable time after power-on).

mod common;

use std::time::Duration;

use common::*;
use deskpool_domain::{CustomizationState, DesktopState, ReadyWhen};
use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

async fn sim() -> Vcsim {
    Vcsim::start(VcsimOptions {
        folders: vec!["lab".into()],
        ..Default::default()
    })
    .await
}

/// Messages of the pool's events of `kind`, oldest first.
async fn messages(db: &PgPool, pool: &str, kind: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT message FROM events WHERE pool = $1 AND kind = $2 ORDER BY id")
        .bind(pool)
        .bind(kind)
        .fetch_all(db)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_desktop_is_ready_only_once_its_guest_reports_an_address(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = sim().await;
    // Tools 1.5 s after the power-on, the address 1.5 s after that.
    sim.set_guest(serde_json::json!({"delay_ms": 1500})).await;
    create_pool(&db, &spec("lab", 2, 2)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    let booting = eventually("both desktops powered on and booting", || async {
        let r = rows(&db, "lab").await;
        (r.len() == 2 && r.iter().all(|d| d.state == DesktopState::Booting)).then_some(r)
    })
    .await;
    let vms = sim.vms(Some("lab")).await;
    for d in &booting {
        let vm = vms.iter().find(|v| v.name == d.name).unwrap();
        assert_eq!(vm.power_state, "poweredOn");
        if vm.ip_address.is_empty() {
            // Still booting in vCenter's eyes too: not ready, so not claimable.
            assert_ne!(d.state, DesktopState::Ready);
        }
        assert!(d.booting_at.is_some() && d.ready_at.is_none(), "{d:?}");
    }
    converged(&db, &sim, "lab", 2).await;
    let vms = sim.vms(Some("lab")).await;
    for d in rows(&db, "lab").await {
        let vm = vms.iter().find(|v| v.name == d.name).unwrap();
        assert!(!vm.ip_address.is_empty());
        assert_eq!(d.ip_address.as_deref(), Some(vm.ip_address.as_str()));
        assert!(d.ip_address.as_deref().unwrap().starts_with("127."));
        assert_eq!(d.guest_state.as_deref(), Some("guestToolsRunning"));
        assert!(d.ready_at.unwrap() >= d.booting_at.unwrap());
    }
    assert_eq!(messages(&db, "lab", "desktop_booting").await.len(), 2);
    assert_eq!(messages(&db, "lab", "desktop_ready").await.len(), 2);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_guest_that_never_reports_an_address_fails_after_the_ready_timeout_and_is_replaced(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = sim().await;
    sim.set_guest(serde_json::json!({"rules": [{"pattern": "lab-*", "no_ip": true}]}))
        .await;
    let mut s = spec("lab", 1, 1);
    s.ready_timeout_secs = 2;
    create_pool(&db, &s).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    let first = eventually("the desktop booting", || async {
        rows(&db, "lab")
            .await
            .into_iter()
            .find(|d| d.state == DesktopState::Booting)
    })
    .await;
    let failed = eventually("the ready timeout to fail the desktop", || async {
        let m = messages(&db, "lab", "desktop_failed").await;
        m.into_iter().next()
    })
    .await;
    assert!(
        failed.contains("no IPv4 address reported by VMware Tools within 2 s of power-on"),
        "{failed}"
    );
    // Guests get addresses again: the replacement becomes ready, the failed one is gone.
    sim.set_guest(serde_json::json!({"rules": []})).await;
    converged(&db, &sim, "lab", 1).await;
    let now = rows(&db, "lab").await;
    assert_ne!(now[0].id, first.id, "the failed desktop was replaced");
    assert!(sim
        .vms(Some("lab"))
        .await
        .iter()
        .all(|v| v.instance_uuid != first.instance_uuid.to_string()));
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_failed_customization_fails_the_desktop_and_a_successful_one_makes_it_ready(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = sim().await;
    sim.set_guest(serde_json::json!({"rules": [
        {"pattern": "lab-*", "customization_failure": "sysprep exited with code 31"},
    ]}))
    .await;
    let mut s = spec("lab", 1, 1);
    s.customization_spec = Some("vcsim-linux".into());
    create_pool(&db, &s).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    let failed = eventually("the customization failure to fail the desktop", || async {
        messages(&db, "lab", "desktop_failed")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert!(
        failed.contains("guest customization failed")
            && failed.contains("sysprep exited with code 31"),
        "{failed}"
    );
    sim.set_guest(serde_json::json!({"rules": []})).await;
    converged(&db, &sim, "lab", 1).await;
    let d = rows(&db, "lab").await.remove(0);
    assert_eq!(d.customization, Some(CustomizationState::Succeeded));
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn ready_when_powered_on_is_ready_at_power_on_without_tools(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = sim().await;
    sim.set_guest(serde_json::json!({"rules": [{"pattern": "lab-*", "no_tools": true}]}))
        .await;
    let mut s = spec("lab", 2, 2);
    s.ready_when = ReadyWhen::PoweredOn;
    s.ready_timeout_secs = 1;
    create_pool(&db, &s).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 2).await;
    // Well past the ready timeout: nothing waits for a guest that has no Tools.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = rows(&db, "lab").await;
    assert!(r.iter().all(|d| d.state == DesktopState::Ready), "{r:?}");
    assert!(r
        .iter()
        .all(|d| d.ip_address.is_none() && d.booting_at.is_none()));
    assert!(messages(&db, "lab", "desktop_booting").await.is_empty());
    assert!(messages(&db, "lab", "desktop_failed").await.is_empty());
}
