//! Claims: `POST /api/v1/pools/{name}/claim` hands a ready desktop to a user for a lease;
//! `POST /api/v1/pools/{name}/desktops/{desktop}/release` ends it, and the pool's
//! `on_release` decides what becomes of the desktop (`delete`: replaced by a fresh clone;
//! `keep`: claimable again).
//!
//! Claims keep working whatever the pool's provisioning state (paused, error, stopped: the
//! ready desktops it has are still handed out); only a pool being deleted refuses.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use deskpool_domain::{check_lease_secs, EventKind, PoolState};
use deskpool_store::claims;
use deskpool_store::events::{self, NewEvent};
use deskpool_store::pools::{self, Pool, PoolCounts};

use crate::auth::{Broker, Caller};
use crate::desktops::{find, find_pool, not_provisioning};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath};
use crate::model::{ClaimAnswer, ClaimRequest, DesktopView, PoolView};
use crate::AppState;

/// Longest user name a claim accepts (the column's check).
const MAX_USER_LEN: usize = 256;
/// Retry-After when desktops are on their way.
const RETRY_SOON_SECS: u32 = 10;
/// Retry-After when none are being made.
const RETRY_LATER_SECS: u32 = 60;

fn count(pool: &str, result: &'static str) {
    metrics::counter!("deskpool_claims_total", "pool" => pool.to_owned(), "result" => result)
        .increment(1);
}

fn check_user(user: &str) -> ApiResult<()> {
    if user.trim().is_empty() {
        return Err(ApiError::invalid(
            "user",
            "must name who the desktop is for",
        ));
    }
    if user.chars().count() > MAX_USER_LEN {
        return Err(ApiError::invalid(
            "user",
            format!("must be at most {MAX_USER_LEN} characters"),
        ));
    }
    if user.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "user",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Why no ready desktop is free, and when to ask again.
fn none_free(pool: &Pool, counts: &PoolCounts) -> Response {
    let name = &pool.spec.name;
    let (why, retry) = match not_provisioning(pool) {
        Some(why) => (
            format!("pool '{name}' {why}, so no new desktops are being made"),
            RETRY_LATER_SECS,
        ),
        None if counts.provisioning > 0 => (
            format!(
                "{} desktop(s) of pool '{name}' are being provisioned",
                counts.provisioning
            ),
            RETRY_SOON_SECS,
        ),
        None => (
            format!(
                "pool '{name}' is at its max_size ({}) or still planning; an admin can raise max_size or min_spare",
                pool.spec.max_size
            ),
            RETRY_SOON_SECS,
        ),
    };
    let mut res = ApiError::new(
        StatusCode::CONFLICT,
        "no_desktop_available",
        format!(
            "no ready desktop is free in pool '{name}' ({} claimed): {why}; retry in {retry} s",
            counts.claimed
        ),
    )
    .into_response();
    res.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&retry.to_string()).expect("digits are a valid header value"),
    );
    res
}

/// Claims a desktop for a user (broker, helpdesk or admin). The same user claiming again in
/// the same pool gets the same desktop back with its lease extended, so a portal can call
/// this on every login.
#[utoipa::path(post, path = "/api/v1/pools/{name}/claim", tag = "claims",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Pool name")),
    request_body = ClaimRequest,
    responses(
        (status = 200, description = "The desktop now held by the user, and the pool's status", body = ClaimAnswer),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Viewer token", body = ErrorBody),
        (status = 404, description = "No such pool", body = ErrorBody),
        (status = 409, description = "`no_desktop_available` (with Retry-After) or `pool_deleting`", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before claiming again"))),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Invalid user or lease_secs; `field` names it", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn claim(
    State(state): State<AppState>,
    caller: Caller<Broker>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> ApiResult<Response> {
    check_user(&req.user)?;
    if let Some(secs) = req.lease_secs {
        check_lease_secs("lease_secs", secs)?;
    }
    if !deskpool_domain::is_slug(&name) {
        return Err(ApiError::pool_not_found(&name));
    }
    let mut tx = state.db.begin().await?;
    // Held in share mode: a pool deletion waits for this claim and then sees it.
    let pool = pools::lock_shared(&mut tx, &name)
        .await?
        .ok_or_else(|| ApiError::pool_not_found(&name))?;
    if pool.state == PoolState::Deleting {
        count(&name, "pool_deleting");
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "pool_deleting",
            format!("pool '{name}' is being deleted: its desktops are no longer handed out"),
        ));
    }
    let lease = req.lease_secs.unwrap_or(pool.spec.claim_lease_secs);
    let Some(got) = claims::claim(&mut tx, pool.id, &req.user, lease).await? else {
        let counts = pools::counts_for(&mut tx, pool.id).await?;
        drop(tx);
        count(&name, "no_desktop_available");
        return Ok(none_free(&pool, &counts));
    };
    let message = if got.renewed {
        format!("lease of {} renewed for {lease} s", req.user)
    } else {
        format!("claimed by {} for {lease} s", req.user)
    };
    events::record(
        &mut tx,
        &NewEvent {
            pool: Some(&name),
            desktop: Some(&got.desktop.name),
            actor: &caller.name,
            kind: EventKind::Claimed,
            message: &message,
        },
    )
    .await?;
    let counts = pools::counts_for(&mut tx, pool.id).await?;
    // Wake the reconciler only when the claim changes what it must do: grow the pool (its
    // desired size rises with claims past target_size - min_spare) or re-arm the pool's
    // lease timer (this lease ends first). A notification serializes commits in PostgreSQL,
    // so one per claim would cap the claim rate.
    let grows =
        !got.renewed && counts.claimed.saturating_add(pool.spec.min_spare) > pool.spec.target_size;
    if grows || got.earliest_lease {
        deskpool_store::notify_pool(&mut tx, &name).await?;
    }
    tx.commit().await?;
    count(&name, if got.renewed { "renewed" } else { "claimed" });
    Ok(Json(ClaimAnswer {
        desktop: DesktopView::new(&name, got.desktop),
        renewed: got.renewed,
        pool_status: PoolView::new(pool, counts).status,
    })
    .into_response())
}

/// Releases a claimed desktop (broker, helpdesk or admin). With the pool's `on_release`
/// `delete` (the default) the desktop is destroyed and replaced by a fresh clone; with `keep`
/// it is ready and claimable again.
#[utoipa::path(post, path = "/api/v1/pools/{name}/desktops/{desktop}/release", tag = "claims",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Pool name"),
        ("desktop" = String, Path, description = "Desktop (VM) name"),
    ),
    responses(
        (status = 200, description = "Released; the desktop as it is now, and the pool's status", body = ClaimAnswer),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Viewer token", body = ErrorBody),
        (status = 404, description = "No such pool or desktop", body = ErrorBody),
        (status = 409, description = "`desktop_not_claimed`: nobody holds the desktop", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn release(
    State(state): State<AppState>,
    caller: Caller<Broker>,
    ApiPath((name, desktop)): ApiPath<(String, String)>,
) -> ApiResult<Json<ClaimAnswer>> {
    let mut tx = state.db.begin().await?;
    let pool = find_pool(&mut tx, &name).await?;
    let d = find(&mut tx, &pool, &desktop).await?;
    let Some(done) = claims::release(&mut tx, d.id, pool.spec.on_release).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "desktop_not_claimed",
            format!(
                "desktop '{}' of pool '{name}' is not claimed: there is nothing to release",
                d.name
            ),
        ));
    };
    events::record(
        &mut tx,
        &NewEvent {
            pool: Some(&name),
            desktop: Some(&done.desktop.name),
            actor: &caller.name,
            kind: EventKind::Released,
            message: &format!(
                "released by {} (on_release {}: {})",
                done.user,
                pool.spec.on_release.as_str(),
                match pool.spec.on_release {
                    deskpool_domain::OnRelease::Delete => "replaced by a fresh desktop",
                    deskpool_domain::OnRelease::Keep => "claimable again",
                }
            ),
        },
    )
    .await?;
    deskpool_store::notify_pool(&mut tx, &name).await?;
    let counts = pools::counts_for(&mut tx, pool.id).await?;
    tx.commit().await?;
    Ok(Json(ClaimAnswer {
        desktop: DesktopView::new(&name, done.desktop),
        renewed: false,
        pool_status: PoolView::new(pool, counts).status,
    }))
}
