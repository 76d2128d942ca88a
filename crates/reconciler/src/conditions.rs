//! The pool's condition as users see it: `error` or `stopped` with what to fix, or a note on
//! an otherwise healthy pool. Written once per change, so a pass that finds the same
//! problem again writes nothing.

use deskpool_domain::{EventKind, PoolState};
use deskpool_store::pools::{self, Pool, Status};

use crate::context::Ctx;
use crate::Error;

/// Puts the pool in `error` or `stopped` with a message that says what to fix (once).
pub(crate) async fn set_condition(
    ctx: &Ctx,
    pool: &Pool,
    state: PoolState,
    message: String,
) -> Result<(), Error> {
    if pool.state == state && pool.last_error.as_deref() == Some(message.as_str()) {
        return Ok(());
    }
    let mut tx = ctx.begin().await?;
    let written = pools::set_status(
        &mut tx,
        pool.id,
        pool.version,
        &Status {
            state,
            last_error: Some(message.clone()),
            consecutive_failures: pool.consecutive_failures,
        },
    )
    .await?;
    if !written {
        // The spec changed since this pass read it: the conclusion is about the old spec, and
        // the change has already woken the pool for a pass over the new one.
        tracing::info!(pool = %pool.spec.name, state = %state, "pool changed during the pass; not recording: {message}");
        return Ok(());
    }
    let kind = if state == PoolState::Stopped {
        EventKind::ProvisioningStopped
    } else {
        EventKind::PoolError
    };
    ctx.event(&mut tx, &pool.spec.name, None, kind, &message)
        .await?;
    tx.commit().await?;
    tracing::error!(pool = %pool.spec.name, state = %state, "{message}");
    Ok(())
}

/// Shows a transient problem on an otherwise healthy pool (or clears it with None).
pub(crate) async fn note(ctx: &Ctx, pool: &Pool, message: Option<String>) -> Result<(), Error> {
    if pool.last_error == message || pool.state != PoolState::Ok {
        return Ok(());
    }
    let mut tx = ctx.begin().await?;
    pools::set_note(&mut tx, pool.id, pool.version, message.as_deref()).await?;
    tx.commit().await?;
    Ok(())
}
