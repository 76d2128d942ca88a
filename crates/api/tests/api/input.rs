//! Bad input of every kind gets a 4xx naming what is wrong, and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::common::{
    call, create_pool, ctx, events_of, healthy, router_for, spec, FixedHealth, MAX_BODY,
};

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn bad_bodies_name_the_problem(db: PgPool) {
    let ctx = ctx(db).await;
    create_pool(&ctx, "lab").await;
    let post = |body: &str| {
        call(&ctx.router, Method::POST, "/api/v1/pools")
            .token(&ctx.admin)
            .raw("application/json", body.to_owned())
    };
    let with = |k: &str, v: serde_json::Value| {
        let mut s = spec("new");
        s[k] = v;
        s.to_string()
    };
    let without = |k: &str| {
        let mut s = spec("new");
        s.as_object_mut().unwrap().remove(k);
        s.to_string()
    };
    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        ("{\"name\": ".into(), 400, "malformed_json", None),
        ("not json".into(), 400, "malformed_json", None),
        (format!("{} {{}}", spec("new")), 400, "malformed_json", None),
        (with("bogus", json!(1)), 422, "invalid_field", Some("bogus")),
        (
            with("target_size", json!("two")),
            422,
            "invalid_field",
            Some("target_size"),
        ),
        (
            with("target_size", json!(-1)),
            422,
            "invalid_field",
            Some("target_size"),
        ),
        (
            with("guest_os", json!("beos")),
            422,
            "invalid_field",
            Some("guest_os"),
        ),
        (without("vcenter"), 422, "invalid_field", Some("vcenter")),
        ("[]".into(), 422, "invalid_field", None),
        (
            with("name", json!("Not_A_Slug")),
            422,
            "invalid_field",
            Some("name"),
        ),
        (
            with("name", json!("a\u{0}b")),
            422,
            "invalid_field",
            Some("name"),
        ),
        (
            with("naming_pattern", json!("x{n:3}\u{0}")),
            422,
            "invalid_field",
            Some("naming_pattern"),
        ),
        (
            with("vcenter", json!("vc9")),
            422,
            "invalid_field",
            Some("vcenter"),
        ),
        (
            with("target_size", json!(11)),
            422,
            "invalid_field",
            Some("target_size"),
        ),
        (
            with("golden_vm", json!("/abs")),
            422,
            "invalid_field",
            Some("golden_vm"),
        ),
    ];
    for (body, status, code, field) in cases {
        let res = post(&body).send().await;
        assert_eq!(
            (res.status.as_u16(), res.error()),
            (status, (code, field)),
            "{body} -> {}",
            res.text
        );
        assert!(!res.body["error"]["message"].as_str().unwrap().is_empty());
    }
    let res = call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
        .token(&ctx.admin)
        .json(&json!({"target_size": 3, "min_size": 0}))
        .send()
        .await;
    assert_eq!(
        (res.status.as_u16(), res.error()),
        (422, ("invalid_field", Some("min_size"))),
        "{}",
        res.text
    );
    let res = call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
        .token(&ctx.admin)
        .json(&json!({"target_size": 3.5}))
        .send()
        .await;
    assert_eq!(
        (res.status.as_u16(), res.error()),
        (422, ("invalid_field", Some("target_size"))),
        "{}",
        res.text
    );
    let mut other = spec("lab");
    other["name"] = json!("other");
    let res = call(&ctx.router, Method::PUT, "/api/v1/pools/lab")
        .token(&ctx.admin)
        .json(&other)
        .send()
        .await;
    assert_eq!(
        (res.status.as_u16(), res.error()),
        (422, ("invalid_field", Some("name"))),
        "{}",
        res.text
    );

    let res = call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
        .token(&ctx.admin)
        .raw("text/plain", "{\"target_size\": 3}")
        .send()
        .await;
    assert_eq!(
        (res.status.as_u16(), res.error()),
        (415, ("unsupported_media_type", Some("Content-Type")))
    );

    let big = format!(
        "{{\"target_size\": 3, \"pad\": \"{}\"}}",
        "x".repeat(MAX_BODY)
    );
    let res = call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
        .token(&ctx.admin)
        .raw("application/json", big)
        .send()
        .await;
    assert_eq!(
        (res.status.as_u16(), res.error().0),
        (413, "body_too_large"),
        "{}",
        res.text
    );

    let kinds: Vec<String> = events_of(&ctx.db, "lab")
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(
        kinds,
        ["pool_created"],
        "no failed request changed anything"
    );
    assert_eq!(events_of(&ctx.db, "new").await.len(), 0);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn bad_paths_and_queries(db: PgPool) {
    let ctx = ctx(db).await;
    create_pool(&ctx, "lab").await;
    let cases: Vec<(Method, &str, u16, &str, Option<&str>)> = vec![
        (Method::GET, "/api/v1/pools/nope", 404, "not_found", None),
        (
            Method::GET,
            "/api/v1/pools/NOT%20A%20SLUG",
            404,
            "not_found",
            None,
        ),
        (
            Method::GET,
            "/api/v1/pools/lab/desktops/nope",
            404,
            "not_found",
            None,
        ),
        (
            Method::GET,
            "/api/v1/pools/lab/desktops/a%00b",
            404,
            "not_found",
            None,
        ),
        (
            Method::DELETE,
            "/api/v1/pools/lab/desktops/nope",
            404,
            "not_found",
            None,
        ),
        (
            Method::GET,
            "/api/v1/pools/nope/desktops",
            404,
            "not_found",
            None,
        ),
        (
            Method::GET,
            "/api/v1/pools/lab/desktops?state=sleeping",
            400,
            "invalid_query",
            Some("state"),
        ),
        (
            Method::GET,
            "/api/v1/pools/lab/desktops?limit=0",
            400,
            "invalid_query",
            Some("limit"),
        ),
        (
            Method::GET,
            "/api/v1/pools/lab/desktops?limit=abc",
            400,
            "invalid_query",
            Some("limit"),
        ),
        (
            Method::GET,
            "/api/v1/pools/lab/desktops?after=%00",
            400,
            "invalid_query",
            Some("after"),
        ),
        (
            Method::GET,
            "/api/v1/pools/lab/desktops?limit=1&limit=2",
            400,
            "invalid_query",
            Some("limit"),
        ),
        (
            Method::GET,
            "/api/v1/pools/lab/desktops?stat=ready",
            400,
            "invalid_query",
            Some("stat"),
        ),
        (
            Method::GET,
            "/api/v1/events?since=yesterday",
            400,
            "invalid_query",
            Some("since"),
        ),
        (
            Method::GET,
            "/api/v1/events?before=-4",
            400,
            "invalid_query",
            Some("before"),
        ),
        (
            Method::GET,
            "/api/v1/events?pool=%00",
            400,
            "invalid_query",
            Some("pool"),
        ),
        (Method::GET, "/api/v1/nothing-here", 404, "not_found", None),
        (
            Method::OPTIONS,
            "/api/v1/pools",
            405,
            "method_not_allowed",
            None,
        ),
        (
            Method::PATCH,
            "/api/v1/pools",
            405,
            "method_not_allowed",
            None,
        ),
    ];
    for (method, path, status, code, field) in cases {
        let res = call(&ctx.router, method.clone(), path)
            .token(&ctx.admin)
            .send()
            .await;
        assert_eq!(
            (res.status.as_u16(), res.error()),
            (status, (code, field)),
            "{method} {path}: {}",
            res.text
        );
    }
}

#[tokio::test]
async fn database_outage_is_503() {
    let db = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://postgres@127.0.0.1:1/x")
        .unwrap();
    let router = router_for(db, Arc::new(FixedHealth(std::sync::Mutex::new(healthy()))));
    for (method, path) in [
        (Method::GET, "/api/v1/pools"),
        (Method::GET, "/api/v1/pools/lab"),
        (Method::PATCH, "/api/v1/pools/lab"),
        (Method::GET, "/api/v1/events"),
    ] {
        // Well formed, so checking it needs the database (a malformed one is refused without).
        let secret = format!("dpt_{}", "0".repeat(64));
        let mut req = call(&router, method.clone(), path).token(&secret);
        if method == Method::PATCH {
            req = req.json(&json!({"target_size": 3}));
        }
        let res = req.send().await;
        assert_eq!(
            (res.status.as_u16(), res.error().0),
            (503, "database_unavailable"),
            "{method} {path}: {}",
            res.text
        );
    }
    let ready = call(&router, Method::GET, "/readyz").send().await;
    assert_eq!(ready.status.as_u16(), 503);
    assert_eq!(
        (
            ready.body["ready"].as_bool(),
            ready.body["database"]["ok"].as_bool()
        ),
        (Some(false), Some(false))
    );
    let metrics = call(&router, Method::GET, "/metrics").send().await;
    assert_eq!(metrics.status.as_u16(), 200);
    assert!(
        metrics.text.contains("deskpool_metrics_database_up 0"),
        "{}",
        metrics.text
    );
    assert_eq!(
        call(&router, Method::GET, "/healthz")
            .send()
            .await
            .status
            .as_u16(),
        200
    );
}
