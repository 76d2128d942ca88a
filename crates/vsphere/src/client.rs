//! The session-holding client and the vSphere methods deskpool calls.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::base::MoRef;
use crate::error::Error;
use crate::fault::{Fault, FaultKind};
use crate::options::ClientOptions;
use crate::session::{self, Session};
use crate::soap::{self, req};
use crate::types::{
    About, CustomizationSpecXml, LinkedCloneSpec, Placement, PlacementRule, TaskInfo, TaskState,
    VmInfo,
};
use crate::vm_watch::{self, VmWatch};
use crate::watcher::{self, Cmd};
use crate::xml::{Node, Writer};

/// A property value as placement reads it: text, a reference, a list of references, and
/// `drsConfig.enabled` of a cluster's `configurationEx`.
#[derive(Debug, Default)]
struct PropValue {
    text: String,
    moref: Option<MoRef>,
    morefs: Vec<MoRef>,
    drs_enabled: bool,
}

impl PropValue {
    fn from_node(v: &Node<'_>) -> Self {
        Self {
            text: v.text.trim().to_owned(),
            moref: v.as_moref(),
            morefs: v.children.iter().filter_map(Node::as_moref).collect(),
            drs_enabled: v
                .child("drsConfig")
                .and_then(|d| d.child_text("enabled"))
                .is_some_and(|e| e.trim() == "true"),
        }
    }
}

/// A logged-in vCenter session shared by every task of the process. Cheap to clone.
///
/// Calls that fail with `NotAuthenticated` log in again once and are retried; the task
/// watcher rebuilds its filters after such a re-login. Re-logins are shared: one attempt at a
/// time, and after a failed one, none until its backoff is over (callers get that failure).
#[derive(Clone)]
pub struct Client {
    session: Arc<Session>,
    /// Registrations for the task watcher.
    watcher_tx: mpsc::UnboundedSender<Cmd>,
    _tasks: Arc<BackgroundTasks>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.session.url_display)
            .field("username", &self.session.username)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// Aborts the keepalive and watcher tasks when the last `Client` clone is dropped.
#[derive(Debug)]
struct BackgroundTasks(Vec<tokio::task::AbortHandle>);

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Client {
    /// Connect: RetrieveServiceContent, Login, then start the keepalive and the task watcher.
    ///
    /// Must be called inside a Tokio runtime.
    pub async fn connect(opts: ClientOptions) -> Result<Client, Error> {
        let session = Session::connect(opts).await?;
        let (watcher_tx, watcher_rx) = mpsc::unbounded_channel();
        let keepalive = tokio::spawn(session::keepalive(Arc::clone(&session)));
        let watcher = tokio::spawn(watcher::run(Arc::clone(&session), watcher_rx));
        Ok(Client {
            session,
            watcher_tx,
            _tasks: Arc::new(BackgroundTasks(vec![
                keepalive.abort_handle(),
                watcher.abort_handle(),
            ])),
        })
    }

    /// Log out and stop the background tasks; later calls fail with [`Error::Closed`].
    pub async fn logout(&self) -> Result<(), Error> {
        let _ = self.watcher_tx.send(Cmd::Shutdown);
        let body = Session::this_body(&self.session.content.session_manager);
        let result = self
            .session
            .send("Logout", &body, self.session.call_timeout)
            .await;
        self.session.closed.store(true, Ordering::SeqCst);
        self.session.connected.store(false, Ordering::Relaxed);
        for t in &self._tasks.0 {
            t.abort();
        }
        result.map(drop)
    }

    /// SOAP calls made so far by this client (including login, keepalive and the watcher).
    pub fn soap_calls(&self) -> u64 {
        self.session.soap_calls.load(Ordering::Relaxed)
    }

    /// The last call reached vCenter and the session was valid.
    pub fn is_connected(&self) -> bool {
        !self.session.closed.load(Ordering::Relaxed)
            && self.session.connected.load(Ordering::Relaxed)
    }

    /// Why the session cannot log in again (wrong password, vCenter refusing logins), with
    /// when the next attempt is due; None while logins work. A failed login is a problem of
    /// this vCenter connection, not of whatever call needed it.
    pub fn login_failure(&self) -> Option<String> {
        self.session
            .login_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Product name, API version and instance UUID of the vCenter.
    pub fn about(&self) -> &About {
        &self.session.content.about
    }

    /// Streams changes to the VMs of the whole inventory, in batches, until the [`VmWatch`]
    /// is dropped. The first batch after a start or a re-login lists every VM as
    /// [`crate::VmChange::Present`]. While nothing changes this costs one long poll per
    /// `maxWaitSeconds` (two thirds of the call timeout); while VMs change, at most one call
    /// a second.
    pub fn watch_vms(&self) -> VmWatch {
        vm_watch::start(Arc::clone(&self.session))
    }

    /// Receives a new value after each re-login (filters and views of the old session are gone).
    pub fn subscribe_reconnects(&self) -> watch::Receiver<u64> {
        self.session.reconnect_tx.subscribe()
    }

    /// `SearchIndex.FindByInventoryPath`, e.g. "DC0/vm/golden". None if nothing is there.
    pub async fn find_by_inventory_path(&self, path: &str) -> Result<Option<MoRef>, Error> {
        const M: &str = "FindByInventoryPath";
        let mut w = Writer::new();
        w.moref("_this", &self.session.content.search_index)
            .text("inventoryPath", path);
        let resp = self.session.call(M, w.finish()).await?;
        soap::parse_optional_moref(M, &resp.body()?)
    }

    /// `SearchIndex.FindByUuid(uuid, vmSearch=true, instanceUuid=true)`.
    pub async fn find_vm_by_instance_uuid(&self, uuid: &str) -> Result<Option<MoRef>, Error> {
        const M: &str = "FindByUuid";
        let mut w = Writer::new();
        w.moref("_this", &self.session.content.search_index)
            .text("uuid", uuid)
            .boolean("vmSearch", true)
            .boolean("instanceUuid", true);
        let resp = self.session.call(M, w.finish()).await?;
        soap::parse_optional_moref(M, &resp.body()?)
    }

    /// Resolve a snapshot selector on a VM: `"current"` or a full name path from a root
    /// snapshot such as `"base/v2"`. Missing or ambiguous selectors are an
    /// [`Error::Snapshot`] naming the VM and listing the snapshot paths it has: there is
    /// never a fallback (a linked clone needs exactly the snapshot asked for).
    pub async fn resolve_snapshot(&self, vm: &MoRef, selector: &str) -> Result<MoRef, Error> {
        let mut spec = Writer::new();
        req::filter_spec_objects(&mut spec, &vm.kind, &["name", "snapshot"], &[vm]);
        let found = self
            .session
            .retrieve(&spec.finish(), None, |objs, out| {
                out.extend(objs.iter().map(|oc| {
                    let name = oc.prop("name").map(|n| n.text.to_string());
                    let tree = oc.prop("snapshot").map(soap::parse_snapshot_info);
                    (name, tree.unwrap_or_default())
                }))
            })
            .await?;
        let (name, (current, entries)) = found.into_iter().next().ok_or_else(|| {
            Error::Fault(Fault::new(
                FaultKind::ManagedObjectNotFound {
                    obj: Some(vm.clone()),
                },
                format!("VM {vm} not found"),
            ))
        })?;
        let name = name.unwrap_or_else(|| "?".into());
        soap::select_snapshot(current.as_ref(), &entries, selector).map_err(
            |(problem, candidates)| Error::Snapshot {
                vm: format!("{name} ({vm})"),
                selector: selector.to_owned(),
                problem,
                candidates,
            },
        )
    }

    /// Name, power state, instance UUID and `deskpool.*` extraConfig of one VM; None if the VM
    /// does not exist.
    pub async fn vm_info(&self, vm: &MoRef) -> Result<Option<VmInfo>, Error> {
        let mut spec = Writer::new();
        req::filter_spec_objects(&mut spec, &vm.kind, soap::VM_PROPS, &[vm]);
        let result = self
            .session
            .retrieve(&spec.finish(), None, |objs, out| {
                out.extend(objs.iter().map(soap::vm_info_from))
            })
            .await;
        match result {
            Ok(v) => Ok(v.into_iter().next()),
            Err(Error::Fault(f)) if matches!(f.kind, FaultKind::ManagedObjectNotFound { .. }) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The VMs directly in a folder (not in subfolders): a ContainerView read page by page,
    /// destroyed afterwards.
    pub async fn list_vms(&self, folder: &MoRef) -> Result<Vec<VmInfo>, Error> {
        self.list_vms_in(folder, false).await
    }

    /// Every VM of the inventory (all datacenters, all folders): one ContainerView on the
    /// root folder read page by page. The reconciler's periodic sweep, a few calls per
    /// vCenter however many pools there are.
    pub async fn list_all_vms(&self) -> Result<Vec<VmInfo>, Error> {
        let root = self.session.content.root_folder.clone();
        self.list_vms_in(&root, true).await
    }

    async fn list_vms_in(&self, folder: &MoRef, recursive: bool) -> Result<Vec<VmInfo>, Error> {
        const M: &str = "CreateContainerView";
        let mut w = Writer::new();
        w.moref("_this", &self.session.content.view_manager)
            .moref("container", folder)
            .text("type", "VirtualMachine")
            .boolean("recursive", recursive);
        let resp = self.session.call(M, w.finish()).await?;
        let view = soap::parse_moref(M, &resp.body()?)?;

        let mut spec = Writer::new();
        req::filter_spec_view(&mut spec, "VirtualMachine", soap::VM_PROPS, &view);
        let result = self
            .session
            .retrieve(&spec.finish(), Some(self.session.page_size), |objs, out| {
                out.extend(objs.iter().map(soap::vm_info_from))
            })
            .await;
        // The view lives as long as the session; drop it even when reading failed.
        if let Err(e) = self
            .session
            .call("DestroyView", Session::this_body(&view))
            .await
        {
            tracing::warn!(view = %view, error = %e, "DestroyView failed");
        }
        result
    }

    /// Which placement rule applies to clones into `resource_pool` (see [`PlacementRule`]):
    /// DRS on, a standalone host, or, for a cluster with DRS off, the host to name in
    /// `RelocateSpec.host`: connected, not in maintenance mode, mounting `datastore` (or,
    /// when None, every datastore of `golden`), with the lowest memory use.
    /// [`Error::Placement`] when no host qualifies.
    pub async fn placement(
        &self,
        resource_pool: &MoRef,
        golden: &MoRef,
        datastore: Option<&MoRef>,
    ) -> Result<Placement, Error> {
        let owner = self
            .read_props(resource_pool, &["owner"])
            .await?
            .into_iter()
            .find_map(|(n, v)| (n == "owner").then_some(v))
            .and_then(|v| v.moref)
            .ok_or_else(|| {
                Error::Placement(format!("resource pool {resource_pool} has no owner"))
            })?;
        let cluster = owner.kind == "ClusterComputeResource";
        let paths: &[&str] = if cluster {
            &["name", "host", "configurationEx"]
        } else {
            &["name", "host"]
        };
        let props = self.read_props(&owner, paths).await?;
        let prop = |name: &str| props.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let owner_name = prop("name").map(|v| v.text.clone()).unwrap_or_default();
        let hosts = prop("host").map(|v| v.morefs.clone()).unwrap_or_default();
        if !cluster {
            let host = hosts.into_iter().next();
            return Ok(Placement {
                host: None,
                rule: PlacementRule::StandaloneHost {
                    host: match &host {
                        Some(h) => self.name_of(h).await?,
                        None => owner_name,
                    },
                },
            });
        }
        if prop("configurationEx").is_some_and(|v| v.drs_enabled) {
            return Ok(Placement {
                host: None,
                rule: PlacementRule::Drs {
                    cluster: owner_name,
                },
            });
        }
        let needed: Vec<MoRef> = match datastore {
            Some(d) => vec![d.clone()],
            None => self
                .read_props(golden, &["datastore"])
                .await?
                .into_iter()
                .find(|(n, _)| n == "datastore")
                .map(|(_, v)| v.morefs)
                .unwrap_or_default(),
        };
        let mut usable = Vec::new();
        for h in &hosts {
            let props = self
                .read_props(
                    h,
                    &[
                        "name",
                        "runtime.connectionState",
                        "runtime.inMaintenanceMode",
                        "datastore",
                        "summary.quickStats.overallMemoryUsage",
                    ],
                )
                .await?;
            let prop = |name: &str| props.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            let text = |name: &str| prop(name).map(|v| v.text.as_str()).unwrap_or_default();
            let mounts = prop("datastore")
                .map(|v| v.morefs.as_slice())
                .unwrap_or_default();
            if text("runtime.connectionState") == "connected"
                && text("runtime.inMaintenanceMode") != "true"
                && needed.iter().all(|d| mounts.contains(d))
            {
                let memory: i64 = text("summary.quickStats.overallMemoryUsage")
                    .parse()
                    .unwrap_or(0);
                usable.push((memory, text("name").to_owned(), h.clone()));
            }
        }
        usable.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let count = usable.len();
        match usable.into_iter().next() {
            Some((memory_mb, name, host)) => Ok(Placement {
                host: Some(host),
                rule: PlacementRule::LeastLoadedHost {
                    cluster: owner_name,
                    host: name,
                    memory_mb,
                    usable: count,
                    hosts: hosts.len(),
                },
            }),
            None => Err(Error::Placement(format!(
                "cluster '{owner_name}' has DRS off, so each clone needs a host, but none of its {} hosts is connected, out of maintenance mode and mounts {}: reconnect a host, end maintenance mode, or enable DRS",
                hosts.len(),
                if needed.is_empty() {
                    "the golden VM's datastores".to_owned()
                } else {
                    needed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                }
            ))),
        }
    }

    async fn name_of(&self, obj: &MoRef) -> Result<String, Error> {
        Ok(self
            .read_props(obj, &["name"])
            .await?
            .into_iter()
            .next()
            .map(|(_, v)| v.text)
            .unwrap_or_default())
    }

    /// Some properties of one object, flattened to what placement reads.
    async fn read_props(
        &self,
        obj: &MoRef,
        paths: &[&str],
    ) -> Result<Vec<(String, PropValue)>, Error> {
        let mut spec = Writer::new();
        req::filter_spec_objects(&mut spec, &obj.kind, paths, &[obj]);
        self.session
            .retrieve(&spec.finish(), None, |objs, out| {
                for oc in objs {
                    for (name, val) in &oc.props {
                        out.push((name.to_string(), PropValue::from_node(val)));
                    }
                }
            })
            .await
    }

    /// Start a linked clone (`CloneVM_Task` with `createNewChildDiskBacking` from
    /// `spec.snapshot`). Returns the task.
    pub async fn clone_linked(
        &self,
        golden: &MoRef,
        spec: &LinkedCloneSpec,
    ) -> Result<MoRef, Error> {
        const M: &str = "CloneVM_Task";
        let resp = self.session.call(M, req::clone_vm(golden, spec)).await?;
        soap::parse_moref(M, &resp.body()?)
    }

    /// Start `PowerOnVM_Task`. Returns the task.
    pub async fn power_on(&self, vm: &MoRef) -> Result<MoRef, Error> {
        self.vm_task("PowerOnVM_Task", vm).await
    }

    /// Start `PowerOffVM_Task` (hard power off). Returns the task.
    pub async fn power_off(&self, vm: &MoRef) -> Result<MoRef, Error> {
        self.vm_task("PowerOffVM_Task", vm).await
    }

    /// Start `Destroy_Task` (the VM must be powered off). Returns the task.
    pub async fn destroy(&self, vm: &MoRef) -> Result<MoRef, Error> {
        self.vm_task("Destroy_Task", vm).await
    }

    async fn vm_task(&self, method: &'static str, vm: &MoRef) -> Result<MoRef, Error> {
        let resp = self.session.call(method, Session::this_body(vm)).await?;
        soap::parse_moref(method, &resp.body()?)
    }

    /// Wait for a task to finish through the shared watcher (one long poll for all tasks).
    /// Ok(result) on success (the new VM for a clone); the task's fault as
    /// `Err(Error::Fault)` on failure; `ManagedObjectNotFound` if the task no longer exists.
    pub async fn wait_task(&self, task: &MoRef) -> Result<Option<MoRef>, Error> {
        let info = self.wait_task_info(task).await?;
        match info.state {
            TaskState::Success => Ok(info.result),
            _ => Err(Error::Fault(info.error.unwrap_or_else(|| {
                Fault::new(
                    FaultKind::Other {
                        fault_type: "TaskError".into(),
                    },
                    format!("task {task} failed without a fault"),
                )
            }))),
        }
    }

    /// Like [`Client::wait_task`] but returns the final [`TaskInfo`] (state Success or Error).
    pub async fn wait_task_info(&self, task: &MoRef) -> Result<TaskInfo, Error> {
        let (reply, rx) = oneshot::channel();
        self.watcher_tx
            .send(Cmd::Watch {
                task: task.clone(),
                reply,
            })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Read `Task.info` once (e.g. for a task moref stored before a restart).
    pub async fn task_info(&self, task: &MoRef) -> Result<TaskInfo, Error> {
        self.session.task_info(task).await
    }

    /// `CustomizationSpecManager.GetCustomizationSpec(name)`: the spec body, ready to embed in
    /// [`LinkedCloneSpec::customization`].
    pub async fn customization_spec(&self, name: &str) -> Result<CustomizationSpecXml, Error> {
        const M: &str = "GetCustomizationSpec";
        let csm = self
            .session
            .content
            .customization_spec_manager
            .as_ref()
            .ok_or_else(|| {
                Error::Config(
                    "this endpoint has no CustomizationSpecManager (not a vCenter?)".into(),
                )
            })?;
        let mut w = Writer::new();
        w.moref("_this", csm).text("name", name);
        let resp = self.session.call(M, w.finish()).await?;
        soap::parse_customization_spec(&resp.body()?)
    }
}
