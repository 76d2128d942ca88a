//! deskpool's domain: pool specs and their validation, desktop naming, the desktop and pool
//! state machines, the pure planning function the reconciler executes (`plan`: which desktops
//! to create and remove), a desktop's next vCenter step (`next_step`) and when a booting
//! desktop's guest is usable (`judge_boot`).
//!
//! Nothing here knows about HTTP, SQL or SOAP: every type is plain data, so the rules can be
//! tested (and property-tested) in isolation.

mod destroy;
pub mod integral;
mod naming;
mod ownership;
mod plan;
mod readiness;
mod rollout;
mod spec;
mod state;
mod step;

pub use destroy::{after_destroy_failure, AfterDestroyFailure};
pub use naming::{NamingError, NamingPattern};
pub use ownership::{judge, SeenVm, Verdict};
pub use plan::{desired_size, plan, Plan, PlanDesktop, PlanInput};
pub use readiness::{
    judge_boot, unusable_address, BootVerdict, CustomizationState, GuestFacts, TOOLS_RUNNING,
};
pub use rollout::{
    claimable_floor, force_release_due, plan_rollout, plan_with_rollout, rollout_transition,
    RolloutLimits, RolloutSeen, RolloutTransition,
};
pub use spec::{
    check_lease_secs, is_slug, patterns, GuestOs, LogoffPolicy, OnRelease, PoolSpec, ReadyWhen,
    SpecError, DEFAULT_CLAIM_LEASE_SECS, DEFAULT_READY_TIMEOUT_SECS, MAX_CLAIM_LEASE_SECS,
    MAX_FORCE_AFTER_SECS, MAX_READY_TIMEOUT_SECS, MIN_CLAIM_LEASE_SECS, WINDOWS_NAME_LIMIT,
};
pub use state::{DesktopState, EventKind, PoolState, RolloutState, UnknownState};
pub use step::{next_step, Failure, FaultClass, Lookup, NameHolder, Report, Step, StepDesktop};

/// Key of the extraConfig marker naming the pool that owns a VM.
pub const MARKER_POOL: &str = "deskpool.pool";
/// Key of the extraConfig marker holding the desktop's id (a UUID) in the database.
pub const MARKER_DESKTOP: &str = "deskpool.desktop";
/// Key of the extraConfig marker holding the id of the deskpool installation (database) that
/// made the VM: an installation only ever considers VMs carrying its own id.
pub const MARKER_INSTALLATION: &str = "deskpool.installation";
