//! What a desktop's JSON shows of an inaccessible VM and of a VM deskpool could not destroy
//! (#12 items 3, 6), and that deleting such a desktop again starts a fresh count of tries.

use deskpool_domain::DesktopState;
use deskpool_store::desktops;
use http::{Method, StatusCode};
use sqlx::PgPool;

use crate::common::{self, add_desktop, call, Ctx};

async fn desktop(ctx: &Ctx, name: &str) -> serde_json::Value {
    let res = call(
        &ctx.router,
        Method::GET,
        &format!("/api/v1/pools/lab/desktops/{name}"),
    )
    .token(&ctx.viewer)
    .send()
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    res.body
}

async fn id_of(db: &PgPool, name: &str) -> uuid::Uuid {
    let mut c = db.acquire().await.unwrap();
    let p = deskpool_store::pools::get(&mut c, "lab")
        .await
        .unwrap()
        .unwrap();
    desktops::get_by_name(&mut c, p.id, name)
        .await
        .unwrap()
        .unwrap()
        .id
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn the_desktop_shows_an_inaccessible_vm_and_failed_destroys(db: PgPool) {
    let ctx = common::ctx(db.clone()).await;
    common::create_pool(&ctx, "lab").await;
    add_desktop(&db, "lab", "lab-001", 1, DesktopState::Ready).await;
    add_desktop(&db, "lab", "lab-002", 2, DesktopState::Ready).await;
    let first = desktop(&ctx, "lab-001").await;
    assert_eq!(
        (&first["inaccessible"], &first["destroy_failures"]),
        (&serde_json::json!(false), &serde_json::json!(0))
    );

    let (one, two) = (id_of(&db, "lab-001").await, id_of(&db, "lab-002").await);
    let mut c = db.acquire().await.unwrap();
    assert!(desktops::set_inaccessible(&mut c, one, true).await.unwrap());
    assert!(!desktops::set_inaccessible(&mut c, one, true).await.unwrap());
    assert_eq!(desktop(&ctx, "lab-001").await["inaccessible"], true);

    desktops::mark_deleting(&mut c, &[two]).await.unwrap();
    for n in 1..=2 {
        let counted =
            desktops::count_destroy_failure(&mut c, two, "cannot destroy VM vm-2: NoPermission")
                .await
                .unwrap();
        assert_eq!(counted, Some(n));
    }
    let given_up = desktops::give_up_destroy(&mut c, two, "gave up after 2 tries")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(given_up.vm_moref.as_deref(), Some("vm-2"), "VM forgotten");
    assert!(given_up.destroy_given_up_at.is_some());
    drop(c);
    let shown = desktop(&ctx, "lab-002").await;
    assert_eq!(shown["state"], "failed");
    assert_eq!(shown["destroy_failures"], 2);
    assert_eq!(shown["last_error"], "gave up after 2 tries");

    // Deleting it again: a fresh count.
    let res = call(
        &ctx.router,
        Method::DELETE,
        "/api/v1/pools/lab/desktops/lab-002",
    )
    .token(&ctx.helpdesk)
    .send()
    .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    let shown = desktop(&ctx, "lab-002").await;
    assert_eq!(shown["state"], "deleting");
    assert_eq!(shown["destroy_failures"], 0);
    let mut c = db.acquire().await.unwrap();
    let row = desktops::get(&mut c, two).await.unwrap().unwrap();
    assert!(row.destroy_given_up_at.is_none());
}
