//! `deskpool serve`: connect, migrate, bind, then supervise the long-running tasks.
//!
//! [`build`] binds the listeners and spawns the tasks (so tests can bind port 0 and read the
//! address back); [`App::run`] supervises them until a shutdown signal, and turns any task that
//! ends on its own into a non-zero exit naming it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use std::sync::Arc;

use deskpool_api::{HealthSnapshot, ReplicaRole, VcenterHealth};
use sqlx::PgPool;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db;

/// How long tasks get to finish after a shutdown signal before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    // Installed first so a signal during startup is not lost.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = sigint.recv() => "SIGINT",
            _ = sigterm.recv() => "SIGTERM",
        }
    };

    let databases = Databases {
        api: db::connect(&cfg.database).await?,
        reconciler: db::connect_sized(&cfg.database, cfg.database.reconciler_connections).await?,
    };
    deskpool_store::MIGRATOR
        .run(&databases.reconciler)
        .await
        .context("applying database migrations")?;
    let app = build(&cfg, databases).await?;
    app.run(shutdown).await
}

/// The daemon's two connection pools to one database: the API's, and the reconciler's own, so
/// that no amount of HTTP traffic can take the connections the leader lease renews with.
#[derive(Debug, Clone)]
pub struct Databases {
    /// For HTTP requests (`database.max_connections`).
    pub api: PgPool,
    /// For the reconciler and its lease (`database.reconciler_connections`).
    pub reconciler: PgPool,
}

/// The running daemon: its bound addresses and supervised tasks.
#[derive(Debug)]
pub struct App {
    /// Where the HTTP listener is bound (the real port when configured with port 0).
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<tokio::task::Id, &'static str>,
}

/// Binds the listeners and spawns every task of the daemon.
pub async fn build(cfg: &Config, databases: Databases) -> anyhow::Result<App> {
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot bind {}", cfg.http.listen))?;
    let http_addr = listener.local_addr().context("reading the bound address")?;

    let reconciler = deskpool_reconciler::Reconciler::new(
        databases.reconciler,
        cfg.vcenters
            .iter()
            .map(|v| deskpool_reconciler::VcenterSpec {
                name: v.name.clone(),
                options: v.client_options(),
            })
            .collect(),
        cfg.reconciler.tunables(),
    );
    let api = deskpool_api::ApiState {
        db: databases.api,
        vcenters: cfg.vcenters.iter().map(|v| v.name.clone()).collect(),
        health: Arc::new(ReconcilerHealth(reconciler.status())),
        images: Arc::new(SnapshotResolver(reconciler.status())),
        metrics: deskpool_api::install_metrics_recorder(),
        max_body_bytes: cfg.http.max_body_bytes,
        limits: deskpool_api::RequestLimits {
            max_concurrent: cfg.http.max_concurrent_requests,
            timeout: Duration::from_secs(cfg.http.request_timeout_secs),
        },
    };
    let router = deskpool_api::router(api);

    let mut app = App::new(http_addr);
    let stop = app.shutdown.clone();
    let scheme = if let Some((cert, key)) = cfg.http.tls_files() {
        let tls = crate::tls::server_config(crate::tls::read_identity(cert, key)?)?;
        let listener = crate::tls::TlsListener::new(listener, tls).context("http.listen")?;
        app.spawn("http server", serve_until(listener, router, stop));
        "https"
    } else {
        app.spawn("http server", serve_until(listener, router, stop));
        "http"
    };
    let stop = app.shutdown.clone();
    app.spawn("reconciler", async move {
        reconciler.run(stop.clone()).await?;
        // The reconciler returns only on shutdown; anything else is a failure.
        anyhow::ensure!(stop.is_cancelled(), "reconciler returned before shutdown");
        Ok(())
    });

    tracing::info!(addr = %http_addr, scheme, "http listener ready");
    Ok(app)
}

/// Serves the router on `listener` (plain TCP or TLS) until `stop` is cancelled.
async fn serve_until<L>(
    listener: L,
    router: axum::Router,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .context("http server failed")
}

/// Image pushes resolve their snapshot through this replica's vCenter sessions.
struct SnapshotResolver(deskpool_reconciler::StatusHandle);

impl deskpool_api::Images for SnapshotResolver {
    fn resolve<'a>(
        &'a self,
        spec: &'a deskpool_domain::PoolSpec,
        selector: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<String, deskpool_api::ImageError>> + Send + 'a>,
    > {
        Box::pin(async move {
            use deskpool_reconciler::SnapshotError;
            self.0
                .resolve_snapshot(spec, selector)
                .await
                .map_err(|e| match e {
                    SnapshotError::NotFound(m) => deskpool_api::ImageError::NotFound(m),
                    SnapshotError::Unavailable(m) => deskpool_api::ImageError::Unavailable(m),
                })
        })
    }
}

/// `/readyz` reads the reconciler's role and vCenter sessions through this.
struct ReconcilerHealth(deskpool_reconciler::StatusHandle);

impl deskpool_api::Health for ReconcilerHealth {
    fn snapshot(&self) -> HealthSnapshot {
        use deskpool_reconciler::Leadership;
        HealthSnapshot {
            role: match self.0.role() {
                Leadership::Leader => ReplicaRole::Leader,
                Leadership::Standby => ReplicaRole::Standby,
                Leadership::Starting => ReplicaRole::Starting,
            },
            vcenters: self
                .0
                .vcenters()
                .into_iter()
                .map(|v| VcenterHealth {
                    name: v.name,
                    connected: v.connected,
                    error: v.error,
                })
                .collect(),
        }
    }
}

impl App {
    fn new(http_addr: SocketAddr) -> Self {
        Self {
            http_addr,
            shutdown: CancellationToken::new(),
            tasks: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    /// The token every task watches: cancelled when the daemon shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Spawns a task that must run until shutdown; ending earlier (even with `Ok`) ends the
    /// process.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Supervises the tasks until `signal` resolves (with the signal's name) or a task ends.
    pub async fn run(mut self, signal: impl Future<Output = &'static str>) -> anyhow::Result<()> {
        let failure = tokio::select! {
            sig = signal => {
                tracing::info!(signal = sig, "shutting down");
                None
            }
            Some(joined) = self.tasks.join_next_with_id() => {
                let (id, outcome) = match joined {
                    Ok((id, Ok(()))) => (id, " (returned without error)".to_owned()),
                    Ok((id, Err(e))) => (id, format!(": {e:#}")),
                    Err(e) => (e.id(), if e.is_panic() { " (panicked)".to_owned() } else { " (cancelled)".to_owned() }),
                };
                let name = self.names.get(&id).copied().unwrap_or("unnamed task");
                tracing::error!(task = name, "task ended unexpectedly{outcome}; shutting down");
                Some(format!("task '{name}' ended unexpectedly{outcome}"))
            }
        };
        self.shutdown.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(joined) = self.tasks.join_next_with_id().await {
                match joined {
                    Ok((_, Ok(()))) => {}
                    Ok((id, Err(e))) => {
                        let name = self.names.get(&id).copied().unwrap_or("unnamed task");
                        tracing::warn!(task = name, "task failed while stopping: {e:#}");
                    }
                    Err(e) => {
                        let name = self.names.get(&e.id()).copied().unwrap_or("unnamed task");
                        tracing::warn!(task = name, "task panicked while stopping");
                    }
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                "tasks did not stop in time; aborting them"
            );
            self.tasks.abort_all();
        }
        match failure {
            Some(msg) => anyhow::bail!(msg),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        App::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    #[tokio::test]
    async fn task_that_returns_ends_run_with_its_name() {
        let mut app = app();
        let stop = app.shutdown_token();
        app.spawn("steady", async move {
            stop.cancelled().await;
            Ok(())
        });
        app.spawn("quitter", async { Ok(()) });
        let err = app.run(std::future::pending()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "task 'quitter' ended unexpectedly (returned without error)"
        );
    }

    #[tokio::test]
    async fn failing_and_panicking_tasks_are_named() {
        let mut app = app();
        app.spawn("broken", async { anyhow::bail!("disk on fire") });
        let err = app.run(std::future::pending()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "task 'broken' ended unexpectedly: disk on fire"
        );

        let mut app = self::app();
        app.spawn("panicky", async { panic!("boom") });
        let err = app.run(std::future::pending()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "task 'panicky' ended unexpectedly (panicked)"
        );
    }

    #[tokio::test]
    async fn signal_stops_tasks_cleanly() {
        let mut app = app();
        let stop = app.shutdown_token();
        app.spawn("worker", async move {
            stop.cancelled().await;
            Ok(())
        });
        app.run(async { "SIGTERM" }).await.unwrap();
    }
}
