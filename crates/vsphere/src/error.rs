//! Everything the client can fail with.

use crate::fault::{Fault, FaultKind};

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
    /// vCenter's answer was larger than [`crate::ClientOptions::max_response_bytes`].
    #[error("{method}: the answer from vCenter at {url} is larger than {limit} bytes (max_response_mib in the vCenter's configuration); the call was abandoned")]
    ResponseTooLarge {
        /// The SOAP method.
        method: &'static str,
        /// The endpoint (without credentials).
        url: String,
        /// The limit that was hit.
        limit: u64,
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
    /// No host can take the clones (a cluster without DRS whose hosts are all disconnected,
    /// in maintenance mode or without the datastores).
    #[error("placement: {0}")]
    Placement(String),
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
    /// Worth retrying later: the transient faults ([`Fault::is_transient`]), transport
    /// failures and answers that could not be parsed (a proxy's error page, a truncated
    /// body). Configuration, TLS, snapshot and size-limit errors need a change first.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Fault(fault) => fault.is_transient(),
            Error::Transport { .. } | Error::Parse { .. } => true,
            _ => false,
        }
    }

    /// vCenter refused the login ([`Fault::is_login_failure`]).
    pub fn is_login_failure(&self) -> bool {
        self.fault().is_some_and(Fault::is_login_failure)
    }

    /// Metric label such as "duplicate_name" or "transport".
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Fault(fault) => fault.label(),
            Error::Transport { .. } => "transport",
            Error::ResponseTooLarge { .. } => "response_too_large",
            Error::Parse { .. } => "parse",
            Error::Snapshot { .. } => "snapshot",
            Error::Placement(_) => "placement",
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
