//! One desktop's next step: a pure function of its row and of what vCenter answered to the
//! step before. Workers execute the steps and record their results; every decision about a
//! desktop's vCenter work (clone, wait, adopt, power on, fail, destroy, forget) is made here.
//!
//! Crash safety rests on one rule this module keeps: a desktop that may already have a VM
//! (anything but a desktop this term just made and never worked on) is looked up by its
//! instance UUID before a clone is issued, so no sequence of answers makes two VMs.

use crate::DesktopState;

/// What the step function needs to know of a desktop's row and its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepDesktop {
    /// Lifecycle state as recorded.
    pub state: DesktopState,
    /// The row names the desktop's VM.
    pub vm_known: bool,
    /// The row names a task that may still run (a clone, or a power-on).
    pub task_known: bool,
    /// Made by this term and never worked on: it cannot have a VM, so no lookup is needed.
    pub fresh: bool,
    /// The pool's clone inputs (golden VM, snapshot, folder...) are resolved: a clone may start.
    pub may_clone: bool,
    /// The pool powers desktops on once they are cloned.
    pub power_on: bool,
    /// After its power-on the desktop waits for its guest (`booting`; the pool's
    /// `ready_when` is `guest_ip`) instead of being ready at once (`powered_on`).
    pub wait_for_guest: bool,
}

/// Why the desktop's VM is looked up by instance UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Before a clone: one may have been issued before a crash.
    BeforeClone,
    /// The clone's task ended or vanished without naming a VM.
    AfterClone,
    /// vCenter said the desktop's name is taken: perhaps by its own VM.
    NameTaken,
    /// Before removing the row: a VM may exist that the row does not name.
    BeforeDestroy,
}

/// A vCenter fault, as far as a desktop's next step depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultClass {
    /// The name is taken in the folder.
    DuplicateName,
    /// An object the step used is gone (snapshot removed, vCenter restarted...).
    ObjectGone,
    /// The spec cannot work (datastore, VM config, guest customization): the pool needs a fix.
    Permanent,
    /// Any other fault of the clone or power-on.
    Other,
}

/// Who holds the name vCenter reported taken (read from the holder's markers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameHolder {
    /// Nobody now: a clone of that name is still running, or its holder was just destroyed.
    Nobody,
    /// The VM carries this desktop's markers: it is this desktop's VM.
    ThisDesktop,
    /// The VM carries this pool's marker but another desktop's id: an orphan.
    OtherDesktop,
    /// A VM deskpool does not manage.
    Foreign,
}

/// What vCenter answered to the step before (`Started` when the worker has done nothing yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// No step taken yet: decide from the row alone.
    Started,
    /// The UUID lookup asked for `purpose` found a VM (`found`) or none.
    Lookup {
        /// Why it was looked up.
        purpose: Lookup,
        /// A VM has the desktop's instance UUID.
        found: bool,
    },
    /// The step's call or task failed with a fault.
    Fault(FaultClass),
    /// The awaited task ended (a power state already reached counts as ended).
    TaskEnded {
        /// The task's result named a VM.
        vm: bool,
    },
    /// The awaited task no longer exists (it finished long ago).
    TaskGone,
    /// Resolving the pool's inventory again found every object: the old references were stale.
    InventoryValid,
    /// Who holds the taken name.
    Holder(NameHolder),
    /// The orphan holding the name was destroyed.
    HolderDestroyed,
    /// The power-on task started.
    PowerOnStarted,
    /// The VM named by the row does not exist.
    VmGone,
    /// The VM was destroyed (or was already gone).
    Destroyed,
}

/// Why a desktop is marked failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Its VM vanished before it was powered on.
    VmVanished,
    /// The clone or power-on failed; `permanent` when the pool's spec must be fixed.
    Fault {
        /// The pool needs a fix (datastore, VM config, customization).
        permanent: bool,
    },
}

/// The next thing to do for a desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Look the VM up by instance UUID.
    Lookup(Lookup),
    /// Issue the linked clone, recording its task (state `cloning`).
    Clone,
    /// Wait for the task the row names (or the one just started).
    WaitTask,
    /// Record the VM just found as this desktop's (state `cloning`, VM known).
    Adopt,
    /// Record the clone's VM; the desktop goes to `next` (`powering_on` or `ready`).
    RecordCloned {
        /// `powering_on` when the pool powers desktops on, else `ready`.
        next: DesktopState,
    },
    /// Power the VM on.
    PowerOn,
    /// Record the desktop `ready` and powered on.
    MarkReady,
    /// Record the desktop `booting` and powered on: the pass makes it `ready` once its guest
    /// is usable (see [`crate::judge_boot`]), or `failed` at its ready timeout.
    MarkBooting,
    /// Record the desktop `failed` (sizing replaces it).
    MarkFailed(Failure),
    /// Resolve the pool's inventory again: a stale reference, or a missing object?
    Reresolve,
    /// Find who holds the desktop's name (by inventory path, then its markers).
    FindNameHolder,
    /// Destroy the orphan holding the desktop's name.
    DestroyNameHolder,
    /// Record the desktop `pending` again and go on (its next clone is preceded by a lookup).
    BackToPending,
    /// Record the desktop `pending` again and retry after the pool's backoff; with
    /// `forget_inventory`, resolve the pool's inventory afresh first (vCenter may have restarted).
    Retry {
        /// The pool's resolved inventory is dropped.
        forget_inventory: bool,
    },
    /// The name is held by a VM deskpool does not manage: the pool goes to `error`.
    NameTakenByForeign,
    /// Power the VM off and destroy it (only if its markers name this desktop).
    Destroy,
    /// Remove the row: the desktop has no VM any more.
    Forget,
    /// Nothing to do: the worker ends.
    Stop,
}

/// The desktop's next step, given its row and vCenter's answer to the step before.
pub fn next_step(d: &StepDesktop, report: Report) -> Step {
    // Answers that mean the same whatever the state: a clone or power-on fault and the name
    // dispute it may start.
    match report {
        Report::Fault(f) if d.state != DesktopState::Deleting => return on_fault(f),
        Report::Lookup {
            purpose: Lookup::NameTaken,
            found,
        } => {
            return if found {
                Step::Adopt
            } else {
                Step::FindNameHolder
            }
        }
        Report::Holder(h) => {
            return match h {
                NameHolder::Nobody => Step::Retry {
                    forget_inventory: false,
                },
                NameHolder::ThisDesktop => Step::Adopt,
                NameHolder::OtherDesktop => Step::DestroyNameHolder,
                NameHolder::Foreign => Step::NameTakenByForeign,
            }
        }
        Report::HolderDestroyed => return Step::BackToPending,
        Report::InventoryValid => {
            return Step::Retry {
                forget_inventory: false,
            }
        }
        _ => {}
    }
    match d.state {
        DesktopState::Pending => pending(d, report),
        DesktopState::Cloning => cloning(d, report),
        DesktopState::PoweringOn => powering_on(d, report),
        DesktopState::Deleting => deleting(d, report),
        // A booting desktop has no vCenter work left: the pass judges its guest.
        DesktopState::Booting | DesktopState::Ready | DesktopState::Failed => Step::Stop,
    }
}

fn on_fault(f: FaultClass) -> Step {
    match f {
        FaultClass::DuplicateName => Step::Lookup(Lookup::NameTaken),
        FaultClass::ObjectGone => Step::Reresolve,
        FaultClass::Permanent => Step::MarkFailed(Failure::Fault { permanent: true }),
        FaultClass::Other => Step::MarkFailed(Failure::Fault { permanent: false }),
    }
}

fn clone_if_allowed(d: &StepDesktop) -> Step {
    if d.may_clone {
        Step::Clone
    } else {
        Step::Stop
    }
}

fn pending(d: &StepDesktop, report: Report) -> Step {
    match report {
        Report::Started if d.fresh => clone_if_allowed(d),
        Report::Started => Step::Lookup(Lookup::BeforeClone),
        Report::Lookup {
            purpose: Lookup::BeforeClone,
            found: true,
        } => Step::Adopt,
        Report::Lookup {
            purpose: Lookup::BeforeClone,
            found: false,
        } => clone_if_allowed(d),
        _ => Step::Stop,
    }
}

fn recorded_clone(d: &StepDesktop) -> Step {
    Step::RecordCloned {
        next: if d.power_on {
            DesktopState::PoweringOn
        } else {
            DesktopState::Ready
        },
    }
}

fn cloning(d: &StepDesktop, report: Report) -> Step {
    match report {
        Report::Started if d.vm_known => recorded_clone(d),
        Report::Started if d.task_known => Step::WaitTask,
        Report::Started | Report::TaskEnded { vm: false } | Report::TaskGone | Report::VmGone => {
            Step::Lookup(Lookup::AfterClone)
        }
        Report::TaskEnded { vm: true }
        | Report::Lookup {
            purpose: Lookup::AfterClone,
            found: true,
        } => recorded_clone(d),
        // No VM and no running task: the clone never happened.
        Report::Lookup {
            purpose: Lookup::AfterClone,
            found: false,
        } => Step::Retry {
            forget_inventory: true,
        },
        _ => Step::Stop,
    }
}

fn powering_on(d: &StepDesktop, report: Report) -> Step {
    match report {
        Report::Started if d.vm_known => Step::PowerOn,
        Report::Started | Report::VmGone => Step::MarkFailed(Failure::VmVanished),
        Report::PowerOnStarted => Step::WaitTask,
        Report::TaskEnded { .. } if d.wait_for_guest => Step::MarkBooting,
        Report::TaskEnded { .. } => Step::MarkReady,
        _ => Step::Stop,
    }
}

fn deleting(d: &StepDesktop, report: Report) -> Step {
    let destroy_or_look = |vm_from_task: bool| {
        if d.vm_known || vm_from_task {
            Step::Destroy
        } else {
            Step::Lookup(Lookup::BeforeDestroy)
        }
    };
    match report {
        // A clone or power-on started earlier may still run: let it end first, so the VM it
        // makes is destroyed too.
        Report::Started if d.task_known => Step::WaitTask,
        Report::Started | Report::TaskGone | Report::Fault(_) => destroy_or_look(false),
        Report::TaskEnded { vm } => destroy_or_look(vm),
        Report::Lookup {
            purpose: Lookup::BeforeDestroy,
            found,
        } => {
            if found {
                Step::Destroy
            } else {
                Step::Forget
            }
        }
        Report::Destroyed | Report::VmGone => Step::Forget,
        _ => Step::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use DesktopState::*;

    fn desk(state: DesktopState, vm: bool, task: bool, fresh: bool) -> StepDesktop {
        StepDesktop {
            state,
            vm_known: vm,
            task_known: task,
            fresh,
            may_clone: true,
            power_on: true,
            wait_for_guest: false,
        }
    }

    fn found(purpose: Lookup, found: bool) -> Report {
        Report::Lookup { purpose, found }
    }

    const RETRY: Step = Step::Retry {
        forget_inventory: false,
    };
    const POWER_NEXT: Step = Step::RecordCloned { next: PoweringOn };

    #[test]
    fn every_transition() {
        use Lookup::*;
        let table: Vec<(StepDesktop, Report, Step)> = vec![
            // pending
            (
                desk(Pending, false, false, true),
                Report::Started,
                Step::Clone,
            ),
            (
                desk(Pending, false, false, false),
                Report::Started,
                Step::Lookup(BeforeClone),
            ),
            (
                desk(Pending, false, false, false),
                found(BeforeClone, true),
                Step::Adopt,
            ),
            (
                desk(Pending, false, false, false),
                found(BeforeClone, false),
                Step::Clone,
            ),
            (
                StepDesktop {
                    may_clone: false,
                    ..desk(Pending, false, false, true)
                },
                Report::Started,
                Step::Stop,
            ),
            (
                StepDesktop {
                    may_clone: false,
                    ..desk(Pending, false, false, false)
                },
                found(BeforeClone, false),
                Step::Stop,
            ),
            (
                desk(Pending, false, false, false),
                Report::Fault(FaultClass::DuplicateName),
                Step::Lookup(NameTaken),
            ),
            (
                desk(Pending, false, false, false),
                Report::Fault(FaultClass::ObjectGone),
                Step::Reresolve,
            ),
            (
                desk(Pending, false, false, false),
                Report::Fault(FaultClass::Permanent),
                Step::MarkFailed(Failure::Fault { permanent: true }),
            ),
            (
                desk(Pending, false, false, false),
                Report::Fault(FaultClass::Other),
                Step::MarkFailed(Failure::Fault { permanent: false }),
            ),
            (
                desk(Pending, false, false, false),
                Report::InventoryValid,
                RETRY,
            ),
            // the name dispute
            (
                desk(Pending, false, false, false),
                found(NameTaken, true),
                Step::Adopt,
            ),
            (
                desk(Pending, false, false, false),
                found(NameTaken, false),
                Step::FindNameHolder,
            ),
            (
                desk(Pending, false, false, false),
                Report::Holder(NameHolder::Nobody),
                RETRY,
            ),
            (
                desk(Pending, false, false, false),
                Report::Holder(NameHolder::ThisDesktop),
                Step::Adopt,
            ),
            (
                desk(Pending, false, false, false),
                Report::Holder(NameHolder::OtherDesktop),
                Step::DestroyNameHolder,
            ),
            (
                desk(Pending, false, false, false),
                Report::Holder(NameHolder::Foreign),
                Step::NameTakenByForeign,
            ),
            (
                desk(Pending, false, false, false),
                Report::HolderDestroyed,
                Step::BackToPending,
            ),
            // cloning
            (
                desk(Cloning, true, false, false),
                Report::Started,
                POWER_NEXT,
            ),
            (
                StepDesktop {
                    power_on: false,
                    ..desk(Cloning, true, false, false)
                },
                Report::Started,
                Step::RecordCloned { next: Ready },
            ),
            (
                desk(Cloning, false, true, false),
                Report::Started,
                Step::WaitTask,
            ),
            (
                desk(Cloning, false, false, false),
                Report::Started,
                Step::Lookup(AfterClone),
            ),
            (
                desk(Cloning, false, true, false),
                Report::TaskEnded { vm: true },
                POWER_NEXT,
            ),
            (
                desk(Cloning, false, true, false),
                Report::TaskEnded { vm: false },
                Step::Lookup(AfterClone),
            ),
            (
                desk(Cloning, false, true, false),
                Report::TaskGone,
                Step::Lookup(AfterClone),
            ),
            (
                desk(Cloning, false, true, false),
                found(AfterClone, true),
                POWER_NEXT,
            ),
            (
                desk(Cloning, false, true, false),
                found(AfterClone, false),
                Step::Retry {
                    forget_inventory: true,
                },
            ),
            (
                desk(Cloning, false, true, false),
                Report::Fault(FaultClass::DuplicateName),
                Step::Lookup(NameTaken),
            ),
            (
                desk(Cloning, false, true, false),
                Report::Fault(FaultClass::ObjectGone),
                Step::Reresolve,
            ),
            // powering on
            (
                desk(PoweringOn, true, false, false),
                Report::Started,
                Step::PowerOn,
            ),
            (
                desk(PoweringOn, false, false, false),
                Report::Started,
                Step::MarkFailed(Failure::VmVanished),
            ),
            (
                desk(PoweringOn, true, false, false),
                Report::PowerOnStarted,
                Step::WaitTask,
            ),
            (
                desk(PoweringOn, true, false, false),
                Report::TaskEnded { vm: false },
                Step::MarkReady,
            ),
            (
                StepDesktop {
                    wait_for_guest: true,
                    ..desk(PoweringOn, true, false, false)
                },
                Report::TaskEnded { vm: false },
                Step::MarkBooting,
            ),
            (
                desk(PoweringOn, true, false, false),
                Report::VmGone,
                Step::MarkFailed(Failure::VmVanished),
            ),
            (
                desk(PoweringOn, true, false, false),
                Report::Fault(FaultClass::Other),
                Step::MarkFailed(Failure::Fault { permanent: false }),
            ),
            // booting: the pass judges the guest, no worker
            (
                desk(Booting, true, false, false),
                Report::Started,
                Step::Stop,
            ),
            // settled
            (desk(Ready, true, false, false), Report::Started, Step::Stop),
            (
                desk(Failed, false, false, false),
                Report::Started,
                Step::Stop,
            ),
            // deleting
            (
                desk(Deleting, true, true, false),
                Report::Started,
                Step::WaitTask,
            ),
            (
                desk(Deleting, true, false, false),
                Report::Started,
                Step::Destroy,
            ),
            (
                desk(Deleting, false, false, false),
                Report::Started,
                Step::Lookup(BeforeDestroy),
            ),
            (
                desk(Deleting, false, true, false),
                Report::TaskEnded { vm: true },
                Step::Destroy,
            ),
            (
                desk(Deleting, false, true, false),
                Report::TaskEnded { vm: false },
                Step::Lookup(BeforeDestroy),
            ),
            (
                desk(Deleting, true, true, false),
                Report::TaskEnded { vm: false },
                Step::Destroy,
            ),
            (
                desk(Deleting, false, true, false),
                Report::TaskGone,
                Step::Lookup(BeforeDestroy),
            ),
            (
                desk(Deleting, false, true, false),
                Report::Fault(FaultClass::Other),
                Step::Lookup(BeforeDestroy),
            ),
            (
                desk(Deleting, false, false, false),
                found(BeforeDestroy, true),
                Step::Destroy,
            ),
            (
                desk(Deleting, false, false, false),
                found(BeforeDestroy, false),
                Step::Forget,
            ),
            (
                desk(Deleting, true, false, false),
                Report::Destroyed,
                Step::Forget,
            ),
        ];
        for (d, report, want) in table {
            assert_eq!(next_step(&d, report), want, "{d:?} after {report:?}");
        }
    }

    /// A model vCenter for one desktop: which VMs exist for its instance UUID.
    #[derive(Debug, Default)]
    struct Model {
        vms: u32,
        clone_task_running: bool,
    }

    /// Executes `step` against the model, letting `choice` pick among vCenter's possible
    /// answers; updates the row as the worker would. None when the worker ends.
    fn execute(step: Step, d: &mut StepDesktop, m: &mut Model, choice: u8) -> Option<Report> {
        let faults = [
            FaultClass::DuplicateName,
            FaultClass::ObjectGone,
            FaultClass::Permanent,
            FaultClass::Other,
        ];
        let fault = Report::Fault(faults[usize::from(choice) % faults.len()]);
        match step {
            Step::Lookup(purpose) => Some(Report::Lookup {
                purpose,
                found: m.vms > 0,
            }),
            Step::Clone => {
                d.fresh = false;
                match choice % 3 {
                    // Started: the VM appears when the task ends.
                    0 | 1 => {
                        m.clone_task_running = true;
                        d.state = DesktopState::Cloning;
                        d.task_known = true;
                        Some(Report::Started)
                    }
                    // The call failed, yet vCenter may have made the VM.
                    _ => {
                        m.vms += u32::from(choice % 2 == 0);
                        Some(fault)
                    }
                }
            }
            Step::WaitTask if d.state == DesktopState::Cloning => {
                let made = m.clone_task_running && choice % 2 == 0;
                m.clone_task_running = false;
                m.vms += u32::from(made);
                Some(match choice % 4 {
                    0 | 1 if made => Report::TaskEnded {
                        vm: choice % 4 == 0,
                    },
                    2 => Report::TaskGone,
                    3 => fault,
                    _ => Report::TaskEnded { vm: false },
                })
            }
            Step::WaitTask => Some(Report::TaskEnded { vm: false }),
            Step::Adopt => {
                d.state = DesktopState::Cloning;
                d.vm_known = true;
                Some(Report::Started)
            }
            Step::RecordCloned { next } => {
                d.state = next;
                d.vm_known = true;
                Some(Report::Started)
            }
            Step::PowerOn => Some(if choice % 2 == 0 {
                Report::PowerOnStarted
            } else {
                fault
            }),
            Step::Reresolve => Some(Report::InventoryValid),
            Step::FindNameHolder => Some(Report::Holder(match choice % 3 {
                0 => NameHolder::Nobody,
                1 => NameHolder::OtherDesktop,
                _ => NameHolder::Foreign,
            })),
            Step::DestroyNameHolder => Some(Report::HolderDestroyed),
            Step::BackToPending => {
                d.state = DesktopState::Pending;
                d.task_known = false;
                Some(Report::Started)
            }
            Step::Retry { .. } => {
                d.state = DesktopState::Pending;
                d.task_known = false;
                None
            }
            Step::MarkReady => {
                d.state = DesktopState::Ready;
                None
            }
            Step::MarkBooting => {
                d.state = DesktopState::Booting;
                None
            }
            Step::MarkFailed(_) => {
                d.state = DesktopState::Failed;
                None
            }
            Step::Destroy | Step::Forget | Step::NameTakenByForeign | Step::Stop => None,
        }
    }

    proptest! {
        /// Whatever vCenter answers, across worker restarts, a desktop never gets a second VM:
        /// a clone is issued only when no VM with its instance UUID exists.
        #[test]
        fn never_two_clones(choices in proptest::collection::vec(any::<u8>(), 1..200), power_on: bool, wait_for_guest: bool) {
            let mut d = StepDesktop { power_on, wait_for_guest, ..desk(DesktopState::Pending, false, false, true) };
            let mut m = Model::default();
            let mut report = Report::Started;
            for choice in choices {
                let step = next_step(&d, report);
                if step == Step::Clone {
                    prop_assert_eq!(m.vms, 0, "clone issued while a VM exists: {:?}", d);
                    prop_assert!(!m.clone_task_running, "clone issued while one runs: {:?}", d);
                }
                report = match execute(step, &mut d, &mut m, choice) {
                    Some(r) => r,
                    // The worker ended; a later pass starts a new one from the row.
                    None => Report::Started,
                };
                prop_assert!(m.vms <= 1);
            }
        }
    }
}
