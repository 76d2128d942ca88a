//! The bound on the API's work: a request that cannot be answered in time gets a clear 503,
//! and requests beyond the concurrency bound wait their turn within that time.

use std::time::Duration;

use deskpool_api::{ApiState, RequestLimits};
use http::{Method, StatusCode};
use sqlx::PgPool;

use crate::common::{self, call, FixedHealth, MAX_BODY};

fn limited_router(db: PgPool, limits: RequestLimits) -> axum::Router {
    deskpool_api::router(ApiState {
        db,
        vcenters: vec!["vc1".into()],
        health: std::sync::Arc::new(FixedHealth(std::sync::Mutex::new(common::healthy()))),
        metrics: deskpool_api::install_metrics_recorder(),
        max_body_bytes: MAX_BODY,
        limits,
    })
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_request_stuck_behind_a_lock_times_out_with_503(db: PgPool) {
    let ctx = common::ctx(db.clone()).await;
    let router = limited_router(
        db.clone(),
        RequestLimits {
            max_concurrent: 1,
            timeout: Duration::from_millis(300),
        },
    );
    // Another session holds the pools table: listing pools cannot finish.
    let mut blocker = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE pools IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let stuck = call(&router, Method::GET, "/api/v1/pools")
        .token(&ctx.viewer)
        .send();
    // The bound is 1: this one waits behind the stuck one and times out too.
    let queued = call(&router, Method::GET, "/healthz").send();
    let (stuck, queued) = tokio::join!(stuck, queued);
    assert_eq!(stuck.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(stuck.error().0, "request_timeout");
    let message = stuck.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("within 0.3 s"), "{message}");
    assert_eq!(queued.status, StatusCode::SERVICE_UNAVAILABLE);
    blocker.rollback().await.unwrap();

    // Once the lock is gone, requests are answered again.
    let ok = call(&router, Method::GET, "/api/v1/pools")
        .token(&ctx.viewer)
        .send()
        .await;
    assert_eq!(ok.status, StatusCode::OK);
}
