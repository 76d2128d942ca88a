//! What `/readyz` reports: the replica's role and each vCenter's session.

use std::sync::{Arc, Mutex};

use crate::vcenter::{Vcenter, VcenterStatus};

/// This replica's part in the leader election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Leadership {
    /// Not yet known (first lease attempt pending or the database unreachable).
    Starting,
    /// Holds the lease and reconciles.
    Leader,
    /// Another replica holds the lease; this one serves the API and waits.
    Standby,
}

/// Cheap, cloneable view of the reconciler's condition.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    role: Arc<Mutex<Leadership>>,
    vcenters: Vec<Arc<Vcenter>>,
}

impl StatusHandle {
    pub(crate) fn new(vcenters: Vec<Arc<Vcenter>>) -> Self {
        Self {
            role: Arc::new(Mutex::new(Leadership::Starting)),
            vcenters,
        }
    }

    pub(crate) fn set_role(&self, role: Leadership) {
        *self.role.lock().unwrap_or_else(|e| e.into_inner()) = role;
    }

    /// The current role.
    pub fn role(&self) -> Leadership {
        *self.role.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every configured vCenter's session state.
    pub fn vcenters(&self) -> Vec<VcenterStatus> {
        self.vcenters.iter().map(|v| v.status()).collect()
    }
}
