//! The reconciler against the vcsim harness and a real PostgreSQL: fill speed, SOAP calls per
//! desktop, idle SOAP traffic and peak memory. Prints figures and ratios to their targets;
//! never asserts on time.
//!
//! ```text
//! cargo bench -p deskpool-reconciler --bench reconcile              # all parts
//! cargo bench -p deskpool-reconciler --bench reconcile -- fill      # or calls, idle, rss
//! ```
//!
//! - `fill`: one pool of 200 at 8 clones in flight, clone latency 500 ms: elapsed / ideal.
//! - `calls`: SOAP calls per desktop provisioned during that same fill.
//! - `idle`: SOAP calls per minute with 100 and with 1,000 ready desktops, measured with a
//!   short resync interval and extrapolated to the default (300 s).
//! - `rss`: peak RSS (VmHWM) of a process running the reconciler over 10,000 desktops. With
//!   `all`, this part runs in a child process so the other parts do not count.
//!
//! Environment: `DATABASE_URL` (server to create scratch databases in; default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `DESKPOOL_BENCH_DESKTOPS` (rss part,
//! default 10000), `DESKPOOL_BENCH_IDLE_RESYNC_SECS` (default 30) and
//! `DESKPOOL_BENCH_IDLE_WINDOW_SECS` (default 90), `DESKPOOL_BENCH_RSS_RESYNC_SECS`
//! (default 30), `DESKPOOL_VCSIM_BIN` (prebuilt simulator).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use deskpool_domain::{GuestOs, PoolSpec};
use deskpool_reconciler::{Leadership, Reconciler, ReconcilerConfig, StatusHandle, VcenterSpec};
use deskpool_store::pools;
use deskpool_testkit::vcsim::{Stats, Vcsim, VcsimOptions};
use deskpool_vsphere::ClientOptions;
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
// a + b: fill

async fn fill(show_fill: bool, show_calls: bool) {
    const N: u32 = 200;
    const C: u32 = 8;
    const L: Duration = Duration::from_millis(500);
    const POOL: &str = "fill";
    println!("\n== fill: one pool of {N}, max_concurrent_clones {C}, clone latency {} ms, power-on latency 0 ms, max_concurrent_per_vcenter 20, resync 300 s", L.as_millis());
    let sim = Vcsim::start(VcsimOptions {
        clone_delay: L,
        power_delay: Duration::ZERO,
        folders: vec![POOL.into()],
        ..Default::default()
    })
    .await;
    let scratch = Scratch::create("fill").await;
    let r = Running::start(&scratch, &sim, bench_config("bench-fill")).await;
    // The start-up sweep found no pools; let it and the login traffic finish before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.reset_stats().await;
    let before = sim.stats().await;

    let t0 = Instant::now();
    scratch.add_pool(&spec(POOL, N, N, C)).await;
    let converged = scratch
        .wait_ready(
            i64::from(N),
            Duration::from_millis(10),
            Some(Duration::from_secs(10)),
        )
        .await;
    let elapsed = t0.elapsed();
    let after = sim.stats().await;
    r.stop().await;

    // Phases per desktop from the events' timestamps (database clock, transaction start).
    let (first_clone, last_clone_ok, last_ready, clone_avg, power_avg): (f64, f64, f64, f64, f64) =
        sqlx::query_as(
            "WITH p AS (SELECT created_at FROM pools WHERE name = $1),
                  d AS (SELECT desktop,
                               min(at) FILTER (WHERE kind = 'clone_started')   AS started,
                               min(at) FILTER (WHERE kind = 'clone_succeeded') AS cloned,
                               min(at) FILTER (WHERE kind = 'desktop_ready')   AS ready
                        FROM events WHERE pool = $1 AND desktop IS NOT NULL GROUP BY desktop)
             SELECT extract(epoch FROM min(started) - (SELECT created_at FROM p))::float8,
                    extract(epoch FROM max(cloned) - (SELECT created_at FROM p))::float8,
                    extract(epoch FROM max(ready) - (SELECT created_at FROM p))::float8,
                    extract(epoch FROM avg(cloned - started))::float8,
                    extract(epoch FROM avg(ready - cloned))::float8
             FROM d",
        )
        .bind(POOL)
        .fetch_one(&scratch.db)
        .await
        .expect("event timings");
    scratch.drop().await;

    let waves = N.div_ceil(C);
    let ideal = L.as_secs_f64() * f64::from(waves);
    let e = secs(elapsed);
    if !converged {
        println!("  DID NOT CONVERGE: figures below are partial");
    }
    if show_fill {
        println!("  elapsed create -> {N} ready: {e:.2} s (wall clock, this process)");
        println!(
            "  ideal = ceil({N}/{C}) x {} ms = {ideal:.2} s",
            L.as_millis()
        );
        println!("  ratio elapsed/ideal: {:.3} (target <= 1.10)", e / ideal);
        println!("  note: each desktop also needs PowerOnVM_Task after its clone; power-ons run in a separate slot, so the ideal counts clone time only and the last power-on adds to the elapsed time");
        println!("  clone-only: last clone_succeeded at {last_clone_ok:.2} s after the pool was created: ratio {:.3}", last_clone_ok / ideal);
        let cycle = e * f64::from(C) / f64::from(N);
        println!("  per slot: {cycle:.3} s per desktop on average = clone {clone_avg:.3} s (CloneVM_Task answered -> result seen) + {:.3} s between clones (record, wake, pass, CloneVM_Task call); power-on {power_avg:.3} s (clone result -> ready) runs outside the slot", cycle - clone_avg);
        println!("  first clone_started {first_clone:.3} s after create; last desktop_ready {last_ready:.2} s (database clock)");
        println!(
            "  clones in flight: max {} in the pool's folder, {} overall",
            after
                .max_clones_in_flight_by_folder
                .get(POOL)
                .copied()
                .unwrap_or(0),
            after.max_clones_in_flight
        );
    }
    if show_calls {
        let calls = delta(&before, &after);
        let total = after.soap_calls_total - before.soap_calls_total;
        println!(
            "  SOAP calls during the fill: {total} = {:.2} per desktop provisioned (target <= 5); clone requests {}",
            total as f64 / f64::from(N),
            after.clone_requests - before.clone_requests
        );
        print_methods(&calls, f64::from(N), "per desktop");
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

fn main() {
    // `cargo bench` passes `--bench`; parts are the other arguments.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let known = ["fill", "calls", "idle", "rss", "all"];
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
