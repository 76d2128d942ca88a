//! Operational endpoints: liveness, readiness, metrics and the OpenAPI document. None of them
//! needs a token.

use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use deskpool_domain::DesktopState;
use deskpool_store::{desktops, pools};

use crate::model::{Alive, DbHealth, Readiness};
use crate::AppState;

/// How long the readiness probe and the metrics scrape wait for the database.
const DB_DEADLINE: Duration = Duration::from_secs(1);

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "Alive", body = Alive)))]
pub(crate) async fn healthz() -> Json<Alive> {
    Json(Alive {
        status: "ok".to_owned(),
    })
}

async fn ping(state: &AppState) -> Result<(), String> {
    let probe = async {
        let mut conn = state.db.acquire().await?;
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
        Ok::<_, sqlx::Error>(())
    };
    match tokio::time::timeout(DB_DEADLINE, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", DB_DEADLINE.as_millis())),
    }
}

/// Readiness: 200 when the database answers within a second and every vCenter is connected,
/// 503 otherwise. The body always shows each check and the replica's role.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; the body says why", body = Readiness),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let db = ping(&state).await;
    let health = state.health.snapshot();
    let ready = db.is_ok() && health.vcenters.iter().all(|v| v.connected);
    let body = Readiness {
        ready,
        database: DbHealth {
            ok: db.is_ok(),
            error: db.err(),
        },
        role: health.role,
        vcenters: health.vcenters,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Label value escaping of the Prometheus text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The database gauges, read at scrape time. Written as text rather than through the
/// `metrics` facade so deleted pools disappear and zero counts show.
async fn db_gauges(state: &AppState) -> Result<String, String> {
    let read = async {
        let mut conn = state.db.acquire().await?;
        let all = pools::list(&mut conn).await?;
        let counts = desktops::counts_by_state(&mut conn).await?;
        let by_pool = pools::counts(&mut conn).await?;
        let images = pools::image_counts_all(&mut conn).await?;
        Ok::<_, deskpool_store::StoreError>((all, counts, by_pool, images))
    };
    let (all, counts, by_pool, images) = match tokio::time::timeout(DB_DEADLINE, read).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("timed out".to_owned()),
    };
    let mut out = String::new();
    out.push_str(
        "# HELP deskpool_desktops Desktops by pool and state.\n# TYPE deskpool_desktops gauge\n",
    );
    for p in &all {
        for s in DesktopState::ALL {
            let n = counts
                .iter()
                .find(|(pool, state, _)| *pool == p.spec.name && state == s)
                .map_or(0, |c| c.2);
            let _ = writeln!(
                out,
                "deskpool_desktops{{pool=\"{}\",state=\"{s}\"}} {n}",
                escape(&p.spec.name)
            );
        }
    }
    out.push_str("# HELP deskpool_desktops_claimed Desktops held by users, by pool.\n# TYPE deskpool_desktops_claimed gauge\n");
    for p in &all {
        let c = by_pool.get(&p.id).copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "deskpool_desktops_claimed{{pool=\"{}\"}} {}",
            escape(&p.spec.name),
            c.claimed
        );
    }
    out.push_str("# HELP deskpool_desktops_spare Ready desktops nobody holds, by pool.\n# TYPE deskpool_desktops_spare gauge\n");
    for p in &all {
        let c = by_pool.get(&p.id).copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "deskpool_desktops_spare{{pool=\"{}\"}} {}",
            escape(&p.spec.name),
            c.spare
        );
    }
    out.push_str("# HELP deskpool_pool_target Target size of each pool.\n# TYPE deskpool_pool_target gauge\n");
    for p in &all {
        let _ = writeln!(
            out,
            "deskpool_pool_target{{pool=\"{}\"}} {}",
            escape(&p.spec.name),
            p.spec.target_size
        );
    }
    out.push_str(&crate::gauges::pool_states(&all));
    out.push_str(&crate::gauges::outdated(&all, &images));
    Ok(out)
}

/// Prometheus text: the recorder's metrics (HTTP latency, the reconciler's clone and reconcile
/// metrics) and the pool gauges read from the database.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.run_upkeep();
    let mut out = state.metrics.render();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&crate::gauges::health(&state.health.snapshot()));
    let up = match db_gauges(&state).await {
        Ok(gauges) => {
            out.push_str(&gauges);
            1
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read pool gauges from the database");
            0
        }
    };
    let _ = writeln!(
        out,
        "# HELP deskpool_metrics_database_up Whether the pool gauges could be read.\n# TYPE deskpool_metrics_database_up gauge\ndeskpool_metrics_database_up {up}"
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
