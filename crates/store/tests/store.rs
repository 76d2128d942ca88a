//! Every store query against a real PostgreSQL: each test gets its own migrated database
//! (`#[sqlx::test]`, needs DATABASE_URL).

use std::time::Duration;

use deskpool_domain::{DesktopState, EventKind, GuestOs, OnRelease, PoolSpec, PoolState};
use deskpool_store::desktops::{self, NewDesktop, Progress};
use deskpool_store::pools::{self, Status};
use deskpool_store::tokens::{self, Role};
use deskpool_store::{claims, events, lease, StoreError};
use sqlx::PgPool;
use uuid::Uuid;

fn spec(name: &str) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        vcenter: "vc1".into(),
        datacenter: "DC0".into(),
        golden_vm: "golden".into(),
        snapshot: "current".into(),
        folder: name.into(),
        resource_pool: "DC0_C0".into(),
        datastore: None,
        customization_spec: Some("win11".into()),
        naming_pattern: format!("{name}-{{n:3}}"),
        guest_os: GuestOs::Windows,
        target_size: 2,
        min_size: 1,
        max_size: 10,
        power_on: true,
        max_concurrent_clones: 8,
        enabled: true,
        max_surge: None,
        max_unavailable: 0,
        stop_on_error: true,
        logoff_policy: deskpool_domain::LogoffPolicy::Wait,
        force_after_secs: 3600,
        min_spare: 0,
        claim_lease_secs: 86_400,
        on_release: deskpool_domain::OnRelease::Delete,
        ready_timeout_secs: deskpool_domain::DEFAULT_READY_TIMEOUT_SECS,
        ready_when: deskpool_domain::ReadyWhen::GuestIp,
    }
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn pool_crud_round_trips(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let p = pools::insert(&mut c, &spec("lab")).await.unwrap();
    assert_eq!(p.spec, spec("lab"));
    assert_eq!(p.state, PoolState::Ok);
    assert_eq!(p.version, 1);
    assert_eq!(pools::get(&mut c, "lab").await.unwrap().unwrap(), p);
    assert_eq!(pools::get_by_id(&mut c, p.id).await.unwrap().unwrap(), p);
    assert!(pools::get(&mut c, "nope").await.unwrap().is_none());
    pools::insert(&mut c, &spec("alpha")).await.unwrap();
    let names: Vec<_> = pools::list(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.spec.name)
        .collect();
    assert_eq!(names, ["alpha", "lab"]);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn database_enforces_names_and_bounds(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    pools::insert(&mut c, &spec("lab")).await.unwrap();
    let dup = pools::insert(&mut c, &spec("lab")).await.unwrap_err();
    assert!(
        matches!(&dup, StoreError::Conflict { constraint, .. } if constraint == "pools_name_key"),
        "{dup:?}"
    );
    let mut bad = spec("Bad_Name");
    bad.folder = "x".into();
    assert!(matches!(
        pools::insert(&mut c, &bad).await.unwrap_err(),
        StoreError::Invalid { .. }
    ));
    let mut out = spec("out");
    out.target_size = 11;
    let e = pools::insert(&mut c, &out).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Invalid { constraint, .. } if constraint == "pools_size_bounds"),
        "{e:?}"
    );
    // target outside bounds through set_target is refused by the database too
    let e = pools::set_target(&mut c, "lab", 50, None)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e:?}");
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn spec_updates_check_versions(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let p = pools::insert(&mut c, &spec("lab")).await.unwrap();
    let p2 = pools::set_target(&mut c, "lab", 5, Some(p.version))
        .await
        .unwrap();
    assert_eq!((p2.spec.target_size, p2.version), (5, 2));
    let stale = pools::set_target(&mut c, "lab", 6, Some(p.version))
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::VersionMismatch { current: 2 }));
    let mut s = spec("lab");
    s.snapshot = "base/v2".into();
    s.max_size = 20;
    let p3 = pools::update_spec(&mut c, "lab", &s, None).await.unwrap();
    assert_eq!((p3.spec.snapshot.as_str(), p3.version), ("base/v2", 3));
    assert!(matches!(
        pools::update_spec(&mut c, "lab", &s, Some(1))
            .await
            .unwrap_err(),
        StoreError::VersionMismatch { current: 3 }
    ));
    assert!(matches!(
        pools::set_target(&mut c, "ghost", 1, None)
            .await
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn status_pause_resume_and_spec_change_clear_errors(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let p = pools::insert(&mut c, &spec("lab")).await.unwrap();
    let err = Status {
        state: PoolState::Error,
        last_error: Some("snapshot gone".into()),
        consecutive_failures: 0,
    };
    assert!(pools::set_status(&mut c, p.id, p.version, &err)
        .await
        .unwrap());
    pools::set_snapshot_moref(&mut c, p.id, "snapshot-1")
        .await
        .unwrap();
    let got = pools::get(&mut c, "lab").await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.last_error.as_deref()),
        (PoolState::Error, Some("snapshot gone"))
    );
    assert_eq!(got.version, 1, "status is not spec: no version bump");
    assert_eq!(
        pools::record_clone_outcome(&mut c, p.id, false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        pools::record_clone_outcome(&mut c, p.id, false)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        pools::record_clone_outcome(&mut c, p.id, true)
            .await
            .unwrap(),
        0
    );
    // a spec change clears an error
    let fixed = pools::update_spec(&mut c, "lab", &spec("lab"), None)
        .await
        .unwrap();
    assert_eq!((fixed.state, fixed.last_error), (PoolState::Ok, None));
    assert_eq!(
        fixed.snapshot_moref.as_deref(),
        Some("snapshot-1"),
        "same snapshot selector keeps the moref"
    );
    // stopped is cleared by resume only
    pools::set_note(&mut c, p.id, fixed.version, Some("vCenter unreachable"))
        .await
        .unwrap();
    assert_eq!(
        pools::get(&mut c, "lab")
            .await
            .unwrap()
            .unwrap()
            .last_error
            .as_deref(),
        Some("vCenter unreachable")
    );
    pools::set_note(&mut c, p.id, fixed.version, None)
        .await
        .unwrap();
    assert_eq!(
        pools::get(&mut c, "lab").await.unwrap().unwrap().last_error,
        None
    );
    let stopped = Status {
        state: PoolState::Stopped,
        last_error: Some("3 failures".into()),
        consecutive_failures: 3,
    };
    assert!(pools::set_status(&mut c, p.id, fixed.version, &stopped)
        .await
        .unwrap());
    let paused = pools::set_enabled(&mut c, "lab", false).await.unwrap();
    assert!(!paused.spec.enabled);
    assert_eq!(paused.state, PoolState::Stopped);
    pools::set_note(&mut c, p.id, paused.version, Some("ignored while stopped"))
        .await
        .unwrap();
    assert_eq!(
        pools::get(&mut c, "lab")
            .await
            .unwrap()
            .unwrap()
            .last_error
            .as_deref(),
        Some("3 failures")
    );
    let resumed = pools::set_enabled(&mut c, "lab", true).await.unwrap();
    assert_eq!(
        (resumed.state, resumed.consecutive_failures),
        (PoolState::Ok, 0)
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_status_decided_on_an_older_spec_is_not_written(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let read = pools::insert(&mut c, &spec("lab")).await.unwrap();
    // An admin fixes the spec while a pass that read `read` is still resolving it.
    let fixed = pools::update_spec(&mut c, "lab", &spec("lab"), None)
        .await
        .unwrap();
    assert!(fixed.version > read.version);
    let err = Status {
        state: PoolState::Error,
        last_error: Some("snapshot 'nope' not found".into()),
        consecutive_failures: 0,
    };
    assert!(
        !pools::set_status(&mut c, read.id, read.version, &err)
            .await
            .unwrap(),
        "a status about an older spec was written"
    );
    pools::set_note(&mut c, read.id, read.version, Some("about the old spec"))
        .await
        .unwrap();
    let got = pools::get(&mut c, "lab").await.unwrap().unwrap();
    assert_eq!((got.state, got.last_error), (PoolState::Ok, None));
    // The pass that read the current version writes.
    assert!(pools::set_status(&mut c, read.id, fixed.version, &err)
        .await
        .unwrap());
    let got = pools::get(&mut c, "lab").await.unwrap().unwrap();
    assert_eq!(got.state, PoolState::Error);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn deleting_pool_goes_once_empty(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let p = pools::insert(&mut c, &spec("lab")).await.unwrap();
    let d = desktops::insert_pending(
        &mut c,
        &NewDesktop {
            pool_id: p.id,
            name: "lab-001",
            index: 1,
            instance_uuid: Uuid::new_v4(),
            snapshot_moref: "snapshot-1",
        },
    )
    .await
    .unwrap();
    assert!(
        !pools::delete_if_empty(&mut c, p.id).await.unwrap(),
        "not deleting yet"
    );
    pools::mark_deleting(&mut c, "lab").await.unwrap();
    let ok = Status {
        state: PoolState::Ok,
        last_error: None,
        consecutive_failures: 0,
    };
    let version = pools::get(&mut c, "lab").await.unwrap().unwrap().version;
    pools::set_status(&mut c, p.id, version, &ok).await.unwrap();
    assert_eq!(
        pools::get(&mut c, "lab").await.unwrap().unwrap().state,
        PoolState::Deleting,
        "status never leaves deleting"
    );
    assert!(pools::update_spec(&mut c, "lab", &spec("lab"), None)
        .await
        .is_err());
    assert!(
        !pools::delete_if_empty(&mut c, p.id).await.unwrap(),
        "still has a desktop"
    );
    desktops::delete(&mut c, d.id).await.unwrap();
    assert!(pools::delete_if_empty(&mut c, p.id).await.unwrap());
    assert!(pools::get(&mut c, "lab").await.unwrap().is_none());
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn desktop_lifecycle_and_counts(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let p = pools::insert(&mut c, &spec("lab")).await.unwrap();
    let uuid = Uuid::new_v4();
    let d = desktops::insert_pending(
        &mut c,
        &NewDesktop {
            pool_id: p.id,
            name: "lab-001",
            index: 1,
            instance_uuid: uuid,
            snapshot_moref: "snapshot-1",
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (d.state, d.instance_uuid, d.snapshot_moref.as_deref()),
        (DesktopState::Pending, uuid, Some("snapshot-1"))
    );
    // unique name, index and uuid
    for (name, index, u) in [
        ("lab-001", 2, Uuid::new_v4()),
        ("lab-002", 1, Uuid::new_v4()),
        ("lab-003", 3, uuid),
    ] {
        let e = desktops::insert_pending(
            &mut c,
            &NewDesktop {
                pool_id: p.id,
                name,
                index,
                instance_uuid: u,
                snapshot_moref: "s",
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(e, StoreError::Conflict { .. }), "{e:?}");
    }
    let cloning = desktops::set_progress(
        &mut c,
        d.id,
        &Progress {
            state: DesktopState::Cloning,
            vm_moref: None,
            task_moref: Some("task-1".into()),
            powered_on: false,
            last_error: None,
            snapshot_moref: None,
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(cloning.task_moref.as_deref(), Some("task-1"));
    let ready = desktops::set_progress(
        &mut c,
        d.id,
        &Progress {
            state: DesktopState::Ready,
            vm_moref: Some("vm-9".into()),
            task_moref: None,
            powered_on: true,
            last_error: None,
            snapshot_moref: None,
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (
            ready.state,
            ready.vm_moref.as_deref(),
            ready.task_moref.as_deref()
        ),
        (DesktopState::Ready, Some("vm-9"), None),
        "ready clears the task hint"
    );
    assert!(ready.ready_at.is_some());
    let d2 = desktops::insert_pending(
        &mut c,
        &NewDesktop {
            pool_id: p.id,
            name: "lab-002",
            index: 2,
            instance_uuid: Uuid::new_v4(),
            snapshot_moref: "s",
        },
    )
    .await
    .unwrap();
    let counts = pools::counts(&mut c).await.unwrap();
    assert_eq!((counts[&p.id].ready, counts[&p.id].provisioning), (1, 1));
    assert_eq!(
        pools::counts_for(&mut c, p.id).await.unwrap(),
        counts[&p.id]
    );
    assert_eq!(
        pools::counts_for(&mut c, Uuid::new_v4()).await.unwrap(),
        pools::PoolCounts::default(),
        "a pool without desktops"
    );
    assert_eq!(desktops::mark_deleting(&mut c, &[d2.id]).await.unwrap(), 1);
    assert_eq!(
        desktops::mark_deleting(&mut c, &[d2.id]).await.unwrap(),
        0,
        "already deleting"
    );
    // progress never pulls a desktop out of deleting
    let still = desktops::set_progress(
        &mut c,
        d2.id,
        &Progress {
            state: DesktopState::Ready,
            vm_moref: None,
            task_moref: None,
            powered_on: true,
            last_error: None,
            snapshot_moref: None,
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(still.state, DesktopState::Deleting);
    let by_state = desktops::counts_by_state(&mut c).await.unwrap();
    assert_eq!(
        by_state,
        vec![
            ("lab".to_owned(), DesktopState::Deleting, 1),
            ("lab".to_owned(), DesktopState::Ready, 1)
        ]
    );
    let all = desktops::list_for_pool(&mut c, p.id).await.unwrap();
    assert_eq!(all.iter().map(|d| d.index).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        desktops::get_by_name(&mut c, p.id, "lab-002")
            .await
            .unwrap()
            .unwrap()
            .id,
        d2.id
    );
    assert_eq!(
        desktops::get(&mut c, d.id).await.unwrap().unwrap().name,
        "lab-001"
    );
    assert!(desktops::delete(&mut c, d2.id).await.unwrap());
    assert!(!desktops::delete(&mut c, d2.id).await.unwrap());
    assert!(desktops::set_progress(
        &mut c,
        d2.id,
        &Progress {
            state: DesktopState::Ready,
            vm_moref: None,
            task_moref: None,
            powered_on: true,
            last_error: None,
            snapshot_moref: None,
        }
    )
    .await
    .unwrap()
    .is_none());
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn vcenter_cannot_change_under_desktops(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let p = pools::insert(&mut c, &spec("lab")).await.unwrap();
    let mut moved = spec("lab");
    moved.vcenter = "vc2".into();
    pools::update_spec(&mut c, "lab", &moved, None)
        .await
        .unwrap();
    desktops::insert_pending(
        &mut c,
        &NewDesktop {
            pool_id: p.id,
            name: "lab-001",
            index: 1,
            instance_uuid: Uuid::new_v4(),
            snapshot_moref: "s",
        },
    )
    .await
    .unwrap();
    let e = pools::update_spec(&mut c, "lab", &spec("lab"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::VcenterFixed { .. } if e.to_string().contains("scale it to 0")),
        "{e:?}"
    );
    let mut dc = moved.clone();
    dc.datacenter = "DC1".into();
    assert!(pools::update_spec(&mut c, "lab", &dc, None).await.is_err());
    let mut other = moved;
    other.target_size = 3;
    pools::update_spec(&mut c, "lab", &other, None)
        .await
        .unwrap();
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn desktop_pages_by_name_and_state(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let p = pools::insert(&mut c, &spec("lab")).await.unwrap();
    for i in 1..=5u32 {
        let d = desktops::insert_pending(
            &mut c,
            &NewDesktop {
                pool_id: p.id,
                name: &format!("lab-{i:03}"),
                index: i,
                instance_uuid: Uuid::new_v4(),
                snapshot_moref: "s",
            },
        )
        .await
        .unwrap();
        if i % 2 == 0 {
            desktops::set_progress(
                &mut c,
                d.id,
                &Progress {
                    state: DesktopState::Ready,
                    vm_moref: None,
                    task_moref: None,
                    powered_on: true,
                    last_error: None,
                    snapshot_moref: None,
                },
            )
            .await
            .unwrap();
        }
    }
    let first = desktops::page(&mut c, p.id, None, None, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["lab-001", "lab-002"]
    );
    let next = desktops::page(&mut c, p.id, None, Some("lab-002"), 10)
        .await
        .unwrap();
    assert_eq!(next.len(), 3);
    let ready = desktops::page(&mut c, p.id, Some(DesktopState::Ready), None, 10)
        .await
        .unwrap();
    assert_eq!(ready.iter().map(|d| d.index).collect::<Vec<_>>(), [2, 4]);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn events_newest_first_with_cursor(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let mut ids = vec![];
    for (i, pool) in ["a", "b", "a", "a"].iter().enumerate() {
        let msg = format!("event {i}");
        ids.push(
            events::record(
                &mut c,
                &events::NewEvent {
                    pool: Some(pool),
                    desktop: None,
                    actor: "alice",
                    kind: EventKind::PoolResized,
                    message: &msg,
                },
            )
            .await
            .unwrap(),
        );
    }
    let all = events::list(
        &mut c,
        &events::Filter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    assert_eq!(all[0].kind, "pool_resized");
    let a = events::list(
        &mut c,
        &events::Filter {
            pool: Some("a"),
            limit: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        a.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["event 3", "event 2"]
    );
    let rest = events::list(
        &mut c,
        &events::Filter {
            pool: Some("a"),
            before: Some(a[1].id),
            limit: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        rest.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["event 0"]
    );
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    assert!(events::list(
        &mut c,
        &events::Filter {
            since: Some(future),
            limit: 10,
            ..Default::default()
        }
    )
    .await
    .unwrap()
    .is_empty());
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn tokens_store_only_hashes(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let (t, secret) = tokens::create(&mut c, "alice", Role::Helpdesk)
        .await
        .unwrap();
    assert!(secret.starts_with("dpt_") && secret.len() == 68);
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_hash FROM api_tokens")
        .fetch_one(&mut *c)
        .await
        .unwrap();
    assert_eq!(stored, tokens::hash_secret(&secret));
    let dump: String = sqlx::query_scalar("SELECT row_to_json(t)::text FROM api_tokens t")
        .fetch_one(&mut *c)
        .await
        .unwrap();
    assert!(!dump.contains(&secret[4..]), "secret stored in clear");
    let got = tokens::authenticate(&mut c, &secret)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.id, got.role), (t.id, Role::Helpdesk));
    assert!(tokens::authenticate(&mut c, "dpt_wrong")
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        tokens::create(&mut c, "alice", Role::Admin)
            .await
            .unwrap_err(),
        StoreError::Conflict { .. }
    ));
    assert!(tokens::create(&mut c, " ", Role::Admin).await.is_err());
    tokens::revoke(&mut c, "alice").await.unwrap();
    assert!(tokens::authenticate(&mut c, &secret)
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        tokens::revoke(&mut c, "alice").await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    // the name is free again once revoked
    tokens::create(&mut c, "alice", Role::Viewer).await.unwrap();
    let list = tokens::list(&mut c).await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0].revoked_at.is_none() && list[1].revoked_at.is_some());
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn lease_fences_a_stale_leader(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let ttl = Duration::from_secs(15);
    let a = lease::acquire(&mut c, "reconciler", "a", ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.token, 1);
    assert!(
        lease::acquire(&mut c, "reconciler", "b", ttl)
            .await
            .unwrap()
            .is_none(),
        "held by a"
    );
    assert_eq!(
        lease::acquire(&mut c, "reconciler", "a", ttl)
            .await
            .unwrap()
            .unwrap()
            .token,
        1,
        "renewal keeps the token"
    );
    assert!(lease::renew(&mut c, &a, ttl).await.unwrap());
    lease::check(&mut c, &a).await.unwrap();
    // a's lease runs out: b takes over with a new token and a is fenced
    sqlx::query("UPDATE leases SET expires_at = now() - interval '1 second'")
        .execute(&mut *c)
        .await
        .unwrap();
    let b = lease::acquire(&mut c, "reconciler", "b", ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.token, 2);
    assert!(matches!(
        lease::check(&mut c, &a).await.unwrap_err(),
        StoreError::Fenced { token: 1 }
    ));
    assert!(!lease::renew(&mut c, &a, ttl).await.unwrap());
    assert_eq!(
        lease::holder(&mut c, "reconciler")
            .await
            .unwrap()
            .unwrap()
            .owner,
        "b"
    );
    lease::release(&mut c, &b).await.unwrap();
    assert!(lease::check(&mut c, &b).await.is_err());
    let a2 = lease::acquire(&mut c, "reconciler", "a", ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a2.token, 3);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn spec_changes_notify_listeners(db: PgPool) {
    let mut listener = sqlx::postgres::PgListener::connect_with(&db).await.unwrap();
    listener.listen(deskpool_store::POOL_CHANNEL).await.unwrap();
    let mut c = db.acquire().await.unwrap();
    pools::insert(&mut c, &spec("lab")).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.payload(), "lab");
    pools::set_target(&mut c, "lab", 3, None).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.payload(), "lab");
    deskpool_store::notify_pool(&mut c, "other").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.payload(), "other");
}

/// `n` ready, powered-on desktops in pool `p` (named `<pool>-001`...).
async fn ready_desktops(c: &mut sqlx::PgConnection, p: &pools::Pool, n: u32) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 1..=n {
        let d = desktops::insert_pending(
            c,
            &NewDesktop {
                pool_id: p.id,
                name: &format!("{}-{i:03}", p.spec.name),
                index: i,
                instance_uuid: Uuid::new_v4(),
                snapshot_moref: "s",
            },
        )
        .await
        .unwrap();
        desktops::set_progress(c, d.id, &Progress::powered_on())
            .await
            .unwrap();
        ids.push(d.id);
    }
    ids
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn claims_hand_out_distinct_desktops_and_renew_for_the_same_user(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let p = pools::insert(&mut c, &spec("lab")).await.unwrap();
    ready_desktops(&mut c, &p, 2).await;
    let alice = claims::claim(&mut c, p.id, "alice", 60)
        .await
        .unwrap()
        .unwrap();
    assert!(!alice.renewed);
    assert!(alice.earliest_lease, "the pool's only claim");
    assert_eq!(alice.desktop.claimed_by.as_deref(), Some("alice"));
    let first_lease = alice.desktop.lease_expires_at.unwrap();
    assert!(first_lease > alice.desktop.claimed_at.unwrap());
    let again = claims::claim(&mut c, p.id, "alice", 3600)
        .await
        .unwrap()
        .unwrap();
    assert!(again.renewed);
    assert_eq!(again.desktop.id, alice.desktop.id, "same desktop back");
    assert!(
        again.desktop.lease_expires_at.unwrap() > first_lease,
        "lease extended"
    );
    assert_eq!(again.desktop.claimed_at, alice.desktop.claimed_at);
    let bob = claims::claim(&mut c, p.id, "bob", 60)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(bob.desktop.id, alice.desktop.id);
    assert!(claims::claim(&mut c, p.id, "carol", 60)
        .await
        .unwrap()
        .is_none());
    let counts = pools::counts_for(&mut c, p.id).await.unwrap();
    assert_eq!((counts.ready, counts.claimed, counts.spare), (2, 2, 0));
    assert_eq!(claims::claimed_count(&mut c, p.id).await.unwrap(), 2);
    assert_eq!(
        claims::claimed_by_pool(&mut c).await.unwrap(),
        vec![("lab".to_owned(), 2)]
    );
    // A provisioning desktop is not claimable.
    desktops::insert_pending(
        &mut c,
        &NewDesktop {
            pool_id: p.id,
            name: "lab-003",
            index: 3,
            instance_uuid: Uuid::new_v4(),
            snapshot_moref: "s",
        },
    )
    .await
    .unwrap();
    assert!(claims::claim(&mut c, p.id, "carol", 60)
        .await
        .unwrap()
        .is_none());
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn concurrent_claims_never_share_a_desktop(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let p = pools::insert(&mut c, &spec("lab")).await.unwrap();
    ready_desktops(&mut c, &p, 5).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let db = db.clone();
        let pool = p.id;
        tasks.push(tokio::spawn(async move {
            let mut c = db.acquire().await.unwrap();
            claims::claim(&mut c, pool, &format!("user{i}"), 60)
                .await
                .unwrap()
                .map(|cl| cl.desktop.id)
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.extend(t.await.unwrap());
    }
    assert_eq!(got.len(), 5);
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 5, "no desktop handed out twice");
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn release_applies_on_release_and_expiry_releases(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let p = pools::insert(&mut c, &spec("lab")).await.unwrap();
    let ids = ready_desktops(&mut c, &p, 3).await;
    let a = claims::claim(&mut c, p.id, "alice", 60)
        .await
        .unwrap()
        .unwrap();
    let kept = claims::release(&mut c, a.desktop.id, OnRelease::Keep)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.user, "alice");
    assert_eq!(kept.desktop.state, DesktopState::Ready);
    assert_eq!(
        (
            kept.desktop.claimed_by,
            kept.desktop.claimed_at,
            kept.desktop.lease_expires_at
        ),
        (None, None, None)
    );
    assert!(
        claims::release(&mut c, a.desktop.id, OnRelease::Keep)
            .await
            .unwrap()
            .is_none(),
        "releasing an unclaimed desktop does nothing"
    );
    let b = claims::claim(&mut c, p.id, "bob", 60)
        .await
        .unwrap()
        .unwrap();
    let gone = claims::release(&mut c, b.desktop.id, OnRelease::Delete)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone.desktop.state, DesktopState::Deleting);
    // Expiry: a lease already over (set back by hand) is released with the pool's policy.
    let carol = claims::claim(&mut c, p.id, "carol", 60)
        .await
        .unwrap()
        .unwrap();
    let dave = claims::claim(&mut c, p.id, "dave", 60)
        .await
        .unwrap()
        .unwrap();
    assert!(claims::expire(&mut c, p.id).await.unwrap().is_empty());
    sqlx::query("UPDATE desktops SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(carol.desktop.id)
        .execute(&mut *c)
        .await
        .unwrap();
    let expired = claims::expire(&mut c, p.id).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].user, "carol");
    assert_eq!(
        expired[0].desktop.state,
        DesktopState::Deleting,
        "on_release delete"
    );
    let still = desktops::get(&mut c, dave.desktop.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.claimed_by.as_deref(), Some("dave"));
    // Forced removal ends the claim; dropping all ends the rest.
    let (removed, user) = claims::force_remove(&mut c, dave.desktop.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.as_deref(), Some("dave"));
    assert_eq!(
        (removed.state, removed.claimed_by),
        (DesktopState::Deleting, None)
    );
    assert!(ids.contains(&removed.id));
    let e = claims::claim(&mut c, p.id, "erin", 60).await.unwrap();
    assert!(
        e.is_none()
            || e.as_ref()
                .is_some_and(|e| e.desktop.state == DesktopState::Ready)
    );
    let dropped = claims::drop_all(&mut c, p.id).await.unwrap();
    assert_eq!(dropped.len(), usize::from(e.is_some()));
    assert_eq!(claims::claimed_count(&mut c, p.id).await.unwrap(), 0);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn spare_and_lease_settings_round_trip(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let mut s = spec("lab");
    s.min_spare = 3;
    s.claim_lease_secs = 600;
    s.on_release = OnRelease::Keep;
    let p = pools::insert(&mut c, &s).await.unwrap();
    assert_eq!(p.spec, s);
    let p = pools::set_min_spare_locked(&mut c, "lab", 4).await.unwrap();
    assert_eq!(p.spec.min_spare, 4);
    let e = pools::set_min_spare_locked(&mut c, "lab", 11)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid { ref constraint, .. } if constraint == "pools_min_spare_bound"),
        "{e:?}"
    );
    assert!(pools::lock_shared(&mut c, "lab").await.unwrap().is_some());
    assert!(pools::lock_shared(&mut c, "nope").await.unwrap().is_none());
}

/// Image pins (#11): a pin with desktops on another image starts a rollout from the previous
/// pin; pinning the same image changes nothing; a stopped rollout resumes; a pin nothing is
/// outdated against ends it; the rollout spec fields round-trip.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn image_pins_start_stop_and_end_rollouts(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let mut s = spec("lab");
    s.max_surge = Some(3);
    s.max_unavailable = 1;
    s.stop_on_error = false;
    s.logoff_policy = deskpool_domain::LogoffPolicy::Force;
    s.force_after_secs = 120;
    let p = pools::insert(&mut c, &s).await.unwrap();
    assert_eq!(p.spec, s);
    assert_eq!(p.rollout.state, deskpool_domain::RolloutState::Idle);
    assert_eq!(
        pools::pin_image(&mut c, p.id, "snap-a").await.unwrap(),
        pools::Pinned::Pinned
    );
    desktops::insert_pending(
        &mut c,
        &NewDesktop {
            pool_id: p.id,
            name: "lab-001",
            index: 1,
            instance_uuid: Uuid::new_v4(),
            snapshot_moref: "snap-a",
        },
    )
    .await
    .unwrap();
    assert_eq!(
        pools::pin_image(&mut c, p.id, "snap-a").await.unwrap(),
        pools::Pinned::Unchanged
    );
    assert_eq!(
        pools::pin_image(&mut c, p.id, "snap-b").await.unwrap(),
        pools::Pinned::RolloutStarted {
            from: Some("snap-a".into()),
            to: "snap-b".into()
        }
    );
    let counts = pools::image_counts(&mut c, p.id).await.unwrap();
    assert_eq!(counts, vec![(Some("snap-a".to_owned()), 1)]);
    // Stopped only while still rolling toward that image.
    assert!(!pools::set_rollout_outcome(
        &mut c,
        p.id,
        "snap-x",
        deskpool_domain::RolloutState::Stopped,
        Some("f")
    )
    .await
    .unwrap());
    assert!(pools::set_rollout_outcome(
        &mut c,
        p.id,
        "snap-b",
        deskpool_domain::RolloutState::Stopped,
        Some("f")
    )
    .await
    .unwrap());
    let stopped = pools::get(&mut c, "lab").await.unwrap().unwrap();
    assert_eq!(
        stopped.rollout.state,
        deskpool_domain::RolloutState::Stopped
    );
    assert_eq!(stopped.rollout.last_error.as_deref(), Some("f"));
    let resumed = pools::resume_rollout(&mut c, "lab").await.unwrap().unwrap();
    assert_eq!(
        resumed.rollout.state,
        deskpool_domain::RolloutState::Rolling
    );
    assert!(pools::resume_rollout(&mut c, "lab")
        .await
        .unwrap()
        .is_none());
    // Rolled back to the image every desktop is on: nothing is outdated, the rollout is over.
    assert_eq!(
        pools::pin_image(&mut c, p.id, "snap-a").await.unwrap(),
        pools::Pinned::Pinned
    );
    let back = pools::get(&mut c, "lab").await.unwrap().unwrap();
    assert_eq!(back.rollout.state, deskpool_domain::RolloutState::Done);
    assert_eq!(back.snapshot_moref.as_deref(), Some("snap-a"));
}
