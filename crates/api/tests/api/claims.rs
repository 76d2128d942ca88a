//! Claims over HTTP: handing desktops to users, releasing them, and what a claim protects a
//! desktop from (helpdesk DELETE, pool deletion), against a real PostgreSQL.

use deskpool_domain::DesktopState;
use http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::common::{add_desktop, call, create_pool, ctx, events_of, Ctx, Res};

async fn claim(ctx: &Ctx, pool: &str, user: &str) -> Res {
    call(
        &ctx.router,
        Method::POST,
        &format!("/api/v1/pools/{pool}/claim"),
    )
    .token(&ctx.broker)
    .json(&json!({"user": user}))
    .send()
    .await
}

async fn release(ctx: &Ctx, pool: &str, desktop: &str) -> Res {
    call(
        &ctx.router,
        Method::POST,
        &format!("/api/v1/pools/{pool}/desktops/{desktop}/release"),
    )
    .token(&ctx.broker)
    .send()
    .await
}

async fn set_on_release(ctx: &Ctx, pool: &str, policy: &str) {
    let mut spec = crate::common::spec(pool);
    spec["on_release"] = json!(policy);
    let res = call(&ctx.router, Method::PUT, &format!("/api/v1/pools/{pool}"))
        .token(&ctx.admin)
        .json(&spec)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn claim_renew_and_run_out(db: PgPool) {
    let ctx = ctx(db).await;
    create_pool(&ctx, "lab").await;
    add_desktop(&ctx.db, "lab", "lab-001", 1, DesktopState::Ready).await;
    add_desktop(&ctx.db, "lab", "lab-002", 2, DesktopState::Cloning).await;
    let a = claim(&ctx, "lab", "alice").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let d = &a.body["desktop"];
    assert_eq!(d["name"], "lab-001");
    assert_eq!(d["claimed_by"], "alice");
    assert_eq!(d["vm_moref"], "vm-1");
    assert!(d["instance_uuid"].is_string() && d["claimed_at"].is_string());
    assert!(d.as_object().unwrap().contains_key("ip_address"));
    assert_eq!(a.body["renewed"], false);
    assert_eq!(a.body["pool_status"]["claimed"], 1);
    assert_eq!(a.body["pool_status"]["spare"], 0);
    // The same user again: the same desktop, lease extended.
    let again = call(&ctx.router, Method::POST, "/api/v1/pools/lab/claim")
        .token(&ctx.helpdesk)
        .json(&json!({"user": "alice", "lease_secs": 28800}))
        .send()
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["renewed"], true);
    assert_eq!(again.body["desktop"]["name"], "lab-001");
    // The new lease runs 8 hours from now: before the first one's 24 hours.
    assert!(
        again.body["desktop"]["lease_expires_at"].as_str() < d["lease_expires_at"].as_str(),
        "{}",
        again.text
    );
    // Nobody else gets one: 409 with Retry-After, saying a desktop is on its way.
    let b = claim(&ctx, "lab", "bob").await;
    assert_eq!(b.status, StatusCode::CONFLICT, "{}", b.text);
    assert_eq!(b.error().0, "no_desktop_available");
    assert_eq!(b.header("retry-after"), Some("10"));
    assert!(b.text.contains("being provisioned"), "{}", b.text);
    // A paused pool still hands out what it has, and says why no new ones come.
    add_desktop(&ctx.db, "lab", "lab-003", 3, DesktopState::Ready).await;
    let paused = call(&ctx.router, Method::POST, "/api/v1/pools/lab/pause")
        .token(&ctx.admin)
        .send()
        .await;
    assert_eq!(paused.status, StatusCode::OK);
    let c = claim(&ctx, "lab", "carol").await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text);
    assert_eq!(c.body["pool_status"]["paused"], true);
    let d2 = claim(&ctx, "lab", "dave").await;
    assert_eq!(d2.status, StatusCode::CONFLICT);
    assert!(d2.text.contains("is paused"), "{}", d2.text);
    assert_eq!(d2.header("retry-after"), Some("60"));
    let kinds: Vec<String> = events_of(&ctx.db, "lab")
        .await
        .into_iter()
        .filter(|(_, k)| k == "claimed")
        .map(|(actor, _)| actor)
        .collect();
    assert_eq!(kinds, ["bart-broker", "hank-helpdesk", "bart-broker"]);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn claim_input_is_checked(db: PgPool) {
    let ctx = ctx(db).await;
    create_pool(&ctx, "lab").await;
    for (body, field) in [
        (json!({"user": ""}), "user"),
        (json!({"user": "a\u{7}b"}), "user"),
        (json!({"user": "x".repeat(257)}), "user"),
        (json!({"user": "alice", "lease_secs": 59}), "lease_secs"),
        (json!({"user": "alice", "lease_secs": 604801}), "lease_secs"),
        (json!({"user": "alice", "bogus": 1}), "bogus"),
    ] {
        let res = call(&ctx.router, Method::POST, "/api/v1/pools/lab/claim")
            .token(&ctx.broker)
            .json(&body)
            .send()
            .await;
        assert_eq!(
            res.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            res.text
        );
        assert_eq!(res.error().1, Some(field), "{body}");
    }
    let res = claim(&ctx, "nope", "alice").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    let viewer = call(&ctx.router, Method::POST, "/api/v1/pools/lab/claim")
        .token(&ctx.viewer)
        .json(&json!({"user": "alice"}))
        .send()
        .await;
    assert_eq!(viewer.status, StatusCode::FORBIDDEN);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn release_follows_on_release(db: PgPool) {
    let ctx = ctx(db).await;
    create_pool(&ctx, "lab").await;
    add_desktop(&ctx.db, "lab", "lab-001", 1, DesktopState::Ready).await;
    let unclaimed = release(&ctx, "lab", "lab-001").await;
    assert_eq!(unclaimed.status, StatusCode::CONFLICT);
    assert_eq!(unclaimed.error().0, "desktop_not_claimed");
    set_on_release(&ctx, "lab", "keep").await;
    claim(&ctx, "lab", "alice").await;
    let kept = release(&ctx, "lab", "lab-001").await;
    assert_eq!(kept.status, StatusCode::OK, "{}", kept.text);
    assert_eq!(kept.body["desktop"]["state"], "ready");
    assert!(kept.body["desktop"]["claimed_by"].is_null());
    assert_eq!(kept.body["pool_status"]["spare"], 1);
    set_on_release(&ctx, "lab", "delete").await;
    claim(&ctx, "lab", "bob").await;
    let gone = release(&ctx, "lab", "lab-001").await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.text);
    assert_eq!(gone.body["desktop"]["state"], "deleting");
    let released: Vec<_> = events_of(&ctx.db, "lab")
        .await
        .into_iter()
        .filter(|(_, k)| k == "released")
        .collect();
    assert_eq!(released.len(), 2);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_claim_protects_the_desktop_and_the_pool(db: PgPool) {
    let ctx = ctx(db).await;
    create_pool(&ctx, "lab").await;
    add_desktop(&ctx.db, "lab", "lab-001", 1, DesktopState::Ready).await;
    add_desktop(&ctx.db, "lab", "lab-002", 2, DesktopState::Ready).await;
    assert_eq!(claim(&ctx, "lab", "alice").await.status, StatusCode::OK);
    assert_eq!(claim(&ctx, "lab", "bob").await.status, StatusCode::OK);
    let del = |path: &str| call(&ctx.router, Method::DELETE, path).token(&ctx.helpdesk);
    let refused = del("/api/v1/pools/lab/desktops/lab-001").send().await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert_eq!(refused.error().0, "desktop_claimed");
    assert!(refused.text.contains("alice"), "{}", refused.text);
    let forced = del("/api/v1/pools/lab/desktops/lab-001?force=true")
        .send()
        .await;
    assert_eq!(forced.status, StatusCode::ACCEPTED, "{}", forced.text);
    assert_eq!(forced.body["state"], "deleting");
    assert!(forced.body["claimed_by"].is_null());
    assert_eq!(
        events_of(&ctx.db, "lab").await[0],
        ("hank-helpdesk".to_owned(), "forced_removal".to_owned())
    );
    // The pool: refused while bob holds lab-002, unless forced.
    let pool_del = |q: &str| {
        call(
            &ctx.router,
            Method::DELETE,
            &format!("/api/v1/pools/lab{q}"),
        )
        .token(&ctx.admin)
    };
    let refused = pool_del("").send().await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert_eq!(refused.error().0, "desktops_claimed");
    let bad = pool_del("?force=yes").send().await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let forced = pool_del("?force=true").send().await;
    assert_eq!(forced.status, StatusCode::ACCEPTED, "{}", forced.text);
    assert_eq!(forced.body["status"]["claimed"], 0);
    let ev = events_of(&ctx.db, "lab").await;
    assert_eq!(ev[0].1, "pool_deleting");
    assert_eq!(
        ev[1],
        ("alice-admin".to_owned(), "forced_removal".to_owned())
    );
    let late = claim(&ctx, "lab", "carol").await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert_eq!(late.error().0, "pool_deleting");
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn helpdesk_sets_spares_within_bounds(db: PgPool) {
    let ctx = ctx(db).await;
    create_pool(&ctx, "lab").await;
    let patch = |body: serde_json::Value| {
        call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
            .token(&ctx.helpdesk)
            .json(&body)
    };
    let ok = patch(json!({"min_spare": 3})).send().await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.body["spec"]["min_spare"], 3);
    assert_eq!(
        ok.body["status"]["desired"], 3,
        "max(target 2, 0 claimed + 3)"
    );
    let both = patch(json!({"min_spare": 1, "target_size": 4}))
        .send()
        .await;
    assert_eq!(both.status, StatusCode::OK, "{}", both.text);
    assert_eq!(
        (
            both.body["spec"]["min_spare"].as_u64(),
            both.body["status"]["desired"].as_u64()
        ),
        (Some(1), Some(4))
    );
    let over = patch(json!({"min_spare": 11})).send().await;
    assert_eq!(over.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(over.error().1, Some("min_spare"));
    let empty = patch(json!({})).send().await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    let broker = call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
        .token(&ctx.broker)
        .json(&json!({"min_spare": 2}))
        .send()
        .await;
    assert_eq!(
        broker.status,
        StatusCode::FORBIDDEN,
        "a broker only claims and releases"
    );
}

/// 50 concurrent claims on a pool of 20 ready desktops: 20 distinct desktops, 30 answers 409.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn fifty_concurrent_claims_on_twenty_desktops(db: PgPool) {
    let ctx = ctx(db).await;
    let mut spec = crate::common::spec("lab");
    spec["max_size"] = json!(20);
    let res = call(&ctx.router, Method::POST, "/api/v1/pools")
        .token(&ctx.admin)
        .json(&spec)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    for i in 1..=20 {
        add_desktop(
            &ctx.db,
            "lab",
            &format!("lab-{i:03}"),
            i,
            DesktopState::Ready,
        )
        .await;
    }
    let ctx = std::sync::Arc::new(ctx);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            claim(&ctx, "lab", &format!("user{i:02}")).await
        }));
    }
    let mut names = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let res = t.await.unwrap();
        match res.status {
            StatusCode::OK => names.push(res.body["desktop"]["name"].as_str().unwrap().to_owned()),
            StatusCode::CONFLICT => {
                assert_eq!(res.error().0, "no_desktop_available", "{}", res.text);
                assert!(res.header("retry-after").is_some());
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", res.text),
        }
    }
    names.sort();
    names.dedup();
    assert_eq!((names.len(), refused), (20, 30));
}
