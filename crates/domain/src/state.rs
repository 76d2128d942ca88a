//! Desktop and pool states, and event kinds, with their stable string forms (stored in the
//! database and shown in the API).

use std::fmt;
use std::str::FromStr;

/// A string that names no known state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{value}'")]
pub struct UnknownState {
    what: &'static str,
    value: String,
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable string form, as stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(UnknownState { what: $what, value: s.to_owned() }),
                }
            }
        }
    };
}

string_enum!(
    /// Where a desktop is in its lifecycle.
    ///
    /// `pending` -> `cloning` -> `powering_on` -> `booting` -> `ready`; any step may end in
    /// `failed`; `deleting` ends with the row removed once the VM is gone.
    DesktopState, "desktop state" {
        /// Name and instance UUID committed; no vCenter call made yet.
        Pending => "pending",
        /// `CloneVM_Task` issued; the task moref is recorded.
        Cloning => "cloning",
        /// The clone exists; `PowerOnVM_Task` issued (or about to be).
        PoweringOn => "powering_on",
        /// Powered on; waiting for the guest to be usable (VMware Tools running and a usable
        /// IPv4 address, and the customization's success when the pool has a spec).
        Booting => "booting",
        /// The desktop is usable (and powered on when the pool says so): it may be claimed.
        Ready => "ready",
        /// Provisioning failed; the fault is kept in `last_error`. Cleaned up by the reconciler.
        Failed => "failed",
        /// Being powered off and destroyed.
        Deleting => "deleting",
    }
);

impl DesktopState {
    /// Provisioning is under way (not usable yet, but counts toward the pool's size).
    pub fn is_provisioning(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::Cloning | Self::PoweringOn | Self::Booting
        )
    }

    /// A clone is pending or running: counts against the pool's `max_concurrent_clones`
    /// (a desktop that is powering on or booting no longer does).
    pub fn occupies_clone_slot(self) -> bool {
        matches!(self, Self::Pending | Self::Cloning)
    }

    /// The desktop counts toward the pool's size (it is, or will become, usable).
    pub fn counts_toward_size(self) -> bool {
        self.is_provisioning() || self == Self::Ready
    }
}

string_enum!(
    /// A pool's provisioning condition.
    PoolState, "pool state" {
        /// Provisioning runs normally.
        Ok => "ok",
        /// A permanent fault (golden VM or snapshot missing, bad datastore...): waits for a spec change.
        Error => "error",
        /// Stopped after too many consecutive clone failures: waits for an admin to resume.
        Stopped => "stopped",
        /// The pool is being deleted: its desktops are destroyed, then the row goes.
        Deleting => "deleting",
    }
);

string_enum!(
    /// What an audit event records.
    EventKind, "event kind" {
        /// A pool was created.
        PoolCreated => "pool_created",
        /// A pool's spec was changed.
        PoolUpdated => "pool_updated",
        /// A pool's target size was changed.
        PoolResized => "pool_resized",
        /// An admin paused a pool.
        PoolPaused => "pool_paused",
        /// An admin resumed a pool (also clears error/stopped).
        PoolResumed => "pool_resumed",
        /// A pool was marked for deletion.
        PoolDeleting => "pool_deleting",
        /// A pool's last desktop was removed and the pool row deleted.
        PoolDeleted => "pool_deleted",
        /// A pool hit a permanent error.
        PoolError => "pool_error",
        /// Provisioning stopped after consecutive clone failures.
        ProvisioningStopped => "provisioning_stopped",
        /// A clone task was started.
        CloneStarted => "clone_started",
        /// A clone finished.
        CloneSucceeded => "clone_succeeded",
        /// A clone failed.
        CloneFailed => "clone_failed",
        /// A desktop was powered on.
        PoweredOn => "powered_on",
        /// A desktop reached `ready`.
        DesktopReady => "desktop_ready",
        /// A desktop was powered on and waits for its guest (`booting`).
        DesktopBooting => "desktop_booting",
        /// A powered-on desktop's guest never became usable, or its customization failed.
        DesktopFailed => "desktop_failed",
        /// A desktop was marked for deletion.
        DesktopDeleting => "desktop_deleting",
        /// A user claimed a desktop (or renewed the lease of the one they hold).
        Claimed => "claimed",
        /// A user released a desktop.
        Released => "released",
        /// A claim's lease ran out and the desktop was released.
        ClaimExpired => "claim_expired",
        /// A claimed desktop (or a pool with claimed desktops) was removed with `force`.
        ForcedRemoval => "forced_removal",
        /// A desktop's VM was destroyed and its row removed.
        DesktopDestroyed => "desktop_destroyed",
        /// A VM found in vCenter was adopted by its pending row.
        Adopted => "adopted",
        /// A VM this installation made for a desktop that is gone was destroyed.
        OrphanDestroyed => "orphan_destroyed",
        /// A VM carries deskpool's markers but an instance UUID deskpool never issued (a copy
        /// of a desktop, a restore): reported, never touched.
        ForeignVm => "foreign_vm",
        /// This replica became the leader.
        LeaseTaken => "lease_taken",
        /// An API token was created.
        TokenCreated => "token_created",
        /// An API token was revoked.
        TokenRevoked => "token_revoked",
        /// deskpool stopped trying to destroy a desktop's VM (vCenter refused it every time):
        /// the desktop is failed and kept until an admin deletes it again.
        DestroyGivenUp => "destroy_given_up",
        /// A desktop's VM became inaccessible (its config cannot be read): kept as it is.
        VmInaccessible => "vm_inaccessible",
        /// A desktop's inaccessible VM is readable again.
        VmAccessible => "vm_accessible",
        /// A pool was given a new image: its outdated desktops are being replaced.
        RolloutStarted => "rollout_started",
        /// A rollout paused at its first failed clone from the new image.
        RolloutStopped => "rollout_stopped",
        /// Every desktop of a pool is on its image: the rollout is over.
        RolloutFinished => "rollout_finished",
        /// A claimed outdated desktop was released by force after the rollout's grace.
        ForcedRelease => "forced_release",
    }
);

string_enum!(
    /// Where a pool's image rollout stands.
    RolloutState, "rollout state" {
        /// No rollout has run since the pool was defined.
        Idle => "idle",
        /// Outdated desktops are being replaced by desktops on the pool's image.
        Rolling => "rolling",
        /// Paused at the first failed clone from the new image (`stop_on_error`); resumed by
        /// `POST .../image/resume` or replaced by another image push.
        Stopped => "stopped",
        /// Every desktop is on the pool's image.
        Done => "done",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_state() {
        for s in DesktopState::ALL {
            assert_eq!(s.as_str().parse::<DesktopState>().unwrap(), *s);
        }
        for s in PoolState::ALL {
            assert_eq!(s.as_str().parse::<PoolState>().unwrap(), *s);
        }
        for s in EventKind::ALL {
            assert_eq!(s.as_str().parse::<EventKind>().unwrap(), *s);
        }
        for s in RolloutState::ALL {
            assert_eq!(s.as_str().parse::<RolloutState>().unwrap(), *s);
        }
    }

    #[test]
    fn unknown_state_is_named() {
        let err = "bogus".parse::<DesktopState>().unwrap_err();
        assert_eq!(err.to_string(), "unknown desktop state 'bogus'");
    }
}
