//! OpenAPI document, readiness and metrics.

use deskpool_api::{ReplicaRole, VcenterHealth};
use deskpool_domain::DesktopState;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::common::{add_desktop, call, create_pool, ctx};

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn openapi_documents_every_route(db: PgPool) {
    let ctx = ctx(db).await;
    let res = call(&ctx.router, Method::GET, "/openapi.json").send().await;
    assert_eq!(res.status, StatusCode::OK);
    let doc: Value = res.body;
    // It parses as an OpenAPI 3 document.
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let parsed: utoipa::openapi::OpenApi = serde_json::from_value(doc.clone()).expect("OpenAPI 3");
    assert_eq!(parsed.info.title, "deskpool");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let routes = deskpool_api::routes();
    assert!(routes.len() >= 16);
    let mut documented = 0;
    for (method, path) in &routes {
        let m = method.as_str().to_ascii_lowercase();
        let op = &doc["paths"][*path][&m];
        assert!(
            op.is_object(),
            "{method} {path} is served but not documented"
        );
        documented += 1;
        let responses = op["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{method} {path}: no responses");
        if path.starts_with("/api/") {
            for status in ["401", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path}: no {status} response"
                );
            }
            assert!(op["security"].is_array(), "{method} {path}: no security");
        }
        if [Method::POST, Method::PUT, Method::PATCH].contains(method)
            && !path.ends_with("/pause")
            && !path.ends_with("/resume")
            && !path.ends_with("/release")
        {
            assert!(
                op["requestBody"].is_object(),
                "{method} {path}: no request body"
            );
            assert!(
                responses.contains_key("422") && responses.contains_key("413"),
                "{method} {path}"
            );
        }
        if path.contains("{name}") {
            assert!(responses.contains_key("404"), "{method} {path}: no 404");
        }
        for (status, r) in responses {
            if status.starts_with('4') || (status == "503" && path.starts_with("/api/")) {
                let schema = &r["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
    // Nothing documented that is not served.
    let doc_ops: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| {
            p.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
                .count()
        })
        .sum();
    assert_eq!(doc_ops, documented);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn readiness_needs_database_and_every_vcenter(db: PgPool) {
    let ctx = ctx(db).await;
    let ready = call(&ctx.router, Method::GET, "/readyz").send().await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    assert_eq!(ready.body["role"], "leader");
    assert_eq!(ready.body["database"]["ok"], true);
    {
        let mut h = ctx.health.0.lock().unwrap();
        h.role = ReplicaRole::Standby;
        h.vcenters.push(VcenterHealth {
            name: "vc2".into(),
            connected: false,
            error: Some("connection refused".into()),
        });
    }
    let ready = call(&ctx.router, Method::GET, "/readyz").send().await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["role"], "standby");
    assert_eq!(
        ready.body["vcenters"][1],
        json!({"name": "vc2", "connected": false, "error": "connection refused"})
    );
    let alive = call(&ctx.router, Method::GET, "/healthz").send().await;
    assert_eq!(
        (alive.status, alive.body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn metrics_show_pools_and_requests(db: PgPool) {
    let ctx = ctx(db).await;
    create_pool(&ctx, "mlab").await;
    add_desktop(&ctx.db, "mlab", "mlab-001", 1, DesktopState::Ready).await;
    add_desktop(&ctx.db, "mlab", "mlab-002", 2, DesktopState::Ready).await;
    call(&ctx.router, Method::GET, "/api/v1/pools/mlab")
        .token(&ctx.viewer)
        .send()
        .await;
    let claimed = call(&ctx.router, Method::POST, "/api/v1/pools/mlab/claim")
        .token(&ctx.broker)
        .json(&serde_json::json!({"user": "alice"}))
        .send()
        .await;
    assert_eq!(claimed.status, StatusCode::OK, "{}", claimed.text);
    // The reconciler's own metrics (clone duration, failures, passes) are checked against a
    // real fill in crates/deskpool/tests/daemon.rs (a_real_fill_emits_the_reconcilers_metrics).

    let res = call(&ctx.router, Method::GET, "/metrics").send().await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = res.text;
    for line in [
        "deskpool_desktops{pool=\"mlab\",state=\"ready\"} 2",
        "deskpool_desktops{pool=\"mlab\",state=\"failed\"} 0",
        "deskpool_pool_target{pool=\"mlab\"} 2",
        "deskpool_desktops_claimed{pool=\"mlab\"} 1",
        "deskpool_desktops_spare{pool=\"mlab\"} 1",
        "deskpool_claims_total{pool=\"mlab\",result=\"claimed\"} 1",
        "deskpool_metrics_database_up 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(
        text.lines().any(
            |l| l.starts_with("deskpool_http_request_duration_seconds_bucket")
                && l.contains("route=\"/api/v1/pools/{name}\"")
                && l.contains("method=\"GET\"")
                && l.contains("status=\"200\"")
        ),
        "no HTTP histogram by matched route in\n{text}"
    );
}
