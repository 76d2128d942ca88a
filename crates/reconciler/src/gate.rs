//! A pool's clone gate: at most the pool's `max_concurrent_clones` of its `CloneVM_Task`s run
//! at once. The pass keeps more `pending` desktops committed ahead of that bound (see
//! [`deskpool_domain::plan`]); their workers wait here, so a freed place is taken by the next
//! desktop at once, without a pass. A clone already running in vCenter (found after a restart)
//! takes its place without waiting: it counts even if the bound was lowered meanwhile.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Places {
    /// The pool's `max_concurrent_clones`, as its last pass read it.
    limit: u32,
    /// Places taken: clones running or about to be sent.
    taken: u32,
    /// Bumped when a pass asks the waiting workers to read their rows again.
    recheck: u64,
    /// What the pool's last pass allowed: clones from the inventory resolved for this spec
    /// fingerprint (see `inventory::fingerprint`); None while the pool may not clone (paused,
    /// in error, being deleted, backing off, or its inventory unresolved).
    open_for: Option<String>,
}

/// The clone gate of one pool (per term of leadership).
#[derive(Debug, Default)]
pub(crate) struct CloneGate {
    places: Mutex<Places>,
    /// Signalled when a place frees, the limit grows or a recheck is asked for.
    changed: Notify,
}

/// How a worker got through the gate.
#[derive(Debug)]
pub(crate) enum Admission {
    /// A place was free: the pass's view of the desktop is current.
    Now(GatePermit),
    /// The worker waited: its row and pool may have changed meanwhile.
    AfterWait(GatePermit),
    /// A pass changed the pool or its desktops: the worker reads its row again before it
    /// waits on.
    Recheck,
}

/// A taken place; dropping it frees the place for the next waiting desktop.
#[derive(Debug)]
pub(crate) struct GatePermit {
    gate: Arc<CloneGate>,
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        let mut p = self.gate.lock();
        p.taken = p.taken.saturating_sub(1);
        drop(p);
        self.gate.changed.notify_waiters();
    }
}

impl CloneGate {
    fn lock(&self) -> MutexGuard<'_, Places> {
        self.places.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the bound (the pool's `max_concurrent_clones`); a larger one lets waiters in.
    pub(crate) fn set_limit(&self, limit: u32) {
        let mut p = self.lock();
        let grew = limit > p.limit;
        p.limit = limit;
        drop(p);
        if grew {
            self.changed.notify_waiters();
        }
    }

    /// Records what the pool's pass allows (see `Places::open_for`); waiting workers read
    /// their rows again when that changed.
    pub(crate) fn set_open_for(&self, fingerprint: Option<String>) {
        let mut p = self.lock();
        if p.open_for == fingerprint {
            return;
        }
        p.open_for = fingerprint;
        p.recheck += 1;
        drop(p);
        self.changed.notify_waiters();
    }

    /// The pool's last pass allowed clones resolved for `fingerprint`.
    pub(crate) fn is_open_for(&self, fingerprint: &str) -> bool {
        self.lock().open_for.as_deref() == Some(fingerprint)
    }

    /// Wakes every waiting worker to read its row and pool again (some were marked for
    /// deletion, or the pool stopped provisioning).
    pub(crate) fn recheck(&self) {
        self.lock().recheck += 1;
        self.changed.notify_waiters();
    }

    /// A place for a clone that already runs in vCenter: taken at once, even past the bound.
    pub(crate) fn take_running(self: &Arc<Self>) -> GatePermit {
        self.lock().taken += 1;
        GatePermit {
            gate: Arc::clone(self),
        }
    }

    fn try_take(self: &Arc<Self>) -> Option<GatePermit> {
        let mut p = self.lock();
        if p.taken >= p.limit {
            return None;
        }
        p.taken += 1;
        Some(GatePermit {
            gate: Arc::clone(self),
        })
    }

    /// Waits for a free place (or a recheck). Cancel-safe: a place is only taken on return.
    pub(crate) async fn admit(self: &Arc<Self>) -> Admission {
        if let Some(p) = self.try_take() {
            return Admission::Now(p);
        }
        let seen = self.lock().recheck;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a place freed in between is not missed.
            changed.as_mut().enable();
            if let Some(p) = self.try_take() {
                return Admission::AfterWait(p);
            }
            if self.lock().recheck != seen {
                return Admission::Recheck;
            }
            changed.await;
        }
    }
}

/// A provisioning worker's place at its pool's gate, kept by the worker's wrapper so that a
/// failed clone frees its place only after the error policy has backed the pool off (else a
/// waiting desktop would clone into the same failure at once).
#[derive(Debug, Default)]
pub(crate) struct Place(Mutex<Option<GatePermit>>);

impl Place {
    fn lock(&self) -> MutexGuard<'_, Option<GatePermit>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn hold(&self, permit: GatePermit) {
        *self.lock() = Some(permit);
    }

    pub(crate) fn is_held(&self) -> bool {
        self.lock().is_some()
    }

    /// Frees the place (if held); true if one was.
    pub(crate) fn release(&self) -> bool {
        let permit = self.lock().take();
        permit.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn gate(limit: u32) -> Arc<CloneGate> {
        let g = Arc::new(CloneGate::default());
        g.set_limit(limit);
        g
    }

    #[tokio::test]
    async fn bounds_places_and_hands_a_freed_one_to_a_waiter() {
        let g = gate(2);
        let a = g.admit().await;
        let b = g.admit().await;
        assert!(matches!(a, Admission::Now(_)) && matches!(b, Admission::Now(_)));
        let waiter = tokio::spawn({
            let g = Arc::clone(&g);
            async move { g.admit().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "a third clone waits for a place");
        drop(a);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the freed place is handed on")
            .unwrap();
        assert!(matches!(got, Admission::AfterWait(_)), "{got:?}");
        assert_eq!(g.lock().taken, 2);
        drop(b);
        drop(got);
        assert_eq!(g.lock().taken, 0);
    }

    #[tokio::test]
    async fn a_running_clone_counts_past_the_bound() {
        let g = gate(1);
        let _running = g.take_running();
        let _second = g.take_running();
        assert!(g.try_take().is_none());
        g.set_limit(3);
        assert!(g.try_take().is_some(), "a raised bound lets one more in");
    }

    #[tokio::test]
    async fn a_recheck_wakes_waiters_without_a_place() {
        let g = gate(1);
        let _held = g.admit().await;
        let waiter = tokio::spawn({
            let g = Arc::clone(&g);
            async move { g.admit().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        g.recheck();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the recheck")
            .unwrap();
        assert!(matches!(got, Admission::Recheck), "{got:?}");
    }

    #[tokio::test]
    async fn closing_the_gate_wakes_waiters_to_recheck() {
        let g = gate(1);
        g.set_open_for(Some("spec-a".into()));
        assert!(g.is_open_for("spec-a") && !g.is_open_for("spec-b"));
        let _held = g.admit().await;
        let waiter = tokio::spawn({
            let g = Arc::clone(&g);
            async move { g.admit().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        g.set_open_for(Some("spec-a".into()));
        assert!(!waiter.is_finished(), "nothing changed");
        g.set_open_for(None);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the change")
            .unwrap();
        assert!(matches!(got, Admission::Recheck), "{got:?}");
        assert!(!g.is_open_for("spec-a"));
    }

    #[test]
    fn a_place_is_freed_once() {
        let g = gate(1);
        let place = Place::default();
        place.hold(g.try_take().unwrap());
        assert!(place.is_held());
        assert!(place.release());
        assert!(!place.release());
        assert!(g.try_take().is_some());
    }
}
