//! `/api/v1/tokens` and `/api/v1/whoami`.

use http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::common::{audit_trail, call, ctx};

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn admin_creates_a_token_whose_secret_works_once_shown(db: PgPool) {
    let ctx = ctx(db).await;
    let res = call(&ctx.router, Method::POST, "/api/v1/tokens")
        .token(&ctx.admin)
        .json(&json!({"name": "hd-carol", "role": "helpdesk"}))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let secret = res.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("dpt_") && secret.len() == 68, "{secret}");
    assert_eq!(res.body["token"]["name"], "hd-carol");
    assert_eq!(res.body["token"]["role"], "helpdesk");

    let me = call(&ctx.router, Method::GET, "/api/v1/whoami")
        .token(&secret)
        .send()
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(
        me.body,
        json!({"name": "hd-carol", "role": "helpdesk", "may": {
            "claim_desktops": true, "resize_pools": true, "replace_desktops": true, "manage_pools": false, "manage_tokens": false}})
    );

    // The list shows it, and never a secret or its hash.
    let list = call(&ctx.router, Method::GET, "/api/v1/tokens")
        .token(&ctx.admin)
        .send()
        .await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(!list.text.contains(&secret));
    assert!(!list.text.contains("secret"), "{}", list.text);
    let names: Vec<&str> = list.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"hd-carol"), "{names:?}");

    // The event names the admin who made it.
    let events = audit_trail(&ctx.db, None).await;
    assert_eq!(
        events[0],
        ("alice-admin".to_owned(), "token_created".to_owned())
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn revoked_token_is_refused_and_the_event_names_the_admin(db: PgPool) {
    let ctx = ctx(db).await;
    let res = call(&ctx.router, Method::DELETE, "/api/v1/tokens/vera-viewer")
        .token(&ctx.admin)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert!(res.body["revoked_at"].is_string(), "{}", res.text);
    let events = audit_trail(&ctx.db, None).await;
    assert_eq!(
        events[0],
        ("alice-admin".to_owned(), "token_revoked".to_owned())
    );

    let refused = call(&ctx.router, Method::GET, "/api/v1/pools")
        .token(&ctx.viewer)
        .send()
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    // Revoking again: no active token of that name.
    let again = call(&ctx.router, Method::DELETE, "/api/v1/tokens/vera-viewer")
        .token(&ctx.admin)
        .send()
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text);
    assert!(again.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("vera-viewer"));
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn an_admin_cannot_revoke_the_token_it_calls_with(db: PgPool) {
    let ctx = ctx(db).await;
    let res = call(&ctx.router, Method::DELETE, "/api/v1/tokens/alice-admin")
        .token(&ctx.admin)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{}", res.text);
    assert_eq!(res.body["error"]["code"], "own_token", "{}", res.text);
    let still = call(&ctx.router, Method::GET, "/api/v1/tokens")
        .token(&ctx.admin)
        .send()
        .await;
    assert_eq!(still.status, StatusCode::OK, "the token was revoked anyway");
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn bad_requests_name_the_field(db: PgPool) {
    let ctx = ctx(db).await;
    let cases = [
        (
            json!({"name": "hank-helpdesk", "role": "viewer"}),
            StatusCode::CONFLICT,
            "name",
        ),
        (
            json!({"name": "", "role": "viewer"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            json!({"name": "x", "role": "root"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "role",
        ),
        (
            json!({"name": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "role",
        ),
    ];
    for (body, status, field) in cases {
        let res = call(&ctx.router, Method::POST, "/api/v1/tokens")
            .token(&ctx.admin)
            .json(&body)
            .send()
            .await;
        assert_eq!(res.status, status, "{body}: {}", res.text);
        assert_eq!(res.error().1, Some(field), "{body}: {}", res.text);
    }
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn whoami_tells_each_role_what_it_may_do(db: PgPool) {
    let ctx = ctx(db).await;
    for (secret, role, claim, resize, manage) in [
        (&ctx.viewer, "viewer", false, false, false),
        (&ctx.broker, "broker", true, false, false),
        (&ctx.helpdesk, "helpdesk", true, true, false),
        (&ctx.admin, "admin", true, true, true),
    ] {
        let me = call(&ctx.router, Method::GET, "/api/v1/whoami")
            .token(secret)
            .send()
            .await;
        assert_eq!(me.status, StatusCode::OK);
        assert_eq!(me.body["role"], role);
        assert_eq!(me.body["may"]["claim_desktops"], claim, "{role}");
        assert_eq!(me.body["may"]["resize_pools"], resize, "{role}");
        assert_eq!(me.body["may"]["manage_pools"], manage, "{role}");
        assert_eq!(me.body["may"]["manage_tokens"], manage, "{role}");
    }
}
