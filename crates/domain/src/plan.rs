//! The pure planning function: given a pool's wishes and what exists, which desktops to create
//! and which to remove. The reconciler only executes the plan.

use std::collections::BTreeSet;

use uuid::Uuid;

use crate::DesktopState;

/// What the planner needs to know of one desktop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanDesktop {
    /// Database id.
    pub id: Uuid,
    /// The index in the naming pattern.
    pub index: u32,
    /// Lifecycle state.
    pub state: DesktopState,
    /// Last known power state (false when unknown).
    pub powered_on: bool,
    /// Someone holds the desktop (a claim): never removed by sizing or a rollout.
    pub claimed: bool,
    /// deskpool gave up destroying its VM (`failed`, kept until an admin deletes it again).
    pub destroy_given_up: bool,
    /// The desktop is on another image (snapshot moref) than the pool's.
    pub outdated: bool,
}

/// The inputs of one planning pass for one pool.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The spec's target size (0 when the pool is being deleted).
    pub target: u32,
    /// Ready, unclaimed desktops to keep on top of the claimed ones (0 when deleting).
    pub min_spare: u32,
    /// The pool's max size: spares never grow it past this.
    pub max_size: u32,
    /// New desktops may be made (pool enabled, not in error, not stopped, not deleting).
    pub may_create: bool,
    /// Desktops may be removed (false only while the pool is paused).
    pub may_delete: bool,
    /// The pool's own bound on clones in flight (pending or cloning desktops).
    pub max_concurrent: u32,
    /// More `pending` desktops to keep committed ahead of `max_concurrent` (0: none), so a
    /// freed clone slot is refilled at once by a desktop already recorded, without a pass
    /// (its worker waits at the pool's clone gate, which bounds the clones actually running).
    pub queue_ahead: u32,
    /// Free provisioning slots left under the vCenter-wide bound.
    pub global_slots: u32,
    /// Highest index the naming pattern may use.
    pub max_index: u32,
    /// Every desktop row of the pool.
    pub desktops: &'a [PlanDesktop],
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indexes of new desktops to create (lowest free first).
    pub create: Vec<u32>,
    /// Desktops to move to `deleting`, in the order chosen.
    pub delete: Vec<Uuid>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.delete.is_empty()
    }
}

/// Removed whatever the target: a failed desktop, unless deskpool gave up destroying its VM
/// (then it stays, holding its index, until an admin deletes it again).
fn removed_whatever_the_target(d: &PlanDesktop) -> bool {
    d.state == DesktopState::Failed && !d.destroy_given_up && !d.claimed
}

/// Removal preference: lower goes first. Failed desktops, then those still provisioning,
/// then powered-off ready ones, then the rest; within a rank the highest index first.
pub(crate) fn removal_rank(d: &PlanDesktop) -> (u8, std::cmp::Reverse<u32>) {
    let rank = match d.state {
        DesktopState::Failed => 0,
        s if s.is_provisioning() => 1,
        DesktopState::Ready if !d.powered_on => 2,
        _ => 3,
    };
    (rank, std::cmp::Reverse(d.index))
}

/// The pool's desired size: `min(max_size, max(target, claimed + min_spare))`. A pool with
/// target 0 and `min_spare` 3 keeps three desktops waiting and grows as they are claimed.
pub fn desired_size(target: u32, min_spare: u32, max_size: u32, claimed: u32) -> u32 {
    target.max(claimed.saturating_add(min_spare)).min(max_size)
}

/// [`desired_size`] for a planning pass: claimed desktops are those that count toward size.
pub(crate) fn desired(input: &PlanInput<'_>) -> u32 {
    let claimed = input
        .desktops
        .iter()
        .filter(|d| d.claimed && d.state.counts_toward_size())
        .count() as u32;
    desired_size(input.target, input.min_spare, input.max_size, claimed)
}

/// How many new `pending` desktops the pool may record now, with `in_flight` pending or
/// cloning: up to its clone bound (and the vCenter's free slots), and when its own bound is
/// what holds it back, up to `queue_ahead` more committed ahead (pending + cloning <=
/// max_concurrent + queue_ahead). When the vCenter-wide bound holds it back, nothing is
/// queued: the pool waits for a slot instead.
fn new_pending(input: &PlanInput<'_>, in_flight: u32) -> u32 {
    let now = input
        .max_concurrent
        .saturating_sub(in_flight)
        .min(input.global_slots);
    if input.queue_ahead == 0 || in_flight + now < input.max_concurrent {
        return now;
    }
    (input.max_concurrent + input.queue_ahead).saturating_sub(in_flight)
}

/// Decides which desktops to create and which to delete so the pool moves toward its desired
/// size ([`desired_size`]) without exceeding any concurrency bound. A claimed desktop is never
/// chosen for removal: a pool below its claimed count shrinks as they are released.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut out = Plan::default();
    let target = desired(input);
    let counted = input
        .desktops
        .iter()
        .filter(|d| d.state.counts_toward_size())
        .count() as u32;

    if input.may_delete {
        // Failed desktops are never kept: their replacement is planned below.
        out.delete.extend(
            input
                .desktops
                .iter()
                .filter(|d| removed_whatever_the_target(d))
                .map(|d| d.id),
        );
        if counted > target {
            let mut victims: Vec<&PlanDesktop> = input
                .desktops
                .iter()
                .filter(|d| d.state.counts_toward_size() && !d.claimed)
                .collect();
            victims.sort_by_key(|d| removal_rank(d));
            out.delete.extend(
                victims
                    .into_iter()
                    .take((counted - target) as usize)
                    .map(|d| d.id),
            );
        }
    }

    if input.may_create && counted < target {
        let in_flight = input
            .desktops
            .iter()
            .filter(|d| d.state.occupies_clone_slot())
            .count() as u32;
        let wanted = (target - counted).min(new_pending(input, in_flight));
        let used: BTreeSet<u32> = input.desktops.iter().map(|d| d.index).collect();
        out.create = (1..=input.max_index)
            .filter(|i| !used.contains(i))
            .take(wanted as usize)
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn view(index: u32, state: DesktopState, powered_on: bool) -> PlanDesktop {
        PlanDesktop {
            id: Uuid::from_u128(index as u128),
            index,
            state,
            powered_on,
            claimed: false,
            destroy_given_up: false,
            outdated: false,
        }
    }

    fn claimed(mut d: PlanDesktop) -> PlanDesktop {
        d.claimed = true;
        d
    }

    fn input(target: u32, desktops: &[PlanDesktop]) -> PlanInput<'_> {
        PlanInput {
            target,
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

    #[test]
    fn fills_from_empty_up_to_the_bound() {
        let p = plan(&input(20, &[]));
        assert_eq!(p.create, (1..=8).collect::<Vec<_>>());
        assert!(p.delete.is_empty());
    }

    #[test]
    fn reuses_lowest_free_index() {
        let ds = [
            view(1, DesktopState::Ready, true),
            view(3, DesktopState::Ready, true),
        ];
        assert_eq!(plan(&input(4, &ds)).create, vec![2, 4]);
    }

    #[test]
    fn scale_down_order() {
        let ds = [
            view(1, DesktopState::Ready, true),
            view(2, DesktopState::Ready, false),
            view(3, DesktopState::Cloning, false),
            view(4, DesktopState::Failed, false),
            view(5, DesktopState::Ready, true),
            view(6, DesktopState::Ready, true),
        ];
        let p = plan(&input(2, &ds));
        let order: Vec<u32> = p.delete.iter().map(|id| id.as_u128() as u32).collect();
        // failed first, then not ready, then powered off, then highest index.
        assert_eq!(order, vec![4, 3, 2, 6]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn paused_pool_does_nothing() {
        let ds = [view(1, DesktopState::Failed, false)];
        let mut i = input(5, &ds);
        i.may_create = false;
        i.may_delete = false;
        assert!(plan(&i).is_empty());
    }

    #[test]
    fn a_desktop_given_up_on_is_kept_and_keeps_its_index() {
        let given_up = PlanDesktop {
            destroy_given_up: true,
            ..view(2, DesktopState::Failed, true)
        };
        let ds = [view(1, DesktopState::Ready, true), given_up];
        let p = plan(&input(3, &ds));
        assert!(p.delete.is_empty(), "{p:?}");
        assert_eq!(p.create, vec![3, 4], "replaced under another index");
        assert!(plan(&input(0, &ds)).delete == vec![Uuid::from_u128(1)]);
    }

    #[test]
    fn global_slots_bound_creation() {
        let mut i = input(10, &[]);
        i.global_slots = 3;
        assert_eq!(plan(&i).create.len(), 3);
    }

    #[test]
    fn shrink_to_zero_keeps_claimed_desktops() {
        let ds = [
            claimed(view(1, DesktopState::Ready, true)),
            view(2, DesktopState::Ready, true),
            claimed(view(3, DesktopState::Ready, true)),
            view(4, DesktopState::Cloning, false),
        ];
        let p = plan(&input(0, &ds));
        let mut gone: Vec<u32> = p.delete.iter().map(|id| id.as_u128() as u32).collect();
        gone.sort();
        assert_eq!(gone, vec![2, 4]);
    }

    #[test]
    fn spares_grow_the_pool_as_desktops_are_claimed() {
        let ds = [
            claimed(view(1, DesktopState::Ready, true)),
            claimed(view(2, DesktopState::Ready, true)),
            view(3, DesktopState::Ready, true),
        ];
        let mut i = input(0, &ds);
        i.min_spare = 3;
        // desired = max(0, 2 + 3) = 5: two more.
        assert_eq!(plan(&i).create, vec![4, 5]);
        i.max_size = 4;
        assert_eq!(plan(&i).create, vec![4]);
    }

    #[test]
    fn desired_size_formula() {
        assert_eq!(desired_size(0, 3, 10, 0), 3);
        assert_eq!(desired_size(5, 3, 10, 1), 5);
        assert_eq!(desired_size(5, 3, 10, 4), 7);
        assert_eq!(desired_size(5, 3, 6, 4), 6);
        assert_eq!(desired_size(0, u32::MAX, 10, u32::MAX), 10);
    }

    #[test]
    fn queues_up_to_the_bound_again_ahead_of_it() {
        let mut i = input(100, &[]);
        i.queue_ahead = 8;
        assert_eq!(plan(&i).create, (1..=16).collect::<Vec<_>>());
        // 8 cloning, 7 pending: one place in the queue to fill.
        let ds: Vec<_> = (1..=15)
            .map(|n| {
                let s = if n <= 8 {
                    DesktopState::Cloning
                } else {
                    DesktopState::Pending
                };
                view(n, s, false)
            })
            .collect();
        let mut i = input(100, &ds);
        i.queue_ahead = 8;
        assert_eq!(plan(&i).create, vec![16]);
    }

    #[test]
    fn the_queue_never_grows_the_pool_past_its_target() {
        let mut i = input(10, &[]);
        i.queue_ahead = 8;
        assert_eq!(plan(&i).create.len(), 10);
    }

    #[test]
    fn no_queue_while_the_vcenter_bound_holds_the_pool_back() {
        let mut i = input(100, &[]);
        i.queue_ahead = 8;
        i.global_slots = 3;
        assert_eq!(plan(&i).create.len(), 3);
        // With its own clones at the bound, the queue does not need vCenter slots: its
        // desktops wait for the pool's own places.
        let ds: Vec<_> = (1..=8)
            .map(|n| view(n, DesktopState::Cloning, false))
            .collect();
        let mut i = input(100, &ds);
        i.queue_ahead = 8;
        i.global_slots = 0;
        assert_eq!(plan(&i).create.len(), 8);
    }

    fn arb_state() -> impl Strategy<Value = DesktopState> {
        prop::sample::select(DesktopState::ALL.to_vec())
    }

    fn arb_desktops() -> impl Strategy<Value = Vec<PlanDesktop>> {
        prop::collection::btree_map(1u32..60, (arb_state(), any::<bool>(), any::<bool>()), 0..40)
            .prop_map(|m| {
                m.into_iter()
                    .map(|(i, (s, on, c))| PlanDesktop {
                        // A claim is only ever made on a ready desktop.
                        claimed: c && s == DesktopState::Ready,
                        ..view(i, s, on)
                    })
                    .collect()
            })
    }

    fn unclaimed(ds: Vec<PlanDesktop>) -> Vec<PlanDesktop> {
        ds.into_iter()
            .map(|d| PlanDesktop {
                claimed: false,
                ..d
            })
            .collect()
    }

    proptest! {
        #[test]
        fn never_exceeds_bounds_and_indexes_stay_unique(
            ds in arb_desktops(), target in 0u32..50, conc in 1u32..10, global in 0u32..20,
        ) {
            let ds = unclaimed(ds);
            let mut i = input(target, &ds);
            i.max_concurrent = conc;
            i.global_slots = global;
            let p = plan(&i);
            let in_flight = ds.iter().filter(|d| d.state.occupies_clone_slot()).count() as u32;
            prop_assert!(p.create.is_empty() || in_flight + p.create.len() as u32 <= conc);
            prop_assert!(p.create.len() as u32 <= global);
            let used: BTreeSet<u32> = ds.iter().map(|d| d.index).collect();
            let new: BTreeSet<u32> = p.create.iter().copied().collect();
            prop_assert_eq!(new.len(), p.create.len());
            prop_assert!(new.is_disjoint(&used));
            // never both grow and shrink the counted set
            let counted = ds.iter().filter(|d| d.state.counts_toward_size()).count() as u32;
            let shrink = p.delete.iter().filter(|id| ds.iter().any(|d| d.id == **id && d.state.counts_toward_size())).count() as u32;
            prop_assert!(p.create.is_empty() || shrink == 0);
            prop_assert!(counted + (p.create.len() as u32) - shrink >= target.min(counted) );
            // a powered-on ready desktop is only removed when no spare one is left
            for id in &p.delete {
                let d = ds.iter().find(|d| d.id == *id).unwrap();
                if d.state == DesktopState::Ready && d.powered_on {
                    let spared = ds.iter().filter(|o| !p.delete.contains(&o.id) && o.state.counts_toward_size() && !(o.state == DesktopState::Ready && o.powered_on)).count();
                    prop_assert_eq!(spared, 0);
                }
            }
        }

        #[test]
        fn the_queue_ahead_stays_within_twice_the_bound_and_the_target(
            ds in arb_desktops(), target in 0u32..50, conc in 1u32..10, global in 0u32..20,
        ) {
            let mut i = input(target, &ds);
            i.max_concurrent = conc;
            i.queue_ahead = conc;
            i.global_slots = global;
            let p = plan(&i);
            let in_flight = ds.iter().filter(|d| d.state.occupies_clone_slot()).count() as u32;
            prop_assert!(p.create.is_empty() || in_flight + p.create.len() as u32 <= 2 * conc);
            let counted = ds.iter().filter(|d| d.state.counts_toward_size()).count() as u32;
            prop_assert!(p.create.is_empty() || counted + p.create.len() as u32 <= target);
            // Past the vCenter's free slots only while the pool's own bound is reached.
            if p.create.len() as u32 > global {
                prop_assert!(in_flight + global >= conc);
            }
            // Without a queue the plan is what it was.
            let mut without = i.clone();
            without.queue_ahead = 0;
            let base = plan(&without);
            prop_assert_eq!(&p.delete, &base.delete);
            prop_assert!(p.create.starts_with(&base.create));
        }

        #[test]
        fn converges_to_target(ds in arb_desktops(), target in 0u32..50, conc in 1u32..10) {
            // Simulate passes: provisioning finishes, deletions finish, until nothing is left to do.
            let mut world = unclaimed(ds);
            for _ in 0..200 {
                let p = plan(&PlanInput { max_concurrent: conc, ..input(target, &world) });
                // Settled only once no work is in flight: a desktop still `deleting` is
                // removed by the step below, as its worker would.
                let settled = world
                    .iter()
                    .all(|d| !d.state.is_provisioning() && d.state != DesktopState::Deleting);
                if p.is_empty() && settled {
                    break;
                }
                world.retain(|d| !p.delete.contains(&d.id) && d.state != DesktopState::Deleting);
                for d in &mut world {
                    if d.state.is_provisioning() {
                        d.state = DesktopState::Ready;
                        d.powered_on = true;
                    }
                }
                world.extend(p.create.iter().map(|i| view(*i, DesktopState::Pending, false)));
            }
            let ready = world.iter().filter(|d| d.state == DesktopState::Ready).count() as u32;
            prop_assert_eq!(ready, target);
            prop_assert_eq!(world.len() as u32, target);
        }

        #[test]
        fn never_removes_a_claimed_desktop(
            ds in arb_desktops(), target in 0u32..50, spare in 0u32..10, max in 1u32..60,
            may_delete in any::<bool>(),
        ) {
            let mut i = input(target, &ds);
            i.min_spare = spare;
            i.max_size = max;
            i.may_delete = may_delete;
            let p = plan(&i);
            for id in &p.delete {
                let d = ds.iter().find(|d| d.id == *id).unwrap();
                prop_assert!(!d.claimed, "claimed desktop {} chosen for removal", d.index);
            }
        }

        #[test]
        fn converges_to_the_desired_size_with_claims(
            ds in arb_desktops(), target in 0u32..30, spare in 0u32..8, max in 1u32..40,
            conc in 1u32..10,
        ) {
            // Claims stay put while the pool settles; the pool ends at the desired size, or
            // at its claimed count when that is higher (claimed desktops are never removed).
            let mut world = ds;
            for _ in 0..200 {
                let p = plan(&PlanInput { max_concurrent: conc, min_spare: spare, max_size: max, ..input(target, &world) });
                let settled = world
                    .iter()
                    .all(|d| !d.state.is_provisioning() && d.state != DesktopState::Deleting);
                if p.is_empty() && settled {
                    break;
                }
                world.retain(|d| !p.delete.contains(&d.id) && d.state != DesktopState::Deleting);
                for d in &mut world {
                    if d.state.is_provisioning() {
                        d.state = DesktopState::Ready;
                        d.powered_on = true;
                    }
                }
                world.extend(p.create.iter().map(|i| view(*i, DesktopState::Pending, false)));
            }
            let claimed = world.iter().filter(|d| d.claimed).count() as u32;
            let want = desired_size(target, spare, max, claimed).max(claimed);
            prop_assert_eq!(world.len() as u32, want);
            let spares = world.iter().filter(|d| !d.claimed && d.state == DesktopState::Ready).count() as u32;
            prop_assert_eq!(spares, want - claimed);
            prop_assert!(spares >= spare.min(max.saturating_sub(claimed)));
        }
    }
}
