//! One term of leadership: the dispatcher that runs passes as the scheduler makes them due
//! (at most one per pool at a time), and the wake-up sources (`LISTEN`, the VM watch, the
//! periodic inventory sweep).

use std::sync::Arc;
use std::time::Instant;

use deskpool_store::{desktops, pools};
use tracing::Instrument;

use crate::context::Ctx;
use crate::policy::error_policy;
use crate::reconcile::reconcile;
use crate::scheduler::{Action, Inputs};
use crate::sources;

/// Runs one term of leadership until `ctx.cancel` fires.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    tracing::info!("reconciler controller started");
    let dispatcher = tokio::spawn(dispatch(Arc::clone(&ctx)));
    let listener = tokio::spawn(sources::listen(Arc::clone(&ctx)));
    let watchers: Vec<_> = ctx
        .vcenters
        .values()
        .map(|vc| tokio::spawn(sources::watch_vms(Arc::clone(&ctx), Arc::clone(vc))))
        .collect();
    // Sweep at once (finds work left by a previous leader or a crash), then periodically.
    let mut tick = tokio::time::interval(ctx.cfg.resync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = sources::sweep(&ctx).await {
                    tracing::warn!(error = %e, "inventory sweep failed; next one at the next interval");
                }
            }
        }
    }
    dispatcher.abort();
    listener.abort();
    watchers.iter().for_each(|w| w.abort());
    tracing::info!("reconciler controller stopped");
}

/// Starts a pass for every pool the scheduler says is due, then sleeps until the next timer
/// or the next wake-up: one task for every pool's timers.
async fn dispatch(ctx: Arc<Ctx>) {
    loop {
        let (due, next_timer) = ctx.scheduler.take_due();
        for (pool, inputs) in due {
            tokio::spawn(run_pass(Arc::clone(&ctx), pool, inputs));
        }
        let timer = async {
            match next_timer {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = ctx.scheduler.changed() => {}
            _ = timer => {}
        }
    }
}

/// One pass of `name`: reads the pool and its desktops once, reconciles, and tells the
/// scheduler when to look again (the pass's action, or the error policy's).
async fn run_pass(ctx: Arc<Ctx>, name: String, inputs: Inputs) {
    let started = Instant::now();
    let span = tracing::info_span!("reconcile", pool = %name);
    let result = async {
        let loaded = {
            let mut conn = ctx.db.acquire().await?;
            match pools::get(&mut conn, &name).await? {
                Some(pool) => {
                    let rows = desktops::list_for_pool(&mut conn, pool.id).await?;
                    Some((pool, rows))
                }
                None => None,
            }
        };
        match loaded {
            Some((pool, rows)) => reconcile(pool, rows, inputs, &ctx).await,
            None => {
                ctx.forget_pool(&name);
                Ok(Action::AwaitChange)
            }
        }
    }
    .instrument(span)
    .await;
    metrics::histogram!("deskpool_reconcile_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    let action = match result {
        Ok(action) => action,
        Err(e) => {
            let action = error_policy(&name, &e, &ctx);
            if let Action::RequeueAfter(delay) = action {
                metrics::counter!("deskpool_reconcile_errors_total", "kind" => e.metric_label())
                    .increment(1);
                tracing::warn!(pool = %name, error = %e, retry_in_ms = delay.as_millis() as u64, "reconcile pass failed");
            }
            action
        }
    };
    ctx.scheduler.apply(&name, action);
    ctx.scheduler.finished(&name);
}
