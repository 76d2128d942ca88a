//! Image rollouts: moving a pool's desktops to a new golden snapshot, new before old.
//!
//! A pool's image is the snapshot moref it is pinned to; a desktop on another moref is
//! *outdated*. While a rollout is `rolling`, [`plan_rollout`] replaces
//! unclaimed outdated desktops (the reconciler calls [`plan_with_rollout`], which is `plan()`
//! when no rollout runs): it clones from the new image first, up to `max_surge` beyond
//! the desired size, and destroys an outdated desktop only while the claimable count stays at
//! or above what the pool had minus `max_unavailable`. Claimed outdated desktops are never
//! removed here: they wait for their release, or [`force_release_due`] says when the grace of
//! `logoff_policy: "force"` is over. [`rollout_transition`] says when a rollout stops or ends.

use std::collections::BTreeSet;

use crate::plan::{desired, plan, removal_rank, Plan, PlanDesktop, PlanInput};
use crate::{DesktopState, LogoffPolicy, RolloutState};

/// The limits of a running rollout, from the pool spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutLimits {
    /// Desktops allowed beyond the desired size while rolling (`PoolSpec::surge`).
    pub max_surge: u32,
    /// How far below its claimable count the pool may drop while rolling.
    pub max_unavailable: u32,
}

fn claimable(d: &PlanDesktop) -> bool {
    d.state == DesktopState::Ready && !d.claimed
}

/// The claimable count a rollout must keep: what the pool has now, or what its desired size
/// leaves unclaimed when it has more (a surge's new desktops are not owed), minus
/// `max_unavailable`.
pub fn claimable_floor(desktops: &[PlanDesktop], desired: u32, max_unavailable: u32) -> u32 {
    let counted: Vec<&PlanDesktop> = desktops
        .iter()
        .filter(|d| d.state.counts_toward_size())
        .collect();
    let claimed = counted.iter().filter(|d| d.claimed).count() as u32;
    let claimable = counted.iter().filter(|d| claimable(d)).count() as u32;
    claimable
        .min(desired.saturating_sub(claimed))
        .saturating_sub(max_unavailable)
}

/// The plan of one pass: [`plan_rollout`] while the pool's rollout is `rolling` (`rollout` is
/// Some) and a counted desktop is outdated, else [`plan`].
pub fn plan_with_rollout(input: &PlanInput<'_>, rollout: Option<RolloutLimits>) -> Plan {
    match rollout {
        Some(limits)
            if input
                .desktops
                .iter()
                .any(|d| d.outdated && d.state.counts_toward_size()) =>
        {
            plan_rollout(input, desired(input), limits)
        }
        _ => plan(input),
    }
}

/// The plan of a pool that is rolling to a new image, toward `desired` desktops.
///
/// - Failed desktops are removed (when removal is allowed), as always.
/// - New desktops (cloned from the pool's image) are made until every desktop that is not a
///   claimed outdated one is on the image, never more than `desired + max_surge` counted.
/// - Unclaimed outdated desktops (and, when the desired size shrank, surplus new ones) are
///   removed, those not yet ready first, while the pool keeps `desired - max_unavailable`
///   desktops and [`claimable_floor`] claimable ones. Claimed desktops are never removed.
pub fn plan_rollout(input: &PlanInput<'_>, desired: u32, limits: RolloutLimits) -> Plan {
    let mut out = Plan::default();
    let counted: Vec<&PlanDesktop> = input
        .desktops
        .iter()
        .filter(|d| d.state.counts_toward_size())
        .collect();
    let total = counted.len() as u32;
    let current = counted.iter().filter(|d| !d.outdated).count() as u32;
    let claimed_outdated = counted.iter().filter(|d| d.outdated && d.claimed).count() as u32;
    let wanted_current = desired.saturating_sub(claimed_outdated);

    if input.may_delete {
        out.delete.extend(
            input
                .desktops
                .iter()
                .filter(|d| d.state == DesktopState::Failed)
                .map(|d| d.id),
        );
        let floor = claimable_floor(input.desktops, desired, limits.max_unavailable);
        let size_floor = desired.saturating_sub(limits.max_unavailable);
        let mut claimable_left = counted.iter().filter(|d| claimable(d)).count() as u32;
        let mut left = total;
        // Surplus new desktops first (the desired size shrank), then outdated ones.
        let mut surplus_current = current.saturating_sub(wanted_current);
        let mut victims: Vec<&PlanDesktop> =
            counted.iter().copied().filter(|d| !d.claimed).collect();
        victims.sort_by_key(|d| (!d.outdated, removal_rank(d)));
        let (outdated, fresh): (Vec<&PlanDesktop>, Vec<&PlanDesktop>) =
            victims.into_iter().partition(|d| d.outdated);
        for d in fresh.into_iter().chain(outdated) {
            if left <= size_floor {
                break;
            }
            if !d.outdated {
                if surplus_current == 0 {
                    continue;
                }
                surplus_current -= 1;
            }
            if claimable(d) {
                if claimable_left <= floor {
                    continue;
                }
                claimable_left -= 1;
            }
            left -= 1;
            out.delete.push(d.id);
        }
    }

    if input.may_create {
        let ceiling = desired.saturating_add(limits.max_surge);
        let in_flight = input
            .desktops
            .iter()
            .filter(|d| d.state.occupies_clone_slot())
            .count() as u32;
        let slots = input
            .max_concurrent
            .saturating_sub(in_flight)
            .min(input.global_slots);
        // Desktops removed by this plan no longer count: their replacements start at once.
        let removed = out
            .delete
            .iter()
            .filter(|id| counted.iter().any(|d| d.id == **id))
            .count() as u32;
        let removed_current = out
            .delete
            .iter()
            .filter(|id| counted.iter().any(|d| d.id == **id && !d.outdated))
            .count() as u32;
        let wanted = wanted_current
            .saturating_sub(current - removed_current)
            .min(ceiling.saturating_sub(total - removed))
            .min(slots);
        let used: BTreeSet<u32> = input.desktops.iter().map(|d| d.index).collect();
        out.create = (1..=input.max_index)
            .filter(|i| !used.contains(i))
            .take(wanted as usize)
            .collect();
    }
    out
}

/// Whether a claimed outdated desktop is to be released by force now: only with
/// `logoff_policy: "force"`, once `force_after_secs` have passed since the later of the
/// rollout's start and the claim.
pub fn force_release_due(
    policy: LogoffPolicy,
    force_after_secs: u32,
    secs_since_rollout_start: i64,
    secs_since_claim: i64,
) -> bool {
    policy == LogoffPolicy::Force
        && secs_since_rollout_start.min(secs_since_claim) >= i64::from(force_after_secs)
}

/// What a pass saw of a pool's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutSeen<'a> {
    /// The rollout's state as stored.
    pub state: RolloutState,
    /// Counted desktops (provisioning or ready) on another image than the pool's.
    pub outdated: u32,
    /// The fault of a failed clone from the pool's image, if the pass saw one.
    pub new_image_failure: Option<&'a str>,
    /// The pool's `stop_on_error`.
    pub stop_on_error: bool,
}

/// A change of a rollout's state, with the message its event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutTransition {
    /// `rolling` -> `stopped`: a clone from the new image failed.
    Stop {
        /// The clone's fault.
        fault: String,
    },
    /// `rolling` -> `done`: no outdated desktop is left.
    Finish,
}

/// The transition a pass makes, if any: a rolling rollout stops at the first failed clone
/// from the new image (with `stop_on_error`) and finishes once nothing is outdated.
pub fn rollout_transition(seen: &RolloutSeen<'_>) -> Option<RolloutTransition> {
    if seen.state != RolloutState::Rolling {
        return None;
    }
    if let Some(fault) = seen.new_image_failure.filter(|_| seen.stop_on_error) {
        return Some(RolloutTransition::Stop {
            fault: fault.to_owned(),
        });
    }
    (seen.outdated == 0).then_some(RolloutTransition::Finish)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn desk(index: u32, state: DesktopState, claimed: bool, outdated: bool) -> PlanDesktop {
        PlanDesktop {
            id: Uuid::from_u128(index as u128),
            index,
            state,
            powered_on: state == DesktopState::Ready,
            claimed,
            outdated,
            destroy_given_up: false,
        }
    }

    fn input(desktops: &[PlanDesktop]) -> PlanInput<'_> {
        PlanInput {
            target: 10,
            min_spare: 0,
            max_size: 1000,
            may_create: true,
            may_delete: true,
            max_concurrent: 8,
            queue_ahead: 0,
            global_slots: 20,
            max_index: 1000,
            desktops,
        }
    }

    /// One pass of a rolling pool toward `target` with these limits.
    fn roll(target: u32, surge: u32, unavailable: u32, conc: u32, ds: &[PlanDesktop]) -> Plan {
        let limits = RolloutLimits {
            max_surge: surge,
            max_unavailable: unavailable,
        };
        plan_with_rollout(
            &PlanInput {
                target,
                max_concurrent: conc,
                ..input(ds)
            },
            Some(limits),
        )
    }

    /// Ten ready desktops on the old image, the first two claimed.
    fn ten_old() -> Vec<PlanDesktop> {
        (1..=10)
            .map(|i| desk(i, DesktopState::Ready, i <= 2, true))
            .collect()
    }

    #[test]
    fn clones_new_first_and_removes_nothing_before_replacements_are_ready() {
        let ds = ten_old();
        let p = roll(10, 8, 0, 8, &ds);
        assert_eq!(p.create, (11..=18).collect::<Vec<_>>());
        assert!(p.delete.is_empty());
    }

    #[test]
    fn removes_one_outdated_per_ready_replacement() {
        let mut ds = ten_old();
        ds.extend((11..=13).map(|i| desk(i, DesktopState::Ready, false, false)));
        ds.extend((14..=18).map(|i| desk(i, DesktopState::Cloning, false, false)));
        let p = roll(10, 8, 0, 8, &ds);
        assert!(p.create.is_empty());
        // Three ready replacements: three unclaimed outdated desktops go, highest index first.
        let gone: Vec<u32> = p.delete.iter().map(|id| id.as_u128() as u32).collect();
        assert_eq!(gone, vec![10, 9, 8]);
    }

    #[test]
    fn claimed_outdated_desktops_wait_and_are_not_replaced_ahead() {
        let mut ds: Vec<PlanDesktop> = (1..=2)
            .map(|i| desk(i, DesktopState::Ready, true, true))
            .collect();
        ds.extend((11..=18).map(|i| desk(i, DesktopState::Ready, false, false)));
        let p = roll(10, 8, 0, 8, &ds);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn max_unavailable_lets_old_go_before_new_is_ready() {
        let ds: Vec<PlanDesktop> = (1..=4)
            .map(|i| desk(i, DesktopState::Ready, false, true))
            .collect();
        let p = roll(4, 1, 1, 8, &ds);
        // One old one goes now; its replacement and the surge of one start at once.
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.create, vec![5, 6]);
    }

    #[test]
    fn transitions() {
        let seen = RolloutSeen {
            state: RolloutState::Rolling,
            outdated: 3,
            new_image_failure: Some("InvalidDatastore"),
            stop_on_error: true,
        };
        assert_eq!(
            rollout_transition(&seen),
            Some(RolloutTransition::Stop {
                fault: "InvalidDatastore".into()
            })
        );
        let go_on = RolloutSeen {
            stop_on_error: false,
            ..seen
        };
        assert_eq!(rollout_transition(&go_on), None);
        let over = RolloutSeen {
            outdated: 0,
            new_image_failure: None,
            ..seen
        };
        assert_eq!(rollout_transition(&over), Some(RolloutTransition::Finish));
        let stopped = RolloutSeen {
            state: RolloutState::Stopped,
            ..over
        };
        assert_eq!(rollout_transition(&stopped), None);
    }

    #[test]
    fn force_after_the_grace_only() {
        assert!(!force_release_due(LogoffPolicy::Wait, 0, 100, 100));
        assert!(!force_release_due(LogoffPolicy::Force, 60, 59, 1000));
        assert!(!force_release_due(LogoffPolicy::Force, 60, 1000, 59));
        assert!(force_release_due(LogoffPolicy::Force, 60, 60, 61));
    }

    fn arb_state() -> impl Strategy<Value = DesktopState> {
        prop::sample::select(DesktopState::ALL.to_vec())
    }

    fn arb_pool() -> impl Strategy<Value = Vec<PlanDesktop>> {
        prop::collection::btree_map(
            1u32..60,
            (arb_state(), any::<bool>(), prop::bool::weighted(0.7)),
            0..30,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(i, (s, claimed, outdated))| {
                    desk(i, s, claimed && s == DesktopState::Ready, outdated)
                })
                .collect()
        })
    }

    fn count(ds: &[PlanDesktop], f: impl Fn(&PlanDesktop) -> bool) -> u32 {
        ds.iter().filter(|d| f(d)).count() as u32
    }

    proptest! {
        #[test]
        fn one_pass_keeps_people_and_claimable_desktops(
            ds in arb_pool(), target in 0u32..30, surge in 1u32..10, unavailable in 0u32..3,
            conc in 1u32..10,
        ) {
            let p = roll(target, surge, unavailable, conc, &ds);
            let floor = claimable_floor(&ds, target, unavailable);
            for id in &p.delete {
                let d = ds.iter().find(|d| d.id == *id).unwrap();
                prop_assert!(!d.claimed, "a claimed desktop was removed");
            }
            let after: Vec<PlanDesktop> = ds.iter().filter(|d| !p.delete.contains(&d.id)).cloned().collect();
            let claimable_after = count(&after, claimable);
            let claimable_before = count(&ds, claimable);
            prop_assert!(claimable_after >= floor.min(claimable_before), "claimable {claimable_after} below floor {floor}");
            let counted = count(&after, |d| d.state.counts_toward_size());
            if !p.create.is_empty() {
                prop_assert!(counted + p.create.len() as u32 <= target.max(count(&ds, |d| d.claimed)) + surge);
                let in_flight = count(&ds, |d| d.state.occupies_clone_slot());
                prop_assert!(in_flight + p.create.len() as u32 <= conc);
            }
            let used: BTreeSet<u32> = ds.iter().map(|d| d.index).collect();
            prop_assert!(p.create.iter().all(|i| !used.contains(i)));
        }

        #[test]
        fn rolls_every_desktop_to_the_new_image(
            n in 0u32..25, claimed in 0u32..5, surge in 1u32..10, unavailable in 0u32..3,
            conc in 1u32..10, release_after in 1usize..20,
        ) {
            // A settled pool of `n` ready desktops on the old image, the first `claimed` of them
            // claimed; it rolls to the new image. Each round provisioning finishes and deletions
            // are done; the claimed ones are released (kept, so still outdated) after a while.
            let claimed = claimed.min(n);
            let mut world: Vec<PlanDesktop> =
                (1..=n).map(|i| desk(i, DesktopState::Ready, i <= claimed, true)).collect();
            for round in 0..300 {
                if round == release_after {
                    for d in &mut world { d.claimed = false; }
                }
                let floor = claimable_floor(&world, n, unavailable);
                let p = roll(n, surge, unavailable, conc, &world);
                // Settled only once nothing is in flight and nothing is left to do.
                let settled = world.iter().all(|d| !d.outdated && d.state == DesktopState::Ready);
                if settled && p.is_empty() && round > release_after {
                    break;
                }
                world.retain(|d| !p.delete.contains(&d.id) && d.state != DesktopState::Deleting);
                prop_assert!(count(&world, claimable) >= floor, "round {round}: below the floor");
                for d in &mut world {
                    if d.state.is_provisioning() {
                        d.state = DesktopState::Ready;
                        d.powered_on = true;
                    }
                }
                world.extend(p.create.iter().map(|i| desk(*i, DesktopState::Pending, false, false)));
            }
            prop_assert!(world.iter().all(|d| !d.outdated), "outdated desktops left");
            prop_assert_eq!(world.len() as u32, n);
        }
    }
}
