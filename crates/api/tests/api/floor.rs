//! Replacing a desktop while its pool cannot provision would only remove it: refused.

use deskpool_domain::DesktopState;
use http::{Method, StatusCode};
use sqlx::PgPool;

use crate::common::{self, add_desktop, call, Ctx};

async fn replace(ctx: &Ctx, desktop: &str) -> common::Res {
    call(
        &ctx.router,
        Method::DELETE,
        &format!("/api/v1/pools/lab/desktops/{desktop}"),
    )
    .token(&ctx.helpdesk)
    .send()
    .await
}

async fn state_of(ctx: &Ctx, desktop: &str) -> String {
    let res = call(
        &ctx.router,
        Method::GET,
        &format!("/api/v1/pools/lab/desktops/{desktop}"),
    )
    .token(&ctx.viewer)
    .send()
    .await;
    res.body["state"].as_str().unwrap_or_default().to_owned()
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn no_replacement_while_the_pool_cannot_provision(db: PgPool) {
    let ctx = common::ctx(db.clone()).await;
    common::create_pool(&ctx, "lab").await;
    add_desktop(&db, "lab", "lab-001", 1, DesktopState::Ready).await;
    add_desktop(&db, "lab", "lab-002", 2, DesktopState::Ready).await;
    add_desktop(&db, "lab", "lab-003", 3, DesktopState::Failed).await;

    let paused = call(&ctx.router, Method::POST, "/api/v1/pools/lab/pause")
        .token(&ctx.admin)
        .send()
        .await;
    assert!(paused.status.is_success(), "{}", paused.text);
    let res = replace(&ctx, "lab-001").await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{}", res.text);
    assert_eq!(res.error().0, "pool_not_provisioning");
    let message = res.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "pool 'lab' is paused: desktop 'lab-001' would be destroyed without a replacement"
        ),
        "{message}"
    );
    assert_eq!(state_of(&ctx, "lab-001").await, "ready");
    // A failed desktop is no use to anyone: it may go.
    assert_eq!(replace(&ctx, "lab-003").await.status, StatusCode::ACCEPTED);

    let resumed = call(&ctx.router, Method::POST, "/api/v1/pools/lab/resume")
        .token(&ctx.admin)
        .send()
        .await;
    assert!(resumed.status.is_success(), "{}", resumed.text);
    sqlx::query(
        "UPDATE pools SET state = 'error', last_error = 'datastore gone' WHERE name = 'lab'",
    )
    .execute(&db)
    .await
    .unwrap();
    let res = replace(&ctx, "lab-001").await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{}", res.text);
    let message = res.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("pool 'lab' is error (datastore gone)"),
        "{message}"
    );

    sqlx::query("UPDATE pools SET state = 'ok', last_error = NULL WHERE name = 'lab'")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(replace(&ctx, "lab-001").await.status, StatusCode::ACCEPTED);
    assert_eq!(state_of(&ctx, "lab-001").await, "deleting");
}
