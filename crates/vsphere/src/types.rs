//! Plain data types exchanged with callers.

use serde::{Deserialize, Serialize};

use crate::base::{MoRef, PowerState};
use crate::fault::Fault;

/// Product information from the ServiceContent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct About {
    /// e.g. "VMware vCenter Server 6.5.0 build-5973321".
    pub full_name: String,
    /// e.g. "6.5".
    pub api_version: String,
    /// vCenter's instance UUID: identifies this vCenter across restarts.
    pub instance_uuid: String,
    /// "VirtualCenter" or "HostAgent".
    pub api_type: String,
}

/// What deskpool reads about a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmInfo {
    /// The VM.
    pub moref: MoRef,
    /// Display name (unique per folder).
    pub name: String,
    /// Runtime power state (PoweredOff if the server did not report one).
    pub power_state: PowerState,
    /// `config.instanceUuid`; None while the VM is being created.
    pub instance_uuid: Option<String>,
    /// `config.extraConfig` entries whose key starts with `deskpool.`.
    pub extra_config: Vec<(String, String)>,
    /// vCenter cannot read the VM's configuration (its datastore is unreachable:
    /// `runtime.connectionState` is `inaccessible` or `invalid`, or `config.*` came back in a
    /// `missingSet`). Its name, instance UUID and markers are then unknown, not absent: such
    /// a VM still exists and must not be taken for gone or for someone else's.
    pub inaccessible: bool,
    /// Properties vCenter could not read, with the fault it gave for each.
    pub missing: Vec<MissingProperty>,
}

/// A property vCenter answered with a fault instead of a value (`ObjectContent.missingSet`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingProperty {
    /// The property path, e.g. `config.instanceUuid`.
    pub path: String,
    /// Why it could not be read.
    pub fault: Fault,
}

/// Task lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting to run.
    Queued,
    /// In progress.
    Running,
    /// Finished successfully.
    Success,
    /// Finished with an error (see [`TaskInfo::error`]).
    Error,
}

impl TaskState {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(Self::Queued),
            "running" => Some(Self::Running),
            "success" => Some(Self::Success),
            "error" => Some(Self::Error),
            _ => None,
        }
    }

    /// True for Success and Error.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Success | Self::Error)
    }
}

/// The parts of `Task.info` deskpool uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// The task.
    pub moref: MoRef,
    /// Current state.
    pub state: TaskState,
    /// Result as a managed object (the new VM for a clone), if the result is one.
    pub result: Option<MoRef>,
    /// The failure, when `state` is Error.
    pub error: Option<Fault>,
    /// The object the task runs on (the golden VM for a clone).
    pub entity: Option<MoRef>,
}

/// A guest customization spec body (the children of `CustomizationSpec`), as XML ready to
/// be embedded in `CloneSpec.customization`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomizationSpecXml(String);

impl CustomizationSpecXml {
    /// Wrap XML that is already a valid `CustomizationSpec` body in the `urn:vim25`
    /// namespace, with type attributes written as `xsi:type`. It is sent verbatim: never
    /// build it from untrusted input.
    pub fn from_trusted_xml(xml: impl Into<String>) -> Self {
        Self(xml.into())
    }

    /// The XML text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Everything needed for one linked clone of a golden VM's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedCloneSpec {
    /// Name of the new VM (must be unique in `folder`).
    pub name: String,
    /// Destination VM folder.
    pub folder: MoRef,
    /// Destination resource pool.
    pub resource_pool: MoRef,
    /// Destination datastore; None keeps the golden VM's.
    pub datastore: Option<MoRef>,
    /// Host to run the clone on (`RelocateSpec.host`): needed when the resource pool belongs
    /// to a cluster without DRS (see [`crate::Client::placement`]); None lets DRS choose.
    pub host: Option<MoRef>,
    /// The golden VM's snapshot the delta disks are created from.
    pub snapshot: MoRef,
    /// Instance UUID for the clone (generated before the call to find it again after a crash).
    pub instance_uuid: String,
    /// `config.extraConfig` entries (ownership markers).
    pub extra_config: Vec<(String, String)>,
    /// Guest customization to apply.
    pub customization: Option<CustomizationSpecXml>,
    /// Sent as `powerOn`; deskpool passes false and powers on separately.
    pub power_on: bool,
}

/// Which placement rule applies to a resource pool, and the host it gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// `RelocateSpec.host` for clones into this resource pool (None: DRS chooses).
    pub host: Option<MoRef>,
    /// Why.
    pub rule: PlacementRule,
}

/// How the host of a clone is chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacementRule {
    /// The resource pool belongs to a cluster with DRS on: DRS places each clone.
    Drs {
        /// The cluster's name.
        cluster: String,
    },
    /// The resource pool is a standalone host's: clones run there.
    StandaloneHost {
        /// The host's name.
        host: String,
    },
    /// The cluster has DRS off, so vCenter needs a host: the connected one, not in
    /// maintenance mode, mounting the clone's datastores, with the lowest memory use.
    LeastLoadedHost {
        /// The cluster's name.
        cluster: String,
        /// The chosen host's name.
        host: String,
        /// Its `summary.quickStats.overallMemoryUsage`, MB.
        memory_mb: i64,
        /// Hosts that qualified, of `hosts`.
        usable: usize,
        /// Hosts in the cluster.
        hosts: usize,
    },
}

impl std::fmt::Display for PlacementRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Drs { cluster } => write!(f, "cluster '{cluster}' has DRS on: DRS places the clones"),
            Self::StandaloneHost { host } => write!(f, "standalone host '{host}': clones run there"),
            Self::LeastLoadedHost { cluster, host, memory_mb, usable, hosts } => write!(
                f,
                "cluster '{cluster}' has DRS off: clones go to host '{host}' ({memory_mb} MB memory in use; least loaded of {usable} usable hosts out of {hosts})"
            ),
        }
    }
}
