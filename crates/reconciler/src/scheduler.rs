//! When each pool is looked at next. Every wake-up goes through here: a change (`wake`), a
//! timer (`apply` of an [`Action`]: one timer per pool, the earliest wins), a freed
//! provisioning slot (`slot_freed` for pools that `wait_for_slot`), and the backoff after a
//! failure (`back_off`, used only by `policy::error_policy`). The controller's dispatcher
//! takes the due pools (`take_due`), runs one pass per pool at a time and reports its end
//! (`finished`); no task sleeps on a pool's behalf.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deskpool_vsphere::{VmEvent, VmInfo};
use tokio::sync::Notify;

use crate::vcenter::Vcenter;

/// What a pass (or the error policy) asks for: when to look at the pool again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Only when something changes (a notification, a worker's end, vCenter's report).
    AwaitChange,
    /// After this long at the latest (earlier if something changes).
    RequeueAfter(Duration),
}

/// An inventory sweep: when its listing started (database clock) and the VMs found.
pub(crate) type Sweep = (chrono::DateTime<chrono::Utc>, Vec<VmInfo>);

/// What vCenter reported for a pool since its last pass, handed to the next one.
#[derive(Debug, Default)]
pub(crate) struct Inputs {
    /// The last inventory sweep's VMs carrying this pool's marker.
    pub(crate) sweep: Option<Sweep>,
    /// Changes vCenter reported for this pool's VMs.
    pub(crate) vm_events: Vec<VmEvent>,
}

#[derive(Debug, Default)]
struct Entry {
    /// A pass is asked for now.
    due: bool,
    /// The pool's one timer: a pass is due then at the latest.
    timer: Option<Instant>,
    /// A pass runs now (a wake-up meanwhile runs another after it).
    running: bool,
    inputs: Inputs,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

#[derive(Debug, Default)]
struct State {
    pools: HashMap<String, Entry>,
    backoff: HashMap<String, Backoff>,
    /// Pools that wanted to clone but found their vCenter's provisioning slots all taken:
    /// woken when a slot frees, since no worker of their own may be left to wake them.
    slot_waiters: HashSet<String>,
}

/// Wake-ups, timers, slot waiters and backoff of one term of leadership.
#[derive(Debug)]
pub(crate) struct Scheduler {
    state: Mutex<State>,
    /// Tells the dispatcher to look at `take_due` again.
    changed: Notify,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl Scheduler {
    pub(crate) fn new(backoff_base: Duration, backoff_max: Duration) -> Self {
        Self {
            state: Mutex::default(),
            changed: Notify::new(),
            backoff_base,
            backoff_max,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a pass for `pool` soon (coalesced with any pass already asked for).
    pub(crate) fn wake(&self, pool: &str) {
        self.state().pools.entry(pool.to_owned()).or_default().due = true;
        self.changed.notify_one();
    }

    /// Applies what a pass or the error policy asked for. A requeue keeps the pool's one
    /// timer at the earliest time asked for; it never delays a pass already due.
    pub(crate) fn apply(&self, pool: &str, action: Action) {
        let Action::RequeueAfter(delay) = action else {
            return;
        };
        let at = Instant::now() + delay;
        let mut state = self.state();
        let entry = state.pools.entry(pool.to_owned()).or_default();
        if entry.timer.is_none_or(|t| at < t) {
            entry.timer = Some(at);
            drop(state);
            self.changed.notify_one();
        }
    }

    /// The pools whose pass is due and not running (now marked running, with their inputs),
    /// and when the next timer fires.
    pub(crate) fn take_due(&self) -> (Vec<(String, Inputs)>, Option<Instant>) {
        let now = Instant::now();
        let mut state = self.state();
        let mut ready = Vec::new();
        let mut next: Option<Instant> = None;
        for (pool, e) in state.pools.iter_mut() {
            if let Some(t) = e.timer {
                if t <= now {
                    e.timer = None;
                    e.due = true;
                } else {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
            if e.due && !e.running {
                e.due = false;
                e.running = true;
                ready.push((pool.clone(), std::mem::take(&mut e.inputs)));
            }
        }
        (ready, next)
    }

    /// Resolves when `take_due` may have something new.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await
    }

    /// A pass of `pool` ended; a wake-up that came meanwhile makes the next one due.
    pub(crate) fn finished(&self, pool: &str) {
        let mut state = self.state();
        if let Some(e) = state.pools.get_mut(pool) {
            e.running = false;
            if e.due {
                drop(state);
                self.changed.notify_one();
            }
        }
    }

    /// The pool is gone: drops its timer, inputs and backoff. A wake-up that came after its
    /// pass started is kept (the pool may have been created again under the same name).
    pub(crate) fn forget(&self, pool: &str) {
        let mut state = self.state();
        state.backoff.remove(pool);
        state.slot_waiters.remove(pool);
        if state.pools.get(pool).is_some_and(|e| !e.due) {
            state.pools.remove(pool);
        }
    }

    /// Hands VM changes to the pool's next pass, which runs soon.
    pub(crate) fn hand_vm_events(&self, pool: &str, events: Vec<VmEvent>) {
        self.state()
            .pools
            .entry(pool.to_owned())
            .or_default()
            .inputs
            .vm_events
            .extend(events);
        self.wake(pool);
    }

    /// Keeps VM changes (older than any queued since) for the pool's next pass, without waking it.
    pub(crate) fn defer_vm_events(&self, pool: &str, events: Vec<VmEvent>) {
        if events.is_empty() {
            return;
        }
        // Before anything that arrived meanwhile: a later change of the same VM wins.
        let mut state = self.state();
        let queued = &mut state.pools.entry(pool.to_owned()).or_default().inputs;
        queued.vm_events.splice(0..0, events);
    }

    /// Hands an inventory sweep to the pool's next pass, which runs soon.
    pub(crate) fn hand_sweep(&self, pool: &str, sweep: Sweep) {
        self.state()
            .pools
            .entry(pool.to_owned())
            .or_default()
            .inputs
            .sweep = Some(sweep);
        self.wake(pool);
    }

    /// When the pool may provision again after failures, if it must still wait.
    pub(crate) fn backoff_until(&self, pool: &str) -> Option<Instant> {
        self.state()
            .backoff
            .get(pool)
            .map(|b| b.until)
            .filter(|u| *u > Instant::now())
    }

    /// Counts a failure and returns the delay before the next attempt: exponential with
    /// jitter, capped. Only the error policy calls this.
    pub(crate) fn back_off(&self, pool: &str) -> Duration {
        let mut state = self.state();
        let b = state.backoff.entry(pool.to_owned()).or_insert(Backoff {
            failures: 0,
            until: Instant::now(),
        });
        b.failures = b.failures.saturating_add(1);
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << (b.failures - 1).min(16))
            .min(self.backoff_max);
        // Full jitter in [exp/2, exp] keeps retries of many pools apart.
        let delay = exp.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        b.until = Instant::now() + delay;
        delay
    }

    /// vCenter works again for this pool: its next attempt need not wait.
    pub(crate) fn clear_backoff(&self, pool: &str) {
        self.state().backoff.remove(pool);
    }

    /// Remembers that `pool` waits for a provisioning slot of its vCenter; if one freed
    /// meanwhile, wakes it at once (a slot freed between reading the free count and
    /// registering would otherwise be missed).
    pub(crate) fn wait_for_slot(&self, pool: &str, vc: &Vcenter) {
        self.state().slot_waiters.insert(pool.to_owned());
        if vc.permits.available_permits() > 0 {
            self.slot_freed();
        }
    }

    /// A provisioning slot was freed: every pool waiting for one gets a pass.
    pub(crate) fn slot_freed(&self) {
        let waiting: Vec<String> = self.state().slot_waiters.drain().collect();
        for pool in waiting {
            self.wake(&pool);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_timer_per_pool_the_earliest_wins() {
        let s = Scheduler::new(Duration::from_secs(1), Duration::from_secs(60));
        s.apply("lab", Action::RequeueAfter(Duration::from_secs(60)));
        s.apply("lab", Action::RequeueAfter(Duration::from_secs(5)));
        s.apply("lab", Action::RequeueAfter(Duration::from_secs(30)));
        let (ready, next) = s.take_due();
        assert!(ready.is_empty());
        let next = next.expect("a timer");
        assert!(next <= Instant::now() + Duration::from_secs(5), "{next:?}");
        s.apply("lab", Action::RequeueAfter(Duration::ZERO));
        let (ready, next) = s.take_due();
        assert_eq!(ready.len(), 1);
        assert_eq!(next, None, "the fired timer was the pool's only one");
    }

    #[test]
    fn a_wake_during_a_pass_runs_one_more_after_it() {
        let s = Scheduler::new(Duration::from_secs(1), Duration::from_secs(60));
        s.wake("lab");
        assert_eq!(s.take_due().0.len(), 1);
        s.wake("lab");
        s.wake("lab");
        assert!(s.take_due().0.is_empty(), "one pass per pool at a time");
        s.finished("lab");
        assert_eq!(
            s.take_due().0.len(),
            1,
            "the wake-ups coalesce into one pass"
        );
        s.finished("lab");
        assert!(s.take_due().0.is_empty());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = Scheduler::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<Duration> = (0..6).map(|_| s.back_off("lab")).collect();
        assert!(delays[0] <= Duration::from_millis(100), "{delays:?}");
        assert!(delays[2] >= Duration::from_millis(200), "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_millis(400)),
            "{delays:?}"
        );
        assert!(s.backoff_until("lab").is_some());
        s.clear_backoff("lab");
        assert!(s.backoff_until("lab").is_none());
    }
}
