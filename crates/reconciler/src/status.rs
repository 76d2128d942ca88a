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

    /// Resolves snapshot `selector` (`current` or a path) of `spec`'s golden VM to the moref
    /// value an image push pins, with this replica's session to the pool's vCenter.
    pub async fn resolve_snapshot(
        &self,
        spec: &deskpool_domain::PoolSpec,
        selector: &str,
    ) -> Result<String, SnapshotError> {
        let vc = self
            .vcenters
            .iter()
            .find(|v| v.name == spec.vcenter)
            .ok_or_else(|| {
                SnapshotError::Unavailable(format!("vCenter '{}' is not configured", spec.vcenter))
            })?;
        let client = vc.client().ok_or_else(|| {
            SnapshotError::Unavailable(format!(
                "no session to vCenter '{}' yet: {}",
                vc.name,
                vc.last_error().unwrap_or_else(|| "connecting".into())
            ))
        })?;
        let golden_path = spec.golden_vm_path();
        let golden = match client.find_by_inventory_path(&golden_path).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(SnapshotError::NotFound(format!(
                    "golden VM '{golden_path}' not found in vCenter"
                )))
            }
            Err(e) if e.is_transient() => return Err(SnapshotError::Unavailable(e.to_string())),
            Err(e) => {
                return Err(SnapshotError::NotFound(format!(
                    "golden VM '{golden_path}': {e}"
                )))
            }
        };
        match client.resolve_snapshot(&golden, selector).await {
            Ok(s) => Ok(s.value),
            Err(e) if e.is_transient() => Err(SnapshotError::Unavailable(e.to_string())),
            Err(e) => Err(SnapshotError::NotFound(format!("{e} ('{golden_path}')"))),
        }
    }
}

/// Why a snapshot did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The golden VM or the snapshot does not exist: the caller must name another.
    #[error("{0}")]
    NotFound(String),
    /// vCenter could not be asked now; try again.
    #[error("{0}")]
    Unavailable(String),
}
