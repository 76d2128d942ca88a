//! A vCenter simulator for tests: wraps the `deskpool-vcsim` binary built from
//! `tests/vcsim` (govmomi 0.24.2's simulator plus asynchronous clone/power
//! tasks, DuplicateName, fault injection and counters).
//!
//! ```no_run
//! # async fn demo() {
//! use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};
//! let sim = Vcsim::start(VcsimOptions { folders: vec!["pool-a".into()], ..Default::default() }).await;
//! // SOAP endpoint: sim.sdk_url, login sim.username / sim.password,
//! // golden VM at sim.golden_path ("DC0/vm/golden") with snapshot "base".
//! let stats = sim.stats().await;
//! assert_eq!(stats.clone_requests, 0);
//! # }
//! ```
//!
//! The binary comes from `DESKPOOL_VCSIM_BIN` if set, else from
//! `tests/vcsim/build.sh` (run once per process; cached under `.cache/vcsim`).
//! The simulator process is killed when the [`Vcsim`] is dropped, and exits on
//! its own if the test process dies (it watches its stdin).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

/// How long `start`/`restart` wait for the simulator to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Start-up options (all map to `deskpool-vcsim` flags).
#[derive(Debug, Clone)]
pub struct VcsimOptions {
    /// How long a `CloneVM_Task` stays queued/running before it completes.
    pub clone_delay: Duration,
    /// Same for `PowerOnVM_Task`, `PowerOffVM_Task` and `Destroy_Task`.
    pub power_delay: Duration,
    /// Fraction of clone tasks that fail with `InsufficientResourcesFault`.
    pub clone_fail_rate: f64,
    /// Fraction of those injected failures that leave the VM behind.
    pub fail_leave_vm_rate: f64,
    /// Idle timeout of SOAP sessions (`None`: never expire when idle). The
    /// simulator checks every `session_idle`, so expiry happens between 1x and 2x.
    pub session_idle: Option<Duration>,
    /// VM folders created under `DC0/vm`.
    pub folders: Vec<String>,
    /// Snapshot tree of the golden VM as paths (`["base", "base/v2"]`); parents
    /// first, the last one becomes the current snapshot.
    pub snapshots: Vec<String>,
    /// Seed of the failure-injection RNG.
    pub seed: u64,
    /// How often a waiting `WaitForUpdatesEx` looks for updates. govmomi 0.24.2 hard-codes
    /// 250 ms; the harness patches it to this (default 5 ms, close to a real vCenter, which
    /// answers as soon as a watched property changes). Raise it when the simulator holds
    /// thousands of VMs: each look re-evaluates the filters.
    pub update_tick: Duration,
}

impl Default for VcsimOptions {
    fn default() -> Self {
        Self {
            clone_delay: Duration::ZERO,
            power_delay: Duration::ZERO,
            clone_fail_rate: 0.0,
            fail_leave_vm_rate: 0.0,
            session_idle: None,
            folders: Vec::new(),
            snapshots: vec!["base".to_owned()],
            seed: 0,
            update_tick: Duration::from_millis(5),
        }
    }
}

/// Counters from `GET /stats`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// SOAP calls by method name (first element of `soapenv:Body`).
    pub soap_calls: BTreeMap<String, u64>,
    pub soap_calls_total: u64,
    pub clone_requests: u64,
    /// Clone requests without `spec.snapshot`, or with a `diskMoveType` (spec
    /// or any `location.disk[]`) other than `createNewChildDiskBacking`.
    pub non_linked_clones: u64,
    pub clones_succeeded: u64,
    pub clones_failed: u64,
    pub injected_clone_failures: u64,
    pub duplicate_name_errors: u64,
    pub clones_in_flight: u64,
    pub max_clones_in_flight: u64,
    /// Keyed by destination folder name.
    pub clones_in_flight_by_folder: BTreeMap<String, u64>,
    pub max_clones_in_flight_by_folder: BTreeMap<String, u64>,
    /// VMs in the inventory (the VPX model starts with 4, golden included).
    pub vm_count: u64,
}

impl Stats {
    /// Number of SOAP calls of one method (0 if never called).
    pub fn calls(&self, method: &str) -> u64 {
        self.soap_calls.get(method).copied().unwrap_or(0)
    }
}

/// One `CloneVM_Task` from `GET /clones`: when the simulator received it and when its task
/// ended, in microseconds since the Unix epoch (the clock PostgreSQL's `now()` and
/// `SystemTime` read).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CloneRecord {
    pub name: String,
    /// Destination folder name.
    pub folder: String,
    pub received_us: i64,
    /// 0 while the task runs.
    pub done_us: i64,
    pub ok: bool,
    /// The request asked for `spec.powerOn` (the task then includes the power-on delay).
    pub power_on: bool,
}

/// One VM from `GET /vms`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VmInfo {
    pub name: String,
    pub moref: String,
    /// `poweredOn`, `poweredOff` or `suspended`.
    pub power_state: String,
    pub instance_uuid: String,
    pub extra_config: BTreeMap<String, String>,
    /// Name of the parent folder (`vm` for `DC0/vm` itself).
    pub folder: String,
    pub folder_moref: String,
    /// Number of snapshots in the VM's tree.
    pub snapshots: u32,
    /// Moref of `snapshot.currentSnapshot`, empty if none.
    pub current_snapshot: String,
    /// `guest.toolsRunningStatus` (`guestToolsRunning` once VMware Tools run).
    pub tools_running_status: String,
    /// `guest.ipAddress`, empty when unset.
    pub ip_address: String,
}

/// A `CloneVM_Task` fault of the test's choosing (`POST /faults/clone`): the clones it matches
/// end in error with that fault and its message, as vCenter reports it.
///
/// ```no_run
/// # async fn demo(sim: &deskpool_testkit::vcsim::Vcsim) {
/// use deskpool_testkit::vcsim::{CloneFault, CloneFaultKind};
/// // The first clone from snapshot "v2" fails with InvalidDatastore.
/// sim.add_clone_fault(CloneFault::new(CloneFaultKind::InvalidDatastore).snapshot("v2")).await;
/// // Every clone named lab-00* fails with a transient SystemError.
/// sim.add_clone_fault(CloneFault::new(CloneFaultKind::Transient).name("lab-00*").always()).await;
/// # }
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct CloneFault {
    /// The fault the task ends with.
    pub fault: CloneFaultKind,
    /// A glob on the clone's name (`lab-0*`, `?` and `[..]` as in Go's `path.Match`); empty:
    /// every name.
    pub name: String,
    /// The clone spec's snapshot by name (`v2`) or moref; empty: any snapshot (or none).
    pub snapshot: String,
    /// How many matching clones fail: 1 = only the first, 0 = every one.
    pub times: u64,
    /// Make the VM before failing the task (a half-finished clone left behind).
    pub leave_vm: bool,
    /// The fault's message (the task's `localizedMessage`); empty: one naming the fault.
    pub message: String,
}

/// Fault types [`CloneFault`] can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CloneFaultKind {
    /// `DuplicateName` (without a VM holding the name, unless one exists).
    DuplicateName,
    /// `InvalidDatastore`: a wrong setting.
    InvalidDatastore,
    /// `VmConfigFault`: a wrong setting.
    VmConfigFault,
    /// `CustomizationFault`: a wrong setting.
    CustomizationFault,
    /// A fault that goes away by itself: a `SystemError`.
    Transient,
    /// `SystemError`.
    SystemError,
    /// `HostCommunication`.
    HostCommunication,
    /// `InaccessibleDatastore`.
    InaccessibleDatastore,
    /// `InsufficientResourcesFault`.
    InsufficientResources,
    /// `TaskInProgress`.
    TaskInProgress,
    /// `NoPermission` on the folder (`VirtualMachine.Provisioning.Clone`).
    NoPermission,
}

impl CloneFault {
    /// The first clone (of any name, from any snapshot) fails with `fault`.
    pub fn new(fault: CloneFaultKind) -> Self {
        Self {
            fault,
            name: String::new(),
            snapshot: String::new(),
            times: 1,
            leave_vm: false,
            message: String::new(),
        }
    }

    /// Only clones whose name matches this glob.
    pub fn name(mut self, glob: &str) -> Self {
        self.name = glob.to_owned();
        self
    }

    /// Only clones from this snapshot (name or moref).
    pub fn snapshot(mut self, snapshot: &str) -> Self {
        self.snapshot = snapshot.to_owned();
        self
    }

    /// The first `n` matching clones fail (`n` >= 1).
    pub fn times(mut self, n: u64) -> Self {
        self.times = n.max(1);
        self
    }

    /// Every matching clone fails.
    pub fn always(mut self) -> Self {
        self.times = 0;
        self
    }

    /// The VM is made before the task fails.
    pub fn leave_vm(mut self) -> Self {
        self.leave_vm = true;
        self
    }

    /// The fault's message.
    pub fn message(mut self, message: &str) -> Self {
        self.message = message.to_owned();
        self
    }
}

/// A [`CloneFault`] as the harness holds it, with how often it fired.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CloneFaultRule {
    pub id: u64,
    pub fault: String,
    pub name: String,
    pub snapshot: String,
    pub times: u64,
    pub leave_vm: bool,
    pub message: String,
    /// Clones failed by this rule so far.
    pub raised: u64,
}

#[derive(Debug, Deserialize)]
struct CloneFaultRules {
    rules: Vec<CloneFaultRule>,
}

#[derive(Debug, Deserialize)]
struct Ready {
    sdk_url: String,
    control_url: String,
    username: String,
    password: String,
    golden_path: String,
    golden_moref: String,
}

/// A running simulator. Killed on drop.
#[derive(Debug)]
pub struct Vcsim {
    /// SOAP endpoint, e.g. `http://127.0.0.1:40805/sdk`.
    pub sdk_url: String,
    /// Base URL of the JSON control API.
    pub control_url: String,
    pub username: String,
    pub password: String,
    /// Inventory path of the golden VM: `DC0/vm/golden`.
    pub golden_path: String,
    /// Moref of the golden VM (changes nothing across restarts, but do not rely on it).
    pub golden_moref: String,
    opts: VcsimOptions,
    http: reqwest::Client,
    child: Child,
    // Declared after `child`: dropped once the process has been killed.
    dir: tempfile::TempDir,
    generation: u32,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The simulator binary: `DESKPOOL_VCSIM_BIN`, or built once per process.
fn binary() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("DESKPOOL_VCSIM_BIN") {
            return Ok(PathBuf::from(bin));
        }
        let script = repo_root().join("tests/vcsim/build.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed ({})", script.display(), out.status));
        }
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if path.is_empty() {
            return Err(format!("{} printed no binary path", script.display()));
        }
        Ok(PathBuf::from(path))
    })
    .clone()
}

fn duration_arg(d: Duration) -> String {
    format!("{}us", d.as_micros())
}

/// `http://127.0.0.1:1234/sdk` -> `127.0.0.1:1234`.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

impl Vcsim {
    /// Builds (cached) and starts the simulator on free ports; waits until it serves.
    ///
    /// # Panics
    /// If the binary cannot be built or the simulator does not come up.
    pub async fn start(opts: VcsimOptions) -> Vcsim {
        let bin = tokio::task::spawn_blocking(binary)
            .await
            .expect("vcsim build task panicked")
            .unwrap_or_else(|e| panic!("deskpool-vcsim binary unavailable: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("deskpool-vcsim-")
            .tempdir()
            .expect("vcsim: cannot create temp dir");
        let (child, ready) = spawn(&bin, &opts, dir.path(), 0, "127.0.0.1:0", "127.0.0.1:0").await;
        Vcsim {
            sdk_url: ready.sdk_url,
            control_url: ready.control_url,
            username: ready.username,
            password: ready.password,
            golden_path: ready.golden_path,
            golden_moref: ready.golden_moref,
            opts,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("vcsim: http client"),
            child,
            dir,
            generation: 0,
        }
    }

    /// Kills the simulator and starts a fresh one on the same ports (same
    /// `sdk_url`/`control_url`). The inventory and counters start over, with
    /// the options given to [`Vcsim::start`]; old sessions are invalid.
    pub async fn restart(&mut self) {
        let _ = self.child.kill().await;
        let bin = tokio::task::spawn_blocking(binary)
            .await
            .expect("vcsim build task panicked")
            .unwrap_or_else(|e| panic!("deskpool-vcsim binary unavailable: {e}"));
        self.generation += 1;
        let (child, ready) = spawn(
            &bin,
            &self.opts,
            self.dir.path(),
            self.generation,
            &host_port(&self.sdk_url),
            &host_port(&self.control_url),
        )
        .await;
        assert_eq!(
            ready.sdk_url, self.sdk_url,
            "vcsim restarted on another port"
        );
        self.child = child;
        self.golden_moref = ready.golden_moref;
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let url = format!("{}{path}", self.control_url);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("vcsim GET {url}: {e}"));
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "vcsim GET {url}: {status}: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("vcsim GET {url}: bad JSON ({e}): {body}"))
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let url = format!("{}{path}", self.control_url);
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("vcsim POST {url}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "vcsim POST {url}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// The simulator's process id (None once it has been reaped), e.g. to read its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Counters (SOAP calls, clones, clones in flight, VM count).
    pub async fn stats(&self) -> Stats {
        self.get("/stats").await
    }

    /// Waits until the simulator reports clones in flight, `patience` at most; how many.
    pub async fn clones_in_flight_within(&self, patience: std::time::Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let n = self.stats().await.clones_in_flight;
            if n > 0 || tokio::time::Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Zeroes counters and maxima (clones still in flight stay counted) and forgets the clone
    /// timeline of [`Vcsim::clones`].
    pub async fn reset_stats(&self) {
        self.post("/stats/reset", serde_json::json!({})).await;
    }

    /// Every `CloneVM_Task` since the start or the last [`Vcsim::reset_stats`], in arrival
    /// order.
    pub async fn clones(&self) -> Vec<CloneRecord> {
        self.get("/clones").await
    }

    /// Terminates every SOAP session: the next call with an old session
    /// cookie fails with `NotAuthenticated`.
    pub async fn expire_sessions(&self) {
        self.post("/sessions/expire", serde_json::json!({})).await;
    }

    /// Changes settings at run time; any subset of
    /// `{"clone_delay_ms", "power_delay_ms", "clone_fail_rate", "fail_leave_vm_rate"}`.
    /// Affects tasks started afterwards.
    pub async fn set_config(&self, cfg: serde_json::Value) {
        self.post("/config", cfg).await;
    }

    /// Changes how guests boot (see tests/vcsim/guest.go): any subset of `{"delay_ms": n,
    /// "rules": [{"pattern": "lab-00*", "no_tools": bool, "no_ip": bool, "first_ip":
    /// "169.254.7.7", "customization_failure": "message"}]}`. After a power-on, VMware Tools
    /// run `delay_ms` later (default 50) and the guest reports a 127.0.0.0/8 address
    /// `delay_ms` after that. Affects power-ons from now on.
    pub async fn set_guest(&self, guest: serde_json::Value) {
        self.post("/guest", guest).await;
    }

    /// Objects living in SOAP sessions by type (`PropertyCollector`, `ContainerView`,
    /// `ListView`), over every session: what a client made and did not destroy.
    pub async fn session_objects(&self) -> BTreeMap<String, u64> {
        self.get("/session-objects").await
    }

    /// Makes a VM inaccessible as a datastore outage does on vCenter
    /// (`runtime.connectionState = inaccessible`, `config.*` answered in a `missingSet`), or
    /// accessible again.
    pub async fn set_vm_inaccessible(&self, moref: &str, inaccessible: bool) {
        self.post(
            "/vms/inaccessible",
            serde_json::json!({ "moref": moref, "inaccessible": inaccessible }),
        )
        .await;
    }

    /// Turns DRS of a cluster (e.g. `DC0_C0`) on or off. With DRS off, clones into the
    /// cluster fail with `InvalidArgument` unless `RelocateSpec.host` is set, as on vCenter.
    pub async fn set_cluster_drs(&self, cluster: &str, enabled: bool) {
        self.post(
            "/clusters/drs",
            serde_json::json!({ "cluster": cluster, "enabled": enabled }),
        )
        .await;
    }

    /// Sets a host's state: any subset of `{"memory_mb": n, "maintenance": bool,
    /// "connected": bool}` (`summary.quickStats.overallMemoryUsage`,
    /// `runtime.inMaintenanceMode`, `runtime.connectionState`).
    pub async fn set_host_state(&self, host: &str, state: serde_json::Value) {
        let mut body = state;
        body["host"] = serde_json::Value::from(host);
        self.post("/hosts/state", body).await;
    }

    /// Changes the password later `Login`s need (a password rotated on vCenter); open
    /// sessions stay valid. `self.password` keeps the start-up one.
    pub async fn set_password(&self, password: &str) {
        self.post("/password", serde_json::json!({ "password": password }))
            .await;
    }

    /// Removes every snapshot of the golden VM (clones naming one then fail
    /// with `ManagedObjectNotFound`).
    pub async fn remove_snapshots(&self) {
        self.post("/snapshots/remove", serde_json::json!({})).await;
    }

    /// Creates `DC0/vm/<name>` (no-op if it exists); returns the folder moref.
    pub async fn create_folder(&self, name: &str) -> String {
        let v = self
            .post("/folders", serde_json::json!({ "name": name }))
            .await;
        v["moref"].as_str().unwrap_or_default().to_owned()
    }

    /// VMs in the inventory, optionally only those in the folder with this
    /// name (or moref). Sorted by name.
    pub async fn vms(&self, folder: Option<&str>) -> Vec<VmInfo> {
        match folder {
            Some(f) => {
                let url =
                    reqwest::Url::parse_with_params("http://x/vms", &[("folder", f)]).expect("url");
                let query = url.query().unwrap_or_default();
                self.get(&format!("/vms?{query}")).await
            }
            None => self.get("/vms").await,
        }
    }

    /// Copies a VM as an admin's "Clone to Virtual Machine" (or a backup restore) does: a
    /// full clone with a fresh instance UUID that keeps the source's extraConfig, deskpool's
    /// markers included, under `extra_config` (the clone spec's own settings, which win).
    /// `vm` is a moref or a name; `folder` (name or moref) defaults to the source's folder.
    pub async fn copy_vm(
        &self,
        vm: &str,
        name: &str,
        folder: Option<&str>,
        extra_config: &[(&str, &str)],
    ) -> VmInfo {
        let extra: serde_json::Map<String, serde_json::Value> = extra_config
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        let v = self
            .post(
                "/vms/copy",
                serde_json::json!({
                    "vm": vm, "name": name, "folder": folder.unwrap_or_default(), "extra_config": extra,
                }),
            )
            .await;
        serde_json::from_value(v).expect("vcsim: /vms/copy answer")
    }

    /// Sets injected faults; any subset of `{"clone_response_delay_ms": n, "destroy_fault":
    /// "NoPermission" | "" (none), "destroy_fault_vms": [moref...] (empty: every VM)}`.
    /// `clone_response_delay_ms` holds each `CloneVM_Task` answer back after its task started.
    pub async fn set_faults(&self, faults: serde_json::Value) {
        self.post("/faults", faults).await;
    }

    /// The injected faults and `destroy_faults_raised` (Destroy_Task calls failed so far).
    pub async fn faults(&self) -> serde_json::Value {
        self.get("/faults").await
    }

    /// Adds a chosen clone fault; rules match in the order added, when a `CloneVM_Task`
    /// arrives (the first matching rule with tries left fires). Returns the rule's id.
    pub async fn add_clone_fault(&self, fault: CloneFault) -> u64 {
        let v = self
            .post(
                "/faults/clone",
                serde_json::to_value(&fault).expect("clone fault JSON"),
            )
            .await;
        v["id"]
            .as_u64()
            .expect("vcsim: /faults/clone answer has an id")
    }

    /// The clone fault rules, with how often each fired.
    pub async fn clone_faults(&self) -> Vec<CloneFaultRule> {
        let rules: CloneFaultRules = self.get("/faults/clone").await;
        rules.rules
    }

    /// Forgets every clone fault rule.
    pub async fn clear_clone_faults(&self) {
        let url = format!("{}/faults/clone", self.control_url);
        let resp = self
            .http
            .delete(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("vcsim DELETE {url}: {e}"));
        assert!(
            resp.status().is_success(),
            "vcsim DELETE {url}: {}",
            resp.status()
        );
    }

    /// The golden VM as seen by `/vms`.
    pub async fn golden(&self) -> VmInfo {
        let name = self.golden_path.rsplit('/').next().unwrap_or_default();
        self.vms(None)
            .await
            .into_iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("vcsim: golden VM {name} not in inventory"))
    }
}

async fn spawn(
    bin: &Path,
    opts: &VcsimOptions,
    dir: &Path,
    generation: u32,
    listen: &str,
    control_listen: &str,
) -> (Child, Ready) {
    let ready_file = dir.join(format!("ready-{generation}.json"));
    let tmp_dir = dir.join(format!("datastores-{generation}"));
    // The old process may hold the port for a moment after being killed.
    let mut last_err = String::new();
    for attempt in 0..50 {
        let log = dir.join(format!("stderr-{generation}-{attempt}.log"));
        let log_file =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("vcsim: {}: {e}", log.display()));
        let mut cmd = Command::new(bin);
        cmd.arg(format!("-listen={listen}"))
            .arg(format!("-control-listen={control_listen}"))
            .arg(format!("-ready-file={}", ready_file.display()))
            .arg(format!("-tmp-dir={}", tmp_dir.display()))
            .arg(format!("-clone-delay={}", duration_arg(opts.clone_delay)))
            .arg(format!("-power-delay={}", duration_arg(opts.power_delay)))
            .arg(format!("-clone-fail-rate={}", opts.clone_fail_rate))
            .arg(format!("-fail-leave-vm-rate={}", opts.fail_leave_vm_rate))
            .arg(format!(
                "-session-idle={}",
                duration_arg(opts.session_idle.unwrap_or_default())
            ))
            .arg(format!("-update-tick={}", duration_arg(opts.update_tick)))
            .arg(format!("-folders={}", opts.folders.join(",")))
            .arg(format!("-snapshots={}", opts.snapshots.join(",")))
            .arg(format!("-seed={}", opts.seed & (i64::MAX as u64)))
            .arg("-stdin-watch")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("vcsim: cannot run {}: {e}", bin.display()));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                let ready: Ready = serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!(
                        "vcsim: bad ready file {}: {e}: {text}",
                        ready_file.display()
                    )
                });
                return (child, ready);
            }
            if let Ok(Some(status)) = child.try_wait() {
                let msg = std::fs::read_to_string(&log).unwrap_or_default();
                last_err = format!("exited with {status}: {}", msg.trim());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "vcsim: not ready after {READY_TIMEOUT:?} (no {})",
                ready_file.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !last_err.contains("address already in use") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("vcsim ({}) failed to start: {last_err}", bin.display());
}
