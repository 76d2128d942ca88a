//! Shared fixtures: a router over a test database, tokens of every role, request helpers.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::Router;
use deskpool_api::{ApiState, Health, HealthSnapshot, ReplicaRole, VcenterHealth};
use deskpool_domain::DesktopState;
use deskpool_store::desktops::{self, NewDesktop, Progress};
use deskpool_store::tokens::{self, Role};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

/// Body limit used by the test router.
pub const MAX_BODY: usize = 16 * 1024;

/// A health whose answer the test can change.
#[derive(Debug)]
pub struct FixedHealth(pub Mutex<HealthSnapshot>);

impl Health for FixedHealth {
    fn snapshot(&self) -> HealthSnapshot {
        self.0.lock().unwrap().clone()
    }
}

/// A router with one token per role.
pub struct Ctx {
    pub db: PgPool,
    pub router: Router,
    pub health: Arc<FixedHealth>,
    pub admin: String,
    pub helpdesk: String,
    pub broker: String,
    pub viewer: String,
}

/// These tests run without a vCenter: a snapshot never resolves (image pushes are tested
/// against the simulator in the daemon tests).
pub struct NoVcenter;

impl deskpool_api::Images for NoVcenter {
    fn resolve<'a>(
        &'a self,
        spec: &'a deskpool_domain::PoolSpec,
        _selector: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<String, deskpool_api::ImageError>> + Send + 'a>,
    > {
        Box::pin(async move {
            Err(deskpool_api::ImageError::Unavailable(format!(
                "no vCenter '{}' in these tests",
                spec.vcenter
            )))
        })
    }
}

pub fn healthy() -> HealthSnapshot {
    HealthSnapshot {
        role: ReplicaRole::Leader,
        vcenters: vec![VcenterHealth {
            name: "vc1".into(),
            connected: true,
            error: None,
        }],
    }
}

pub fn router_for(db: PgPool, health: Arc<FixedHealth>) -> Router {
    deskpool_api::router(ApiState {
        db,
        vcenters: vec!["vc1".into(), "vc2".into()],
        health,
        metrics: deskpool_api::install_metrics_recorder(),
        max_body_bytes: MAX_BODY,
        images: Arc::new(NoVcenter),
        limits: deskpool_api::RequestLimits::default(),
    })
}

pub async fn ctx(db: PgPool) -> Ctx {
    let mut c = db.acquire().await.unwrap();
    let (_, admin) = tokens::create(&mut c, "alice-admin", Role::Admin)
        .await
        .unwrap();
    let (_, helpdesk) = tokens::create(&mut c, "hank-helpdesk", Role::Helpdesk)
        .await
        .unwrap();
    let (_, broker) = tokens::create(&mut c, "bart-broker", Role::Broker)
        .await
        .unwrap();
    let (_, viewer) = tokens::create(&mut c, "vera-viewer", Role::Viewer)
        .await
        .unwrap();
    drop(c);
    let health = Arc::new(FixedHealth(Mutex::new(healthy())));
    Ctx {
        router: router_for(db.clone(), health.clone()),
        db,
        health,
        admin,
        helpdesk,
        broker,
        viewer,
    }
}

/// A valid spec for pool `name`: target 2 within 1..=10.
pub fn spec(name: &str) -> Value {
    json!({
        "name": name,
        "vcenter": "vc1",
        "datacenter": "DC0",
        "golden_vm": "golden",
        "folder": name,
        "resource_pool": "DC0_C0",
        "naming_pattern": format!("{}-{{n:3}}", &name[..name.len().min(8)]),
        "target_size": 2,
        "min_size": 1,
        "max_size": 10
    })
}

/// A response, with the body parsed as JSON (Null when empty or not JSON).
#[derive(Debug)]
pub struct Res {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Res {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error's `(code, field)`.
    pub fn error(&self) -> (&str, Option<&str>) {
        let e = &self.body["error"];
        (e["code"].as_str().unwrap_or("<none>"), e["field"].as_str())
    }
}

/// A request builder bound to a router.
pub struct Call {
    router: Router,
    req: http::request::Builder,
    body: Body,
}

pub fn call(router: &Router, method: Method, path: &str) -> Call {
    Call {
        router: router.clone(),
        req: Request::builder().method(method).uri(path),
        body: Body::empty(),
    }
}

impl Call {
    pub fn token(mut self, secret: &str) -> Self {
        self.req = self.req.header("authorization", format!("Bearer {secret}"));
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.req = self.req.header(name, value);
        self
    }

    pub fn json(mut self, body: &Value) -> Self {
        self.req = self.req.header("content-type", "application/json");
        self.body = Body::from(serde_json::to_vec(body).unwrap());
        self
    }

    pub fn raw(mut self, content_type: &str, body: impl Into<Body>) -> Self {
        self.req = self.req.header("content-type", content_type);
        self.body = body.into();
        self
    }

    pub async fn send(self) -> Res {
        let res = self
            .router
            .oneshot(self.req.body(self.body).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Res {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }
}

/// Creates pool `name` through the API as admin.
pub async fn create_pool(ctx: &Ctx, name: &str) -> Res {
    let res = call(&ctx.router, Method::POST, "/api/v1/pools")
        .token(&ctx.admin)
        .json(&spec(name))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    res
}

/// Adds a desktop in `state` to pool `pool` directly in the store.
pub async fn add_desktop(db: &PgPool, pool: &str, name: &str, index: u32, state: DesktopState) {
    let mut c = db.acquire().await.unwrap();
    let p = deskpool_store::pools::get(&mut c, pool)
        .await
        .unwrap()
        .unwrap();
    let d = desktops::insert_pending(
        &mut c,
        &NewDesktop {
            pool_id: p.id,
            name,
            index,
            instance_uuid: Uuid::new_v4(),
            snapshot_moref: "snapshot-1",
        },
    )
    .await
    .unwrap();
    if state != DesktopState::Pending {
        desktops::set_progress(
            &mut c,
            d.id,
            &Progress {
                state,
                vm_moref: Some(format!("vm-{index}")),
                task_moref: None,
                powered_on: state == DesktopState::Ready,
                last_error: None,
                snapshot_moref: None,
            },
        )
        .await
        .unwrap();
    }
}

/// Events of a pool, newest first, as (actor, kind).
pub async fn events_of(db: &PgPool, pool: &str) -> Vec<(String, String)> {
    audit_trail(db, Some(pool)).await
}

/// Events of a pool, or every event when `pool` is `None`, newest first, as (actor, kind).
pub async fn audit_trail(db: &PgPool, pool: Option<&str>) -> Vec<(String, String)> {
    let mut c = db.acquire().await.unwrap();
    deskpool_store::events::list(
        &mut c,
        &deskpool_store::events::Filter {
            pool,
            limit: 1000,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .into_iter()
    .map(|e| (e.actor, e.kind))
    .collect()
}

/// Makes a viewer token named `name` directly in the store; returns its secret.
pub async fn add_token(db: &PgPool, name: &str) -> String {
    let mut c = db.acquire().await.unwrap();
    tokens::create(&mut c, name, Role::Viewer).await.unwrap().1
}
