//! `deskpool token create|list|revoke`: API tokens, managed directly in the database.

use std::io::Write as _;

use deskpool_domain::EventKind;
use deskpool_store::events;
use deskpool_store::tokens::{self, Role};
use deskpool_store::StoreError;

use crate::config::Config;
use crate::db;

/// Creates a token; prints its secret alone on stdout (for scripts), the notice on stderr.
pub async fn create(cfg: &Config, name: &str, role: Role) -> anyhow::Result<()> {
    let db = db::connect(&cfg.database).await?;
    let mut conn = db.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let (token, secret) = tokens::create(&mut tx, name, role)
        .await
        .map_err(|e| explain(e, "creating token"))?;
    record(
        &mut tx,
        EventKind::TokenCreated,
        &format!("token '{}' created with role {}", token.name, token.role),
    )
    .await?;
    tx.commit().await?;
    println!("{secret}");
    std::io::stdout().flush()?;
    eprintln!(
        "created token '{}' with role {}; the secret above is shown only this once",
        token.name, token.role
    );
    Ok(())
}

/// Lists tokens as a table (never secrets).
pub async fn list(cfg: &Config) -> anyhow::Result<()> {
    let db = db::connect(&cfg.database).await?;
    let mut conn = db.acquire().await?;
    let list = tokens::list(&mut conn)
        .await
        .map_err(|e| explain(e, "listing tokens"))?;
    let width = list.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<width$}  {:<8}  {:<20}  {:<20}  STATUS",
        "NAME", "ROLE", "CREATED", "LAST USED"
    )?;
    let fmt = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        )
    };
    for t in &list {
        let status = match t.revoked_at {
            Some(at) => format!("revoked {}", fmt(Some(at))),
            None => "active".to_owned(),
        };
        writeln!(
            out,
            "{:<width$}  {:<8}  {:<20}  {:<20}  {status}",
            t.name,
            t.role.as_str(),
            fmt(Some(t.created_at)),
            fmt(t.last_used_at),
        )?;
    }
    Ok(())
}

/// Revokes the active token named `name`.
pub async fn revoke(cfg: &Config, name: &str) -> anyhow::Result<()> {
    let db = db::connect(&cfg.database).await?;
    let mut conn = db.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let token = tokens::revoke(&mut tx, name)
        .await
        .map_err(|e| explain(e, "revoking token"))?;
    record(
        &mut tx,
        EventKind::TokenRevoked,
        &format!("token '{}' revoked", token.name),
    )
    .await?;
    tx.commit().await?;
    eprintln!("revoked token '{}' ({})", token.name, token.role);
    Ok(())
}

/// Turns "relation does not exist" into the fix the user needs.
fn explain(e: StoreError, doing: &str) -> anyhow::Error {
    if let StoreError::Db(sqlx::Error::Database(db)) = &e {
        if db.code().as_deref() == Some("42P01") {
            return anyhow::anyhow!(
                "{doing}: the database has no deskpool schema: run `deskpool migrate`"
            );
        }
    }
    anyhow::Error::new(e).context(doing.to_owned())
}

/// Records a token event; the actor is the command line.
async fn record(
    conn: &mut sqlx::PgConnection,
    kind: EventKind,
    message: &str,
) -> anyhow::Result<()> {
    events::record(
        conn,
        &events::NewEvent {
            pool: None,
            desktop: None,
            actor: "cli",
            kind,
            message,
        },
    )
    .await?;
    Ok(())
}
