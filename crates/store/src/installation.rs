//! This installation's identity and the instance UUIDs it issued: what lets deskpool tell its
//! own VMs from copies of them and from another installation's.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::StoreError;

/// The installation id, generated once by the migration that made the table.
pub async fn id(conn: &mut PgConnection) -> Result<Uuid, StoreError> {
    let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM installation")
        .fetch_optional(conn)
        .await?;
    id.ok_or_else(|| {
        StoreError::Corrupt(
            "the installation table is empty: the database was changed by hand; restore the row or migrate a fresh database".into(),
        )
    })
}

/// Which of `uuids` this installation gave a desktop (now or in the past).
pub async fn issued(conn: &mut PgConnection, uuids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
    if uuids.is_empty() {
        return Ok(HashSet::new());
    }
    let found: Vec<Uuid> = sqlx::query_scalar(
        "SELECT instance_uuid FROM issued_instance_uuids WHERE instance_uuid = ANY($1)",
    )
    .bind(uuids)
    .fetch_all(conn)
    .await?;
    Ok(found.into_iter().collect())
}

/// The pool of the desktop row holding each of `uuids` (those with a row).
pub async fn desktop_pools(
    conn: &mut PgConnection,
    uuids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, String>, StoreError> {
    if uuids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT d.instance_uuid, p.name FROM desktops d JOIN pools p ON p.id = d.pool_id
         WHERE d.instance_uuid = ANY($1)",
    )
    .bind(uuids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Forgets an issued instance UUID once its VM is known to be destroyed (keeps the table from
/// growing with every replaced desktop). A UUID whose VM was never seen stays: a late clone
/// may still make it.
pub async fn forget_issued(conn: &mut PgConnection, uuid: Uuid) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM issued_instance_uuids WHERE instance_uuid = $1")
        .bind(uuid)
        .execute(conn)
        .await?;
    Ok(())
}
