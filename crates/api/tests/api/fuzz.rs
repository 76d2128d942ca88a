//! Property: no request a client can send yields a 5xx.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use deskpool_domain::DesktopState;
use deskpool_store::tokens::{self, Role};
use http::{Method, Request};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};
use tower::ServiceExt;

use crate::common::{add_desktop, healthy, router_for, spec, FixedHealth};

const ROUTES: &[&str] = &[
    "/api/v1/pools",
    "/api/v1/pools/{name}",
    "/api/v1/pools/{name}/pause",
    "/api/v1/pools/{name}/resume",
    "/api/v1/pools/{name}/desktops",
    "/api/v1/pools/{name}/desktops/{desktop}",
    "/api/v1/events",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

const KEYS: &[&str] = &[
    "name",
    "vcenter",
    "datacenter",
    "golden_vm",
    "snapshot",
    "folder",
    "resource_pool",
    "datastore",
    "customization_spec",
    "naming_pattern",
    "guest_os",
    "target_size",
    "min_size",
    "max_size",
    "power_on",
    "max_concurrent_clones",
    "enabled",
    "min_spare",
    "claim_lease_secs",
    "on_release",
    "user",
    "lease_secs",
    "bogus",
];

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["fz", "fz2", "fz3", "fz-001", "fz2-001", "fz3-001"]).prop_map(str::to_owned),
        1 => "[a-z][a-z0-9-]{0,70}",
        1 => any::<String>().prop_map(|s| encode(&s)),
        1 => Just("%00".to_owned()),
        1 => Just("%FF%FE".to_owned()),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("state"),
        Just("limit"),
        Just("after"),
        Just("pool"),
        Just("since"),
        Just("before"),
        Just("force"),
        Just("x")
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("ready".to_owned()),
        Just("fz".to_owned()),
        Just("2026-01-01T00:00:00Z".to_owned()),
        any::<String>().prop_map(|s| encode(&s)),
    ];
    prop::collection::vec((key, value), 0..3).prop_map(|pairs| {
        if pairs.is_empty() {
            String::new()
        } else {
            let q: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("?{}", q.join("&"))
        }
    })
}

/// A served (method, route) with its placeholders filled, or anything at all.
fn target() -> impl Strategy<Value = (Method, String)> {
    let served = deskpool_api::routes();
    prop_oneof![
        6 => (prop::sample::select(served), segment(), segment(), query()).prop_map(|((m, r), a, b, q)| {
            (m, format!("{}{q}", r.replace("{name}", &a).replace("{desktop}", &b)))
        }),
        1 => (method(), prop::sample::select(ROUTES), segment(), segment(), query()).prop_map(|(m, r, a, b, q)| {
            (m, format!("{}{q}", r.replace("{name}", &a).replace("{desktop}", &b)))
        }),
        1 => (method(), prop::collection::vec(segment(), 0..5)).prop_map(|(m, s)| (m, format!("/{}", s.join("/")))),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z]{1,8}-\\{n:[0-9]\\}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn body() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        2 => json_value().prop_map(|v| Some(v.to_string().into_bytes())),
        // A valid spec with one field replaced: gets past the parser into validation and SQL.
        3 => (prop::sample::select(vec!["fz", "fz2", "new"]), prop::sample::select(KEYS), json_value())
            .prop_map(|(name, k, v)| {
                let mut s = spec(name);
                s[k] = v;
                Some(s.to_string().into_bytes())
            }),
        // A valid spec, to reach the success paths (create, replace).
        1 => "[a-z]{1,6}".prop_map(|name| Some(spec(&name).to_string().into_bytes())),
        3 => (0u32..200).prop_map(|n| Some(format!("{{\"target_size\":{n}}}").into_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Some),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::from_bytes(b"BREW").unwrap(),
    ])
}

#[derive(Debug, Clone)]
struct Input {
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    json_type: bool,
    role: usize,
    if_match: Option<String>,
}

fn input() -> impl Strategy<Value = Input> {
    let role = prop_oneof![6 => Just(0usize), 1 => 1usize..5];
    let if_match = prop_oneof![
        4 => Just(None),
        1 => (0i64..5).prop_map(|v| Some(format!("\"{v}\""))),
        1 => "[ -~]{0,12}".prop_map(Some),
    ];
    (target(), body(), prop::bool::weighted(0.9), role, if_match).prop_map(
        |((method, path), body, json_type, role, if_match)| Input {
            method,
            path,
            body,
            json_type,
            role,
            if_match,
        },
    )
}

/// A database of its own (outside `#[sqlx::test]`, which is async and cannot host proptest's
/// shrinking loop), dropped at the end.
#[test]
fn random_requests_never_5xx() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL must point at PostgreSQL");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let name = format!("deskpool_api_fuzz_{}", uuid::Uuid::new_v4().simple());
    let (db, secrets) = rt.block_on(async {
        let mut admin = PgConnection::connect(&url).await.unwrap();
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let mut opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        opts = opts.database(&name);
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .unwrap();
        deskpool_store::MIGRATOR.run(&db).await.unwrap();
        let mut c = db.acquire().await.unwrap();
        let mut secrets = Vec::new();
        for (n, role) in [
            ("fz-admin", Role::Admin),
            ("fz-helpdesk", Role::Helpdesk),
            ("fz-broker", Role::Broker),
            ("fz-viewer", Role::Viewer),
        ] {
            secrets.push(tokens::create(&mut c, n, role).await.unwrap().1);
        }
        secrets.push("dpt_bogus".to_owned());
        let mut s = spec("fz");
        s["max_size"] = Value::from(100);
        let s: deskpool_domain::PoolSpec = serde_json::from_value(s).unwrap();
        for name in ["fz", "fz2", "fz3"] {
            let mut s = s.clone();
            s.name = name.to_owned();
            s.naming_pattern = format!("{name}-{{n:3}}");
            deskpool_store::pools::insert(&mut c, &s).await.unwrap();
        }
        drop(c);
        for name in ["fz", "fz2", "fz3"] {
            add_desktop(&db, name, &format!("{name}-001"), 1, DesktopState::Ready).await;
        }
        (db, secrets)
    });
    let router = router_for(db.clone(), Arc::new(FixedHealth(Mutex::new(healthy()))));

    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&input(), |input| {
        let mut req = Request::builder()
            .method(input.method.clone())
            .uri(&input.path);
        req = req.header("authorization", format!("Bearer {}", secrets[input.role]));
        if input.json_type {
            req = req.header("content-type", "application/json");
        }
        if let Some(v) = &input.if_match {
            req = req.header("if-match", v);
        }
        let Ok(req) = req.body(Body::from(input.body.clone().unwrap_or_default())) else {
            // Not a request a client could send (e.g. an invalid URI).
            return Ok(());
        };
        let status = rt.block_on(router.clone().oneshot(req)).unwrap().status();
        if status.is_server_error() {
            return Err(TestCaseError::fail(format!("{status} for {input:?}")));
        }
        Ok(())
    });
    rt.block_on(async {
        db.close().await;
        let mut admin = PgConnection::connect(&url).await.unwrap();
        let _ = admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
    });
    result.unwrap();
}
