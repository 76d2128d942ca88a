//! Resolving a pool's inventory paths (golden VM, snapshot, folder, resource pool, datastore,
//! customization spec) to managed objects.

use deskpool_domain::PoolSpec;
use deskpool_vsphere::{Client, CustomizationSpecXml, Error as VsError, MoRef, PlacementRule};

/// What a pool's clones are made from and put into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inventory {
    pub(crate) golden: MoRef,
    pub(crate) snapshot: MoRef,
    pub(crate) folder: MoRef,
    pub(crate) resource_pool: MoRef,
    pub(crate) datastore: Option<MoRef>,
    /// `RelocateSpec.host`: set when the resource pool's cluster has DRS off.
    pub(crate) host: Option<MoRef>,
    /// The placement rule that applies (shown by `deskpool check`).
    pub(crate) placement: PlacementRule,
    pub(crate) customization: Option<CustomizationSpecXml>,
}

/// The spec fields resolution depends on, as one string: equal fingerprints resolve to the
/// same objects, so a resize or another change that touches none of them keeps the cache.
pub(crate) fn fingerprint(spec: &PoolSpec) -> String {
    [
        spec.vcenter.as_str(),
        &spec.datacenter,
        &spec.golden_vm,
        &spec.snapshot,
        &spec.folder,
        &spec.resource_pool,
        spec.datastore.as_deref().unwrap_or(""),
        spec.customization_spec.as_deref().unwrap_or(""),
    ]
    .join("\u{1f}")
}

/// Why resolution failed.
#[derive(Debug)]
pub(crate) enum ResolveError {
    /// The spec names something that does not exist: waits for a spec change.
    Permanent(String),
    /// vCenter could not be asked; try again later.
    Transient(VsError),
}

async fn find(client: &Client, what: &str, path: &str) -> Result<MoRef, ResolveError> {
    match client.find_by_inventory_path(path).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(ResolveError::Permanent(format!(
            "{what} '{path}' not found in vCenter: fix the pool's path or create it"
        ))),
        Err(e) if e.is_transient() => Err(ResolveError::Transient(e)),
        Err(e) => Err(ResolveError::Permanent(format!("{what} '{path}': {e}"))),
    }
}

/// Resolves every path of the spec. A missing object or snapshot is permanent, with a
/// message that says what to fix; never a fallback to a full clone.
pub(crate) async fn resolve(client: &Client, spec: &PoolSpec) -> Result<Inventory, ResolveError> {
    let golden_path = spec.golden_vm_path();
    let golden = find(client, "golden VM", &golden_path).await?;
    let snapshot = match client.resolve_snapshot(&golden, &spec.snapshot).await {
        Ok(s) => s,
        Err(e) if e.is_transient() => return Err(ResolveError::Transient(e)),
        Err(e) => {
            return Err(ResolveError::Permanent(format!(
                "{e} ('{golden_path}'): linked clones need a snapshot; take one or change the pool's snapshot"
            )))
        }
    };
    let folder = find(client, "folder", &spec.folder_path()).await?;
    let rp_path = spec.resource_pool_path();
    let mut resource_pool = find(client, "resource pool, cluster or host", &rp_path).await?;
    if resource_pool.kind != "ResourcePool" {
        // A cluster or host: use its root resource pool.
        resource_pool = find(
            client,
            "root resource pool",
            &format!("{rp_path}/Resources"),
        )
        .await?;
    }
    let datastore = match spec.datastore_path() {
        Some(p) => Some(find(client, "datastore", &p).await?),
        None => None,
    };
    // A cluster without DRS refuses clones that name no host: pick one now (re-picked at
    // every resolution, i.e. at least once per sweep).
    let placement = match client
        .placement(&resource_pool, &golden, datastore.as_ref())
        .await
    {
        Ok(p) => p,
        Err(e) if e.is_transient() => return Err(ResolveError::Transient(e)),
        Err(e) => {
            return Err(ResolveError::Permanent(format!(
                "resource pool '{rp_path}': {e}"
            )))
        }
    };
    let customization = match &spec.customization_spec {
        Some(name) => match client.customization_spec(name).await {
            Ok(c) => Some(c),
            Err(e) if e.is_transient() => return Err(ResolveError::Transient(e)),
            Err(e) => {
                return Err(ResolveError::Permanent(format!(
                    "guest customization spec '{name}': {e}"
                )))
            }
        },
        None => None,
    };
    Ok(Inventory {
        golden,
        snapshot,
        folder,
        resource_pool,
        datastore,
        host: placement.host,
        placement: placement.rule,
        customization,
    })
}
