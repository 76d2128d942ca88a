//! Image rollouts (#11) end to end: `deskpool serve` as a process, the HTTP API, real
//! PostgreSQL and the vcsim harness (golden VM with snapshots `base` = A and `base/v2` = B).

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deskpool_domain::{DesktopState, GuestOs, LogoffPolicy, OnRelease, PoolSpec};
use deskpool_store::tokens::Role;
use deskpool_testkit::vcsim::{CloneFault, CloneFaultKind, Vcsim, VcsimOptions};
use rand::Rng;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use support::{db_url, token, Serve};

const PATIENCE: Duration = Duration::from_secs(120);

fn sim_opts() -> VcsimOptions {
    VcsimOptions {
        clone_delay: Duration::from_millis(200),
        folders: vec!["lab".into()],
        snapshots: vec!["base".into(), "base/v2".into()],
        ..Default::default()
    }
}

fn spec(target: u32) -> PoolSpec {
    PoolSpec {
        name: "lab".into(),
        vcenter: "sim".into(),
        datacenter: "DC0".into(),
        golden_vm: "golden".into(),
        snapshot: "base".into(),
        folder: "lab".into(),
        resource_pool: "DC0_C0".into(),
        datastore: None,
        customization_spec: None,
        naming_pattern: "lab-{n:3}".into(),
        guest_os: GuestOs::Windows,
        target_size: target,
        min_size: 0,
        max_size: 20,
        power_on: true,
        max_concurrent_clones: 4,
        enabled: true,
        max_surge: None,
        max_unavailable: 0,
        stop_on_error: true,
        logoff_policy: LogoffPolicy::Wait,
        force_after_secs: 3600,
        min_spare: 0,
        claim_lease_secs: 86_400,
        on_release: OnRelease::Delete,
        ready_timeout_secs: deskpool_domain::DEFAULT_READY_TIMEOUT_SECS,
        ready_when: deskpool_domain::ReadyWhen::GuestIp,
    }
}

async fn define(db: &PgPool, spec: &PoolSpec) {
    let mut c = db.acquire().await.unwrap();
    deskpool_store::pools::insert(&mut c, spec).await.unwrap();
}

/// The daemon's API with an admin token.
#[derive(Clone)]
struct Api {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn pool(&self) -> Value {
        let (status, body) = self
            .call(reqwest::Method::GET, "/api/v1/pools/lab", None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

async fn start(
    db: &PgPool,
    opts: &PgConnectOptions,
    sim: &Vcsim,
    dir: &std::path::Path,
) -> (Serve, Api) {
    let secret = token(db, &format!("admin-{}", rand::random::<u32>()), Role::Admin).await;
    let mut serve = Serve::start(dir, &db_url(opts), &sim.sdk_url, &sim.password, "");
    let api = Api {
        url: format!("http://127.0.0.1:{}", serve.port),
        token: secret,
        http: reqwest::Client::new(),
    };
    let probe = api.clone();
    serve
        .wait_until(|| {
            let probe = probe.clone();
            async move {
                probe
                    .http
                    .get(format!("{}/healthz", probe.url))
                    .send()
                    .await
                    .is_ok()
            }
        })
        .await;
    (serve, api)
}

/// Polls `check` until it returns Some, or panics with `what` after [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pool's rows: (name, state, snapshot moref, claimed_by).
async fn rows(db: &PgPool) -> Vec<(String, DesktopState, Option<String>, Option<String>)> {
    let mut c = db.acquire().await.unwrap();
    let p = deskpool_store::pools::get(&mut c, "lab")
        .await
        .unwrap()
        .unwrap();
    deskpool_store::desktops::list_for_pool(&mut c, p.id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.name, d.state, d.snapshot_moref, d.claimed_by))
        .collect()
}

/// Waits until the pool has exactly `n` desktops, all ready and all on `moref`, and vCenter
/// exactly `n` VMs in its folder (no extra VM).
async fn all_on(db: &PgPool, sim: &Vcsim, n: usize, moref: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = rows(db).await;
        let vms = sim.vms(Some("lab")).await;
        let ok = r.len() == n
            && vms.len() == n
            && r.iter()
                .all(|d| d.1 == DesktopState::Ready && d.2.as_deref() == Some(moref));
        if ok {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let pool: (String, Option<String>, String, Option<String>) = sqlx::query_as(
                "SELECT state, last_error, rollout_state, rollout_last_error FROM pools WHERE name = 'lab'",
            )
            .fetch_one(db)
            .await
            .unwrap();
            panic!(
                "gave up after {PATIENCE:?} waiting for {n} ready desktops on {moref} and {n} VMs: \
                 pool {pool:?}, rows {r:?}, {} VMs",
                vms.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The moref the pool is pinned to, once it is.
async fn pinned(api: &Api) -> String {
    eventually("the pool's image", || async {
        api.pool().await["status"]["snapshot_moref"]
            .as_str()
            .map(str::to_owned)
    })
    .await
}

async fn rollout_state(api: &Api) -> String {
    api.pool().await["status"]["rollout"]["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn event_kinds(db: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT kind, message FROM events WHERE pool = 'lab' ORDER BY id")
        .fetch_all(db)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn rolls_to_b_keeping_claimable_desktops_and_people(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts()).await;
    let dir = tempfile::tempdir().unwrap();
    define(&db, &spec(10)).await;
    let (_serve, api) = start(&db, &opts, &sim, dir.path()).await;
    let a = pinned(&api).await;
    all_on(&db, &sim, 10, &a).await;

    let mut held = Vec::new();
    for user in ["alice", "bob"] {
        let (status, body) = api
            .post("/api/v1/pools/lab/claim", json!({ "user": user }))
            .await;
        assert_eq!(status, 200, "{body}");
        held.push(body["desktop"]["name"].as_str().unwrap().to_owned());
    }

    // A snapshot that does not resolve is refused, naming it, and the pool keeps its image.
    let (status, body) = api
        .post("/api/v1/pools/lab/image", json!({ "snapshot": "base/v9" }))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("base/v9"),
        "{body}"
    );
    assert_eq!(pinned(&api).await, a);

    // Claimable desktops, sampled every 50 ms for the whole rollout.
    let lowest = Arc::new(AtomicU32::new(u32::MAX));
    let sampler = {
        let (api, lowest) = (api.clone(), Arc::clone(&lowest));
        tokio::spawn(async move {
            loop {
                let p = api.pool().await;
                let spare = p["status"]["spare"].as_u64().unwrap() as u32;
                lowest.fetch_min(spare, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let (status, body) = api
        .post("/api/v1/pools/lab/image", json!({ "snapshot": "base/v2" }))
        .await;
    assert_eq!(status, 200, "{body}");
    let b = body["status"]["snapshot_moref"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(a, b);
    assert_eq!(body["status"]["rollout"]["state"], "rolling", "{body}");
    assert_eq!(body["status"]["rollout"]["from"], a.as_str(), "{body}");

    // The 8 unclaimed ones end on B; the 2 claimed stay on A, untouched, until released.
    eventually("8 unclaimed desktops on B", || async {
        let r = rows(&db).await;
        let on_b = r
            .iter()
            .filter(|d| {
                d.1 == DesktopState::Ready && d.2.as_deref() == Some(b.as_str()) && d.3.is_none()
            })
            .count();
        (on_b == 8 && r.len() == 10).then_some(())
    })
    .await;
    let r = rows(&db).await;
    for name in &held {
        let d = r
            .iter()
            .find(|d| &d.0 == name)
            .expect("a claimed desktop was removed");
        assert_eq!(
            d.2.as_deref(),
            Some(a.as_str()),
            "{name} left image A while claimed"
        );
        assert!(d.3.is_some());
    }
    let p = api.pool().await;
    assert_eq!(p["status"]["rollout"]["state"], "rolling", "{p}");
    assert_eq!(p["status"]["rollout"]["outdated"], 2, "{p}");
    assert_eq!(p["status"]["rollout"]["updated"], 8, "{p}");
    let metrics = reqwest::get(format!("{}/metrics", api.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("deskpool_desktops_outdated{pool=\"lab\"} 2"),
        "{metrics}"
    );

    for name in &held {
        let (status, body) = api
            .post(
                &format!("/api/v1/pools/lab/desktops/{name}/release"),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    all_on(&db, &sim, 10, &b).await;
    eventually("rollout done", || async {
        (rollout_state(&api).await == "done").then_some(())
    })
    .await;
    sampler.abort();
    let lowest = lowest.load(Ordering::SeqCst);
    assert!(
        lowest >= 8,
        "claimable desktops fell to {lowest} during the rollout"
    );
    let kinds: Vec<String> = event_kinds(&db).await.into_iter().map(|e| e.0).collect();
    assert!(kinds.contains(&"rollout_started".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"rollout_finished".to_owned()), "{kinds:?}");
    assert_eq!(sim.stats().await.non_linked_clones, 0);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_failed_clone_stops_the_rollout_then_resume_and_rollback(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts()).await;
    let dir = tempfile::tempdir().unwrap();
    define(&db, &spec(6)).await;
    let (_serve, api) = start(&db, &opts, &sim, dir.path()).await;
    let a = pinned(&api).await;
    all_on(&db, &sim, 6, &a).await;

    sim.add_clone_fault(
        CloneFault::new(CloneFaultKind::InvalidDatastore)
            .snapshot("v2")
            .always(),
    )
    .await;
    let (status, body) = api
        .post("/api/v1/pools/lab/image", json!({ "snapshot": "base/v2" }))
        .await;
    assert_eq!(status, 200, "{body}");
    let b = body["status"]["snapshot_moref"]
        .as_str()
        .unwrap()
        .to_owned();
    let p = eventually("the rollout to stop", || async {
        let p = api.pool().await;
        (p["status"]["rollout"]["state"] == "stopped").then_some(p)
    })
    .await;
    assert!(
        p["status"]["rollout"]["last_error"].as_str().is_some(),
        "{p}"
    );
    // The old desktops stay: six ready on A.
    let r = rows(&db).await;
    let old = r
        .iter()
        .filter(|d| d.1 == DesktopState::Ready && d.2.as_deref() == Some(a.as_str()))
        .count();
    assert_eq!(old, 6, "{r:?}");
    let kinds: Vec<String> = event_kinds(&db).await.into_iter().map(|e| e.0).collect();
    assert!(kinds.contains(&"rollout_stopped".to_owned()), "{kinds:?}");

    // Fixed: resume continues the rollout to B.
    sim.clear_clone_faults().await;
    let (status, body) = api.post("/api/v1/pools/lab/image/resume", json!({})).await;
    assert_eq!(status, 200, "{body}");
    all_on(&db, &sim, 6, &b).await;
    eventually("rollout done", || async {
        (rollout_state(&api).await == "done").then_some(())
    })
    .await;
    let (status, _) = api.post("/api/v1/pools/lab/image/resume", json!({})).await;
    assert_eq!(status, 409);

    // Rollback: pushing the previous snapshot rolls back to A by the same mechanism.
    let (status, body) = api
        .post("/api/v1/pools/lab/image", json!({ "snapshot": "base" }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["snapshot_moref"], a.as_str());
    all_on(&db, &sim, 6, &a).await;
    eventually("rollback done", || async {
        (rollout_state(&api).await == "done").then_some(())
    })
    .await;
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn kill_9_during_a_rollout_converges_on_b_without_extra_vms(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts()).await;
    let dir = tempfile::tempdir().unwrap();
    define(&db, &spec(10)).await;
    let (serve, api) = start(&db, &opts, &sim, dir.path()).await;
    let a = pinned(&api).await;
    all_on(&db, &sim, 10, &a).await;
    let (status, body) = api
        .post("/api/v1/pools/lab/image", json!({ "snapshot": "base/v2" }))
        .await;
    assert_eq!(status, 200, "{body}");
    let b = body["status"]["snapshot_moref"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut serve = Some(serve);
    let seed: u64 = rand::random();
    println!("kill seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for _ in 0..6 {
        let mut s = match serve.take() {
            Some(s) => s,
            None => start(&db, &opts, &sim, dir.path()).await.0,
        };
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..2000))).await;
        s.child.start_kill().unwrap();
        s.child.wait().await.unwrap();
        // Never fewer ready desktops than before the push, whatever the moment.
        let ready = rows(&db)
            .await
            .iter()
            .filter(|d| d.1 == DesktopState::Ready)
            .count();
        assert!(ready >= 10, "only {ready} ready desktops after a kill");
    }
    let (_serve, api) = start(&db, &opts, &sim, dir.path()).await;
    all_on(&db, &sim, 10, &b).await;
    eventually("rollout done", || async {
        (rollout_state(&api).await == "done").then_some(())
    })
    .await;
    assert_eq!(sim.stats().await.non_linked_clones, 0);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn force_releases_a_claimed_outdated_desktop_after_the_grace(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(3);
    s.logoff_policy = LogoffPolicy::Force;
    s.force_after_secs = 2;
    define(&db, &s).await;
    let (_serve, api) = start(&db, &opts, &sim, dir.path()).await;
    let a = pinned(&api).await;
    all_on(&db, &sim, 3, &a).await;
    let (status, body) = api
        .post("/api/v1/pools/lab/claim", json!({ "user": "carol" }))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .post("/api/v1/pools/lab/image", json!({ "snapshot": "base/v2" }))
        .await;
    assert_eq!(status, 200, "{body}");
    let b = body["status"]["snapshot_moref"]
        .as_str()
        .unwrap()
        .to_owned();
    all_on(&db, &sim, 3, &b).await;
    let forced: Vec<String> = event_kinds(&db)
        .await
        .into_iter()
        .filter(|e| e.0 == "forced_release")
        .map(|e| e.1)
        .collect();
    assert_eq!(forced.len(), 1, "{forced:?}");
    assert!(forced[0].contains("carol"), "{forced:?}");
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn check_flags_a_pool_spanning_more_than_two_images(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts()).await;
    let dir = tempfile::tempdir().unwrap();
    define(&db, &spec(0)).await;
    // Writes the config; the daemon itself is not needed.
    let (mut serve, _api) = start(&db, &opts, &sim, dir.path()).await;
    serve.child.start_kill().unwrap();
    serve.child.wait().await.unwrap();
    let check = || async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_deskpool"))
            .arg("--config")
            .arg(&serve.config)
            .arg("check")
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let add = |n: u32, moref: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query(
                "INSERT INTO desktops (id, pool_id, name, idx, instance_uuid, state, snapshot_moref)
                 SELECT gen_random_uuid(), id, 'lab-' || $1, $1, gen_random_uuid(), 'ready', $2
                 FROM pools WHERE name = 'lab'",
            )
            .bind(n as i32)
            .bind(moref)
            .execute(&db)
            .await
            .unwrap();
        }
    };
    add(1, "snapshot-a").await;
    add(2, "snapshot-b").await;
    let (code, text) = check().await;
    assert!(
        text.contains("ok   images: no pool's desktops span more than two images"),
        "{text}"
    );
    assert_eq!(code, Some(0), "{text}");
    add(3, "snapshot-c").await;
    let (code, text) = check().await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAIL pool 'lab': its desktops span 3 images"),
        "{text}"
    );
}
