//! Claim leases: a pass ends the claims whose lease ran out (the pool's `on_release` applies,
//! as for a release by the user), and asks the scheduler to look again when the earliest
//! remaining lease runs out: one timer per pool, never a poll of every desktop.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deskpool_domain::EventKind;
use deskpool_store::claims;
use deskpool_store::desktops::Desktop;
use deskpool_store::pools::Pool;

use crate::context::Ctx;
use crate::scheduler::Action;
use crate::Error;

/// Shortest wait for a lease timer: the database's clock decides expiry, and a process clock
/// ahead of it must not spin passes that find nothing to expire yet.
const MIN_WAIT: Duration = Duration::from_secs(1);

/// The earliest lease end among `rows`' claims.
pub(crate) fn earliest(rows: &[Desktop]) -> Option<DateTime<Utc>> {
    rows.iter()
        .filter(|d| d.claimed_by.is_some())
        .filter_map(|d| d.lease_expires_at)
        .min()
}

/// Whether some claim's lease has run out by `now`.
fn any_due(rows: &[Desktop], now: DateTime<Utc>) -> bool {
    earliest(rows).is_some_and(|t| t <= now)
}

/// How long from `now` until `end` (at least [`MIN_WAIT`]); None when there is no end.
fn until(end: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<Duration> {
    end.map(|t| (t - now).to_std().unwrap_or(Duration::ZERO).max(MIN_WAIT))
}

/// `action`, or a look after `wait` if that comes sooner.
fn sooner(action: Action, wait: Option<Duration>) -> Action {
    match (action, wait) {
        (a, None) => a,
        (Action::AwaitChange, Some(w)) => Action::RequeueAfter(w),
        (Action::RequeueAfter(d), Some(w)) => Action::RequeueAfter(d.min(w)),
    }
}

/// Ends the claims of `pool` whose lease has run out, with a `claim_expired` event each, and
/// updates `rows` to match.
pub(crate) async fn expire_due(
    ctx: &Arc<Ctx>,
    pool: &Pool,
    rows: &mut [Desktop],
) -> Result<(), Error> {
    if !any_due(rows, Utc::now()) {
        return Ok(());
    }
    let mut tx = ctx.begin().await?;
    let expired = claims::expire(&mut tx, pool.id).await?;
    for r in &expired {
        ctx.event(
            &mut tx,
            &pool.spec.name,
            Some(&r.desktop.name),
            EventKind::ClaimExpired,
            &format!(
                "lease of {} ran out; released (on_release {})",
                r.user,
                pool.spec.on_release.as_str()
            ),
        )
        .await?;
    }
    tx.commit().await?;
    for r in expired {
        if let Some(row) = rows.iter_mut().find(|d| d.id == r.desktop.id) {
            *row = r.desktop;
        }
    }
    Ok(())
}

/// The pass's `action`, brought forward to `lease_end` (the earliest lease end, [`earliest`]).
pub(crate) fn with_lease_timer(action: Action, lease_end: Option<DateTime<Utc>>) -> Action {
    sooner(action, until(lease_end, Utc::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deskpool_domain::DesktopState;
    use uuid::Uuid;

    fn row(lease: Option<DateTime<Utc>>) -> Desktop {
        let now = Utc::now();
        Desktop {
            id: Uuid::new_v4(),
            pool_id: Uuid::nil(),
            name: "d".into(),
            index: 1,
            instance_uuid: Uuid::new_v4(),
            vm_moref: None,
            state: DesktopState::Ready,
            task_moref: None,
            snapshot_moref: None,
            powered_on: true,
            last_error: None,
            created_at: now,
            updated_at: now,
            ready_at: Some(now),
            claimed_by: lease.map(|_| "alice".to_owned()),
            claimed_at: lease.map(|_| now),
            lease_expires_at: lease,
            ip_address: None,
            guest_state: None,
        }
    }

    #[test]
    fn the_earliest_lease_sets_the_timer() {
        let now = Utc::now();
        let rows = [
            row(None),
            row(Some(now + chrono::Duration::seconds(90))),
            row(Some(now + chrono::Duration::seconds(30))),
        ];
        assert!(!any_due(&rows, now));
        assert_eq!(until(earliest(&rows), now), Some(Duration::from_secs(30)));
        assert!(any_due(&rows, now + chrono::Duration::seconds(30)));
        // A lease already over by this clock still waits the minimum, never zero.
        assert_eq!(
            until(earliest(&rows), now + chrono::Duration::seconds(100)),
            Some(MIN_WAIT)
        );
        assert_eq!(until(earliest(&[row(None)]), now), None);
    }

    #[test]
    fn the_sooner_look_wins() {
        let s = Duration::from_secs;
        assert_eq!(sooner(Action::AwaitChange, None), Action::AwaitChange);
        assert_eq!(
            sooner(Action::AwaitChange, Some(s(5))),
            Action::RequeueAfter(s(5))
        );
        assert_eq!(
            sooner(Action::RequeueAfter(s(2)), Some(s(5))),
            Action::RequeueAfter(s(2))
        );
        assert_eq!(
            sooner(Action::RequeueAfter(s(9)), Some(s(5))),
            Action::RequeueAfter(s(5))
        );
    }
}
