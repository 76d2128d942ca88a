//! `/api/v1/events`: the audit trail, newest first.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use deskpool_domain::is_slug;
use deskpool_store::events::{self, Filter};

use crate::auth::{Caller, Viewer};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::QueryPairs;
use crate::model::{EventPage, EventView};
use crate::AppState;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// Events, newest first, cursor-paginated with `before`.
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    security(("bearer" = [])),
    params(
        ("pool" = Option<String>, Query, pattern = "^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$", description = "Only this pool's events"),
        ("since" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "Only events at or after this RFC 3339 time"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1-1000 (default 100)"),
        ("before" = Option<i64>, Query, minimum = 1, description = "The `next` cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "Bad query parameter; `field` names it", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    _caller: Caller<Viewer>,
    query: QueryPairs,
) -> ApiResult<Json<EventPage>> {
    query.only(&["pool", "since", "limit", "before"])?;
    let pool = query.parse("pool", "a pool name", |v| is_slug(v).then_some(v))?;
    let since = query.parse(
        "since",
        "an RFC 3339 time such as 2026-01-31T12:00:00Z",
        |v| {
            DateTime::parse_from_rfc3339(v)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        },
    )?;
    let before = query.parse("before", "a positive event id", |v| {
        v.parse::<i64>().ok().filter(|n| *n > 0)
    })?;
    let limit = query.limit(DEFAULT_PAGE, MAX_PAGE)?;
    let mut conn = state.db.acquire().await?;
    let mut rows = events::list(
        &mut conn,
        &Filter {
            pool,
            since,
            before,
            limit: limit + 1,
        },
    )
    .await?;
    let next = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(EventPage {
        events: rows.into_iter().map(EventView::from).collect(),
        next,
    }))
}
