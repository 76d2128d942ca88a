//! The audit trail: who did what, when, to which pool and desktop.

use chrono::{DateTime, Utc};
use deskpool_domain::EventKind;
use sqlx::PgConnection;

use crate::StoreError;

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Event {
    /// Monotonic id; also the pagination cursor.
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Pool name, if any.
    pub pool: Option<String>,
    /// Desktop name, if any.
    pub desktop: Option<String>,
    /// Who: an API token's name, `reconciler`, or `cli`.
    pub actor: String,
    /// What kind of event (see `EventKind`).
    pub kind: String,
    /// Readable description.
    pub message: String,
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// Pool name, if any.
    pub pool: Option<&'a str>,
    /// Desktop name, if any.
    pub desktop: Option<&'a str>,
    /// Who did it.
    pub actor: &'a str,
    /// What kind.
    pub kind: EventKind,
    /// Readable description.
    pub message: &'a str,
}

/// Appends an event.
pub async fn record(conn: &mut PgConnection, e: &NewEvent<'_>) -> Result<i64, StoreError> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO events (pool, desktop, actor, kind, message) VALUES ($1, $2, $3, $4, $5)
         RETURNING id",
    )
    .bind(e.pool)
    .bind(e.desktop)
    .bind(e.actor)
    .bind(e.kind.as_str())
    .bind(e.message)
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// A filter for [`list`].
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    /// Only this pool's events.
    pub pool: Option<&'a str>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events older than this id (the cursor from the previous page).
    pub before: Option<i64>,
    /// Page size.
    pub limit: u32,
}

/// Events, newest first.
pub async fn list(conn: &mut PgConnection, f: &Filter<'_>) -> Result<Vec<Event>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT id, at, pool, desktop, actor, kind, message FROM events
         WHERE ($1::text IS NULL OR pool = $1) AND ($2::timestamptz IS NULL OR at >= $2)
             AND ($3::bigint IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(f.pool)
    .bind(f.since)
    .bind(f.before)
    .bind(i64::from(f.limit))
    .fetch_all(conn)
    .await?;
    Ok(rows)
}
