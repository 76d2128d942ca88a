//! `deskpool serve` as a process, against a real PostgreSQL and the vcsim harness: kill -9
//! at random moments, and outages of the database and of vCenter (through a TCP proxy that
//! the test cuts).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use deskpool_domain::DesktopState;
use deskpool_testkit::proxy::Proxy;
use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};
use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::process::{Child, Command};

const PATIENCE: Duration = Duration::from_secs(90);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Daemon {
    child: Child,
    url: String,
}

impl Daemon {
    /// Starts `deskpool serve` with a config in `dir` (password through password_file).
    async fn start(dir: &Path, db_url: &str, sdk_url: &str, password: &str) -> Daemon {
        let port = free_port();
        std::fs::write(dir.join("vc.pass"), password).unwrap();
        let config = format!(
            r#"[http]
listen = "127.0.0.1:{port}"
[database]
url = "{db_url}"
connect_timeout_secs = 2
[reconciler]
resync_interval_secs = 2
lease_ttl_secs = 3
backoff_base_ms = 100
backoff_max_secs = 1
[[vcenters]]
name = "sim"
url = "{sdk_url}"
username = "user"
password_file = "{}"
connect_timeout_secs = 2
call_timeout_secs = 10
"#,
            dir.join("vc.pass").display()
        );
        std::fs::write(dir.join("deskpool.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join(format!("serve-{port}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_deskpool"))
            .arg("--config")
            .arg(dir.join("deskpool.toml"))
            .arg("serve")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if http.get(format!("{}/healthz", d.url)).send().await.is_ok() {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("deskpool serve did not answer /healthz");
    }

    /// `kill -9`.
    async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The `/metrics` text.
    async fn metrics(&self) -> String {
        let r = reqwest::get(format!("{}/metrics", self.url)).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.unwrap()
    }

    async fn readyz(&self) -> (u16, serde_json::Value) {
        let r = reqwest::get(format!("{}/readyz", self.url)).await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }
}

/// Polls `check` until it returns Some, or panics with `what` after [`PATIENCE`]: a
/// regression fails the test instead of hanging it.
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

/// The `/readyz` body's `database` check, asserted to be the failure the README describes.
fn assert_database_down(body: &serde_json::Value) {
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["database"]["ok"], false, "{body}");
    let error = body["database"]["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "no database error in {body}");
}

/// The `/readyz` body's first vCenter, asserted to be `sim` and disconnected with a reason.
fn assert_vcenter_down(body: &serde_json::Value) {
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["database"]["ok"], true, "{body}");
    assert_eq!(body["vcenters"][0]["name"], "sim", "{body}");
    assert_eq!(body["vcenters"][0]["connected"], false, "{body}");
    let error = body["vcenters"][0]["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "no vCenter error in {body}");
}

/// Sum of the samples of `series` (a metric name, optionally with some of its labels, e.g.
/// `deskpool_clone_failures_total{pool="lab"`) in a Prometheus text exposition.
fn sample_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with([' ', '{', ',', '}']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn db_url(opts: &PgConnectOptions) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        opts.get_port(),
        opts.get_database().unwrap()
    )
}

async fn create_pool(db: &PgPool, name: &str, target: u32) {
    let spec = deskpool_domain::PoolSpec {
        name: name.into(),
        vcenter: "sim".into(),
        datacenter: "DC0".into(),
        golden_vm: "golden".into(),
        snapshot: "base".into(),
        folder: name.into(),
        resource_pool: "DC0_C0".into(),
        datastore: None,
        customization_spec: None,
        naming_pattern: format!("{name}-{{n:3}}"),
        guest_os: deskpool_domain::GuestOs::Windows,
        target_size: target,
        min_size: 0,
        max_size: 50,
        power_on: true,
        max_concurrent_clones: 6,
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
    };
    let mut c = db.acquire().await.unwrap();
    deskpool_store::pools::insert(&mut c, &spec).await.unwrap();
}

async fn set_target(db: &PgPool, pool: &str, n: u32) {
    let mut c = db.acquire().await.unwrap();
    deskpool_store::pools::set_target(&mut c, pool, n, None)
        .await
        .unwrap();
}

/// Waits for exactly `n` ready desktops and `n` VMs (unique names, matching UUIDs).
async fn converged(db: &PgPool, sim: &Vcsim, pool: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut c = db.acquire().await.unwrap();
        let p = deskpool_store::pools::get(&mut c, pool)
            .await
            .unwrap()
            .unwrap();
        let rows = deskpool_store::desktops::list_for_pool(&mut c, p.id)
            .await
            .unwrap();
        let vms = sim.vms(Some(pool)).await;
        let ready = rows.iter().all(|d| d.state == DesktopState::Ready);
        if ready && rows.len() == n && vms.len() == n {
            let mut names: Vec<_> = vms.iter().map(|v| v.name.clone()).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), n, "duplicate VM names");
            for d in &rows {
                assert!(
                    vms.iter()
                        .any(|v| v.instance_uuid == d.instance_uuid.to_string() && v.name == d.name),
                    "no VM for {}",
                    d.name
                );
            }
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let rows: Vec<_> = rows.iter().map(|d| (d.name.clone(), d.state)).collect();
            panic!(
                "pool {pool} did not converge to {n}: {:?} {:?}\nrows {rows:?}\nvms {}",
                p.state,
                p.last_error,
                vms.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sim_opts(folder: &str) -> VcsimOptions {
    VcsimOptions {
        clone_delay: Duration::from_millis(300),
        folders: vec![folder.into()],
        ..Default::default()
    }
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn kill_9_at_random_moments_converges_exactly(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts("lab")).await;
    let dir = tempfile::tempdir().unwrap();
    create_pool(&db, "lab", 14).await;
    let mut rounds = deskpool_testkit::CrashRounds::new("daemon kill -9");
    let mut target = 14;
    for _ in 0..10 {
        // The previous process's clones finish in the harness first, so every count below
        // belongs to this process.
        eventually("the killed daemon's clones to finish", || async {
            (sim.stats().await.clones_in_flight == 0).then_some(())
        })
        .await;
        let d = Daemon::start(dir.path(), &db_url(&opts), &sim.sdk_url, &sim.password).await;
        // Give every round work to interrupt (the target grows), then kill while the harness
        // reports clones running: the new process first waits for the old lease to run out.
        target += rounds.rng.gen_range(2..5);
        set_target(&db, "lab", target).await;
        rounds.kill_moment(&sim, &format!("target {target}")).await;
        d.kill9().await;
    }
    rounds.assert_most_hit_work();
    set_target(&db, "lab", 14).await;
    let _d = Daemon::start(dir.path(), &db_url(&opts), &sim.sdk_url, &sim.password).await;
    converged(&db, &sim, "lab", 14).await;
    let leftovers: i64 = sqlx::query_scalar("SELECT count(*) FROM desktops WHERE state <> 'ready'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(leftovers, 0);
    assert_eq!(sim.stats().await.non_linked_clones, 0);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn database_outage_is_reported_and_survived(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts("lab")).await;
    let dir = tempfile::tempdir().unwrap();
    let pg: SocketAddr = format!("127.0.0.1:{}", opts.get_port()).parse().unwrap();
    let proxy = Proxy::start(pg).await;
    let via_proxy = format!(
        "postgres://postgres@{}/{}",
        proxy.addr,
        opts.get_database().unwrap()
    );
    create_pool(&db, "lab", 3).await;
    let mut d = Daemon::start(dir.path(), &via_proxy, &sim.sdk_url, &sim.password).await;
    converged(&db, &sim, "lab", 3).await;
    assert_eq!(d.readyz().await.0, 200);

    let (_, body) = d.readyz().await;
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["database"]["ok"], true, "{body}");
    assert_eq!(body["database"]["error"], serde_json::Value::Null, "{body}");

    proxy.cut();
    let body = eventually("/readyz to answer 503", || async {
        let (status, body) = d.readyz().await;
        (status == 503).then_some(body)
    })
    .await;
    assert_database_down(&body);
    // The vCenter is still fine: only the database is blamed.
    assert_eq!(body["vcenters"][0]["connected"], true, "{body}");
    set_target(&db, "lab", 5).await; // written straight to the database, not through the proxy
    tokio::time::sleep(Duration::from_secs(4)).await; // longer than the lease TTL
    assert!(d.alive(), "the daemon exited during a database outage");

    proxy.restore();
    converged(&db, &sim, "lab", 5).await;
    let body = eventually(
        "/readyz to answer 200 after the database came back",
        || async {
            let (status, body) = d.readyz().await;
            (status == 200).then_some(body)
        },
    )
    .await;
    assert_eq!(body["database"]["ok"], true, "{body}");
    assert_eq!(body["role"], "leader", "{body}");
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn vcenter_outage_is_reported_and_survived(pool_opts: PgPoolOptions, opts: PgConnectOptions) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts("lab")).await;
    let dir = tempfile::tempdir().unwrap();
    let sdk: url::Url = sim.sdk_url.parse().unwrap();
    let target: SocketAddr = format!("127.0.0.1:{}", sdk.port().unwrap())
        .parse()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let via_proxy = format!("http://{}/sdk", proxy.addr);
    create_pool(&db, "lab", 2).await;
    let mut d = Daemon::start(dir.path(), &db_url(&opts), &via_proxy, &sim.password).await;
    converged(&db, &sim, "lab", 2).await;

    proxy.cut();
    set_target(&db, "lab", 4).await;
    let (note, body) = eventually("/readyz 503 and a note on the pool", || async {
        let (status, body) = d.readyz().await;
        let mut c = db.acquire().await.unwrap();
        let p = deskpool_store::pools::get(&mut c, "lab")
            .await
            .unwrap()
            .unwrap();
        (status == 503 && p.last_error.is_some()).then(|| (p.last_error.unwrap(), body))
    })
    .await;
    assert_vcenter_down(&body);
    assert!(
        note.contains("vCenter") || note.contains("reach"),
        "pool status does not say why: {note}"
    );
    assert!(d.alive());
    proxy.restore();
    converged(&db, &sim, "lab", 4).await;
    let body = eventually("/readyz 200 once vCenter is back", || async {
        let (status, body) = d.readyz().await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(body["vcenters"][0]["connected"], true, "{body}");
    assert_eq!(
        body["vcenters"][0]["error"],
        serde_json::Value::Null,
        "{body}"
    );
}

/// README, "vCenter unreachable": at startup deskpool keeps trying to log in; meanwhile
/// `/readyz` is 503 with the error and pools on that vCenter show
/// `last_error: "vCenter '...' is unreachable: ..."`; once it answers, the pool fills.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn vcenter_unreachable_at_startup_is_reported_then_filled(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts("lab")).await;
    let dir = tempfile::tempdir().unwrap();
    let sdk: url::Url = sim.sdk_url.parse().unwrap();
    let target: SocketAddr = format!("127.0.0.1:{}", sdk.port().unwrap())
        .parse()
        .unwrap();
    let proxy = Proxy::start(target).await;
    proxy.cut();
    create_pool(&db, "lab", 2).await;
    let via_proxy = format!("http://{}/sdk", proxy.addr);
    let d = Daemon::start(dir.path(), &db_url(&opts), &via_proxy, &sim.password).await;
    let note = eventually("the pool's unreachable note", || async {
        let mut c = db.acquire().await.unwrap();
        let p = deskpool_store::pools::get(&mut c, "lab")
            .await
            .unwrap()
            .unwrap();
        p.last_error
    })
    .await;
    assert!(
        note.starts_with("vCenter 'sim' is unreachable: ") && note.len() > 30,
        "not the README's message: {note}"
    );
    let (status, body) = d.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_vcenter_down(&body);
    assert!(sim.vms(Some("lab")).await.is_empty());

    proxy.restore();
    converged(&db, &sim, "lab", 2).await;
    let body = eventually("/readyz 200 once vCenter answers", || async {
        let (status, body) = d.readyz().await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(body["vcenters"][0]["connected"], true, "{body}");
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn check_resolves_every_pool_against_the_simulator(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts("lab")).await;
    let dir = tempfile::tempdir().unwrap();
    create_pool(&db, "lab", 1).await;
    let password = sim.password.clone();
    // Writes the config (the daemon itself is not needed: stop it at once).
    Daemon::start(dir.path(), &db_url(&opts), &sim.sdk_url, &sim.password)
        .await
        .kill9()
        .await;
    let check = || async {
        let out = Command::new(env!("CARGO_BIN_EXE_deskpool"))
            .arg("--config")
            .arg(dir.path().join("deskpool.toml"))
            .arg("check")
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!text.contains(&password), "password in check output");
        (out.status.code(), text)
    };
    let (code, text) = check().await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok   vcenter 'sim'"), "{text}");
    assert!(text.contains("ok   pool 'lab': golden VM"), "{text}");

    // A snapshot that does not exist: a FAIL line naming it and the candidates, exit 1.
    sqlx::query("UPDATE pools SET snapshot = 'base/v9'")
        .execute(&db)
        .await
        .unwrap();
    let (code, text) = check().await;
    assert_eq!(code, Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL pool 'lab'"))
        .unwrap_or_else(|| panic!("no FAIL line for the pool: {text}"));
    assert!(line.contains("base/v9") && line.contains("base"), "{line}");

    // An unreachable vCenter: FAIL for it and for its pools.
    drop(sim);
    let (code, text) = check().await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL vcenter 'sim'"), "{text}");
}

/// README, metrics: a real fill through `serve` makes the reconciler emit its own metrics
/// through the recorder the daemon installs (nothing recorded by the test).
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_real_fill_emits_the_reconcilers_metrics(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(VcsimOptions {
        clone_fail_rate: 1.0,
        ..sim_opts("lab")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    create_pool(&db, "lab", 3).await;
    let d = Daemon::start(dir.path(), &db_url(&opts), &sim.sdk_url, &sim.password).await;
    let failed = eventually("deskpool_clone_failures_total for the pool", || async {
        let text = d.metrics().await;
        let n = sample_sum(
            &text,
            r#"deskpool_clone_failures_total{pool="lab",kind="insufficient_resources"}"#,
        );
        (n >= 1.0).then_some(n)
    })
    .await;
    assert!(failed >= 1.0);
    assert_eq!(
        sample_sum(&d.metrics().await, "deskpool_clone_duration_seconds_count"),
        0.0,
        "no clone has succeeded yet"
    );
    sim.set_config(serde_json::json!({"clone_fail_rate": 0.0}))
        .await;
    {
        // The failures may have stopped the pool (stop_after_failures = 3): resume it.
        let mut c = db.acquire().await.unwrap();
        deskpool_store::pools::set_enabled(&mut c, "lab", true)
            .await
            .unwrap();
    }
    converged(&db, &sim, "lab", 3).await;
    let text = d.metrics().await;
    assert!(
        sample_sum(&text, "deskpool_clone_duration_seconds_count") >= 3.0,
        "three clones succeeded:\n{text}"
    );
    assert!(
        sample_sum(&text, "deskpool_clone_duration_seconds_sum") > 0.0,
        "{text}"
    );
    assert!(
        sample_sum(&text, "deskpool_reconcile_duration_seconds_count") >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("# TYPE deskpool_clone_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        sample_sum(&text, r#"deskpool_clone_failures_total{pool="lab""#) >= failed,
        "{text}"
    );
    // Gauges read from the database at scrape time agree.
    assert!(
        text.contains(r#"deskpool_desktops{pool="lab",state="ready"} 3"#),
        "{text}"
    );
}

/// A claimed desktop survives a shrink to 0 and a `kill -9` of the daemon in the middle of
/// it; the same user gets it back after the restart; releasing it lets the pool shrink.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_claimed_desktop_survives_a_shrink_and_kill_9(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts("lab")).await;
    let dir = tempfile::tempdir().unwrap();
    create_pool(&db, "lab", 3).await;
    let broker = {
        let mut c = db.acquire().await.unwrap();
        deskpool_store::tokens::create(&mut c, "portal", deskpool_store::tokens::Role::Broker)
            .await
            .unwrap()
            .1
    };
    let d = Daemon::start(dir.path(), &db_url(&opts), &sim.sdk_url, &sim.password).await;
    converged(&db, &sim, "lab", 3).await;
    let http = reqwest::Client::new();
    let claim = |url: String| {
        let http = http.clone();
        let broker = broker.clone();
        async move {
            let r = http
                .post(format!("{url}/api/v1/pools/lab/claim"))
                .bearer_auth(&broker)
                .json(&serde_json::json!({"user": "alice", "lease_secs": 3600}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let first = claim(d.url.clone()).await;
    let name = first["desktop"]["name"].as_str().unwrap().to_owned();
    let uuid = first["desktop"]["instance_uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    set_target(&db, "lab", 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.kill9().await;
    let d = Daemon::start(dir.path(), &db_url(&opts), &sim.sdk_url, &sim.password).await;
    eventually("only the claimed desktop left", || async {
        let vms = sim.vms(Some("lab")).await;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM desktops")
            .fetch_one(&db)
            .await
            .unwrap();
        (rows == 1 && vms.len() == 1).then_some(())
    })
    .await;
    let vms = sim.vms(Some("lab")).await;
    assert_eq!(
        (vms[0].name.as_str(), vms[0].instance_uuid.as_str()),
        (name.as_str(), uuid.as_str())
    );
    assert_eq!(vms[0].power_state, "poweredOn");
    let again = claim(d.url.clone()).await;
    assert_eq!(again["renewed"], true);
    assert_eq!(again["desktop"]["name"], name.as_str());
    assert_eq!(again["pool_status"]["over_target"], 1);
    let released = http
        .post(format!(
            "{}/api/v1/pools/lab/desktops/{name}/release",
            d.url
        ))
        .bearer_auth(&broker)
        .send()
        .await
        .unwrap();
    assert_eq!(released.status().as_u16(), 200);
    eventually("the released desktop is destroyed", || async {
        sim.vms(Some("lab")).await.is_empty().then_some(())
    })
    .await;
}
