//! Whose VM is it? The rule deskpool destroys by (#12 items 1, 2, 7): a VM is deskpool's only
//! when its instance UUID is one this installation issued to a desktop. Markers say which
//! installation and pool a VM claims to belong to, but markers are copied with the VM (a clone
//! or a backup restore in vCenter keeps them), so they only narrow the search; they never make
//! a VM deskpool's.

/// What the sweep knows of one VM in vCenter's inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenVm<'a> {
    /// The `deskpool.installation` marker, if any.
    pub installation: Option<&'a str>,
    /// It carries any deskpool marker (`deskpool.pool`, `deskpool.desktop`, ...).
    pub marked: bool,
    /// A desktop row of this installation has the VM's instance UUID.
    pub has_row: bool,
    /// This installation issued the VM's instance UUID (now or to a desktop since removed).
    pub issued: bool,
}

/// What deskpool may do with a VM it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not deskpool's business: no markers, or another installation's. Never touched, not reported.
    NotOurs,
    /// The VM of the desktop row with its instance UUID.
    Desktop,
    /// Made by this installation for a desktop that is gone (removed, or its pool deleted while
    /// the clone ran): destroyed.
    Leftover,
    /// Carries this installation's markers (or an older deskpool's, without an installation id)
    /// but an instance UUID deskpool never issued: a copy of a desktop, a restore, or a VM
    /// marked by hand. Reported, never touched, never matched to a row by its markers.
    Foreign,
}

impl Verdict {
    /// Whether deskpool may power the VM off and destroy it (when its row says so, for `Desktop`).
    pub fn destroyable(self) -> bool {
        matches!(self, Verdict::Desktop | Verdict::Leftover)
    }
}

/// Judges one VM for the installation whose id is `ours`.
///
/// A VM without an installation marker is judged by instance UUID alone: VMs made before the
/// marker existed are adopted that way on upgrade.
pub fn judge(vm: &SeenVm<'_>, ours: &str) -> Verdict {
    if vm.installation.is_some_and(|i| i != ours) {
        return Verdict::NotOurs;
    }
    if vm.has_row {
        Verdict::Desktop
    } else if vm.issued {
        Verdict::Leftover
    } else if vm.marked || vm.installation.is_some() {
        Verdict::Foreign
    } else {
        Verdict::NotOurs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OURS: &str = "0b9f3c9e-4f7e-4d55-9a57-4d7a1b0c0001";
    const THEIRS: &str = "0b9f3c9e-4f7e-4d55-9a57-4d7a1b0c0002";

    fn vm(installation: Option<&str>, marked: bool, has_row: bool, issued: bool) -> SeenVm<'_> {
        SeenVm {
            installation,
            marked,
            has_row,
            issued,
        }
    }

    #[test]
    fn table() {
        use Verdict::*;
        let cases = [
            // (installation marker, any marker, row has its UUID, UUID issued) -> verdict
            ((Some(OURS), true, true, true), Desktop),
            // An older deskpool's VM (no installation id) with a row: adopted by UUID.
            ((None, true, true, true), Desktop),
            // The row is gone (or its pool), the UUID was ours: a leftover, destroyed.
            ((Some(OURS), true, false, true), Leftover),
            ((None, true, false, true), Leftover),
            // A copy of a desktop or a hand-marked VM: markers, unknown UUID.
            ((Some(OURS), true, false, false), Foreign),
            ((None, true, false, false), Foreign),
            ((Some(OURS), false, false, false), Foreign),
            // Another installation's VMs, whatever else: never ours.
            ((Some(THEIRS), true, false, false), NotOurs),
            ((Some(THEIRS), true, false, true), NotOurs),
            ((Some(THEIRS), true, true, true), NotOurs),
            // No markers at all and nothing known: not deskpool's.
            ((None, false, false, false), NotOurs),
        ];
        for ((installation, marked, has_row, issued), want) in cases {
            let v = vm(installation, marked, has_row, issued);
            assert_eq!(judge(&v, OURS), want, "{v:?}");
        }
    }

    proptest! {
        /// Whatever its markers say, a VM whose instance UUID this installation never issued
        /// is never destroyable, and another installation's VM never is.
        #[test]
        fn destroys_only_what_this_installation_issued(
            inst in prop_oneof![Just(None), Just(Some(OURS)), Just(Some(THEIRS))],
            marked: bool,
            has_row: bool,
            issued: bool,
        ) {
            // A row's UUID is always an issued one.
            let issued = issued || has_row;
            let verdict = judge(&vm(inst, marked, has_row, issued), OURS);
            if verdict.destroyable() {
                prop_assert!(issued);
                prop_assert_ne!(inst, Some(THEIRS));
            }
            if inst == Some(THEIRS) {
                prop_assert_eq!(verdict, Verdict::NotOurs);
            }
        }
    }
}
