//! Connecting to PostgreSQL with errors that name the (redacted) URL.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::ConnectOptions;

use crate::config::DatabaseConfig;

/// Connects once (so an unreachable database fails fast with its real cause, not a pool
/// timeout), then returns a pool of `max_connections`.
pub async fn connect(cfg: &DatabaseConfig) -> anyhow::Result<PgPool> {
    connect_sized(cfg, cfg.max_connections).await
}

/// [`connect`] with a pool of `size` connections.
pub async fn connect_sized(cfg: &DatabaseConfig, size: u32) -> anyhow::Result<PgPool> {
    let opts = options(cfg)?;
    let timeout = Duration::from_secs(cfg.connect_timeout_secs);
    let redacted = cfg.redacted_url();
    let secret = cfg.url.expose_secret();
    let scrub = |msg: String| scrub_password(secret, msg);
    match tokio::time::timeout(timeout, opts.connect()).await {
        Err(_) => anyhow::bail!(
            "cannot connect to database at {redacted}: no answer within {} s",
            cfg.connect_timeout_secs
        ),
        Ok(Err(e)) => {
            let missing_db =
                matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("3D000"));
            let hint = if missing_db {
                " (`deskpool migrate` creates it)"
            } else {
                ""
            };
            anyhow::bail!(
                "cannot connect to database at {redacted}: {}{hint}",
                scrub(e.to_string())
            )
        }
        Ok(Ok(conn)) => {
            // Only used to prove the database is reachable; close it politely.
            let _ = sqlx::Connection::close(conn).await;
        }
    }
    let db = PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(timeout)
        .connect_lazy_with(opts);
    tracing::debug!(database = %redacted, "connected to database");
    Ok(db)
}

/// Creates the database named in the URL if it does not exist yet (for `migrate`).
pub async fn create_database_if_missing(cfg: &DatabaseConfig) -> anyhow::Result<bool> {
    use sqlx::migrate::MigrateDatabase as _;
    let url = cfg.url.expose_secret();
    let redacted = cfg.redacted_url();
    let timeout = Duration::from_secs(cfg.connect_timeout_secs);
    let exists = tokio::time::timeout(timeout, sqlx::Postgres::database_exists(url))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot connect to database at {redacted}: no answer within {} s",
                cfg.connect_timeout_secs
            )
        })?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to database at {redacted}: {}",
                scrub_password(url, e.to_string())
            )
        })?;
    if exists {
        return Ok(false);
    }
    sqlx::Postgres::create_database(url)
        .await
        .map_err(|e| anyhow::anyhow!("{}", scrub_password(url, e.to_string())))
        .with_context(|| format!("creating database {redacted}"))?;
    Ok(true)
}

fn options(cfg: &DatabaseConfig) -> anyhow::Result<PgConnectOptions> {
    // The URL was validated at load; this only fails on options sqlx rejects.
    PgConnectOptions::from_str(cfg.url.expose_secret())
        .map(|o| o.log_statements(tracing::log::LevelFilter::Debug))
        .map_err(|e| {
            anyhow::anyhow!(
                "database.url: {}",
                scrub_password(cfg.url.expose_secret(), e.to_string())
            )
        })
}

/// Removes the URL's password from a driver message, in case it was echoed.
fn scrub_password(url: &str, msg: String) -> String {
    let password = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned));
    match password {
        Some(p) if !p.is_empty() => msg.replace(&p, "***"),
        _ => msg,
    }
}

/// `deskpool migrate`: creates the database if missing and applies pending migrations.
pub async fn migrate(cfg: &DatabaseConfig) -> anyhow::Result<()> {
    use sqlx::migrate::Migrate as _;

    if create_database_if_missing(cfg).await? {
        tracing::info!(database = %cfg.redacted_url(), "created database");
    }
    let db = connect(cfg).await?;
    let migrator = &deskpool_store::MIGRATOR;
    let before = {
        let mut conn = db.acquire().await?;
        // Fails only when the bookkeeping table does not exist yet: nothing applied.
        conn.list_applied_migrations().await.map_or(0, |a| a.len())
    };
    migrator
        .run(&db)
        .await
        .context("applying database migrations")?;
    let total = migrator.iter().count();
    tracing::info!(
        applied_now = total.saturating_sub(before),
        total,
        "database schema is up to date"
    );
    db.close().await;
    Ok(())
}
