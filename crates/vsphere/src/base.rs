//! The vocabulary every other module uses: managed object references and power states.
//! It imports nothing from the crate, so every module can import it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A managed object reference: the vSphere type and the server-side id.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct MoRef {
    /// Managed object type, e.g. `VirtualMachine`, `Task`.
    pub kind: String,
    /// Server-side id, e.g. `vm-42`.
    pub value: String,
}

impl MoRef {
    /// Build a reference from its type and id.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }
}

impl fmt::Display for MoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Power state of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PowerState {
    /// `poweredOn`.
    PoweredOn,
    /// `poweredOff`.
    PoweredOff,
    /// `suspended`.
    Suspended,
}

impl PowerState {
    /// The vim25 name (`poweredOn`, ...), None for anything else.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "poweredOn" => Some(Self::PoweredOn),
            "poweredOff" => Some(Self::PoweredOff),
            "suspended" => Some(Self::Suspended),
            _ => None,
        }
    }
}
