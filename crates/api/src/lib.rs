//! deskpool's HTTP API: pools, desktops, claims and events under `/api/v1`, plus `/healthz`,
//! `/readyz`, `/metrics` and `/openapi.json`.
//!
//! [`router`] builds everything; the binary only binds a listener and serves it. Every route
//! is registered through one table ([`routes`] lists it), so the OpenAPI test can check that
//! no route goes undocumented.
//!
//! Wiring, in the binary:
//!
//! ```ignore
//! let metrics = deskpool_api::install_metrics_recorder(); // before the reconciler records
//! let api = deskpool_api::router(ApiState { db, vcenters, health, metrics, max_body_bytes, limits, images });
//! axum::serve(listener, api).with_graceful_shutdown(stop).await?;
//! ```
//!
//! The router serves `/healthz` itself and applies the body limit, so it is served as is
//! rather than merged into a router that has its own `/healthz` (axum panics on the clash).

mod auth;
mod claims;
mod desktops;
mod error;
mod events;
mod extract;
mod gauges;
mod limits;
mod metrics_setup;
mod model;
mod observe;
mod openapi;
mod ops;
mod pools;
mod tokens;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::routing::{on, MethodFilter};
use axum::Router;
use http::{Method, StatusCode};

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use metrics_setup::{install_metrics_recorder, metrics_builder};
pub use model::{
    Alive, ClaimAnswer, ClaimRequest, DbHealth, DesktopPage, DesktopStateView, DesktopView,
    EventPage, EventView, HealthSnapshot, ImageCount, ImagePush, PoolList, PoolStateView,
    PoolStatus, PoolView, Readiness, ReplicaRole, Resize, RolloutView, VcenterHealth,
};
pub use openapi::openapi;
pub use tokens::{CreatedToken, NewToken, Permissions, TokenList, TokenView, Whoami};

/// Everything the API needs from the process that serves it.
#[derive(Clone)]
pub struct ApiState {
    /// The database.
    pub db: sqlx::PgPool,
    /// Names of the configured vCenter connections; a pool must name one of them.
    pub vcenters: Vec<String>,
    /// The reconciler's view of its own health, for `/readyz`.
    pub health: Arc<dyn Health>,
    /// Renders the process's metrics for `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// How much work the API takes on at once.
    pub limits: RequestLimits,
    /// Resolves snapshots for image pushes (the serving replica's vCenter sessions).
    pub images: Arc<dyn Images>,
}

/// Resolves a pool's snapshot selector to the moref an image push pins.
pub trait Images: Send + Sync + 'static {
    /// The snapshot moref value (`snapshot-71`) that `selector` (`current` or a path) names on
    /// `spec`'s golden VM, asked of vCenter now.
    fn resolve<'a>(
        &'a self,
        spec: &'a deskpool_domain::PoolSpec,
        selector: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, ImageError>> + Send + 'a>>;
}

/// Why a snapshot did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// The golden VM or snapshot does not exist (422, naming it).
    NotFound(String),
    /// vCenter cannot be asked now (503).
    Unavailable(String),
}

/// Bounds on the API's work, so a flood of requests (authenticated or not) queues and times
/// out instead of piling up without end.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Requests handled at once, over all routes; the rest wait for a turn.
    pub max_concurrent: usize,
    /// Longest a request may take, its wait for a turn included; then 503 `request_timeout`.
    pub timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 256,
            timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("vcenters", &self.vcenters)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The reconciler side's health, implemented by the binary.
pub trait Health: Send + Sync + 'static {
    /// The current role and vCenter connection states.
    fn snapshot(&self) -> HealthSnapshot;
}

/// Shared state of the handlers.
pub(crate) type AppState = Arc<ApiState>;

/// The API prefix.
pub const PREFIX: &str = "/api/v1";

/// Collects routes and the (method, path) list they serve, from one set of calls.
struct Table {
    router: Router<AppState>,
    served: Vec<(Method, &'static str)>,
}

impl Table {
    fn new() -> Self {
        Self {
            router: Router::new(),
            served: Vec::new(),
        }
    }

    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
        self.router = self.router.route(path, on(filter, handler));
        self.served.push((method, path));
        self
    }
}

fn table() -> Table {
    Table::new()
        .add(Method::GET, "/api/v1/pools", pools::list)
        .add(Method::POST, "/api/v1/pools", pools::create)
        .add(Method::GET, "/api/v1/pools/{name}", pools::get)
        .add(Method::PUT, "/api/v1/pools/{name}", pools::replace)
        .add(Method::PATCH, "/api/v1/pools/{name}", pools::resize)
        .add(Method::DELETE, "/api/v1/pools/{name}", pools::delete)
        .add(Method::POST, "/api/v1/pools/{name}/pause", pools::pause)
        .add(Method::POST, "/api/v1/pools/{name}/resume", pools::resume)
        .add(
            Method::POST,
            "/api/v1/pools/{name}/image",
            pools::push_image,
        )
        .add(
            Method::POST,
            "/api/v1/pools/{name}/image/resume",
            pools::resume_rollout,
        )
        .add(Method::GET, "/api/v1/pools/{name}/desktops", desktops::list)
        .add(
            Method::GET,
            "/api/v1/pools/{name}/desktops/{desktop}",
            desktops::get,
        )
        .add(
            Method::DELETE,
            "/api/v1/pools/{name}/desktops/{desktop}",
            desktops::delete,
        )
        .add(Method::POST, "/api/v1/pools/{name}/claim", claims::claim)
        .add(
            Method::POST,
            "/api/v1/pools/{name}/desktops/{desktop}/release",
            claims::release,
        )
        .add(Method::GET, "/api/v1/events", events::list)
        .add(Method::GET, "/api/v1/whoami", tokens::whoami)
        .add(Method::GET, "/api/v1/tokens", tokens::list)
        .add(Method::POST, "/api/v1/tokens", tokens::create)
        .add(Method::DELETE, "/api/v1/tokens/{name}", tokens::revoke)
        .add(Method::GET, "/openapi.json", openapi::openapi_json)
        .add(Method::GET, "/healthz", ops::healthz)
        .add(Method::GET, "/readyz", ops::readyz)
        .add(Method::GET, "/metrics", ops::metrics)
}

/// Every (method, path template) the router serves, as registered.
pub fn routes() -> Vec<(Method, &'static str)> {
    table().served
}

/// The API: every route, JSON 404/405 fallbacks, the body limit, the concurrency bound and
/// request timeout, and the per-request log line and latency histogram.
pub fn router(state: ApiState) -> Router {
    let limit = state.max_body_bytes;
    let limits = state.limits;
    table()
        .router
        // The web page is not part of the API (nor of its OpenAPI document).
        .merge(ui::router())
        .fallback(|method: Method, uri: http::Uri| async move {
            ApiError::not_found(format!("no route for {method} {}", uri.path()))
        })
        .method_not_allowed_fallback(|method: Method, uri: http::Uri| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {}", uri.path()),
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            limits::Bound::new(limits),
            limits::bound,
        ))
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(Arc::new(state))
}
