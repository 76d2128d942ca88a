//! Pool, desktop and event behaviour as a client sees it.

use std::time::Duration;

use deskpool_domain::DesktopState;
use http::{Method, StatusCode};
use serde_json::json;
use sqlx::postgres::PgListener;
use sqlx::PgPool;

use crate::common::{add_desktop, call, create_pool, ctx, events_of, spec};

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn pool_lifecycle(db: PgPool) {
    let ctx = ctx(db).await;
    let created = create_pool(&ctx, "lab").await;
    assert_eq!(created.header("location"), Some("/api/v1/pools/lab"));
    assert_eq!(created.header("etag"), Some("\"1\""));
    assert_eq!(
        created.body["spec"]["snapshot"], "current",
        "defaults are filled in"
    );

    add_desktop(&ctx.db, "lab", "lab-001", 1, DesktopState::Ready).await;
    add_desktop(&ctx.db, "lab", "lab-002", 2, DesktopState::Cloning).await;
    add_desktop(&ctx.db, "lab", "lab-003", 3, DesktopState::Failed).await;

    let got = call(&ctx.router, Method::GET, "/api/v1/pools/lab")
        .token(&ctx.viewer)
        .send()
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("etag"), Some("\"1\""));
    let s = &got.body["status"];
    assert_eq!(
        (
            s["target"].as_u64(),
            s["ready"].as_u64(),
            s["provisioning"].as_u64(),
            s["failed"].as_u64(),
            s["deleting"].as_u64()
        ),
        (Some(2), Some(1), Some(1), Some(1), Some(0))
    );
    assert_eq!(s["state"], "ok");
    assert_eq!(s["paused"], false);
    assert_eq!(got.body["version"], 1);

    let list = call(&ctx.router, Method::GET, "/api/v1/pools")
        .token(&ctx.viewer)
        .send()
        .await;
    assert_eq!(list.body["pools"][0]["status"]["ready"], 1, "{}", list.text);

    let dup = call(&ctx.router, Method::POST, "/api/v1/pools")
        .token(&ctx.admin)
        .json(&spec("lab"))
        .send()
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.error(), ("conflict", Some("name")));

    let paused = call(&ctx.router, Method::POST, "/api/v1/pools/lab/pause")
        .token(&ctx.admin)
        .send()
        .await;
    assert_eq!(paused.body["status"]["paused"], true);
    let resumed = call(&ctx.router, Method::POST, "/api/v1/pools/lab/resume")
        .token(&ctx.admin)
        .send()
        .await;
    assert_eq!(resumed.body["status"]["paused"], false);

    let mut new = spec("lab");
    new["snapshot"] = json!("base/v2");
    let put = call(&ctx.router, Method::PUT, "/api/v1/pools/lab")
        .token(&ctx.admin)
        .json(&new)
        .send()
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    assert_eq!(put.body["spec"]["snapshot"], "base/v2");
    assert_eq!(
        put.header("etag"),
        Some(&*format!("\"{}\"", put.body["version"]))
    );

    let del = call(&ctx.router, Method::DELETE, "/api/v1/pools/lab")
        .token(&ctx.admin)
        .send()
        .await;
    assert_eq!(del.status, StatusCode::ACCEPTED);
    assert_eq!(del.body["status"]["state"], "deleting");
    let again = call(&ctx.router, Method::DELETE, "/api/v1/pools/lab")
        .token(&ctx.admin)
        .send()
        .await;
    assert_eq!(
        again.status,
        StatusCode::ACCEPTED,
        "deleting twice is harmless"
    );
    let resize = call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
        .token(&ctx.admin)
        .json(&json!({"target_size": 3}))
        .send()
        .await;
    assert_eq!(
        (resize.status, resize.error().0),
        (StatusCode::CONFLICT, "pool_deleting")
    );

    let kinds: Vec<String> = events_of(&ctx.db, "lab")
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(
        kinds,
        [
            "pool_deleting",
            "pool_updated",
            "pool_resumed",
            "pool_paused",
            "pool_created"
        ],
        "one event per successful write, none for failures"
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn resize_stays_within_bounds(db: PgPool) {
    let ctx = ctx(db).await;
    create_pool(&ctx, "lab").await; // bounds 1..=10
    let patch = |token: &str, n: i64| {
        call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
            .token(token)
            .json(&json!({ "target_size": n }))
    };
    let ok = patch(&ctx.helpdesk, 10).send().await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.body["status"]["target"], 10);
    for token in [&ctx.helpdesk, &ctx.admin] {
        for n in [0, 11] {
            let res = patch(token, n).send().await;
            assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.text);
            assert_eq!(res.error(), ("invalid_field", Some("target_size")));
            assert!(
                res.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("1..=10"),
                "{}",
                res.text
            );
        }
    }
    // An admin moves the bounds with PUT; then helpdesk can go further.
    let mut wider = spec("lab");
    wider["max_size"] = json!(20);
    let put = call(&ctx.router, Method::PUT, "/api/v1/pools/lab")
        .token(&ctx.admin)
        .json(&wider)
        .send()
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    assert_eq!(patch(&ctx.helpdesk, 15).send().await.status, StatusCode::OK);

    let kinds: Vec<String> = events_of(&ctx.db, "lab")
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(
        kinds,
        [
            "pool_resized",
            "pool_updated",
            "pool_resized",
            "pool_created"
        ]
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn if_match_guards_writes(db: PgPool) {
    let ctx = ctx(db).await;
    create_pool(&ctx, "lab").await;
    let etag = call(&ctx.router, Method::GET, "/api/v1/pools/lab")
        .token(&ctx.viewer)
        .send()
        .await;
    let etag = etag.header("etag").unwrap().to_owned();
    assert_eq!(etag, "\"1\"");

    let first = call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
        .token(&ctx.helpdesk)
        .header("if-match", &etag)
        .json(&json!({"target_size": 5}))
        .send()
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.header("etag"), Some("\"2\""));

    // Someone else wrote in between: the stale ETag is refused and nothing changes.
    let stale = call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
        .token(&ctx.helpdesk)
        .header("if-match", &etag)
        .json(&json!({"target_size": 7}))
        .send()
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.text
    );
    assert_eq!(stale.error().0, "version_mismatch");
    let mut put_spec = spec("lab");
    put_spec["target_size"] = json!(8);
    let stale_put = call(&ctx.router, Method::PUT, "/api/v1/pools/lab")
        .token(&ctx.admin)
        .header("if-match", &etag)
        .json(&put_spec)
        .send()
        .await;
    assert_eq!(
        stale_put.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale_put.text
    );
    let now = call(&ctx.router, Method::GET, "/api/v1/pools/lab")
        .token(&ctx.viewer)
        .send()
        .await;
    assert_eq!(
        (
            now.body["status"]["target"].as_u64(),
            now.body["version"].as_i64()
        ),
        (Some(5), Some(2))
    );

    let put = call(&ctx.router, Method::PUT, "/api/v1/pools/lab")
        .token(&ctx.admin)
        .header("if-match", "\"2\"")
        .json(&put_spec)
        .send()
        .await;
    assert_eq!(
        (put.status, put.header("etag")),
        (StatusCode::OK, Some("\"3\"")),
        "{}",
        put.text
    );
    let blind = call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
        .token(&ctx.helpdesk)
        .json(&json!({"target_size": 9}))
        .send()
        .await;
    assert_eq!(
        (blind.status, blind.header("etag")),
        (StatusCode::OK, Some("\"4\"")),
        "without If-Match the write applies"
    );
    let bad = call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
        .token(&ctx.helpdesk)
        .header("if-match", "four")
        .json(&json!({"target_size": 9}))
        .send()
        .await;
    assert_eq!(
        (bad.status, bad.error()),
        (
            StatusCode::BAD_REQUEST,
            ("invalid_header", Some("If-Match"))
        )
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn writes_wake_the_reconciler(db: PgPool) {
    let ctx = ctx(db.clone()).await;
    create_pool(&ctx, "lab").await;
    add_desktop(&ctx.db, "lab", "lab-001", 1, DesktopState::Ready).await;
    let mut listener = PgListener::connect_with(&db).await.unwrap();
    listener.listen(deskpool_store::POOL_CHANNEL).await.unwrap();

    let res = call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
        .token(&ctx.helpdesk)
        .json(&json!({"target_size": 3}))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK);
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a NOTIFY after resize")
        .unwrap();
    assert_eq!(n.payload(), "lab");

    let res = call(
        &ctx.router,
        Method::DELETE,
        "/api/v1/pools/lab/desktops/lab-001",
    )
    .token(&ctx.helpdesk)
    .send()
    .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    assert_eq!(res.body["state"], "deleting");
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a NOTIFY after desktop delete")
        .unwrap();
    assert_eq!(n.payload(), "lab");
    let events = events_of(&ctx.db, "lab").await;
    assert_eq!(
        events[0],
        ("hank-helpdesk".to_owned(), "desktop_deleting".to_owned())
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn desktops_and_events_paginate(db: PgPool) {
    let ctx = ctx(db).await;
    create_pool(&ctx, "lab").await;
    for i in 1..=5 {
        let state = if i == 3 {
            DesktopState::Failed
        } else {
            DesktopState::Ready
        };
        add_desktop(&ctx.db, "lab", &format!("lab-{i:03}"), i, state).await;
    }
    let mut names = Vec::new();
    let mut url = "/api/v1/pools/lab/desktops?limit=2".to_owned();
    loop {
        let page = call(&ctx.router, Method::GET, &url)
            .token(&ctx.viewer)
            .send()
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        for d in page.body["desktops"].as_array().unwrap() {
            names.push(d["name"].as_str().unwrap().to_owned());
        }
        match page.body["next"].as_str() {
            Some(next) => url = format!("/api/v1/pools/lab/desktops?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(
        names,
        ["lab-001", "lab-002", "lab-003", "lab-004", "lab-005"]
    );
    let failed = call(
        &ctx.router,
        Method::GET,
        "/api/v1/pools/lab/desktops?state=failed",
    )
    .token(&ctx.viewer)
    .send()
    .await;
    assert_eq!(failed.body["desktops"].as_array().unwrap().len(), 1);
    assert_eq!(failed.body["desktops"][0]["name"], "lab-003");
    let one = call(
        &ctx.router,
        Method::GET,
        "/api/v1/pools/lab/desktops/lab-002",
    )
    .token(&ctx.viewer)
    .send()
    .await;
    assert_eq!(
        (one.body["state"].as_str(), one.body["pool"].as_str()),
        (Some("ready"), Some("lab"))
    );

    for n in 3..=6 {
        call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
            .token(&ctx.admin)
            .json(&json!({"target_size": n}))
            .send()
            .await;
    }
    let mut ids = Vec::new();
    let mut url = "/api/v1/events?pool=lab&limit=2".to_owned();
    loop {
        let page = call(&ctx.router, Method::GET, &url)
            .token(&ctx.viewer)
            .send()
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        for e in page.body["events"].as_array().unwrap() {
            ids.push(e["id"].as_i64().unwrap());
        }
        match page.body["next"].as_i64() {
            Some(next) => url = format!("/api/v1/events?pool=lab&limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 5, "created + 4 resizes");
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let future = call(
        &ctx.router,
        Method::GET,
        "/api/v1/events?since=2999-01-01T00:00:00Z",
    )
    .token(&ctx.viewer)
    .send()
    .await;
    assert_eq!(future.body["events"].as_array().unwrap().len(), 0);
}
