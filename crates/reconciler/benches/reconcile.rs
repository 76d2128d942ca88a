//! The reconciler against the vcsim harness and a real PostgreSQL: fill speed, SOAP calls per
//! desktop, idle SOAP traffic and peak memory. Prints figures and ratios to their targets;
//! never asserts on time.
//!
//! ```text
//! cargo bench -p deskpool-reconciler --bench reconcile              # all parts
//! cargo bench -p deskpool-reconciler --bench reconcile -- fill      # or calls, idle, rollout, rss
//! ```
//!
//! - `fill`: one pool of 200 at 8 clones in flight, clone latency 500 ms: elapsed / ideal.
//! - `calls`: SOAP calls per desktop provisioned during that same fill.
//! - `idle`: SOAP calls per minute with 100 and with 1,000 ready desktops, measured with a
//!   short resync interval and extrapolated to the default (300 s).
//! - `rollout`: a pool of 200 ready desktops at 8 clones in flight (clone latency 500 ms)
//!   rolls to a new snapshot (max_surge 8, then 16; max_unavailable 0): elapsed / ceil(200/8) x L.
//! - `rss`: peak RSS (VmHWM) of a process running the reconciler over 10,000 desktops. With
//!   `all`, this part runs in a child process so the other parts do not count.
//!
//! Environment: `DATABASE_URL` (server to create scratch databases in; default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `DESKPOOL_BENCH_DESKTOPS` (rss part,
//! default 10000), `DESKPOOL_BENCH_IDLE_RESYNC_SECS` (default 30) and
//! `DESKPOOL_BENCH_IDLE_WINDOW_SECS` (default 90), `DESKPOOL_BENCH_RSS_RESYNC_SECS`
//! (default 30), `DESKPOOL_VCSIM_BIN` (prebuilt simulator).

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskpool_domain::{GuestOs, PoolSpec};
use deskpool_reconciler::{Leadership, Reconciler, ReconcilerConfig, StatusHandle, VcenterSpec};
use deskpool_store::pools;
use deskpool_testkit::vcsim::{CloneRecord, Stats, Vcsim, VcsimOptions};
use deskpool_vsphere::{Client, ClientOptions, LinkedCloneSpec, MoRef, TaskState};
use secrecy::SecretString;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The daemon's default `[database] max_connections`.
const RECONCILER_DB_CONNECTIONS: u32 = 10;
/// The methods one inventory sweep (`list_all_vms`) issues.
const SWEEP_METHODS: &[&str] = &[
    "CreateContainerView",
    "RetrievePropertiesEx",
    "ContinueRetrievePropertiesEx",
    "DestroyView",
];
/// Set in the child process that runs the rss part for `all`.
const CHILD_ENV: &str = "DESKPOOL_BENCH_CHILD";
/// Safety limit on any wait; reaching it is reported, never a performance verdict.
const PATIENCE: Duration = Duration::from_secs(900);

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: expected a whole number")),
        Err(_) => default,
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Machine, scratch database, reconciler

fn machine() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} CPUs ({model}), {:.1} GiB RAM; commit {commit}; load average at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_kb as f64 / 1024.0 / 1024.0,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    println!("setup: reconciler in this process; PostgreSQL (127.0.0.1) and the simulator (govmomi vcsim) are separate processes on the same machine");
}

/// A database of its own, migrated; dropped by [`Scratch::drop`].
struct Scratch {
    server: String,
    name: String,
    opts: PgConnectOptions,
    db: PgPool,
}

impl Scratch {
    async fn create(tag: &str) -> Scratch {
        let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
        let name = format!("deskpool_bench_{tag}_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {server}: {e}"));
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("CREATE DATABASE");
        let opts: PgConnectOptions = server.parse().expect("DATABASE_URL");
        let opts = opts.database(&name);
        let db = PgPoolOptions::new()
            .max_connections(3)
            .connect_with(opts.clone())
            .await
            .expect("connect to the scratch database");
        deskpool_store::MIGRATOR.run(&db).await.expect("migrate");
        Scratch {
            server,
            name,
            opts,
            db,
        }
    }

    async fn drop(self) {
        self.db.close().await;
        if let Ok(mut admin) = PgConnection::connect(&self.server).await {
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await;
        }
    }

    async fn add_pool(&self, spec: &PoolSpec) {
        let mut c = self.db.acquire().await.unwrap();
        pools::insert(&mut c, spec).await.expect("insert pool");
    }

    async fn set_target(&self, pool: &str, target: u32) {
        let mut c = self.db.acquire().await.unwrap();
        pools::set_target(&mut c, pool, target, None)
            .await
            .expect("set target");
    }

    /// Desktops by state, all pools.
    async fn states(&self) -> BTreeMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>("SELECT state, count(*) FROM desktops GROUP BY state")
            .fetch_all(&self.db)
            .await
            .expect("count desktops")
            .into_iter()
            .collect()
    }

    /// Waits until `n` desktops are ready, printing progress every `every` (if any). Returns
    /// false if [`PATIENCE`] ran out.
    async fn wait_ready(&self, n: i64, poll: Duration, every: Option<Duration>) -> bool {
        let start = Instant::now();
        let mut next_report = every.map(|e| start + e);
        loop {
            let states = self.states().await;
            let ready = states.get("ready").copied().unwrap_or(0);
            if ready >= n {
                return true;
            }
            if start.elapsed() > PATIENCE {
                println!(
                    "  gave up after {:.0} s: {states:?}",
                    PATIENCE.as_secs_f64()
                );
                return false;
            }
            if let (Some(at), Some(e)) = (next_report, every) {
                if Instant::now() >= at {
                    println!(
                        "  ... {:>4.0} s: {ready}/{n} ready ({:.0}/s) {states:?}",
                        secs(start.elapsed()),
                        ready as f64 / secs(start.elapsed())
                    );
                    next_report = Some(at + e);
                }
            }
            tokio::time::sleep(poll).await;
        }
    }
}

fn vcenter(sim: &Vcsim) -> VcenterSpec {
    VcenterSpec {
        name: "sim".into(),
        options: ClientOptions::new(
            sim.sdk_url.parse().expect("sdk url"),
            sim.username.clone(),
            SecretString::from(sim.password.clone()),
        ),
    }
}

fn spec(name: &str, target: u32, max: u32, concurrency: u32) -> PoolSpec {
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
        naming_pattern: format!("{name}-{{n:5}}"),
        guest_os: GuestOs::Other,
        target_size: target,
        min_size: 0,
        max_size: max,
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

/// A reconciler running on this process's runtime, as `deskpool serve` runs it.
struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    status: StatusHandle,
}

impl Running {
    async fn start(scratch: &Scratch, sim: &Vcsim, cfg: ReconcilerConfig) -> Running {
        let db = PgPoolOptions::new()
            .max_connections(RECONCILER_DB_CONNECTIONS)
            .connect_lazy_with(scratch.opts.clone());
        let reconciler = Reconciler::new(db, vec![vcenter(sim)], cfg);
        let status = reconciler.status();
        let cancel = CancellationToken::new();
        let run = reconciler.run(cancel.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = run.await {
                eprintln!("reconciler ended with an error: {e}");
            }
        });
        let r = Running {
            cancel,
            task,
            status,
        };
        // Leader with a vCenter session: measurements start from a warm daemon.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(r.status.role() == Leadership::Leader
            && r.status.vcenters().iter().all(|v| v.connected))
        {
            assert!(
                Instant::now() < deadline,
                "reconciler not ready after 60 s: {:?} {:?}",
                r.status.role(),
                r.status.vcenters()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        r
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn bench_config(replica: &str) -> ReconcilerConfig {
    ReconcilerConfig {
        replica_id: replica.into(),
        ..ReconcilerConfig::default()
    }
}

fn delta(before: &Stats, after: &Stats) -> BTreeMap<String, u64> {
    after
        .soap_calls
        .iter()
        .map(|(m, n)| (m.clone(), n - before.calls(m)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn print_methods(calls: &BTreeMap<String, u64>, per: f64, per_label: &str) {
    let mut v: Vec<_> = calls.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (m, n) in v {
        println!("    {m:<30} {n:>7}  {:>7.2} {per_label}", *n as f64 / per);
    }
}

// ---------------------------------------------------------------------------------------------
// a + b: fill, and the naive baseline on the same simulator

/// Clone latency of the fill cases.
const FILL_CLONE: Duration = Duration::from_millis(500);
/// Power-on latency of the fill cases: non-zero, so the ideal has to say where it goes.
const FILL_POWER: Duration = Duration::from_millis(200);
/// How often the naive baseline reads each task, as the polling script in issue #9 did.
const NAIVE_POLL: Duration = Duration::from_millis(50);

/// Microseconds since the Unix epoch: the clock the simulator's timeline and PostgreSQL's
/// `now()` read, so the three can be compared.
fn unix_us() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(d.as_micros()).expect("microseconds fit in i64")
}

/// The `p`-quantile (0..=1) of `v` by the nearest-rank method; NaN when empty.
fn quantile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn summary_ms(v: &[f64]) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})",
        quantile(v, 0.5),
        quantile(v, 0.99),
        quantile(v, 1.0),
        v.len()
    )
}

/// Slot refills from timestamps: with `c` clones in flight, the clone that takes the slot the
/// k-th freed one left is the (c + k)-th to arrive. `freed_us` are the moments slots were
/// freed (any clock comparable with the simulator's), `clones` the simulator's timeline.
/// Milliseconds from each freed slot to the next `CloneVM_Task` the simulator received.
fn refill_ms(freed_us: &[i64], clones: &[CloneRecord], c: u32) -> Vec<f64> {
    let mut freed = freed_us.to_vec();
    freed.sort_unstable();
    let mut arrived: Vec<i64> = clones.iter().map(|x| x.received_us).collect();
    arrived.sort_unstable();
    freed
        .iter()
        .zip(arrived.iter().skip(c as usize))
        .map(|(f, a)| (a - f) as f64 / 1000.0)
        .collect()
}

/// One provisioning run against the simulator: deskpool's or the baseline's.
struct FillRun {
    elapsed: Duration,
    /// The simulator's record of this run's clones.
    clones: Vec<CloneRecord>,
    calls: BTreeMap<String, u64>,
    calls_total: u64,
    max_in_flight: u64,
}

impl FillRun {
    /// When the last clone task ended, from the simulator's timeline, relative to `t0_us`.
    fn last_clone_done(&self, t0_us: i64) -> f64 {
        let last = self.clones.iter().map(|c| c.done_us).max().unwrap_or(t0_us);
        (last - t0_us) as f64 / 1e6
    }

    fn freed_at_simulator(&self) -> Vec<i64> {
        self.clones.iter().map(|c| c.done_us).collect()
    }
}

/// What the fill cases print about each run: elapsed, ideal, ratios.
fn print_run(who: &str, run: &FillRun, t0_us: i64, n: u32, c: u32) {
    let waves = n.div_ceil(c);
    let ideal_clone = secs(FILL_CLONE) * f64::from(waves);
    let ideal = ideal_clone + secs(FILL_POWER);
    let e = secs(run.elapsed);
    println!(
        "  {who}: create -> {n} ready {e:.2} s = {:.3} x ceil(N/C) x L (target <= 1.03), {:.3} x the ideal with the power-on tail; last clone ended at {:.2} s = {:.3} x ceil(N/C) x L; max {} clones in flight",
        e / ideal_clone,
        e / ideal,
        run.last_clone_done(t0_us),
        run.last_clone_done(t0_us) / ideal_clone,
        run.max_in_flight,
    );
}

/// The fill cases: one pool of N at C clones in flight, then the naive baseline on the same
/// simulator. `calls` alone runs the first case without the baseline.
async fn fill(show_fill: bool, show_calls: bool) {
    println!(
        "\n== fill: clone latency L = {} ms, power-on latency P = {} ms, resync 300 s",
        FILL_CLONE.as_millis(),
        FILL_POWER.as_millis()
    );
    println!("  ideal: ceil(N/C) x L + P. A desktop's power-on runs outside its clone slot (deskpool holds a power slot then), so the clones need ceil(N/C) waves of L back to back and only the last wave's power-on adds to the total: one P. Ratios are given to ceil(N/C) x L (the target's denominator) and to that ideal.");
    println!("  slot refill: slot freed -> next CloneVM_Task received by the simulator, from timestamps (the simulator's clone timeline, PostgreSQL's event times; one clock): the k-th freed slot is refilled by the (C + k)-th clone to arrive");
    let cases: &[(u32, u32)] = if show_fill {
        &[(200, 8), (1000, 20)]
    } else {
        &[(200, 8)]
    };
    for &(n, c) in cases {
        fill_case(n, c, show_fill, show_calls).await;
    }
}

async fn fill_case(n: u32, c: u32, show_fill: bool, show_calls: bool) {
    let pool = format!("fill-{n}");
    let naive_folder = format!("naive-{n}");
    let per_vcenter = c.max(ReconcilerConfig::default().max_concurrent_per_vcenter);
    println!("\n-- N = {n}, C = {c} (max_concurrent_clones {c}, max_concurrent_per_vcenter {per_vcenter})");
    let sim = Vcsim::start(VcsimOptions {
        clone_delay: FILL_CLONE,
        power_delay: FILL_POWER,
        folders: vec![
            pool.clone(),
            naive_folder.clone(),
            format!("{naive_folder}-on"),
        ],
        ..Default::default()
    })
    .await;
    let scratch = Scratch::create("fill").await;
    let cfg = ReconcilerConfig {
        max_concurrent_per_vcenter: per_vcenter,
        ..bench_config("bench-fill")
    };
    let r = Running::start(&scratch, &sim, cfg).await;
    // The start-up sweep found no pools; let it and the login traffic finish before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.reset_stats().await;

    let t0 = Instant::now();
    let t0_us = unix_us();
    scratch.add_pool(&spec(&pool, n, n, c)).await;
    let converged = scratch
        .wait_ready(
            i64::from(n),
            Duration::from_millis(10),
            Some(Duration::from_secs(10)),
        )
        .await;
    let elapsed = t0.elapsed();
    let stats = sim.stats().await;
    let deskpool = FillRun {
        elapsed,
        clones: sim.clones().await,
        calls: delta(&Stats::default(), &stats),
        calls_total: stats.soap_calls_total,
        max_in_flight: stats
            .max_clones_in_flight_by_folder
            .get(&pool)
            .copied()
            .unwrap_or(0),
    };
    r.stop().await;

    // deskpool's own timestamps (database clock, transaction start): the clone's result seen
    // and recorded, which is when deskpool can free its slot, and the desktop ready.
    let seen: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT desktop,
                (extract(epoch FROM min(at) FILTER (WHERE kind = 'clone_succeeded')) * 1e6)::int8,
                (extract(epoch FROM min(at) FILTER (WHERE kind = 'desktop_ready')) * 1e6)::int8
         FROM events WHERE pool = $1 AND desktop IS NOT NULL
         GROUP BY desktop HAVING bool_or(kind = 'clone_succeeded')",
    )
    .bind(&pool)
    .fetch_all(&scratch.db)
    .await
    .expect("event timings");
    scratch.drop().await;

    if !converged {
        println!("  DID NOT CONVERGE: figures below are partial");
    }
    if show_fill {
        print_run("deskpool", &deskpool, t0_us, n, c);
        let done_by_name: BTreeMap<&str, i64> = deskpool
            .clones
            .iter()
            .filter(|x| x.ok)
            .map(|x| (x.name.as_str(), x.done_us))
            .collect();
        let watch_ms: Vec<f64> = seen
            .iter()
            .filter_map(|(name, s, _)| Some((s - done_by_name.get(name.as_str())?) as f64 / 1000.0))
            .collect();
        let power_ms: Vec<f64> = seen
            .iter()
            .filter_map(|(_, s, ready)| Some((ready.as_ref()? - s) as f64 / 1000.0))
            .collect();
        let seen_us: Vec<i64> = seen.iter().map(|(_, s, _)| *s).collect();
        println!(
            "    slot refill, clone task ended -> next CloneVM_Task: {}",
            summary_ms(&refill_ms(
                &deskpool.freed_at_simulator(),
                &deskpool.clones,
                c
            ))
        );
        println!(
            "    of which the task's end reaching deskpool (simulator update tick 5 ms, WaitForUpdatesEx, recording): {}",
            summary_ms(&watch_ms)
        );
        println!(
            "    deskpool's own time per slot, clone result recorded -> next CloneVM_Task (target p99 <= 5 ms): {}",
            summary_ms(&refill_ms(&seen_us, &deskpool.clones, c))
        );
        println!(
            "    power-on, clone result recorded -> ready (outside the clone slot): {}",
            summary_ms(&power_ms)
        );
    }
    if show_calls {
        println!(
            "  deskpool SOAP calls during the fill: {} = {:.2} per desktop provisioned (target <= 3.0); clone requests {}",
            deskpool.calls_total,
            deskpool.calls_total as f64 / f64::from(n),
            deskpool.clones.len()
        );
        print_methods(&deskpool.calls, f64::from(n), "per desktop");
    }
    if show_fill {
        sim.reset_stats().await;
        let t0_us = unix_us();
        let naive = naive_fill(&sim, &naive_folder, n, c, false).await;
        print_run(
            &format!(
                "naive baseline ({c} clones at a time, each task read every {} ms with RetrievePropertiesEx, power-on outside the slot)",
                NAIVE_POLL.as_millis()
            ),
            &naive,
            t0_us,
            n,
            c,
        );
        println!(
            "    slot refill, clone task ended -> next CloneVM_Task: {}",
            summary_ms(&refill_ms(&naive.freed_at_simulator(), &naive.clones, c))
        );
        println!(
            "    SOAP calls {} = {:.2} per desktop",
            naive.calls_total,
            naive.calls_total as f64 / f64::from(n)
        );
        println!(
            "  deskpool / baseline: {:.2} s / {:.2} s = {:.3} (target < 1.0)",
            secs(deskpool.elapsed),
            secs(naive.elapsed),
            secs(deskpool.elapsed) / secs(naive.elapsed)
        );
        // What `CloneSpec.powerOn` costs and saves, physically: the same baseline, one task
        // per desktop that holds its slot through the power-on.
        sim.reset_stats().await;
        let t0_us = unix_us();
        let on = naive_fill(&sim, &format!("{naive_folder}-on"), n, c, true).await;
        print_run(
            "naive baseline with CloneSpec.powerOn (no PowerOnVM_Task; the slot holds L + P)",
            &on,
            t0_us,
            n,
            c,
        );
        println!(
            "    SOAP calls {} = {:.2} per desktop; ideal for this shape ceil(N/C) x (L + P) = {:.2} s",
            on.calls_total,
            on.calls_total as f64 / f64::from(n),
            f64::from(n.div_ceil(c)) * secs(FILL_CLONE + FILL_POWER)
        );
    }
}

/// Waits for a task by reading its `info` every [`NAIVE_POLL`] (one RetrievePropertiesEx each).
async fn poll_task(client: &Client, task: &MoRef) -> Option<MoRef> {
    loop {
        let info = client
            .task_info(task)
            .await
            .expect("naive baseline: read task");
        match info.state {
            TaskState::Success => return info.result,
            TaskState::Error => panic!("naive baseline: task {task} failed: {:?}", info.error),
            TaskState::Queued | TaskState::Running => tokio::time::sleep(NAIVE_POLL).await,
        }
    }
}

/// The naive baseline of issue #9: `c` workers, each clones, reads the task every 50 ms until
/// it ends, hands the power-on (started and polled the same way) to a task of its own so the
/// next clone need not wait for it, and takes the next desktop. With `power_on_in_clone` the
/// clone spec asks for `powerOn` instead: one task per desktop, which holds the slot through
/// the power-on.
async fn naive_fill(sim: &Vcsim, folder: &str, n: u32, c: u32, power_on_in_clone: bool) -> FillRun {
    let client = Client::connect(vcenter(sim).options)
        .await
        .expect("naive baseline: connect");
    let find = |path: String| {
        let client = client.clone();
        async move {
            client
                .find_by_inventory_path(&path)
                .await
                .expect("naive baseline: lookup")
                .unwrap_or_else(|| panic!("naive baseline: {path} not found"))
        }
    };
    let golden = find(sim.golden_path.clone()).await;
    let placement = Arc::new(LinkedCloneSpec {
        name: String::new(),
        folder: find(format!("DC0/vm/{folder}")).await,
        resource_pool: find("DC0/host/DC0_C0/Resources".into()).await,
        // The simulator's cluster runs DRS: vCenter chooses the host.
        host: None,
        datastore: None,
        snapshot: client
            .resolve_snapshot(&golden, "current")
            .await
            .expect("naive baseline: snapshot"),
        instance_uuid: String::new(),
        extra_config: Vec::new(),
        customization: None,
        power_on: power_on_in_clone,
    });
    // Setup calls are not part of the measurement.
    sim.reset_stats().await;

    let t0 = Instant::now();
    let next = Arc::new(AtomicU32::new(0));
    let power_ons = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<JoinHandle<()>> = (0..c)
        .map(|_| {
            let (client, golden, placement, next, power_ons) = (
                client.clone(),
                golden.clone(),
                Arc::clone(&placement),
                Arc::clone(&next),
                Arc::clone(&power_ons),
            );
            let folder = folder.to_owned();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let spec = LinkedCloneSpec {
                        name: format!("{folder}-{i:05}"),
                        instance_uuid: uuid::Uuid::new_v4().to_string(),
                        ..(*placement).clone()
                    };
                    let task = client
                        .clone_linked(&golden, &spec)
                        .await
                        .expect("naive baseline: CloneVM_Task");
                    let vm = poll_task(&client, &task)
                        .await
                        .expect("naive baseline: clone without a VM");
                    if power_on_in_clone {
                        continue;
                    }
                    let client = client.clone();
                    let power = tokio::spawn(async move {
                        let task = client
                            .power_on(&vm)
                            .await
                            .expect("naive baseline: PowerOnVM_Task");
                        poll_task(&client, &task).await;
                    });
                    power_ons.lock().expect("power-on list").push(power);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("naive baseline worker");
    }
    let power: Vec<_> = std::mem::take(&mut *power_ons.lock().expect("power-on list"));
    for p in power {
        p.await.expect("naive baseline power-on");
    }
    let elapsed = t0.elapsed();
    let stats = sim.stats().await;
    let clones = sim.clones().await;
    let _ = client.logout().await;
    FillRun {
        elapsed,
        clones,
        calls: delta(&Stats::default(), &stats),
        calls_total: stats.soap_calls_total,
        max_in_flight: stats
            .max_clones_in_flight_by_folder
            .get(folder)
            .copied()
            .unwrap_or(0),
    }
}

// ---------------------------------------------------------------------------------------------
// c: idle

struct Idle {
    desktops: u32,
    window: Duration,
    total: u64,
    sweeps: u64,
    sweep_calls: u64,
    calls: BTreeMap<String, u64>,
}

impl Idle {
    fn per_sweep(&self) -> f64 {
        self.sweep_calls as f64 / self.sweeps.max(1) as f64
    }
    fn other_per_min(&self) -> f64 {
        (self.total - self.sweep_calls) as f64 / (secs(self.window) / 60.0)
    }
}

async fn measure_idle(sim: &Vcsim, desktops: u32, window: Duration) -> Idle {
    // Let the last workers' wake-ups run out before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sim.reset_stats().await;
    tokio::time::sleep(window).await;
    let s = sim.stats().await;
    let calls = delta(&Stats::default(), &s);
    Idle {
        desktops,
        window,
        total: s.soap_calls_total,
        sweeps: s.calls("CreateContainerView"),
        sweep_calls: SWEEP_METHODS.iter().map(|m| s.calls(m)).sum(),
        calls,
    }
}

async fn idle() {
    let resync = Duration::from_secs(env_u64("DESKPOOL_BENCH_IDLE_RESYNC_SECS", 30));
    let window = Duration::from_secs(env_u64("DESKPOOL_BENCH_IDLE_WINDOW_SECS", 90));
    let default_resync = ReconcilerConfig::default().resync_interval;
    println!(
        "\n== idle: SOAP calls with every desktop ready; resync_interval {} s (default {} s), window {} s",
        resync.as_secs(),
        default_resync.as_secs(),
        window.as_secs()
    );
    let names: Vec<String> = (1..=20).map(|i| format!("idle-{i:02}")).collect();
    let sim = Vcsim::start(VcsimOptions {
        folders: names.clone(),
        ..Default::default()
    })
    .await;
    let scratch = Scratch::create("idle").await;
    let cfg = ReconcilerConfig {
        resync_interval: resync,
        max_concurrent_per_vcenter: 100,
        ..bench_config("bench-idle")
    };
    let r = Running::start(&scratch, &sim, cfg).await;

    let mut results = Vec::new();
    // 5 pools x 20, then the same 5 and 15 more at 50 each: 20 x 50.
    for name in &names[..5] {
        scratch.add_pool(&spec(name, 20, 50, 50)).await;
    }
    let t = Instant::now();
    scratch
        .wait_ready(100, Duration::from_millis(100), None)
        .await;
    println!(
        "  filled 100 desktops (5 pools x 20) in {:.1} s",
        secs(t.elapsed())
    );
    results.push(measure_idle(&sim, 100, window).await);

    let t = Instant::now();
    for name in &names[..5] {
        scratch.set_target(name, 50).await;
    }
    for name in &names[5..] {
        scratch.add_pool(&spec(name, 50, 50, 50)).await;
    }
    scratch
        .wait_ready(
            1000,
            Duration::from_millis(100),
            Some(Duration::from_secs(15)),
        )
        .await;
    println!(
        "  filled to 1000 desktops (20 pools x 50) in {:.1} s",
        secs(t.elapsed())
    );
    results.push(measure_idle(&sim, 1000, window).await);
    r.stop().await;
    scratch.drop().await;

    // One sweep per interval; other idle traffic (none expected) scales with time. The
    // keepalive sends CurrentTime only after 300 s without any call, so at the default interval
    // it can add at most one call per sweep interval.
    let keepalive_bound = 60.0
        / ClientOptions::new(
            "http://x/sdk".parse().unwrap(),
            "u",
            SecretString::from(String::new()),
        )
        .keepalive_interval
        .as_secs_f64();
    for i in &results {
        let minutes = secs(i.window) / 60.0;
        println!(
            "  {} ready desktops: {} calls in {:.0} s = {:.1}/min at resync {} s; {} sweeps x {:.1} calls; other calls {:.2}/min",
            i.desktops,
            i.total,
            secs(i.window),
            i.total as f64 / minutes,
            resync.as_secs(),
            i.sweeps,
            i.per_sweep(),
            i.other_per_min()
        );
        print_methods(&i.calls, i.sweeps.max(1) as f64, "per sweep");
        let per_min = i.per_sweep() * 60.0 / default_resync.as_secs_f64() + i.other_per_min();
        println!(
            "    default config (resync {} s): {per_min:.2} calls/min ({:.2} with the worst-case keepalive) (target <= 12)",
            default_resync.as_secs(),
            per_min + keepalive_bound
        );
    }
    if let [small, large] = &results[..] {
        println!(
            "  per-sweep cost 1000 vs 100 desktops: {:.1} / {:.1} calls = {:.2} (the simulator answers in one page; a real vCenter pages at 1000 VMs, one more ContinueRetrievePropertiesEx per 1000)",
            large.per_sweep(),
            small.per_sweep(),
            large.per_sweep() / small.per_sweep().max(1e-9)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// d: rss

fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|l| {
            l.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

async fn rss() {
    const POOLS: u32 = 20;
    let wanted = env_u64("DESKPOOL_BENCH_DESKTOPS", 10_000).max(1) as u32;
    let per_pool = wanted.div_ceil(POOLS);
    let total = per_pool * POOLS;
    let resync = Duration::from_secs(env_u64("DESKPOOL_BENCH_RSS_RESYNC_SECS", 30));
    println!(
        "\n== rss: {total} desktops ({POOLS} pools x {per_pool}; DESKPOOL_BENCH_DESKTOPS={wanted}), clone delay 0, pool concurrency 50, max_concurrent_per_vcenter 100, resync {} s",
        resync.as_secs()
    );
    let hwm_start = proc_status_kb("VmHWM");
    let names: Vec<String> = (1..=POOLS).map(|i| format!("rss-{i:02}")).collect();
    let sim = Vcsim::start(VcsimOptions {
        folders: names.clone(),
        // This part measures memory. With 10,000 VMs every look for updates re-evaluates the
        // VM watch's filter over the whole inventory: the stock 250 ms tick keeps that from
        // making the simulator the bottleneck of the fill.
        update_tick: Duration::from_millis(250),
        ..Default::default()
    })
    .await;
    let scratch = Scratch::create("rss").await;
    let cfg = ReconcilerConfig {
        resync_interval: resync,
        max_concurrent_per_vcenter: 100,
        ..bench_config("bench-rss")
    };
    let r = Running::start(&scratch, &sim, cfg).await;
    let t = Instant::now();
    for name in &names {
        scratch.add_pool(&spec(name, per_pool, per_pool, 50)).await;
    }
    let converged = scratch
        .wait_ready(
            i64::from(total),
            Duration::from_millis(500),
            Some(Duration::from_secs(30)),
        )
        .await;
    let fill_time = t.elapsed();
    println!(
        "  filled {total} desktops in {:.1} s ({:.0} desktops/s){}",
        secs(fill_time),
        f64::from(total) / secs(fill_time),
        if converged {
            ""
        } else {
            " -- DID NOT CONVERGE"
        }
    );
    let (hwm_filled, rss_filled) = (proc_status_kb("VmHWM"), proc_status_kb("VmRSS"));
    println!(
        "  after the fill, before the sweep: VmHWM {:.1} MB, VmRSS {:.1} MB",
        hwm_filled as f64 / 1024.0,
        rss_filled as f64 / 1024.0
    );
    // Idle through a full sweep: listing every VM, then each pool's pass comparing them.
    sim.reset_stats().await;
    let t = Instant::now();
    while sim.stats().await.calls("DestroyView") == 0
        && t.elapsed() < resync * 2 + Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = sim.stats().await;
    println!(
        "  sweep after the fill: {} calls ({})",
        s.soap_calls_total,
        s.soap_calls
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let hwm = proc_status_kb("VmHWM");
    let rss_now = proc_status_kb("VmRSS");
    r.stop().await;
    scratch.drop().await;
    println!(
        "  peak RSS (VmHWM) of this process: {:.1} MB (target <= 100 MB; ratio {:.2}); VmRSS after the sweep {:.1} MB; VmHWM before the reconciler started {:.1} MB",
        hwm as f64 / 1024.0,
        hwm as f64 / 1024.0 / 100.0,
        rss_now as f64 / 1024.0,
        hwm_start as f64 / 1024.0
    );
    println!("  note: includes the bench's own overhead (runtime, simulator control client, progress queries); the simulator and PostgreSQL are other processes");
}

// ---------------------------------------------------------------------------------------------

/// Rolls a pool of 200 ready desktops to a new snapshot at C = 8 and prints the time against
/// ceil(N/C) x L: every outdated desktop needs a clone from the new image, C at a time.
async fn rollout() {
    // max_surge = C (the default) bounds the new desktops not yet swapped in, power-on
    // included; 2C lets the next clones start while the last ones power on.
    for surge in [8, 16] {
        rollout_case(surge).await;
    }
}

async fn rollout_case(surge: u32) {
    let (n, c) = (200u32, 8u32);
    println!(
        "\n== rollout: N = {n} ready desktops roll to a new snapshot, C = {c} (max_surge {surge}, max_unavailable 0), clone latency L = {} ms, power-on latency P = {} ms",
        FILL_CLONE.as_millis(),
        FILL_POWER.as_millis()
    );
    let pool = "roll";
    let sim = Vcsim::start(VcsimOptions {
        clone_delay: FILL_CLONE,
        power_delay: FILL_POWER,
        folders: vec![pool.into()],
        snapshots: vec!["base".into(), "base/v2".into()],
        ..Default::default()
    })
    .await;
    let scratch = Scratch::create("rollout").await;
    let cfg = ReconcilerConfig {
        max_concurrent_per_vcenter: ReconcilerConfig::default().max_concurrent_per_vcenter,
        ..bench_config("bench-rollout")
    };
    let r = Running::start(&scratch, &sim, cfg).await;
    let mut s = spec(pool, n, n, c);
    s.snapshot = "base".into();
    s.max_surge = Some(surge);
    let filling = Instant::now();
    scratch.add_pool(&s).await;
    let filled = scratch
        .wait_ready(i64::from(n), Duration::from_millis(10), None)
        .await;
    let fill_time = filling.elapsed();
    if !filled {
        println!("  the pool did not fill: no rollout figure");
        r.stop().await;
        scratch.drop().await;
        return;
    }
    let b = r
        .status
        .resolve_snapshot(&s, "base/v2")
        .await
        .expect("snapshot base/v2 resolves");
    let t0 = Instant::now();
    let t0_unix_us = unix_us();
    {
        let mut tx = scratch.db.begin().await.unwrap();
        let p = pools::get(&mut tx, pool).await.unwrap().unwrap();
        pools::set_snapshot_selector(&mut tx, p.id, "base/v2")
            .await
            .unwrap();
        pools::pin_image(&mut tx, p.id, &b).await.unwrap();
        tx.commit().await.unwrap();
    }
    let mut lowest_ready = i64::MAX;
    let mut all_new_ready = None;
    let done = loop {
        let (ready, on_b, total): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'ready'),
                    count(*) FILTER (WHERE state = 'ready' AND snapshot_moref = $1),
                    count(*)
             FROM desktops",
        )
        .bind(&b)
        .fetch_one(&scratch.db)
        .await
        .unwrap();
        lowest_ready = lowest_ready.min(ready);
        if on_b >= i64::from(n) && all_new_ready.is_none() {
            all_new_ready = Some(t0.elapsed());
        }
        if on_b == i64::from(n) && total == i64::from(n) {
            break true;
        }
        if t0.elapsed() > PATIENCE {
            println!(
                "  gave up after {:.0} s: {on_b}/{n} on the new image, {total} rows",
                PATIENCE.as_secs_f64()
            );
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let elapsed = t0.elapsed();
    r.stop().await;
    if done {
        rollout_phases(&scratch, &sim, t0_unix_us, c).await;
    }
    scratch.drop().await;
    let ideal = FILL_CLONE * n.div_ceil(c);
    if done {
        println!(
            "  rolled {n} desktops in {:.2} s; ceil(N/C) x L = {:.2} s; ratio {:.3} (target <= 1.10); ready desktops never below {lowest_ready}",
            secs(elapsed),
            secs(ideal),
            secs(elapsed) / secs(ideal)
        );
        if let Some(t) = all_new_ready {
            println!(
                "  {n} ready on the new image after {:.2} s (the rest is destroying the last old ones); the same pool's fill, same machine, just before: {:.2} s (rollout / fill {:.2})",
                secs(t),
                secs(fill_time),
                secs(elapsed) / secs(fill_time)
            );
        }
    }
}

/// Where a rollout's time went, per new desktop, from timestamps on one clock (the
/// simulator's clone timeline, PostgreSQL's event times): row written -> CloneVM_Task
/// received (waiting for a clone place), the clone, clone end -> `booting` (power-on),
/// `booting` -> `ready` (readiness), and per old desktop `deleting` -> destroyed; plus how
/// the whole span divides between clone waves and the rest.
async fn rollout_phases(scratch: &Scratch, sim: &Vcsim, t0_us: i64, c: u32) {
    let clones: HashMap<String, CloneRecord> = sim
        .clones()
        .await
        .into_iter()
        .filter(|c| c.received_us >= t0_us)
        .map(|c| (c.name.clone(), c))
        .collect();
    let us = |t: chrono::DateTime<chrono::Utc>| t.timestamp_micros();
    let rows: Vec<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT desktop, kind, at FROM events
         WHERE desktop IS NOT NULL AND at >= to_timestamp($1::float8 / 1e6)
         ORDER BY id",
    )
    .bind(t0_us as f64)
    .fetch_all(&scratch.db)
    .await
    .unwrap();
    let mut by_desktop: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for (d, kind, at) in rows {
        by_desktop
            .entry(d)
            .or_default()
            .entry(kind)
            .or_insert(us(at));
    }
    let (mut wait, mut clone, mut power, mut ready, mut destroy) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let ms = |a: i64, b: i64| (b - a) as f64 / 1000.0;
    let created: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT name, created_at FROM desktops")
            .fetch_all(&scratch.db)
            .await
            .unwrap();
    for (name, at) in created {
        let Some(c) = clones.get(&name) else { continue };
        wait.push(ms(us(at), c.received_us));
        clone.push(ms(c.received_us, c.done_us));
        let ev = by_desktop.get(&name);
        let booting = ev.and_then(|e| e.get("desktop_booting")).copied();
        let readied = ev.and_then(|e| e.get("desktop_ready")).copied();
        if let Some(b) = booting {
            power.push(ms(c.done_us, b));
            if let Some(r) = readied {
                ready.push(ms(b, r));
            }
        }
    }
    for e in by_desktop.values() {
        if let (Some(a), Some(b)) = (e.get("desktop_deleting"), e.get("desktop_destroyed")) {
            destroy.push(ms(*a, *b));
        }
    }
    println!(
        "  per new desktop: row written -> CloneVM_Task received {}",
        summary_ms(&wait)
    );
    println!("  per new desktop: clone task {}", summary_ms(&clone));
    println!(
        "  per new desktop: clone end -> booting (power-on) {}",
        summary_ms(&power)
    );
    println!("  per new desktop: booting -> ready {}", summary_ms(&ready));
    println!(
        "  per old desktop: deleting -> destroyed {}",
        summary_ms(&destroy)
    );
    let mut in_flight_us = 0i64;
    let mut spans: Vec<(i64, i64)> = clones.values().map(|c| (c.received_us, 1)).collect();
    spans.extend(clones.values().map(|c| (c.done_us, -1)));
    spans.sort_unstable();
    let (mut level, mut last, mut idle_below_c) = (0i64, t0_us, 0i64);
    let c = i64::from(c);
    for (t, step) in spans {
        if level > 0 {
            in_flight_us += (t - last) * level;
        }
        if level < c {
            idle_below_c += t - last;
        }
        level += step;
        last = t;
    }
    println!(
        "  clone slots: {:.1} clone-seconds in flight over the span; time with fewer than {c} clones in flight {:.2} s",
        in_flight_us as f64 / 1e6,
        idle_below_c as f64 / 1e6
    );
}

fn main() {
    // `cargo bench` passes `--bench`; parts are the other arguments.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let known = ["fill", "calls", "idle", "rollout", "rss", "all"];
    if let Some(bad) = parts.iter().find(|p| !known.contains(&p.as_str())) {
        eprintln!("unknown part '{bad}': expected any of {}", known.join(", "));
        std::process::exit(2);
    }
    let all = parts.is_empty() || parts.iter().any(|p| p == "all");
    let want = |p: &str| all || parts.iter().any(|x| x == p);
    if std::env::var_os("RUST_LOG").is_some() {
        // Diagnostics only (e.g. RUST_LOG=warn): logging costs time in the measured paths.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let child = std::env::var_os(CHILD_ENV).is_some();
    if !child {
        machine();
    }
    rt.block_on(async {
        if want("fill") || want("calls") {
            fill(want("fill"), want("calls")).await;
        }
        if want("idle") {
            idle().await;
        }
        if want("rollout") {
            rollout().await;
        }
    });
    if want("rss") {
        if all {
            // A fresh process, so the peak RSS is the 10,000-desktop reconciler's alone.
            let exe = std::env::current_exe().expect("current exe");
            let status = Command::new(exe)
                .arg("rss")
                .env(CHILD_ENV, "1")
                .status()
                .expect("run rss part");
            if !status.success() {
                eprintln!("rss part failed: {status}");
            }
        } else {
            rt.block_on(rss());
        }
    }
    if !child {
        println!("\ntotal bench time {:.0} s", secs(started.elapsed()));
    }
}
