//! vSphere faults and what they mean: the one place that maps a fault type (as vCenter
//! names it) to a kind, and decides which kinds are worth retrying.

use std::fmt;

use crate::base::{MoRef, PowerState};
use crate::xml::Node;

/// The vSphere fault types deskpool reacts to; everything else is `Other`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The session is missing or expired.
    NotAuthenticated,
    /// The object does not exist (any more).
    ManagedObjectNotFound {
        /// The missing object, when the server said which.
        obj: Option<MoRef>,
    },
    /// An object with this name already exists in the folder.
    DuplicateName {
        /// The name in conflict.
        name: String,
    },
    /// `InsufficientResourcesFault` or one of its subtypes.
    InsufficientResources,
    /// The object is busy with another task.
    TaskInProgress,
    /// `InvalidPowerState`: the VM is not in the power state the operation needs.
    InvalidPowerState {
        /// The VM's power state as vCenter reported it (`existingState`), when it did.
        existing: Option<PowerState>,
    },
    /// `InvalidState` or one of its other subtypes: the host is not connected
    /// (`InvalidHostConnectionState`), no host of the cluster can run the VM
    /// (`NoActiveHostInCluster`), the VM waits for an answer (`QuestionPending`)... Never means
    /// "already done"; worth retrying later.
    InvalidState,
    /// `InaccessibleDatastore`: the datastore exists but cannot be reached now (an outage,
    /// not a wrong setting).
    InaccessibleDatastore,
    /// `HostCommunication` or a subtype (`HostNotConnected`, `HostNotReachable`): vCenter
    /// cannot talk to the host.
    HostCommunication,
    /// `SystemError`: vCenter failed internally.
    SystemError,
    /// `InvalidDatastore` or a subtype.
    InvalidDatastore,
    /// `FileFault` or a subtype.
    FileFault,
    /// `VmConfigFault` or a subtype.
    VmConfigFault,
    /// `CustomizationFault` or a subtype.
    CustomizationFault,
    /// Wrong user name or password.
    InvalidLogin,
    /// Any other fault type.
    Other {
        /// The type name as the server sent it.
        fault_type: String,
    },
}

/// A fault reported by vCenter, as a SOAP fault or in `TaskInfo.error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What kind of fault.
    pub kind: FaultKind,
    /// The server's message (`faultstring` or `localizedMessage`); may be empty.
    pub message: String,
}

impl Fault {
    /// Build a fault.
    pub fn new(kind: FaultKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Worth retrying with backoff: the same request may succeed later (busy, short of
    /// resources, a host or datastore briefly unreachable, a vCenter hiccup), or the failure is
    /// the session's, not the request's (`NotAuthenticated`, `InvalidLogin`: see
    /// [`Fault::is_login_failure`]).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            FaultKind::TaskInProgress
                | FaultKind::InsufficientResources
                | FaultKind::NotAuthenticated
                | FaultKind::InvalidLogin
                | FaultKind::InvalidState
                | FaultKind::InaccessibleDatastore
                | FaultKind::HostCommunication
                | FaultKind::SystemError
        )
    }

    /// vCenter refused the session's credentials: the vCenter connection is unhealthy (see
    /// `Client::login_failure`); nothing is wrong with the request that needed the login.
    pub fn is_login_failure(&self) -> bool {
        self.kind == FaultKind::InvalidLogin
    }

    /// A power-on failed because the VM is already on (`InvalidPowerState` with
    /// `existingState = poweredOn`). Other `InvalidState` faults (host not connected, no
    /// active host, a pending question) mean the VM did not start.
    pub fn means_already_on(&self) -> bool {
        self.kind
            == FaultKind::InvalidPowerState {
                existing: Some(PowerState::PoweredOn),
            }
    }

    /// Metric label, snake_case.
    pub fn label(&self) -> &'static str {
        match self.kind {
            FaultKind::NotAuthenticated => "not_authenticated",
            FaultKind::ManagedObjectNotFound { .. } => "managed_object_not_found",
            FaultKind::DuplicateName { .. } => "duplicate_name",
            FaultKind::InsufficientResources => "insufficient_resources",
            FaultKind::TaskInProgress => "task_in_progress",
            FaultKind::InvalidPowerState { .. } => "invalid_power_state",
            FaultKind::InvalidState => "invalid_state",
            FaultKind::InaccessibleDatastore => "inaccessible_datastore",
            FaultKind::HostCommunication => "host_communication",
            FaultKind::SystemError => "system_error",
            FaultKind::InvalidDatastore => "invalid_datastore",
            FaultKind::FileFault => "file_fault",
            FaultKind::VmConfigFault => "vm_config_fault",
            FaultKind::CustomizationFault => "customization_fault",
            FaultKind::InvalidLogin => "invalid_login",
            FaultKind::Other { .. } => "other_fault",
        }
    }

    /// The vSphere type name this fault was parsed from (or its family's name).
    pub fn type_name(&self) -> &str {
        match &self.kind {
            FaultKind::NotAuthenticated => "NotAuthenticated",
            FaultKind::ManagedObjectNotFound { .. } => "ManagedObjectNotFound",
            FaultKind::DuplicateName { .. } => "DuplicateName",
            FaultKind::InsufficientResources => "InsufficientResourcesFault",
            FaultKind::TaskInProgress => "TaskInProgress",
            FaultKind::InvalidPowerState { .. } => "InvalidPowerState",
            FaultKind::InvalidState => "InvalidState",
            FaultKind::InaccessibleDatastore => "InaccessibleDatastore",
            FaultKind::HostCommunication => "HostCommunication",
            FaultKind::SystemError => "SystemError",
            FaultKind::InvalidDatastore => "InvalidDatastore",
            FaultKind::FileFault => "FileFault",
            FaultKind::VmConfigFault => "VmConfigFault",
            FaultKind::CustomizationFault => "CustomizationFault",
            FaultKind::InvalidLogin => "InvalidLogin",
            FaultKind::Other { fault_type } => fault_type,
        }
    }

    /// Build from a fault element (`detail/XFault` or `TaskInfo.error.fault`). The type comes
    /// from the xsi:type attribute, falling back to the element name without `Fault`.
    pub(crate) fn from_node(node: &Node, message: &str) -> Self {
        let type_name = node.xsi_type_local().map(str::to_owned).unwrap_or_else(|| {
            node.name
                .strip_suffix("Fault")
                .filter(|s| !s.is_empty())
                .unwrap_or(&node.name)
                .to_owned()
        });
        let kind = classify(&type_name, node);
        Self::new(kind, message)
    }
}

fn classify(type_name: &str, node: &Node) -> FaultKind {
    match type_name {
        "NotAuthenticated" => FaultKind::NotAuthenticated,
        "ManagedObjectNotFound" => FaultKind::ManagedObjectNotFound {
            obj: node.child("obj").and_then(Node::as_moref),
        },
        "DuplicateName" => FaultKind::DuplicateName {
            name: node.child_text("name").unwrap_or_default().to_owned(),
        },
        "TaskInProgress" => FaultKind::TaskInProgress,
        "InvalidLogin" => FaultKind::InvalidLogin,
        "InvalidPowerState" => FaultKind::InvalidPowerState {
            existing: node.child_text("existingState").and_then(PowerState::parse),
        },
        "InaccessibleDatastore" | "InaccessibleVFlashSource" => FaultKind::InaccessibleDatastore,
        "HostCommunication" | "HostNotConnected" | "HostNotReachable" => {
            FaultKind::HostCommunication
        }
        "SystemError" => FaultKind::SystemError,
        // Subtypes, from the vim25 fault hierarchy.
        t if t.starts_with("Insufficient") => FaultKind::InsufficientResources,
        "InvalidState"
        | "InvalidHostState"
        | "InvalidVmState"
        | "InvalidHostConnectionState"
        | "CannotPowerOffVmInCluster"
        | "MksConnectionLimitReached"
        | "InvalidDatastoreState"
        | "QuestionPending"
        | "NoActiveHostInCluster" => FaultKind::InvalidState,
        "InvalidDatastore" | "InvalidDatastorePath" | "DatastoreNotWritableOnHost" => {
            FaultKind::InvalidDatastore
        }
        "FileFault"
        | "FileNotFound"
        | "FileAlreadyExists"
        | "FileLocked"
        | "FileTooLarge"
        | "FileNameTooLong"
        | "FileNotWritable"
        | "CannotAccessFile"
        | "CannotCreateFile"
        | "CannotDeleteFile"
        | "IncorrectFileType"
        | "NotADirectory"
        | "NotAFile"
        | "NoDiskSpace"
        | "TooManyConcurrentNativeClones"
        | "CannotAccessVmDisk"
        | "CannotAccessVmConfig"
        | "CannotAccessVmComponent" => FaultKind::FileFault,
        "VmConfigFault"
        | "InvalidVmConfig"
        | "InvalidDeviceSpec"
        | "InvalidDiskFormat"
        | "InvalidSnapshotFormat"
        | "VmConfigIncompatibleForFaultTolerance"
        | "CannotDisableSnapshot"
        | "UnsupportedVmxLocation"
        | "RuleViolation"
        | "VmConfigIncompatibleForRecordReplay"
        | "EightHostLimitViolated"
        | "GenericVmConfigFault"
        | "NoCompatibleSoftAffinityHost" => FaultKind::VmConfigFault,
        "CustomizationFault"
        | "CannotDecryptPasswords"
        | "CustomizationPending"
        | "IpHostnameGeneratorError"
        | "LinuxVolumeNotClean"
        | "MissingLinuxCustResources"
        | "MissingWindowsCustResources"
        | "MountError"
        | "NicSettingMismatch"
        | "NoDisksToCustomize"
        | "UncustomizableGuest"
        | "UnexpectedCustomizationFault"
        | "WindowsCustomizationFailed" => FaultKind::CustomizationFault,
        other => FaultKind::Other {
            fault_type: other.to_owned(),
        },
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FaultKind::ManagedObjectNotFound { obj: Some(o) } => {
                write!(f, "ManagedObjectNotFound ({o})")?
            }
            FaultKind::DuplicateName { name } => write!(f, "DuplicateName ('{name}')")?,
            _ => f.write_str(self.type_name())?,
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}
