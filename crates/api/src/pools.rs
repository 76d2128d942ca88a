//! `/api/v1/pools`: define, inspect, resize, pause, resume and delete pools.
//!
//! Every write runs in one transaction together with its audit event; the database trigger
//! on `pools` wakes the reconciler at commit.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use deskpool_domain::{is_slug, EventKind, PoolSpec, PoolState};
use deskpool_store::claims;
use deskpool_store::events::{self, NewEvent};
use deskpool_store::pools::{self, Pinned, Pool};
use sqlx::PgConnection;

use crate::auth::{Admin, Caller, Helpdesk, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{if_match, ApiJson, ApiPath, QueryPairs};
use crate::model::{ImagePush, PoolList, PoolView, Resize};
use crate::{AppState, ImageError};

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header value")
}

/// A pool view answered with its ETag.
fn with_etag(status: StatusCode, view: PoolView) -> Response {
    let tag = etag(view.version);
    let mut res = (status, Json(view)).into_response();
    res.headers_mut().insert(header::ETAG, tag);
    res
}

async fn view(conn: &mut PgConnection, pool: Pool) -> ApiResult<PoolView> {
    let counts = pools::counts_for(conn, pool.id).await?;
    let images = pools::image_counts(conn, pool.id).await?;
    Ok(PoolView::new(pool, counts).with_images(&images))
}

/// Resolves `selector` on `spec`'s golden VM, once: 422 naming the snapshot when it does not
/// resolve, 503 when vCenter cannot be asked.
async fn resolve_image(state: &AppState, spec: &PoolSpec, selector: &str) -> ApiResult<String> {
    match state.images.resolve(spec, selector).await {
        Ok(moref) => Ok(moref),
        Err(ImageError::NotFound(why)) => Err(ApiError::invalid(
            "snapshot",
            format!("snapshot '{selector}' does not resolve: {why}; the pool keeps its image"),
        )),
        Err(ImageError::Unavailable(why)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "vcenter_unavailable",
            format!("cannot resolve snapshot '{selector}' now: {why}; try again"),
        )),
    }
}

/// Pins `moref` as pool `pool`'s image inside `tx`, with a `rollout_started` event when
/// desktops are on another image.
async fn pin(
    conn: &mut PgConnection,
    actor: &str,
    pool: &Pool,
    selector: &str,
    moref: &str,
) -> ApiResult<()> {
    if let Pinned::RolloutStarted { from, .. } = pools::pin_image(conn, pool.id, moref).await? {
        record(
            conn,
            actor,
            &pool.spec.name,
            EventKind::RolloutStarted,
            &format!(
                "rolling out image {moref} (snapshot '{selector}') from {}",
                from.as_deref().unwrap_or("an unrecorded image")
            ),
        )
        .await?;
    }
    Ok(())
}

/// The pool named `name`, or 404. Names that are not slugs cannot exist, so they are 404
/// without asking the database.
async fn find(conn: &mut PgConnection, name: &str) -> ApiResult<Pool> {
    if !is_slug(name) {
        return Err(ApiError::pool_not_found(name));
    }
    pools::get(conn, name)
        .await?
        .ok_or_else(|| ApiError::pool_not_found(name))
}

fn not_deleting(pool: &Pool) -> ApiResult<()> {
    if pool.state == PoolState::Deleting {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "pool_deleting",
            format!("pool '{}' is being deleted", pool.spec.name),
        ));
    }
    Ok(())
}

fn check_text(field: &'static str, value: &str) -> ApiResult<()> {
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Everything `PoolSpec::validate` checks, plus what only the API knows: the configured
/// vCenters.
fn validate(state: &AppState, spec: &PoolSpec) -> ApiResult<()> {
    check_text("name", &spec.name)?;
    check_text("vcenter", &spec.vcenter)?;
    check_text("snapshot", &spec.snapshot)?;
    check_text("naming_pattern", &spec.naming_pattern)?;
    if let Some(cs) = &spec.customization_spec {
        check_text("customization_spec", cs)?;
    }
    spec.validate()?;
    if !state.vcenters.contains(&spec.vcenter) {
        return Err(ApiError::invalid(
            "vcenter",
            format!(
                "unknown vCenter '{}'; configured: {}",
                spec.vcenter,
                if state.vcenters.is_empty() {
                    "none".to_owned()
                } else {
                    state.vcenters.join(", ")
                }
            ),
        ));
    }
    Ok(())
}

async fn record(
    conn: &mut PgConnection,
    actor: &str,
    pool: &str,
    kind: EventKind,
    message: &str,
) -> ApiResult<()> {
    events::record(
        conn,
        &NewEvent {
            pool: Some(pool),
            desktop: None,
            actor,
            kind,
            message,
        },
    )
    .await?;
    Ok(())
}

/// Lists every pool with its live desktop counts.
#[utoipa::path(get, path = "/api/v1/pools", tag = "pools",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every pool, by name", body = PoolList),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    _caller: Caller<Viewer>,
) -> ApiResult<Json<PoolList>> {
    let mut conn = state.db.acquire().await?;
    let all = pools::list(&mut conn).await?;
    let mut counts = pools::counts(&mut conn).await?;
    let mut images = pools::image_counts_all(&mut conn).await?;
    let pools = all
        .into_iter()
        .map(|p| {
            let c = counts.remove(&p.id).unwrap_or_default();
            let i = images.remove(&p.id).unwrap_or_default();
            PoolView::new(p, c).with_images(&i)
        })
        .collect();
    Ok(Json(PoolList { pools }))
}

/// Defines a pool (admin).
#[utoipa::path(post, path = "/api/v1/pools", tag = "pools",
    security(("bearer" = [])),
    request_body = PoolSpec,
    responses(
        (status = 201, description = "Created", body = PoolView,
            headers(("Location" = String, description = "The pool's URL"), ("ETag" = String, description = "The pool's version"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "A pool with that name exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Invalid spec; `field` names the culprit", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller<Admin>,
    ApiJson(spec): ApiJson<PoolSpec>,
) -> ApiResult<Response> {
    validate(&state, &spec)?;
    let mut tx = state.db.begin().await?;
    let pool = pools::insert(&mut tx, &spec).await?;
    record(
        &mut tx,
        &caller.name,
        &spec.name,
        EventKind::PoolCreated,
        &format!("pool created with target size {}", spec.target_size),
    )
    .await?;
    tx.commit().await?;
    let location = HeaderValue::from_str(&format!("/api/v1/pools/{}", spec.name))
        .expect("a slug is a valid header value");
    let mut res = with_etag(StatusCode::CREATED, PoolView::new(pool, Default::default()));
    res.headers_mut().insert(header::LOCATION, location);
    Ok(res)
}

/// A pool's spec and status.
#[utoipa::path(get, path = "/api/v1/pools/{name}", tag = "pools",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Pool name")),
    responses(
        (status = 200, description = "The pool", body = PoolView,
            headers(("ETag" = String, description = "The pool's version, for If-Match"))),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such pool", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn get(
    State(state): State<AppState>,
    _caller: Caller<Viewer>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    let mut conn = state.db.acquire().await?;
    let pool = find(&mut conn, &name).await?;
    Ok(with_etag(StatusCode::OK, view(&mut conn, pool).await?))
}

/// Replaces a pool's spec (admin). The name in the body must match the path.
#[utoipa::path(put, path = "/api/v1/pools/{name}", tag = "pools",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Pool name"),
        ("If-Match" = Option<String>, Header, pattern = "^(?:\\*|(?:W/)?\"[0-9]{1,18}\"|[0-9]{1,18})$", description = "Apply only if the pool is still at this ETag"),
    ),
    request_body = PoolSpec,
    responses(
        (status = 200, description = "Updated", body = PoolView,
            headers(("ETag" = String, description = "The new version"))),
        (status = 400, description = "Malformed JSON or If-Match", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such pool", body = ErrorBody),
        (status = 409, description = "The pool is being deleted", body = ErrorBody),
        (status = 412, description = "If-Match does not match the current version", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Invalid spec; `field` names the culprit", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn replace(
    State(state): State<AppState>,
    caller: Caller<Admin>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<PoolSpec>,
) -> ApiResult<Response> {
    let expected = if_match(&headers)?;
    if spec.name != name {
        return Err(ApiError::invalid(
            "name",
            format!(
                "the body names pool '{}' but the path names '{name}'; pools cannot be renamed",
                spec.name
            ),
        ));
    }
    validate(&state, &spec)?;
    // A new snapshot (or golden VM) is an image push: resolved once, before any write, and
    // refused with the pool unchanged when it does not resolve.
    let before = {
        let mut conn = state.db.acquire().await?;
        find(&mut conn, &name).await?
    };
    let image = if before.spec.snapshot != spec.snapshot || before.spec.golden_vm != spec.golden_vm
    {
        not_deleting(&before)?;
        match resolve_image(&state, &spec, &spec.snapshot).await {
            Ok(moref) => Some(moref),
            // vCenter cannot be asked now: the spec is stored unpinned and the reconciler
            // pins what the snapshot names at its next pass (a missing one puts the pool in
            // `error` then). Only a snapshot known not to exist is refused here.
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(pool = %name, error = %e.message, "snapshot not resolved at PUT; the reconciler pins it");
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let mut tx = state.db.begin().await?;
    find(&mut tx, &name).await?;
    let mut pool = pools::update_spec(&mut tx, &name, &spec, expected).await?;
    record(
        &mut tx,
        &caller.name,
        &name,
        EventKind::PoolUpdated,
        &format!("spec replaced (version {})", pool.version),
    )
    .await?;
    if let Some(moref) = image {
        pin(&mut tx, &caller.name, &pool, &spec.snapshot, &moref).await?;
        pool = find(&mut tx, &name).await?;
    }
    let v = view(&mut tx, pool).await?;
    tx.commit().await?;
    Ok(with_etag(StatusCode::OK, v))
}

/// Sets a pool's target size and/or its number of spares (helpdesk or admin), within the
/// pool's bounds (`min_size..=max_size` and `0..=max_size`).
#[utoipa::path(patch, path = "/api/v1/pools/{name}", tag = "pools",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Pool name"),
        ("If-Match" = Option<String>, Header, pattern = "^(?:\\*|(?:W/)?\"[0-9]{1,18}\"|[0-9]{1,18})$", description = "Apply only if the pool is still at this ETag"),
    ),
    request_body = Resize,
    responses(
        (status = 200, description = "Resized", body = PoolView,
            headers(("ETag" = String, description = "The new version"))),
        (status = 400, description = "Malformed JSON or If-Match", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Viewer token", body = ErrorBody),
        (status = 404, description = "No such pool", body = ErrorBody),
        (status = 409, description = "The pool is being deleted", body = ErrorBody),
        (status = 412, description = "If-Match does not match the current version", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Target or min_spare outside the pool's bounds (`field` names it)", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn resize(
    State(state): State<AppState>,
    caller: Caller<Helpdesk>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<Resize>,
) -> ApiResult<Response> {
    let expected = if_match(&headers)?;
    if !is_slug(&name) {
        return Err(ApiError::pool_not_found(&name));
    }
    let mut tx = state.db.begin().await?;
    // Locked at once: the checks below and the update see the same row.
    let current = pools::lock(&mut tx, &name).await?;
    not_deleting(&current)?;
    // A stale client is told so before being told its number is out of bounds.
    if expected.is_some_and(|v| v != current.version) {
        return Err(deskpool_store::StoreError::VersionMismatch {
            current: current.version,
        }
        .into());
    }
    // Helpdesk and admin alike: bounds are the admin's to change, with PUT.
    if req.target_size.is_none() && req.min_spare.is_none() {
        return Err(ApiError::invalid(
            "target_size",
            "send target_size, min_spare or both",
        ));
    }
    if let Some(target) = req.target_size {
        current.spec.check_target(target)?;
    }
    if let Some(spare) = req.min_spare {
        current.spec.check_min_spare(spare)?;
    }
    let mut pool = current.clone();
    let mut changes = Vec::new();
    if let Some(target) = req.target_size {
        pool = pools::set_target_locked(&mut tx, &name, target).await?;
        changes.push(format!(
            "target size {} -> {target}",
            current.spec.target_size
        ));
    }
    if let Some(spare) = req.min_spare {
        pool = pools::set_min_spare_locked(&mut tx, &name, spare).await?;
        changes.push(format!("min_spare {} -> {spare}", current.spec.min_spare));
    }
    record(
        &mut tx,
        &caller.name,
        &name,
        EventKind::PoolResized,
        &changes.join(", "),
    )
    .await?;
    let v = view(&mut tx, pool).await?;
    tx.commit().await?;
    Ok(with_etag(StatusCode::OK, v))
}

async fn set_enabled(
    state: AppState,
    actor: &str,
    name: &str,
    enabled: bool,
) -> ApiResult<Response> {
    let mut tx = state.db.begin().await?;
    let current = find(&mut tx, name).await?;
    not_deleting(&current)?;
    let pool = pools::set_enabled(&mut tx, name, enabled).await?;
    let (kind, message) = if enabled {
        (EventKind::PoolResumed, "provisioning resumed")
    } else {
        (EventKind::PoolPaused, "provisioning paused")
    };
    record(&mut tx, actor, name, kind, message).await?;
    let v = view(&mut tx, pool).await?;
    tx.commit().await?;
    Ok(with_etag(StatusCode::OK, v))
}

/// Pauses a pool (admin): it is neither grown nor shrunk until resumed.
#[utoipa::path(post, path = "/api/v1/pools/{name}/pause", tag = "pools",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Pool name")),
    responses(
        (status = 200, description = "Paused", body = PoolView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such pool", body = ErrorBody),
        (status = 409, description = "The pool is being deleted", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn pause(
    State(state): State<AppState>,
    caller: Caller<Admin>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    set_enabled(state, &caller.name, &name, false).await
}

/// Resumes a pool (admin); also clears `error` and `stopped`.
#[utoipa::path(post, path = "/api/v1/pools/{name}/resume", tag = "pools",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Pool name")),
    responses(
        (status = 200, description = "Resumed", body = PoolView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such pool", body = ErrorBody),
        (status = 409, description = "The pool is being deleted", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn resume(
    State(state): State<AppState>,
    caller: Caller<Admin>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    set_enabled(state, &caller.name, &name, true).await
}

/// Deletes a pool (admin): it goes to `deleting`; the reconciler destroys its desktops and
/// then removes it. Repeating the call is harmless. A pool with claimed desktops is refused
/// (409 `desktops_claimed`) unless `?force=true`, which ends the claims (evented
/// `forced_removal` per desktop, with the caller and the user).
#[utoipa::path(delete, path = "/api/v1/pools/{name}", tag = "pools",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Pool name"),
        ("force" = Option<bool>, Query, description = "Delete even the desktops users hold"),
    ),
    responses(
        (status = 202, description = "Deletion under way", body = PoolView),
        (status = 400, description = "Bad query parameter", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such pool", body = ErrorBody),
        (status = 409, description = "`desktops_claimed`: users hold desktops of the pool (use ?force=true)", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller<Admin>,
    ApiPath(name): ApiPath<String>,
    query: QueryPairs,
) -> ApiResult<Response> {
    let force = crate::desktops::force(&query)?;
    if !is_slug(&name) {
        return Err(ApiError::pool_not_found(&name));
    }
    let mut tx = state.db.begin().await?;
    // Locked for update: claims under way (which hold it in share mode) finish first and are
    // counted below; later ones see the pool deleting.
    let mut pool = pools::lock(&mut tx, &name).await?;
    if pool.state != PoolState::Deleting {
        let claimed = claims::claimed_count(&mut tx, pool.id).await?;
        if claimed > 0 && !force {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "desktops_claimed",
                format!(
                    "pool '{name}' has {claimed} claimed desktop(s): release them first, or delete with ?force=true to take them away"
                ),
            ));
        }
        for (desktop, user) in claims::drop_all(&mut tx, pool.id).await? {
            tracing::warn!(pool = %name, %desktop, actor = %caller.name, %user, "claimed desktop removed with the pool (force)");
            events::record(
                &mut tx,
                &NewEvent {
                    pool: Some(&name),
                    desktop: Some(&desktop),
                    actor: &caller.name,
                    kind: EventKind::ForcedRemoval,
                    message: &format!("claimed desktop removed with its pool (held by {user})"),
                },
            )
            .await?;
        }
        pool = pools::mark_deleting(&mut tx, &name).await?;
        record(
            &mut tx,
            &caller.name,
            &name,
            EventKind::PoolDeleting,
            "pool marked for deletion",
        )
        .await?;
    }
    let v = view(&mut tx, pool).await?;
    tx.commit().await?;
    Ok(with_etag(StatusCode::ACCEPTED, v))
}

/// Gives a pool a new image (admin): the snapshot is resolved once and the pool pinned to its
/// moref (also for `current`); desktops on another image are replaced by a rolling update.
/// Pushing the previous snapshot is the rollback.
#[utoipa::path(post, path = "/api/v1/pools/{name}/image", tag = "pools",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Pool name")),
    request_body = ImagePush,
    responses(
        (status = 200, description = "Pinned; `status.rollout` shows the rollout", body = PoolView,
            headers(("ETag" = String, description = "The new version"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such pool", body = ErrorBody),
        (status = 409, description = "The pool is being deleted", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "The snapshot does not resolve (field `snapshot`); the pool keeps its image", body = ErrorBody),
        (status = 503, description = "Database or vCenter unavailable", body = ErrorBody),
    ))]
pub(crate) async fn push_image(
    State(state): State<AppState>,
    caller: Caller<Admin>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ImagePush>,
) -> ApiResult<Response> {
    let current = {
        let mut conn = state.db.acquire().await?;
        find(&mut conn, &name).await?
    };
    not_deleting(&current)?;
    let mut spec = current.spec.clone();
    spec.snapshot = req.snapshot.clone();
    check_text("snapshot", &spec.snapshot)?;
    spec.validate()?;
    let moref = resolve_image(&state, &spec, &req.snapshot).await?;
    let mut tx = state.db.begin().await?;
    let locked = pools::lock(&mut tx, &name).await?;
    not_deleting(&locked)?;
    pools::set_snapshot_selector(&mut tx, locked.id, &req.snapshot).await?;
    record(
        &mut tx,
        &caller.name,
        &name,
        EventKind::PoolUpdated,
        &format!("image pushed: snapshot '{}' ({moref})", req.snapshot),
    )
    .await?;
    pin(&mut tx, &caller.name, &locked, &req.snapshot, &moref).await?;
    let pool = find(&mut tx, &name).await?;
    let v = view(&mut tx, pool).await?;
    tx.commit().await?;
    Ok(with_etag(StatusCode::OK, v))
}

/// Continues a rollout that stopped at a failed clone (admin).
#[utoipa::path(post, path = "/api/v1/pools/{name}/image/resume", tag = "pools",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Pool name")),
    responses(
        (status = 200, description = "Rolling again", body = PoolView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such pool", body = ErrorBody),
        (status = 409, description = "The pool's rollout is not stopped (`rollout_not_stopped`)", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn resume_rollout(
    State(state): State<AppState>,
    caller: Caller<Admin>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    let mut tx = state.db.begin().await?;
    let current = find(&mut tx, &name).await?;
    not_deleting(&current)?;
    let Some(pool) = pools::resume_rollout(&mut tx, &name).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "rollout_not_stopped",
            format!(
                "pool '{name}' has no stopped rollout (its rollout is {}): nothing to resume",
                current.rollout.state
            ),
        ));
    };
    record(
        &mut tx,
        &caller.name,
        &name,
        EventKind::PoolResumed,
        &format!(
            "rollout to {} resumed",
            pool.snapshot_moref.as_deref().unwrap_or("?")
        ),
    )
    .await?;
    let v = view(&mut tx, pool).await?;
    tx.commit().await?;
    Ok(with_etag(StatusCode::OK, v))
}
