//! Errors and vSphere faults.

use std::fmt;

use crate::types::MoRef;
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
    /// `InvalidState` or a subtype (e.g. `InvalidPowerState`).
    InvalidState,
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

    /// Worth retrying with backoff (the same request may succeed later).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            FaultKind::TaskInProgress
                | FaultKind::InsufficientResources
                | FaultKind::NotAuthenticated
        )
    }

    /// Metric label, snake_case.
    pub fn label(&self) -> &'static str {
        match self.kind {
            FaultKind::NotAuthenticated => "not_authenticated",
            FaultKind::ManagedObjectNotFound { .. } => "managed_object_not_found",
            FaultKind::DuplicateName { .. } => "duplicate_name",
            FaultKind::InsufficientResources => "insufficient_resources",
            FaultKind::TaskInProgress => "task_in_progress",
            FaultKind::InvalidState => "invalid_state",
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
            FaultKind::InvalidState => "InvalidState",
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
        // Subtypes, from the vim25 fault hierarchy.
        t if t.starts_with("Insufficient") => FaultKind::InsufficientResources,
        "InvalidState"
        | "InvalidPowerState"
        | "InvalidHostState"
        | "InvalidVmState"
        | "InvalidHostConnectionState"
        | "CannotPowerOffVmInCluster"
        | "MksConnectionLimitReached"
        | "InvalidDatastoreState"
        | "QuestionPending"
        | "NoActiveHostInCluster" => FaultKind::InvalidState,
        "InvalidDatastore"
        | "InvalidDatastorePath"
        | "InaccessibleDatastore"
        | "DatastoreNotWritableOnHost"
        | "InaccessibleVFlashSource" => FaultKind::InvalidDatastore,
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

/// Everything the client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// vCenter answered with a fault (as a SOAP fault or in a task's error).
    #[error("vCenter fault: {0}")]
    Fault(Fault),
    /// Connection failure, timeout or an unexpected HTTP status.
    #[error("{method}: cannot reach vCenter at {url}: {detail}")]
    Transport {
        /// The SOAP method.
        method: &'static str,
        /// The endpoint (without credentials).
        url: String,
        /// What went wrong.
        detail: String,
        /// Underlying HTTP error, if any.
        #[source]
        source: Option<reqwest::Error>,
    },
    /// The response was not the XML we expected.
    #[error("{method}: cannot parse the vCenter response: {detail}")]
    Parse {
        /// The SOAP method.
        method: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A snapshot selector did not resolve to exactly one snapshot.
    #[error("snapshot '{selector}' {problem} on VM '{vm}'{}", candidates_suffix(.candidates))]
    Snapshot {
        /// The VM (name and moref).
        vm: String,
        /// The selector as given.
        selector: String,
        /// "not found", "is ambiguous", ...
        problem: String,
        /// Snapshot paths that exist on the VM.
        candidates: Vec<String>,
    },
    /// TLS configuration is unusable (CA file, thumbprint).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Client options are unusable (URL, ...).
    #[error("client configuration: {0}")]
    Config(String),
    /// The client was logged out or its background tasks ended.
    #[error("vSphere client is closed")]
    Closed,
}

fn candidates_suffix(c: &[String]) -> String {
    if c.is_empty() {
        "; the VM has no snapshots".to_owned()
    } else {
        format!("; snapshots on the VM: {}", c.join(", "))
    }
}

impl Error {
    /// Worth retrying later: TaskInProgress, InsufficientResources, NotAuthenticated
    /// (after the client's own re-login failed) and transport failures.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Fault(fault) => fault.is_transient(),
            Error::Transport { .. } => true,
            _ => false,
        }
    }

    /// Metric label such as "duplicate_name" or "transport".
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Fault(fault) => fault.label(),
            Error::Transport { .. } => "transport",
            Error::Parse { .. } => "parse",
            Error::Snapshot { .. } => "snapshot",
            Error::Tls(_) => "tls",
            Error::Config(_) => "config",
            Error::Closed => "closed",
        }
    }

    /// The fault, if this is one.
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            Error::Fault(fault) => Some(fault),
            _ => None,
        }
    }

    /// The fault kind, if this is a fault.
    pub fn fault_kind(&self) -> Option<&FaultKind> {
        self.fault().map(|f| &f.kind)
    }

    pub(crate) fn parse(method: &'static str, detail: impl Into<String>) -> Self {
        Error::Parse {
            method,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_and_labels() {
        let f = |k| Error::Fault(Fault::new(k, ""));
        assert!(f(FaultKind::TaskInProgress).is_transient());
        assert!(f(FaultKind::InsufficientResources).is_transient());
        assert!(f(FaultKind::NotAuthenticated).is_transient());
        assert!(!f(FaultKind::DuplicateName { name: "x".into() }).is_transient());
        assert!(!f(FaultKind::InvalidDatastore).is_transient());
        assert_eq!(
            f(FaultKind::DuplicateName { name: "x".into() }).kind(),
            "duplicate_name"
        );
        let e = Error::Snapshot {
            vm: "golden (VirtualMachine:vm-1)".into(),
            selector: "base/v2".into(),
            problem: "not found".into(),
            candidates: vec!["base".into(), "base/v1".into()],
        };
        assert_eq!(
            e.to_string(),
            "snapshot 'base/v2' not found on VM 'golden (VirtualMachine:vm-1)'; snapshots on the VM: base, base/v1"
        );
        assert!(!e.is_transient());
    }
}
