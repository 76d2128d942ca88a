//! The installation id and the record of issued instance UUIDs, against a real PostgreSQL.

use deskpool_domain::{GuestOs, PoolSpec};
use deskpool_store::desktops::{self, NewDesktop};
use deskpool_store::{installation, pools};
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
        customization_spec: None,
        naming_pattern: format!("{name}-{{n:3}}"),
        guest_os: GuestOs::Windows,
        target_size: 2,
        min_size: 0,
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
async fn one_installation_id_generated_once(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let id = installation::id(&mut c).await.unwrap();
    assert!(!id.is_nil());
    assert_eq!(installation::id(&mut c).await.unwrap(), id, "stable");
    let second = sqlx::query("INSERT INTO installation DEFAULT VALUES")
        .execute(&mut *c)
        .await;
    assert!(second.is_err(), "a second installation row was accepted");
    sqlx::query("DELETE FROM installation")
        .execute(&mut *c)
        .await
        .unwrap();
    let e = installation::id(&mut c).await.unwrap_err().to_string();
    assert!(e.contains("installation table is empty"), "{e}");
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn issued_uuids_outlive_their_desktops(db: PgPool) {
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
    let stranger = Uuid::new_v4();
    let issued = installation::issued(&mut c, &[uuid, stranger])
        .await
        .unwrap();
    assert_eq!(issued.into_iter().collect::<Vec<_>>(), [uuid]);
    // The row goes (its pool too); the record of what this installation made stays.
    desktops::delete(&mut c, d.id).await.unwrap();
    sqlx::query("DELETE FROM pools")
        .execute(&mut *c)
        .await
        .unwrap();
    assert!(installation::issued(&mut c, &[uuid])
        .await
        .unwrap()
        .contains(&uuid));
    installation::forget_issued(&mut c, uuid).await.unwrap();
    assert!(installation::issued(&mut c, &[uuid])
        .await
        .unwrap()
        .is_empty());
    assert!(installation::issued(&mut c, &[]).await.unwrap().is_empty());
}

/// Upgrading a database with desktops: the migration records them as made by this installation.
#[sqlx::test(migrations = false)]
async fn upgrade_records_existing_desktops(db: PgPool) {
    let mut c = db.acquire().await.unwrap();
    let (before, rest): (Vec<_>, Vec<_>) = deskpool_store::MIGRATOR
        .iter()
        .partition(|m| m.version < 20261202000800);
    for m in &before {
        sqlx::raw_sql(&m.sql).execute(&mut *c).await.unwrap();
    }
    // Rows written as the older schema had them: today's store expects today's columns.
    let pool_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pools (id, name, vcenter, datacenter, golden_vm, snapshot, folder,
             resource_pool, naming_pattern, target_size, max_size)
         VALUES ($1, 'lab', 'vc1', 'DC0', 'golden', 'current', 'lab', 'DC0_C0', 'lab-{n:3}', 1, 10)",
    )
    .bind(pool_id)
    .execute(&mut *c)
    .await
    .unwrap();
    let uuid = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO desktops (id, pool_id, name, idx, instance_uuid, state, snapshot_moref)
         VALUES ($1, $2, 'lab-001', 1, $3, 'pending', 'snapshot-1')",
    )
    .bind(Uuid::new_v4())
    .bind(pool_id)
    .bind(uuid)
    .execute(&mut *c)
    .await
    .unwrap();
    for m in &rest {
        sqlx::raw_sql(&m.sql).execute(&mut *c).await.unwrap();
    }
    assert!(installation::issued(&mut c, &[uuid])
        .await
        .unwrap()
        .contains(&uuid));
    installation::id(&mut c).await.unwrap();
}
