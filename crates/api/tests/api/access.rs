//! Every endpoint against every kind of caller: no token, a bad token, and each role.

use std::collections::BTreeSet;

use deskpool_domain::DesktopState;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::common::{add_desktop, add_token, audit_trail, call, ctx, events_of, spec};

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Nobody,
    BadToken,
    Viewer,
    Broker,
    Helpdesk,
    Admin,
}

struct Case {
    method: Method,
    /// Route template, as the router registers it.
    route: &'static str,
    /// The least role allowed.
    min: Who,
    /// Status when allowed.
    ok: StatusCode,
    /// Request body, `{pool}` in strings replaced by the case's pool name.
    body: Option<Value>,
}

fn case(method: Method, route: &'static str, min: Who, ok: u16, body: Option<Value>) -> Case {
    Case {
        method,
        route,
        min,
        ok: StatusCode::from_u16(ok).unwrap(),
        body,
    }
}

fn fill(v: &Value, pool: &str) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace("{pool}", pool)),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), fill(v, pool))).collect())
        }
        other => other.clone(),
    }
}

fn table() -> Vec<Case> {
    use Who::*;
    let mut new_spec = spec("x");
    new_spec["name"] = json!("{pool}-new");
    new_spec["naming_pattern"] = json!("n{n:3}-{pool}");
    let mut put_spec = spec("x");
    put_spec["name"] = json!("{pool}");
    put_spec["naming_pattern"] = json!("{pool}-{n:3}");
    put_spec["target_size"] = json!(3);
    vec![
        case(Method::GET, "/api/v1/pools", Viewer, 200, None),
        case(Method::POST, "/api/v1/pools", Admin, 201, Some(new_spec)),
        case(Method::GET, "/api/v1/pools/{name}", Viewer, 200, None),
        case(
            Method::PUT,
            "/api/v1/pools/{name}",
            Admin,
            200,
            Some(put_spec),
        ),
        case(
            Method::PATCH,
            "/api/v1/pools/{name}",
            Helpdesk,
            200,
            Some(json!({"target_size": 4})),
        ),
        case(Method::DELETE, "/api/v1/pools/{name}", Admin, 202, None),
        case(Method::POST, "/api/v1/pools/{name}/pause", Admin, 200, None),
        case(
            Method::POST,
            "/api/v1/pools/{name}/resume",
            Admin,
            200,
            None,
        ),
        // No vCenter in these tests: an allowed push is answered 503 (the simulator tests in
        // crates/deskpool cover pushes that resolve), and there is no stopped rollout.
        case(
            Method::POST,
            "/api/v1/pools/{name}/image",
            Admin,
            503,
            Some(json!({"snapshot": "base/v2"})),
        ),
        case(
            Method::POST,
            "/api/v1/pools/{name}/image/resume",
            Admin,
            409,
            None,
        ),
        case(
            Method::GET,
            "/api/v1/pools/{name}/desktops",
            Viewer,
            200,
            None,
        ),
        case(
            Method::GET,
            "/api/v1/pools/{name}/desktops/{desktop}",
            Viewer,
            200,
            None,
        ),
        case(
            Method::DELETE,
            "/api/v1/pools/{name}/desktops/{desktop}",
            Helpdesk,
            202,
            None,
        ),
        case(
            Method::POST,
            "/api/v1/pools/{name}/claim",
            Broker,
            200,
            Some(json!({"user": "{pool}-user"})),
        ),
        // The case's desktop is claimed before each call of this route.
        case(
            Method::POST,
            "/api/v1/pools/{name}/desktops/{desktop}/release",
            Broker,
            200,
            None,
        ),
        case(Method::GET, "/api/v1/events", Viewer, 200, None),
        case(Method::GET, "/api/v1/whoami", Viewer, 200, None),
        case(Method::GET, "/api/v1/tokens", Admin, 200, None),
        case(
            Method::POST,
            "/api/v1/tokens",
            Admin,
            201,
            Some(json!({"name": "{pool}-token", "role": "viewer"})),
        ),
        // `{name}` is the case's pool name: a token of that name is made for each call.
        case(Method::DELETE, "/api/v1/tokens/{name}", Admin, 200, None),
    ]
}

/// Routes open to anyone.
const PUBLIC: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

#[test]
fn the_table_covers_every_route() {
    let served: BTreeSet<(String, String)> = deskpool_api::routes()
        .into_iter()
        .filter(|(_, p)| !PUBLIC.contains(p))
        .map(|(m, p)| (m.to_string(), p.to_owned()))
        .collect();
    let tested: BTreeSet<(String, String)> = table()
        .into_iter()
        .map(|c| (c.method.to_string(), c.route.to_owned()))
        .collect();
    assert_eq!(
        served, tested,
        "every protected route needs a row in the access table"
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn every_endpoint_and_role(db: PgPool) {
    let ctx = ctx(db).await;
    let mut n = 0;
    for c in table() {
        for who in [
            Who::Nobody,
            Who::BadToken,
            Who::Viewer,
            Who::Broker,
            Who::Helpdesk,
            Who::Admin,
        ] {
            // A fresh pool (with one ready desktop) per call, so allowed writes do not
            // change what the next call sees.
            n += 1;
            let pool = format!("p{n}");
            let desktop = format!("p{n}-001");
            let created = call(&ctx.router, Method::POST, "/api/v1/pools")
                .token(&ctx.admin)
                .json(&{
                    let mut s = spec(&pool);
                    s["naming_pattern"] = json!(format!("{pool}-{{n:3}}"));
                    s
                })
                .send()
                .await;
            assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
            add_desktop(&ctx.db, &pool, &desktop, 1, DesktopState::Ready).await;
            add_token(&ctx.db, &pool).await;
            if c.route.ends_with("/release") {
                let mut conn = ctx.db.acquire().await.unwrap();
                let p = deskpool_store::pools::get(&mut conn, &pool)
                    .await
                    .unwrap()
                    .unwrap();
                deskpool_store::claims::claim(&mut conn, p.id, "someone", 600)
                    .await
                    .unwrap()
                    .unwrap();
            }
            // Token events belong to no pool: count them among all events.
            let scope = (!c.route.starts_with("/api/v1/tokens")).then_some(pool.as_str());
            let events_before = audit_trail(&ctx.db, scope).await.len();

            let path = c
                .route
                .replace("{name}", &pool)
                .replace("{desktop}", &desktop);
            let mut req = call(&ctx.router, c.method.clone(), &path);
            req = match who {
                Who::Nobody => req,
                Who::BadToken => req.token("dpt_not-a-real-token"),
                Who::Viewer => req.token(&ctx.viewer),
                Who::Broker => req.token(&ctx.broker),
                Who::Helpdesk => req.token(&ctx.helpdesk),
                Who::Admin => req.token(&ctx.admin),
            };
            if let Some(body) = &c.body {
                req = req.json(&fill(body, &pool));
            }
            let res = req.send().await;
            let what = format!(
                "{} {} as {who:?}: {} {}",
                c.method, c.route, res.status, res.text
            );
            let expected = match who {
                Who::Nobody | Who::BadToken => StatusCode::UNAUTHORIZED,
                w if w < c.min => StatusCode::FORBIDDEN,
                _ => c.ok,
            };
            assert_eq!(res.status, expected, "{what}");
            if expected == StatusCode::UNAUTHORIZED {
                assert_eq!(
                    res.header("www-authenticate")
                        .map(|h| h.starts_with("Bearer")),
                    Some(true),
                    "{what}"
                );
                assert_eq!(res.error().0, "unauthorized", "{what}");
            }
            if expected == StatusCode::FORBIDDEN {
                assert_eq!(res.error().0, "forbidden", "{what}");
            }
            let events = audit_trail(&ctx.db, scope).await;
            if c.method == Method::GET || expected != c.ok || !c.ok.is_success() {
                assert_eq!(events.len(), events_before, "no event for {what}");
            } else if c.route != "/api/v1/pools" {
                // Every write is audited under the caller's token name.
                let actor = match who {
                    Who::Helpdesk => "hank-helpdesk",
                    Who::Broker => "bart-broker",
                    _ => "alice-admin",
                };
                assert_eq!(events.len(), events_before + 1, "{what}");
                assert_eq!(events[0].0, actor, "{what}");
            } else {
                let new = events_of(&ctx.db, &format!("{pool}-new")).await;
                assert_eq!(
                    new,
                    [("alice-admin".to_owned(), "pool_created".to_owned())],
                    "{what}"
                );
            }
        }
    }
}

/// README, roles and troubleshooting: a revoked token is refused with 401 `unauthorized`,
/// at once, while the other tokens keep working.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_revoked_token_is_refused(db: PgPool) {
    let ctx = ctx(db).await;
    let ok = call(&ctx.router, Method::GET, "/api/v1/pools")
        .token(&ctx.viewer)
        .send()
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let mut c = ctx.db.acquire().await.unwrap();
    deskpool_store::tokens::revoke(&mut c, "vera-viewer")
        .await
        .unwrap();
    drop(c);
    let refused = call(&ctx.router, Method::GET, "/api/v1/pools")
        .token(&ctx.viewer)
        .send()
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.error().0, "unauthorized");
    assert!(refused
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Bearer")));
    let other = call(&ctx.router, Method::GET, "/api/v1/pools")
        .token(&ctx.admin)
        .send()
        .await;
    assert_eq!(other.status, StatusCode::OK);
}
