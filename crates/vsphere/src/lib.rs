//! vSphere SOAP client for deskpool: one logged-in session per vCenter, inventory lookups,
//! linked clones from a pinned snapshot, and a task watcher that follows many tasks with a
//! single long poll.
//!
//! ```no_run
//! use deskpool_vsphere::{Client, ClientOptions, LinkedCloneSpec};
//! use secrecy::SecretString;
//!
//! # async fn demo() -> Result<(), deskpool_vsphere::Error> {
//! let url = "https://vc.example.com/sdk".parse().unwrap();
//! let mut opts = ClientOptions::new(url, "deskpool@vsphere.local", SecretString::from("secret"));
//! opts.tls.thumbprint = Some("AB:CD:...".into()); // or tls.ca_file, or public roots
//! let vc = Client::connect(opts).await?;
//!
//! let golden = vc.find_by_inventory_path("DC0/vm/golden").await?.expect("golden VM");
//! let snapshot = vc.resolve_snapshot(&golden, "base/v2").await?;
//! let folder = vc.find_by_inventory_path("DC0/vm/pool-lab").await?.expect("folder");
//! let pool = vc.find_by_inventory_path("DC0/host/DC0_C0/Resources").await?.expect("pool");
//! let uuid = uuid::Uuid::new_v4().to_string();
//! let task = vc
//!     .clone_linked(
//!         &golden,
//!         &LinkedCloneSpec {
//!             name: "lab-001".into(),
//!             folder,
//!             resource_pool: pool,
//!             datastore: None,
//!             host: None,
//!             snapshot,
//!             instance_uuid: uuid.clone(),
//!             extra_config: vec![("deskpool.pool".into(), "lab".into())],
//!             customization: None,
//!             power_on: false,
//!         },
//!     )
//!     .await?;
//! let vm = vc.wait_task(&task).await?.expect("clone returns the VM");
//! vc.wait_task(&vc.power_on(&vm).await?).await?;
//! assert_eq!(vc.find_vm_by_instance_uuid(&uuid).await?, Some(vm));
//! vc.logout().await
//! # }
//! ```

mod base;
mod client;
mod error;
mod fault;
mod options;
mod session;
mod soap;
mod tls;
mod types;
mod vm_watch;
mod watcher;
mod xml;

#[cfg(test)]
mod capture_tests;

pub use base::{MoRef, PowerState};
pub use client::Client;
pub use error::Error;
pub use fault::{Fault, FaultKind};
pub use options::ClientOptions;
pub use tls::TlsOptions;
pub use types::{
    About, CustomizationSpecXml, LinkedCloneSpec, MissingProperty, Placement, PlacementRule,
    TaskInfo, TaskState, VmInfo,
};
pub use vm_watch::{Customization, GuestReport, VmChange, VmEvent, VmExpect, VmWatch};

/// Response parsing entry points, exposed for fuzzing and benchmarks only: not a stable API.
#[doc(hidden)]
pub mod __private {
    use crate::error::Error;
    use crate::types::{TaskInfo, VmInfo};

    /// Decode a RetrievePropertiesEx response into VmInfo (what `list_vms` does per page).
    pub fn parse_vm_page(bytes: &[u8]) -> Result<(Vec<VmInfo>, Option<String>), Error> {
        let resp = crate::soap::decode("RetrievePropertiesEx", bytes)?;
        let (objs, token) = crate::soap::parse_retrieve_result("RetrievePropertiesEx", resp)?;
        Ok((objs.iter().map(crate::soap::vm_info_from).collect(), token))
    }

    /// Decode any response through every typed reader; used by the no-panic property test.
    pub fn parse_any(bytes: &[u8]) -> Result<(), Error> {
        let resp = crate::soap::decode("Any", bytes)?;
        let _ = crate::soap::parse_service_content(&resp);
        let _ = crate::soap::parse_optional_moref("Any", &resp);
        let _ = crate::soap::parse_customization_spec(&resp);
        if let Some(rv) = resp.child("returnval") {
            let _: Result<TaskInfo, _> = crate::soap::parse_task_info("Any", rv);
            let _ = crate::soap::parse_snapshot_info(rv);
        }
        let _ = crate::soap::parse_update_set(resp.clone());
        let (objs, _) = crate::soap::parse_retrieve_result("Any", resp)?;
        let _: Vec<VmInfo> = objs.iter().map(crate::soap::vm_info_from).collect();
        Ok(())
    }
}
