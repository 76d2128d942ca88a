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
        images: std::sync::Arc::new(common::NoVcenter),
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
    // The bound is 1: `/healthz`, which needs no database, can only run once the stuck request
    // has given up its turn, so it finishes second (an order, not a time).
    let order = std::sync::atomic::AtomicU32::new(0);
    let finished = |res: common::Res| {
        let n = order.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        (n, res)
    };
    let stuck = async {
        finished(
            call(&router, Method::GET, "/api/v1/pools")
                .token(&ctx.viewer)
                .send()
                .await,
        )
    };
    let queued = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        finished(call(&router, Method::GET, "/healthz").send().await)
    };
    let ((stuck_n, stuck), (queued_n, queued)) = tokio::join!(stuck, queued);
    assert_eq!(stuck.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(stuck.error().0, "request_timeout");
    let message = stuck.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("within 0.3 s"), "{message}");
    assert_eq!(queued.status, StatusCode::OK, "{}", queued.text);
    assert!(
        stuck_n < queued_n,
        "/healthz ran beside the stuck request: the concurrency bound of 1 did not hold"
    );
    blocker.rollback().await.unwrap();

    // Once the lock is gone, requests are answered again.
    let ok = call(&router, Method::GET, "/api/v1/pools")
        .token(&ctx.viewer)
        .send()
        .await;
    assert_eq!(ok.status, StatusCode::OK);
}
