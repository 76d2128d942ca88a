//! `/api/v1/pools/{name}/desktops`: list and inspect desktops; replace a broken one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use deskpool_domain::{is_slug, DesktopState, EventKind, PoolState};
use deskpool_store::claims;
use deskpool_store::desktops::{self, Desktop};
use deskpool_store::events::{self, NewEvent};
use deskpool_store::pools::{self, Pool};
use sqlx::PgConnection;

use crate::auth::{Caller, Helpdesk, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiPath, QueryPairs};
use crate::model::{DesktopPage, DesktopView};
use crate::AppState;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// Whether `name` could be a stored desktop name (no VM name has control characters).
fn plausible(name: &str) -> bool {
    !name.is_empty() && name.chars().count() <= 255 && !name.chars().any(char::is_control)
}

pub(crate) async fn find_pool(conn: &mut PgConnection, name: &str) -> ApiResult<Pool> {
    if !is_slug(name) {
        return Err(ApiError::pool_not_found(name));
    }
    pools::get(conn, name)
        .await?
        .ok_or_else(|| ApiError::pool_not_found(name))
}

pub(crate) async fn find(
    conn: &mut PgConnection,
    pool: &Pool,
    desktop: &str,
) -> ApiResult<Desktop> {
    let missing = || {
        ApiError::not_found(format!(
            "pool '{}' has no desktop named '{desktop}'",
            pool.spec.name
        ))
    };
    if !plausible(desktop) {
        return Err(missing());
    }
    desktops::get_by_name(conn, pool.id, desktop)
        .await?
        .ok_or_else(missing)
}

/// One page of a pool's desktops, by name.
#[utoipa::path(get, path = "/api/v1/pools/{name}/desktops", tag = "desktops",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Pool name"),
        ("state" = Option<crate::model::DesktopStateView>, Query, description = "Only desktops in this state"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1-1000 (default 100)"),
        ("after" = Option<String>, Query, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$", max_length = 255, description = "The `next` cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of desktops", body = DesktopPage),
        (status = 400, description = "Bad query parameter; `field` names it", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such pool", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    _caller: Caller<Viewer>,
    ApiPath(name): ApiPath<String>,
    query: QueryPairs,
) -> ApiResult<Json<DesktopPage>> {
    query.only(&["state", "limit", "after"])?;
    let states = DesktopState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let filter = query.parse("state", &format!("one of {states}"), |v| {
        v.parse::<DesktopState>().ok()
    })?;
    let limit = query.limit(DEFAULT_PAGE, MAX_PAGE)?;
    let after = query.parse("after", "the `next` value of a previous page", |v| {
        plausible(v).then_some(v)
    })?;
    let mut conn = state.db.acquire().await?;
    let pool = find_pool(&mut conn, &name).await?;
    let mut rows = desktops::page(&mut conn, pool.id, filter, after, limit + 1).await?;
    let next = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|d| d.name.clone())
    } else {
        None
    };
    Ok(Json(DesktopPage {
        desktops: rows
            .into_iter()
            .map(|d| DesktopView::new(&name, d))
            .collect(),
        next,
    }))
}

/// One desktop.
#[utoipa::path(get, path = "/api/v1/pools/{name}/desktops/{desktop}", tag = "desktops",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Pool name"),
        ("desktop" = String, Path, description = "Desktop (VM) name"),
    ),
    responses(
        (status = 200, description = "The desktop", body = DesktopView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such pool or desktop", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn get(
    State(state): State<AppState>,
    _caller: Caller<Viewer>,
    ApiPath((name, desktop)): ApiPath<(String, String)>,
) -> ApiResult<Json<DesktopView>> {
    let mut conn = state.db.acquire().await?;
    let pool = find_pool(&mut conn, &name).await?;
    let d = find(&mut conn, &pool, &desktop).await?;
    Ok(Json(DesktopView::new(&name, d)))
}

/// Why a pool cannot provision a replacement now, if it cannot.
pub(crate) fn not_provisioning(pool: &Pool) -> Option<String> {
    match pool.state {
        PoolState::Deleting => None,
        _ if !pool.spec.enabled => Some("is paused".to_owned()),
        PoolState::Error | PoolState::Stopped => Some(format!(
            "is {} ({})",
            pool.state,
            pool.last_error.as_deref().unwrap_or("no detail")
        )),
        PoolState::Ok => None,
    }
}

/// Whether `?force=true` was given (`false` and absence mean no).
pub(crate) fn force(query: &QueryPairs) -> ApiResult<bool> {
    query.only(&["force"])?;
    Ok(query
        .parse("force", "true or false", |v| match v {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        })?
        .unwrap_or(false))
}

/// Replaces a desktop (helpdesk or admin): it is marked `deleting`; the reconciler destroys
/// it and provisions a replacement. Repeating the call is harmless. Refused (409
/// `pool_not_provisioning`) while the pool is paused, in error or stopped, unless the desktop
/// has failed: the desktop would be destroyed with no replacement, below the pool's floor.
/// A claimed desktop is refused (409 `desktop_claimed`) unless `?force=true`, which ends the
/// claim and is evented (`forced_removal`) with the caller and the user.
#[utoipa::path(delete, path = "/api/v1/pools/{name}/desktops/{desktop}", tag = "desktops",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Pool name"),
        ("desktop" = String, Path, description = "Desktop (VM) name"),
        ("force" = Option<bool>, Query, description = "Remove the desktop even though a user holds it"),
    ),
    responses(
        (status = 202, description = "Marked for deletion", body = DesktopView),
        (status = 400, description = "Bad query parameter", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Viewer or broker token", body = ErrorBody),
        (status = 404, description = "No such pool or desktop", body = ErrorBody),
        (status = 409, description = "`desktop_claimed`: a user holds it (use ?force=true); or `pool_not_provisioning`: the pool is paused, in error or stopped and no replacement would come", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller<Helpdesk>,
    ApiPath((name, desktop)): ApiPath<(String, String)>,
    query: QueryPairs,
) -> ApiResult<(StatusCode, Json<DesktopView>)> {
    let force = force(&query)?;
    let mut tx = state.db.begin().await?;
    let pool = find_pool(&mut tx, &name).await?;
    let mut d = find(&mut tx, &pool, &desktop).await?;
    if d.state.counts_toward_size() {
        if let Some(why) = not_provisioning(&pool) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "pool_not_provisioning",
                format!(
                    "pool '{name}' {why}: desktop '{}' would be destroyed without a replacement; resume the pool (or fix the error and save the pool) first",
                    d.name
                ),
            ));
        }
    }
    if force {
        if let Some((removed, user)) = claims::force_remove(&mut tx, d.id).await? {
            let (kind, message) = match user {
                Some(user) => {
                    tracing::warn!(pool = %name, desktop = %d.name, actor = %caller.name, %user, "claimed desktop removed with force");
                    (
                        EventKind::ForcedRemoval,
                        format!(
                            "claimed desktop removed with force (held by {user}, was {})",
                            d.state
                        ),
                    )
                }
                None => (
                    EventKind::DesktopDeleting,
                    format!("desktop marked for deletion (was {})", d.state),
                ),
            };
            if d.state != DesktopState::Deleting || kind == EventKind::ForcedRemoval {
                events::record(
                    &mut tx,
                    &NewEvent {
                        pool: Some(&name),
                        desktop: Some(&d.name),
                        actor: &caller.name,
                        kind,
                        message: &message,
                    },
                )
                .await?;
            }
            deskpool_store::notify_pool(&mut tx, &name).await?;
            d = removed;
        }
        tx.commit().await?;
        return Ok((StatusCode::ACCEPTED, Json(DesktopView::new(&name, d))));
    }
    // Only an unclaimed desktop is moved: a claim made since `find` read the row wins.
    if desktops::mark_deleting_unclaimed(&mut tx, &[d.id])
        .await?
        .len()
        == 1
    {
        events::record(
            &mut tx,
            &NewEvent {
                pool: Some(&name),
                desktop: Some(&d.name),
                actor: &caller.name,
                kind: EventKind::DesktopDeleting,
                message: &format!("desktop marked for deletion (was {})", d.state),
            },
        )
        .await?;
        // Desktop rows have no trigger: wake the reconciler explicitly (delivered at commit).
        deskpool_store::notify_pool(&mut tx, &name).await?;
        d.state = DesktopState::Deleting;
    } else if d.state != DesktopState::Deleting {
        let holder = desktops::get(&mut tx, d.id)
            .await?
            .and_then(|now| now.claimed_by)
            .unwrap_or_else(|| "a user".to_owned());
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "desktop_claimed",
            format!(
                "desktop '{}' is claimed by {holder}: release it first, or delete with ?force=true to take it away",
                d.name
            ),
        ));
    }
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(DesktopView::new(&name, d))))
}
