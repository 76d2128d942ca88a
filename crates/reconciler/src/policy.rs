//! The one error policy: how every failed pass and every failed worker is retried.

use deskpool_store::StoreError;

use crate::context::Ctx;
use crate::scheduler::Action;
use crate::Error;

/// Decides what follows a failure of `pool`'s pass or of one of its workers: transient
/// trouble backs off (exponential with jitter, capped); a lost lease ends this term.
pub(crate) fn error_policy(pool: &str, error: &Error, ctx: &Ctx) -> Action {
    match error {
        // The term is ending; the next leader looks at the pool.
        Error::Stopped(_) => Action::AwaitChange,
        Error::Store(StoreError::Fenced { .. }) => {
            // This term is over even if the leader loop has not noticed: end it, so a fresh
            // controller starts once the lease is (re)taken.
            tracing::warn!(pool, "leadership lost; ending this term");
            ctx.cancel.cancel();
            Action::AwaitChange
        }
        _ => Action::RequeueAfter(ctx.scheduler.back_off(pool)),
    }
}
