//! The alerting gauges on `/metrics`: pool state, paused, leader, vCenter sessions.

use deskpool_api::{ReplicaRole, VcenterHealth};
use http::{Method, StatusCode};
use sqlx::PgPool;

use crate::common::{call, create_pool, ctx};

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn pool_state_leader_and_vcenter_gauges_follow_the_truth(db: PgPool) {
    let ctx = ctx(db).await;
    create_pool(&ctx, "glab").await;
    let scrape = || async {
        let res = call(&ctx.router, Method::GET, "/metrics").send().await;
        assert_eq!(res.status, StatusCode::OK);
        res.text
    };
    let text = scrape().await;
    for line in [
        "deskpool_pool_state{pool=\"glab\",state=\"ok\"} 1",
        "deskpool_pool_state{pool=\"glab\",state=\"error\"} 0",
        "deskpool_pool_state{pool=\"glab\",state=\"stopped\"} 0",
        "deskpool_pool_paused{pool=\"glab\"} 0",
        "deskpool_leader 1",
        "deskpool_vcenter_connected{vcenter=\"vc1\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }

    sqlx::query("UPDATE pools SET state = 'stopped' WHERE name = 'glab'")
        .execute(&ctx.db)
        .await
        .unwrap();
    call(&ctx.router, Method::POST, "/api/v1/pools/glab/pause")
        .token(&ctx.admin)
        .send()
        .await;
    *ctx.health.0.lock().unwrap() = deskpool_api::HealthSnapshot {
        role: ReplicaRole::Standby,
        vcenters: vec![VcenterHealth {
            name: "vc1".into(),
            connected: false,
            error: Some("connection refused".into()),
        }],
    };
    let text = scrape().await;
    for line in [
        "deskpool_pool_state{pool=\"glab\",state=\"ok\"} 0",
        "deskpool_pool_state{pool=\"glab\",state=\"stopped\"} 1",
        "deskpool_pool_paused{pool=\"glab\"} 1",
        "deskpool_leader 0",
        "deskpool_vcenter_connected{vcenter=\"vc1\"} 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}
