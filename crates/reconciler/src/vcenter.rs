//! One configured vCenter: its client (once connected) and its provisioning bound.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use deskpool_vsphere::{Client, MoRef, VmExpect};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::VcenterSpec;

/// First retry after vCenter refused the login at startup (then doubling, as other failures).
const MIN_RETRY_AFTER_INVALID_LOGIN: Duration = Duration::from_secs(2);

/// Power-on operations in flight per vCenter, as Horizon's default.
const MAX_CONCURRENT_POWER_ON: usize = 50;

/// One vCenter's session state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VcenterStatus {
    /// Configured name.
    pub name: String,
    /// A session is up and the last call reached vCenter.
    pub connected: bool,
    /// The last connection problem, if any.
    pub error: Option<String>,
}

/// A vCenter connection shared by every pool on it.
#[derive(Debug)]
pub(crate) struct Vcenter {
    pub(crate) name: String,
    spec: VcenterSpec,
    client: RwLock<Option<Client>>,
    last_error: Mutex<Option<String>>,
    /// Provisioning operations (clones, destroys) in flight on this vCenter, across pools.
    pub(crate) permits: Arc<Semaphore>,
    /// Power-on operations in flight on this vCenter (Horizon's default bound: 50).
    pub(crate) power_permits: Arc<Semaphore>,
    /// Announces new desktops' VMs to the running VM watch.
    vm_expect: Mutex<Option<VmExpect>>,
}

impl Vcenter {
    pub(crate) fn new(spec: VcenterSpec, max_concurrent: u32) -> Self {
        Self {
            name: spec.name.clone(),
            spec,
            client: RwLock::new(None),
            last_error: Mutex::new(None),
            permits: Arc::new(Semaphore::new(max_concurrent.max(1) as usize)),
            power_permits: Arc::new(Semaphore::new(MAX_CONCURRENT_POWER_ON)),
            vm_expect: Mutex::new(None),
        }
    }

    /// Connects [`Vcenter::expect_vm`] to the VM watch that now runs.
    pub(crate) fn set_vm_expect(&self, expect: VmExpect) {
        *self.vm_expect.lock().unwrap_or_else(|e| e.into_inner()) = Some(expect);
    }

    /// Tells the VM watch that a desktop's VM exists, so its removal is reported even if it
    /// happens before the watch has seen the VM.
    pub(crate) fn expect_vm(&self, vm: MoRef) {
        if let Some(e) = &*self.vm_expect.lock().unwrap_or_else(|e| e.into_inner()) {
            e.expect(vm);
        }
    }

    /// Tells the VM watch that a desktop's guest is awaited (it was just powered on), so the
    /// watch reports the guest's address as soon as it has one.
    pub(crate) fn await_guest(&self, vm: MoRef) {
        if let Some(e) = &*self.vm_expect.lock().unwrap_or_else(|e| e.into_inner()) {
            e.await_guest(vm);
        }
    }

    /// The client, once the first login succeeded (it logs in again by itself afterwards).
    pub(crate) fn client(&self) -> Option<Client> {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    pub(crate) fn status(&self) -> VcenterStatus {
        let connected = self.client().is_some_and(|c| c.is_connected());
        VcenterStatus {
            name: self.name.clone(),
            connected,
            error: if connected {
                None
            } else if let Some(why) = self.client().and_then(|c| c.login_failure()) {
                // A refused login (rotated password) is this vCenter's problem, not a clone's.
                Some(why)
            } else if self.client().is_some() {
                Some(
                    "the last call to vCenter failed (unreachable?); see the log for the error"
                        .to_owned(),
                )
            } else {
                Some(
                    self.last_error()
                        .unwrap_or_else(|| "no session yet".to_owned()),
                )
            },
        }
    }
}

/// Logs in, retrying with backoff until it works or `cancel` fires. After the first login the
/// client keeps its session alive and logs in again by itself.
pub(crate) async fn connect_loop(vc: Arc<Vcenter>, cancel: CancellationToken) {
    let mut delay = Duration::from_millis(500);
    loop {
        let attempt = Client::connect(vc.spec.options.clone());
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok(client) => {
                tracing::info!(vcenter = %vc.name, about = %client.about().full_name, "vCenter session up");
                vc.set_error(None);
                *vc.client.write().unwrap_or_else(|e| e.into_inner()) = Some(client);
                return;
            }
            Err(e) => {
                if e.is_login_failure() {
                    // Refused credentials: no faster than the client's own re-login backoff,
                    // so a wrong password costs a handful of failed logins a minute.
                    delay = delay.max(MIN_RETRY_AFTER_INVALID_LOGIN);
                }
                tracing::warn!(vcenter = %vc.name, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot log in to vCenter");
                vc.set_error(Some(e.to_string()));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
