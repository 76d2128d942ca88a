//! The leader lease loop: take or renew the lease, run the controller while leader, stop it
//! the moment leadership is in doubt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deskpool_domain::EventKind;
use deskpool_store::{events, lease};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::context::Ctx;
use crate::controller;
use crate::status::{Leadership, StatusHandle};
use crate::vcenter::Vcenter;
use crate::{Error, ReconcilerConfig, ACTOR, LEASE};

struct Leading {
    fence: lease::Fence,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Leading {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn try_acquire(
    db: &sqlx::PgPool,
    cfg: &ReconcilerConfig,
) -> Result<Option<lease::Fence>, Error> {
    let mut conn = db.acquire().await?;
    Ok(lease::acquire(&mut conn, LEASE, &cfg.replica_id, cfg.lease_ttl).await?)
}

async fn record_lease_taken(db: &sqlx::PgPool, fence: &lease::Fence) -> Result<(), Error> {
    let mut tx = db.begin().await?;
    lease::check(&mut tx, fence).await?;
    let msg = format!(
        "replica {} became the leader (fencing token {})",
        fence.owner, fence.token
    );
    events::record(
        &mut tx,
        &events::NewEvent {
            pool: None,
            desktop: None,
            actor: ACTOR,
            kind: EventKind::LeaseTaken,
            message: &msg,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn run(
    db: sqlx::PgPool,
    cfg: ReconcilerConfig,
    vcenters: Vec<Arc<Vcenter>>,
    status: StatusHandle,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let renew_every = cfg.lease_ttl / 3;
    // A standby asks often (a cheap query) so it takes over soon after the lease runs out.
    let standby_poll = renew_every.min(Duration::from_secs(1));
    // Stop acting well before another replica could take over an unrenewed lease.
    let give_up_after = cfg.lease_ttl * 2 / 3;
    let mut leading: Option<Leading> = None;
    let mut last_renewed = Instant::now();
    let mut first = true;

    loop {
        let wait = if first {
            Duration::ZERO
        } else if leading.is_some() {
            renew_every
        } else {
            standby_poll
        };
        first = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        if leading.as_ref().is_some_and(|l| l.task.is_finished()) {
            // The controller only ends when told to; anything else is a bug worth a restart.
            tracing::error!("reconciler controller ended unexpectedly; restarting it");
            if let Some(l) = leading.take() {
                l.stop().await;
            }
        }
        let attempt = tokio::time::timeout(
            renew_every.max(Duration::from_secs(1)),
            try_acquire(&db, &cfg),
        )
        .await;
        match attempt {
            Ok(Ok(Some(fence))) => {
                last_renewed = Instant::now();
                if leading.as_ref().is_some_and(|l| l.fence == fence) {
                    continue;
                }
                if let Some(old) = leading.take() {
                    tracing::warn!(
                        old_token = old.fence.token,
                        new_token = fence.token,
                        "lease changed hands in between; restarting the controller"
                    );
                    old.stop().await;
                }
                tracing::info!(replica = %fence.owner, token = fence.token, "took the leader lease");
                if let Err(e) = record_lease_taken(&db, &fence).await {
                    tracing::warn!(error = %e, "cannot record the lease_taken event");
                }
                let stop = shutdown.child_token();
                let ctx = Arc::new(Ctx::new(
                    db.clone(),
                    cfg.clone(),
                    &vcenters,
                    fence.clone(),
                    stop.clone(),
                ));
                let task = tokio::spawn(controller::run(ctx));
                leading = Some(Leading { fence, stop, task });
                status.set_role(Leadership::Leader);
            }
            Ok(Ok(None)) => {
                if let Some(l) = leading.take() {
                    tracing::warn!(
                        token = l.fence.token,
                        "another replica holds the leader lease now; standing by"
                    );
                    l.stop().await;
                }
                status.set_role(Leadership::Standby);
            }
            Ok(Err(e)) => {
                lease_trouble(
                    &e.to_string(),
                    &mut leading,
                    last_renewed,
                    give_up_after,
                    &status,
                )
                .await
            }
            Err(_) => {
                lease_trouble(
                    "lease query timed out",
                    &mut leading,
                    last_renewed,
                    give_up_after,
                    &status,
                )
                .await
            }
        }
    }

    if let Some(l) = leading.take() {
        let fence = l.fence.clone();
        l.stop().await;
        // Hand over at once instead of making the standby wait for the TTL.
        if let Ok(mut conn) = db.acquire().await {
            if let Err(e) = lease::release(&mut conn, &fence).await {
                tracing::warn!(error = %e, "cannot release the leader lease");
            } else {
                tracing::info!("released the leader lease");
            }
        }
    }
    Ok(())
}

async fn lease_trouble(
    error: &str,
    leading: &mut Option<Leading>,
    last_renewed: Instant,
    give_up_after: Duration,
    status: &StatusHandle,
) {
    tracing::warn!(
        error,
        "cannot take or renew the leader lease (database unreachable?)"
    );
    if leading.is_some() && last_renewed.elapsed() >= give_up_after {
        tracing::error!("leader lease could not be renewed in time; stopping reconciliation until the database is back");
        if let Some(l) = leading.take() {
            l.stop().await;
        }
    }
    if leading.is_none() {
        status.set_role(Leadership::Starting);
    }
}
