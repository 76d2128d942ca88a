//! A desktop whose VM cannot be destroyed (#12 item 6): vCenter refuses the destroy with a
//! fault that will not go away by itself (`NoPermission`, say). The failure is counted against
//! the desktop, not its pool: the desktop is tried again after a delay that grows with its own
//! count, and after `max_tries` deskpool gives up, marks it failed with the reason and leaves it
//! (and its VM) alone until an admin deletes it again. The pool keeps provisioning throughout.

use std::time::Duration;

/// What follows a desktop's failed destroy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDestroyFailure {
    /// Try this desktop again after the delay (the pool is not held back).
    TryAgainAfter(Duration),
    /// Stop trying: the desktop is failed and kept until an admin deletes it again.
    GiveUp,
}

/// Decides after the `failures`-th failed destroy of one desktop (counting this one). The
/// delay doubles from `base` per failure, capped at `max`; `max_tries` of 0 means never give up.
pub fn after_destroy_failure(
    failures: u32,
    max_tries: u32,
    base: Duration,
    max: Duration,
) -> AfterDestroyFailure {
    if max_tries > 0 && failures >= max_tries {
        return AfterDestroyFailure::GiveUp;
    }
    let doublings = failures.saturating_sub(1).min(16);
    AfterDestroyFailure::TryAgainAfter(base.saturating_mul(1u32 << doublings).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use AfterDestroyFailure::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_then_gives_up_at_the_limit() {
        let max = Duration::from_secs(5);
        let seen: Vec<_> = (1..=5)
            .map(|n| after_destroy_failure(n, 5, S, max))
            .collect();
        assert_eq!(
            seen,
            [
                TryAgainAfter(S),
                TryAgainAfter(2 * S),
                TryAgainAfter(4 * S),
                TryAgainAfter(max),
                GiveUp
            ]
        );
        assert_eq!(after_destroy_failure(9, 5, S, max), GiveUp);
    }

    #[test]
    fn zero_tries_means_never_give_up() {
        assert_eq!(
            after_destroy_failure(1000, 0, S, 60 * S),
            TryAgainAfter(60 * S)
        );
    }

    proptest! {
        #[test]
        fn gives_up_exactly_from_the_limit_and_never_waits_past_max(
            n in 1u32..100, tries in 0u32..20, base_ms in 1u64..5000, max_s in 1u64..600,
        ) {
            let (base, max) = (Duration::from_millis(base_ms), Duration::from_secs(max_s));
            match after_destroy_failure(n, tries, base, max) {
                GiveUp => prop_assert!(tries > 0 && n >= tries),
                TryAgainAfter(d) => {
                    prop_assert!(tries == 0 || n < tries);
                    prop_assert!(d <= max && d >= base.min(max));
                }
            }
        }
    }
}
