//! Shared set-up for the reconciler's integration tests: a real PostgreSQL database per test
//! (`#[sqlx::test]`) and the vcsim harness.
#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use deskpool_domain::{DesktopState, GuestOs, PoolSpec, PoolState};
use deskpool_reconciler::{Reconciler, ReconcilerConfig, StatusHandle, VcenterSpec};
use deskpool_store::{desktops, pools};
use deskpool_testkit::vcsim::Vcsim;
use deskpool_vsphere::ClientOptions;
use secrecy::SecretString;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Safety limit for waits: generous, since the machine is shared. Never a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub fn vcenter(sim: &Vcsim) -> VcenterSpec {
    let mut options = ClientOptions::new(
        sim.sdk_url.parse().unwrap(),
        sim.username.clone(),
        SecretString::from(sim.password.clone()),
    );
    options.call_timeout = Duration::from_secs(10);
    options.connect_timeout = Duration::from_secs(2);
    VcenterSpec {
        name: "sim".into(),
        options,
    }
}

pub fn config(replica: &str) -> ReconcilerConfig {
    ReconcilerConfig {
        resync_interval: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(3),
        max_concurrent_per_vcenter: 20,
        stop_after_failures: 3,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        destroy_tries: 5,
        replica_id: replica.into(),
    }
}

pub fn spec(name: &str, target: u32, concurrency: u32) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        vcenter: "sim".into(),
        datacenter: "DC0".into(),
        golden_vm: "golden".into(),
        snapshot: "current".into(),
        folder: name.into(),
        resource_pool: "DC0_C0".into(),
        datastore: Some("LocalDS_0".into()),
        customization_spec: None,
        naming_pattern: format!("{name}-{{n:3}}"),
        guest_os: GuestOs::Windows,
        target_size: target,
        min_size: 0,
        max_size: 100,
        power_on: true,
        max_concurrent_clones: concurrency,
        enabled: true,
        max_surge: None,
        max_unavailable: 0,
        stop_on_error: true,
        logoff_policy: deskpool_domain::LogoffPolicy::Wait,
        force_after_secs: 3600,
        min_spare: 0,
        claim_lease_secs: 86_400,
        on_release: deskpool_domain::OnRelease::Delete,
        ready_timeout_secs: deskpool_domain::DEFAULT_READY_TIMEOUT_SECS,
        ready_when: deskpool_domain::ReadyWhen::GuestIp,
    }
}

pub async fn create_pool(db: &PgPool, spec: &PoolSpec) {
    let mut c = db.acquire().await.unwrap();
    pools::insert(&mut c, spec).await.unwrap();
}

pub async fn set_target(db: &PgPool, pool: &str, target: u32) {
    let mut c = db.acquire().await.unwrap();
    pools::set_target(&mut c, pool, target, None).await.unwrap();
}

/// A reconciler replica on its own runtime, so that `crash` kills every task it started at
/// once, like `kill -9` (nothing is released, no lease handed over).
pub struct Replica {
    rt: Option<tokio::runtime::Runtime>,
    cancel: CancellationToken,
    pub status: StatusHandle,
}

/// Logs to the test output when RUST_LOG is set (shown for failing tests).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

impl Replica {
    pub fn start(
        opts: &PgConnectOptions,
        vcenters: Vec<VcenterSpec>,
        cfg: ReconcilerConfig,
    ) -> Replica {
        init_logs();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let db = {
            let _guard = rt.enter();
            PgPoolOptions::new()
                .max_connections(10)
                .connect_lazy_with(opts.clone())
        };
        let reconciler = Reconciler::new(db, vcenters, cfg);
        let status = reconciler.status();
        let cancel = CancellationToken::new();
        rt.spawn(reconciler.run(cancel.clone()));
        Replica {
            rt: Some(rt),
            cancel,
            status,
        }
    }

    /// Like `kill -9`: every task stops where it is.
    pub fn crash(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// A clean stop: the lease is released.
    pub async fn stop(&mut self) {
        self.cancel.cancel();
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.crash();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Polls `check` until it returns Some, or panics with `what` after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("gave up waiting: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn pool_state(db: &PgPool, pool: &str) -> (PoolState, Option<String>) {
    let mut c = db.acquire().await.unwrap();
    let p = pools::get(&mut c, pool).await.unwrap().unwrap();
    (p.state, p.last_error)
}

/// The pool's row (panics if it is gone).
pub async fn pool(db: &PgPool, name: &str) -> pools::Pool {
    let mut c = db.acquire().await.unwrap();
    pools::get(&mut c, name).await.unwrap().unwrap()
}

pub async fn rows(db: &PgPool, pool: &str) -> Vec<desktops::Desktop> {
    let mut c = db.acquire().await.unwrap();
    let Some(p) = pools::get(&mut c, pool).await.unwrap() else {
        return vec![];
    };
    desktops::list_for_pool(&mut c, p.id).await.unwrap()
}

/// Waits until the pool has exactly `target` ready desktops and nothing else, in the
/// database and in the simulator's folder, then checks the invariants users care about:
/// one VM per desktop, matched by instance UUID, unique names, powered on, linked clones only.
pub async fn converged(db: &PgPool, sim: &Vcsim, pool: &str, target: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = rows(db, pool).await;
        let all_ready = r.len() == target && r.iter().all(|d| d.state == DesktopState::Ready);
        let vms = sim.vms(Some(pool)).await;
        if all_ready && vms.len() == target {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let rows: Vec<_> = r
                .iter()
                .map(|d| (d.name.as_str(), d.state, d.last_error.as_deref()))
                .collect();
            let vms: Vec<_> = vms
                .iter()
                .map(|v| (v.name.as_str(), v.power_state.as_str()))
                .collect();
            panic!(
                "pool {pool} did not converge to {target}: state {:?}\nrows {rows:?}\nvms {vms:?}",
                pool_state(db, pool).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = rows(db, pool).await;
    let vms = sim.vms(Some(pool)).await;
    let names: HashSet<_> = vms.iter().map(|v| v.name.clone()).collect();
    assert_eq!(
        names.len(),
        vms.len(),
        "duplicate VM names in folder {pool}"
    );
    for d in &r {
        let vm = vms
            .iter()
            .find(|v| v.instance_uuid == d.instance_uuid.to_string())
            .unwrap_or_else(|| panic!("no VM with the instance UUID of desktop {}", d.name));
        assert_eq!(vm.name, d.name);
        assert_eq!(vm.power_state, "poweredOn", "{} not powered on", d.name);
        assert_eq!(
            vm.extra_config.get("deskpool.pool").map(String::as_str),
            Some(pool)
        );
        assert_eq!(
            vm.extra_config.get("deskpool.desktop"),
            Some(&d.id.to_string())
        );
        assert_eq!(d.vm_moref.as_deref(), Some(vm.moref.as_str()));
    }
    assert_eq!(
        sim.stats().await.non_linked_clones,
        0,
        "a clone was not a linked clone"
    );
}

pub async fn event_kinds(db: &PgPool, pool: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT kind FROM events WHERE pool = $1 ORDER BY id")
        .bind(pool)
        .fetch_all(db)
        .await
        .unwrap()
}
