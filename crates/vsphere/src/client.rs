//! The session-holding client and the vSphere methods deskpool calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;
use url::Url;

use crate::error::{Error, Fault, FaultKind};
use crate::soap::{self, req, ObjectContent, ServiceContent};
use crate::tls::{self, TlsOptions};
use crate::types::{
    About, CustomizationSpecXml, LinkedCloneSpec, MoRef, TaskInfo, TaskState, VmInfo,
};
use crate::watcher::{self, Cmd};
use crate::xml::{Node, Writer};

/// Everything needed to connect to one vCenter.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// SDK endpoint, e.g. `https://vc.example.com/sdk` (plain `http` is allowed for simulators).
    pub url: Url,
    /// vCenter user.
    pub username: String,
    /// vCenter password (never logged; Debug prints it redacted).
    pub password: SecretString,
    /// Certificate trust.
    pub tls: TlsOptions,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of one SOAP call (the watcher's long polls stay below it).
    pub call_timeout: Duration,
    /// Send `CurrentTime` when no call was made for this long, so the session does not expire.
    pub keepalive_interval: Duration,
    /// `maxObjects` per RetrievePropertiesEx page in [`Client::list_vms`].
    pub page_size: u32,
    /// A waited-for task the property collector says nothing about for this long is read
    /// directly, in case an update was missed (default 60 s).
    pub task_silence: Duration,
}

impl ClientOptions {
    /// Options with defaults: system-independent public roots, 10 s connect timeout,
    /// 60 s call timeout, keepalive every 5 minutes, 1000 objects per page, silent tasks read
    /// directly after 60 s.
    pub fn new(url: Url, username: impl Into<String>, password: SecretString) -> Self {
        Self {
            url,
            username: username.into(),
            password,
            tls: TlsOptions::default(),
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(300),
            task_silence: Duration::from_secs(60),
            page_size: 1000,
        }
    }
}

/// A logged-in vCenter session shared by every task of the process. Cheap to clone.
///
/// Calls that fail with `NotAuthenticated` log in again once and are retried; the task
/// watcher rebuilds its filters after such a re-login.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    _tasks: Arc<BackgroundTasks>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.url_display)
            .field("username", &self.inner.username)
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

pub(crate) struct Inner {
    http: reqwest::Client,
    url: Url,
    pub(crate) url_display: String,
    username: String,
    password: SecretString,
    pub(crate) call_timeout: Duration,
    keepalive_interval: Duration,
    pub(crate) task_silence: Duration,
    page_size: u32,
    pub(crate) content: ServiceContent,
    cookies: RwLock<HashMap<String, String>>,
    soap_calls: AtomicU64,
    connected: AtomicBool,
    closed: AtomicBool,
    last_activity: Mutex<Instant>,
    session_gen: AtomicU64,
    relogin_lock: tokio::sync::Mutex<()>,
    reconnect_tx: watch::Sender<u64>,
    watcher_tx: mpsc::UnboundedSender<Cmd>,
}

const SOAP_ACTION: &str = "urn:vim25/6.5";

/// A successful response body, parsed on demand so large results are read once, into
/// strings that borrow from it.
#[derive(Debug)]
pub(crate) struct Response {
    method: &'static str,
    bytes: Vec<u8>,
}

impl Response {
    /// The element inside `soapenv:Body` (e.g. `RetrievePropertiesExResponse`).
    pub(crate) fn body(&self) -> Result<Node<'_>, Error> {
        soap::decode(self.method, &self.bytes)
    }
}

impl Inner {
    /// One HTTP round trip, no retry.
    async fn send(
        &self,
        method: &'static str,
        body: &str,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let span = tracing::info_span!("soap", method, duration_ms = tracing::field::Empty);
        let started = Instant::now();
        let result = self
            .send_inner(method, body, timeout)
            .instrument(span.clone())
            .await;
        let ms = started.elapsed().as_millis() as u64;
        span.record("duration_ms", ms);
        let _e = span.enter();
        match &result {
            Ok(_) => tracing::debug!(duration_ms = ms, "soap call ok"),
            Err(e) => tracing::debug!(duration_ms = ms, error = %e, "soap call failed"),
        }
        result
    }

    async fn send_inner(
        &self,
        method: &'static str,
        body: &str,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let envelope = soap::envelope(method, body);
        let cookie_header = {
            let jar = self.cookies.read().unwrap_or_else(|p| p.into_inner());
            jar.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut request = self
            .http
            .post(self.url.clone())
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", SOAP_ACTION)
            .body(envelope);
        if !cookie_header.is_empty() {
            request = request.header(reqwest::header::COOKIE, cookie_header);
        }
        self.soap_calls.fetch_add(1, Ordering::Relaxed);
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let transport = |detail: String, source: Option<reqwest::Error>| Error::Transport {
            method,
            url: self.url_display.clone(),
            detail,
            source,
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.connected.store(false, Ordering::Relaxed);
                let detail = if e.is_timeout() {
                    format!("timed out after {timeout:?}")
                } else if e.is_connect() {
                    "connection failed".to_owned()
                } else {
                    "request failed".to_owned()
                };
                return Err(transport(detail, Some(e)));
            }
        };
        let status = response.status();
        for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
            if let Some((name, val)) = value
                .to_str()
                .ok()
                .and_then(|s| s.split(';').next())
                .and_then(|kv| kv.split_once('='))
            {
                self.cookies
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.trim().to_owned(), val.trim().to_owned());
            }
        }
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                self.connected.store(false, Ordering::Relaxed);
                return Err(transport("reading the response failed".to_owned(), Some(e)));
            }
        };
        if status.is_success() {
            self.connected.store(true, Ordering::Relaxed);
            return Ok(Response {
                method,
                bytes: bytes.into(),
            });
        }
        // SOAP faults come as HTTP 500; anything else is a proxy or server problem.
        if status == reqwest::StatusCode::INTERNAL_SERVER_ERROR {
            if let Err(Error::Fault(f)) = soap::decode(method, &bytes) {
                self.connected
                    .store(f.kind != FaultKind::NotAuthenticated, Ordering::Relaxed);
                return Err(Error::Fault(f));
            }
        }
        self.connected.store(false, Ordering::Relaxed);
        Err(transport(
            format!("HTTP status {status} without a SOAP fault"),
            None,
        ))
    }

    /// A call with the session's retry rule: on NotAuthenticated, log in again once and retry.
    pub(crate) async fn call(&self, method: &'static str, body: String) -> Result<Response, Error> {
        self.call_with_timeout(method, body, self.call_timeout)
            .await
    }

    pub(crate) async fn call_with_timeout(
        &self,
        method: &'static str,
        body: String,
        timeout: Duration,
    ) -> Result<Response, Error> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        let generation = self.session_generation();
        match self.send(method, &body, timeout).await {
            Err(Error::Fault(f)) if f.kind == FaultKind::NotAuthenticated => {
                tracing::info!(
                    method,
                    "vCenter session is not authenticated; logging in again"
                );
                self.relogin(generation).await?;
                self.send(method, &body, timeout).await
            }
            other => other,
        }
    }

    pub(crate) fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnect_tx.subscribe()
    }

    pub(crate) fn session_generation(&self) -> u64 {
        self.session_gen.load(Ordering::SeqCst)
    }

    /// Log in again unless another task already did since `seen` was read.
    pub(crate) async fn relogin(&self, seen: u64) -> Result<(), Error> {
        let _guard = self.relogin_lock.lock().await;
        if self.session_generation() != seen {
            return Ok(());
        }
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        self.cookies
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.login().await?;
        let generation = self.session_gen.fetch_add(1, Ordering::SeqCst) + 1;
        self.reconnect_tx.send_replace(generation);
        tracing::info!(generation, "logged in to vCenter again");
        Ok(())
    }

    async fn login(&self) -> Result<(), Error> {
        let mut w = Writer::new();
        w.moref("_this", &self.content.session_manager)
            .text("userName", &self.username)
            .text("password", self.password.expose_secret());
        self.send("Login", &w.finish(), self.call_timeout)
            .await
            .map(drop)
    }

    fn this_body(this: &MoRef) -> String {
        let mut w = Writer::new();
        w.moref("_this", this);
        w.finish()
    }

    /// RetrievePropertiesEx + ContinueRetrievePropertiesEx until the token runs out; each page
    /// is handed to `page` so large inventories are converted as they arrive.
    async fn retrieve<T>(
        &self,
        spec: &str,
        max_objects: Option<u32>,
        mut page: impl FnMut(Vec<ObjectContent<'_>>, &mut Vec<T>),
    ) -> Result<Vec<T>, Error> {
        let pc = &self.content.property_collector;
        let mut w = Writer::new();
        w.moref("_this", pc)
            .open("specSet")
            .raw_trusted(spec)
            .close("specSet")
            .open("options");
        if let Some(n) = max_objects {
            w.text("maxObjects", &n.to_string());
        }
        w.close("options");
        let resp = self.call("RetrievePropertiesEx", w.finish()).await?;
        let (objs, mut token) = soap::parse_retrieve_result("RetrievePropertiesEx", resp.body()?)?;
        let mut out = Vec::new();
        page(objs, &mut out);
        while let Some(t) = token.take() {
            let mut w = Writer::new();
            w.moref("_this", pc).text("token", &t);
            let resp = self
                .call("ContinueRetrievePropertiesEx", w.finish())
                .await?;
            let (objs, next) =
                soap::parse_retrieve_result("ContinueRetrievePropertiesEx", resp.body()?)?;
            page(objs, &mut out);
            token = next;
        }
        Ok(out)
    }

    /// Drops a watcher's PropertyCollector (with its filters, cancelling a long poll still
    /// running on it) and its view, in the background and best effort: after a failed round
    /// the watcher starts over with new ones, and the old ones would otherwise live, and be
    /// kept up to date by vCenter, until the session ends. Nothing to do after a re-login.
    pub(crate) fn discard_watch(self: &Arc<Self>, generation: u64, pc: MoRef, view: MoRef) {
        if generation != self.session_generation() {
            return;
        }
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            for (method, obj) in [("DestroyPropertyCollector", &pc), ("DestroyView", &view)] {
                if let Err(e) = inner.call(method, Self::this_body(obj)).await {
                    tracing::debug!(%obj, error = %e, "{method} of an abandoned watch failed");
                }
            }
        });
    }

    /// `Task.info` read once.
    pub(crate) async fn task_info(&self, task: &MoRef) -> Result<TaskInfo, Error> {
        let mut spec = Writer::new();
        req::filter_spec_objects(&mut spec, &task.kind, &["info"], &[task]);
        let infos = self
            .retrieve(
                &spec.finish(),
                None,
                |objs, out: &mut Vec<Result<TaskInfo, Error>>| {
                    for oc in objs {
                        if let Some(v) = oc.prop("info") {
                            out.push(soap::parse_task_info("RetrievePropertiesEx", v));
                        }
                    }
                },
            )
            .await?;
        infos.into_iter().next().unwrap_or_else(|| {
            Err(Error::Fault(Fault::new(
                FaultKind::ManagedObjectNotFound {
                    obj: Some(task.clone()),
                },
                format!("task {task} has no info (it no longer exists)"),
            )))
        })
    }
}

impl Client {
    /// Connect: RetrieveServiceContent, Login, then start the keepalive and the task watcher.
    ///
    /// Must be called inside a Tokio runtime.
    pub async fn connect(opts: ClientOptions) -> Result<Client, Error> {
        let mut url = opts.url.clone();
        match url.scheme() {
            "https" | "http" => {}
            s => {
                return Err(Error::Config(format!(
                    "vCenter URL scheme must be https or http, not '{s}'"
                )))
            }
        }
        // Credentials belong in the options, never in a URL that may be logged.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if url.scheme() == "http" {
            tracing::warn!(url = %url, "connecting to vCenter over plain http (simulator only)");
        }
        let tls_config = tls::client_config(&opts.tls)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config)
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;

        // Bootstrap without a session to learn the managed object ids.
        let bootstrap = Bootstrap {
            http: &http,
            url: &url,
            timeout: opts.call_timeout,
        };
        let content = bootstrap.service_content().await?;
        let (reconnect_tx, _) = watch::channel(0u64);
        let (watcher_tx, watcher_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            http,
            url_display: url.to_string(),
            url,
            username: opts.username,
            password: opts.password,
            call_timeout: opts.call_timeout,
            keepalive_interval: opts.keepalive_interval,
            task_silence: opts.task_silence.max(Duration::from_millis(100)),
            page_size: opts.page_size.max(1),
            content,
            cookies: RwLock::new(HashMap::new()),
            soap_calls: AtomicU64::new(1),
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_activity: Mutex::new(Instant::now()),
            session_gen: AtomicU64::new(0),
            relogin_lock: tokio::sync::Mutex::new(()),
            reconnect_tx,
            watcher_tx,
        });
        inner.login().await?;
        tracing::info!(
            url = %inner.url_display,
            version = %inner.content.about.full_name,
            "logged in to vCenter"
        );

        let keepalive = tokio::spawn(keepalive(Arc::clone(&inner)));
        let watcher = tokio::spawn(watcher::run(Arc::clone(&inner), watcher_rx));
        Ok(Client {
            inner,
            _tasks: Arc::new(BackgroundTasks(vec![
                keepalive.abort_handle(),
                watcher.abort_handle(),
            ])),
        })
    }

    /// Log out and stop the background tasks; later calls fail with [`Error::Closed`].
    pub async fn logout(&self) -> Result<(), Error> {
        let _ = self.inner.watcher_tx.send(Cmd::Shutdown);
        let body = Inner::this_body(&self.inner.content.session_manager);
        let result = self
            .inner
            .send("Logout", &body, self.inner.call_timeout)
            .await;
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.connected.store(false, Ordering::Relaxed);
        for t in &self._tasks.0 {
            t.abort();
        }
        result.map(drop)
    }

    /// SOAP calls made so far by this client (including login, keepalive and the watcher).
    pub fn soap_calls(&self) -> u64 {
        self.inner.soap_calls.load(Ordering::Relaxed)
    }

    /// The last call reached vCenter and the session was valid.
    pub fn is_connected(&self) -> bool {
        !self.inner.closed.load(Ordering::Relaxed) && self.inner.connected.load(Ordering::Relaxed)
    }

    /// Product name, API version and instance UUID of the vCenter.
    pub fn about(&self) -> &About {
        &self.inner.content.about
    }

    /// Receives a new value after each re-login (filters and views of the old session are gone).
    pub fn subscribe_reconnects(&self) -> watch::Receiver<u64> {
        self.inner.reconnect_tx.subscribe()
    }

    /// `SearchIndex.FindByInventoryPath`, e.g. "DC0/vm/golden". None if nothing is there.
    pub async fn find_by_inventory_path(&self, path: &str) -> Result<Option<MoRef>, Error> {
        const M: &str = "FindByInventoryPath";
        let mut w = Writer::new();
        w.moref("_this", &self.inner.content.search_index)
            .text("inventoryPath", path);
        let resp = self.inner.call(M, w.finish()).await?;
        soap::parse_optional_moref(M, &resp.body()?)
    }

    /// `SearchIndex.FindByUuid(uuid, vmSearch=true, instanceUuid=true)`.
    pub async fn find_vm_by_instance_uuid(&self, uuid: &str) -> Result<Option<MoRef>, Error> {
        const M: &str = "FindByUuid";
        let mut w = Writer::new();
        w.moref("_this", &self.inner.content.search_index)
            .text("uuid", uuid)
            .boolean("vmSearch", true)
            .boolean("instanceUuid", true);
        let resp = self.inner.call(M, w.finish()).await?;
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
            .inner
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
            .inner
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
        let root = self.inner.content.root_folder.clone();
        self.list_vms_in(&root, true).await
    }

    async fn list_vms_in(&self, folder: &MoRef, recursive: bool) -> Result<Vec<VmInfo>, Error> {
        const M: &str = "CreateContainerView";
        let mut w = Writer::new();
        w.moref("_this", &self.inner.content.view_manager)
            .moref("container", folder)
            .text("type", "VirtualMachine")
            .boolean("recursive", recursive);
        let resp = self.inner.call(M, w.finish()).await?;
        let view = soap::parse_moref(M, &resp.body()?)?;

        let mut spec = Writer::new();
        req::filter_spec_view(&mut spec, "VirtualMachine", soap::VM_PROPS, &view);
        let result = self
            .inner
            .retrieve(&spec.finish(), Some(self.inner.page_size), |objs, out| {
                out.extend(objs.iter().map(soap::vm_info_from))
            })
            .await;
        // The view lives as long as the session; drop it even when reading failed.
        if let Err(e) = self
            .inner
            .call("DestroyView", Inner::this_body(&view))
            .await
        {
            tracing::warn!(view = %view, error = %e, "DestroyView failed");
        }
        result
    }

    /// Start a linked clone (`CloneVM_Task` with `createNewChildDiskBacking` from
    /// `spec.snapshot`). Returns the task.
    pub async fn clone_linked(
        &self,
        golden: &MoRef,
        spec: &LinkedCloneSpec,
    ) -> Result<MoRef, Error> {
        const M: &str = "CloneVM_Task";
        let resp = self.inner.call(M, req::clone_vm(golden, spec)).await?;
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
        let resp = self.inner.call(method, Inner::this_body(vm)).await?;
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
        self.inner
            .watcher_tx
            .send(Cmd::Watch {
                task: task.clone(),
                reply,
            })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Read `Task.info` once (e.g. for a task moref stored before a restart).
    pub async fn task_info(&self, task: &MoRef) -> Result<TaskInfo, Error> {
        self.inner.task_info(task).await
    }

    /// `CustomizationSpecManager.GetCustomizationSpec(name)`: the spec body, ready to embed in
    /// [`LinkedCloneSpec::customization`].
    pub async fn customization_spec(&self, name: &str) -> Result<CustomizationSpecXml, Error> {
        const M: &str = "GetCustomizationSpec";
        let csm = self
            .inner
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
        let resp = self.inner.call(M, w.finish()).await?;
        soap::parse_customization_spec(&resp.body()?)
    }
}

struct Bootstrap<'a> {
    http: &'a reqwest::Client,
    url: &'a Url,
    timeout: Duration,
}

impl Bootstrap<'_> {
    async fn service_content(&self) -> Result<ServiceContent, Error> {
        const M: &str = "RetrieveServiceContent";
        let mut w = Writer::new();
        w.moref("_this", &MoRef::new("ServiceInstance", "ServiceInstance"));
        let transport = |detail: String, source| Error::Transport {
            method: M,
            url: self.url.to_string(),
            detail,
            source,
        };
        let resp = self
            .http
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", SOAP_ACTION)
            .body(soap::envelope(M, &w.finish()))
            .send()
            .await
            .map_err(|e| transport("connection failed".into(), Some(e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport("reading the response failed".into(), Some(e)))?;
        if !(status.is_success() || status == reqwest::StatusCode::INTERNAL_SERVER_ERROR) {
            return Err(transport(
                format!("HTTP status {status} (is this a vSphere /sdk URL?)"),
                None,
            ));
        }
        soap::parse_service_content(&soap::decode(M, &bytes)?)
    }
}

/// Keep the session alive with `CurrentTime` while nothing else talks to vCenter.
async fn keepalive(inner: Arc<Inner>) {
    let interval = inner.keepalive_interval.max(Duration::from_millis(100));
    let tick = (interval / 4).max(Duration::from_millis(50));
    let service_instance = MoRef::new("ServiceInstance", "ServiceInstance");
    loop {
        tokio::time::sleep(tick).await;
        if inner.closed.load(Ordering::Relaxed) {
            return;
        }
        let idle = inner
            .last_activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        if idle < interval {
            continue;
        }
        if let Err(e) = inner
            .call("CurrentTime", Inner::this_body(&service_instance))
            .await
        {
            tracing::warn!(error = %e, "vCenter keepalive failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted_in_debug_output() {
        let mut o = ClientOptions::new(
            "https://vc.example/sdk".parse().unwrap(),
            "user",
            SecretString::from("s3cr3t-Zq".to_string()),
        );
        o.tls.thumbprint = Some("ab".repeat(32));
        let dbg = format!("{o:?}");
        assert!(!dbg.contains("s3cr3t-Zq"), "{dbg}");
        assert!(dbg.contains("REDACTED"), "{dbg}");
    }
}
