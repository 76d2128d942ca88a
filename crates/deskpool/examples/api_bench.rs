//! The API benchmark against a full daemon: a release `deskpool serve` with its reconciler, a
//! simulated vCenter and a scratch database. Prints latency percentiles and ratios to their
//! targets; never asserts on time.
//!
//! ```text
//! cargo build --release -p deskpool
//! cargo run --release -p deskpool --example api_bench
//! ```
//!
//! Builds nothing itself: the daemon is `DESKPOOL_BIN`, else `$CARGO_TARGET_DIR/release/deskpool`
//! when `CARGO_TARGET_DIR` is set, else `target/release/deskpool` in the workspace. The
//! PostgreSQL server is `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! a scratch database is created in it and dropped at the end.
//!
//! 1. Open-loop load: `PATCH /api/v1/pools/{name}` (toggling a rotating pool between 0 and 1,
//!    so the reconciler keeps cloning and destroying meanwhile) alternating with
//!    `GET /api/v1/pools`, at `--rate` requests/s for `--seconds`; latency is measured from each
//!    request's scheduled start. Target: p99 < 20 ms.
//!    Meanwhile: the CPU seconds the daemon, the simulator and PostgreSQL used (from
//!    `/proc/<pid>/stat`), and the daemon's database transactions (`pg_stat_database`) per
//!    API request and per clone, so a miss can be attributed.
//! 2. Resize -> first `CloneVM_Task` at the simulator: on an idle pool at target 0, PATCH it to
//!    1 and poll the simulator's counters every ~2 ms. Target: < 200 ms.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::Parser;
use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};
use tokio::process::{Child, Command};

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Parser)]
struct Args {
    /// Requests per second during the load phase, both kinds together (alternating).
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Length of the load phase, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// Pools to define (target 0, max 20).
    #[arg(long, default_value_t = 50)]
    pools: u32,
    /// Resize -> CloneVM_Task samples, each on a different pool.
    #[arg(long, default_value_t = 20)]
    samples: u32,
    /// The simulator's clone latency, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    clone_delay_ms: u64,
    /// The simulator's power-on/off and destroy latency, in milliseconds.
    #[arg(long, default_value_t = 100)]
    power_delay_ms: u64,
}

fn deskpool_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DESKPOOL_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")));
    target.join("release/deskpool")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p` quantile of sorted samples (nearest rank).
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The daemon: `deskpool serve`, stopped with SIGTERM (killed on drop if still running).
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(status) => println!("deskpool serve stopped on SIGTERM: {}", status?),
            Err(_) => {
                self.child.kill().await?;
                println!("deskpool serve did not stop within 15 s of SIGTERM; killed");
            }
        }
        Ok(())
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Runs a `deskpool` subcommand to completion; its stdout.
async fn deskpool(bin: &PathBuf, config: &PathBuf, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "deskpool {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn free_port() -> anyhow::Result<u16> {
    // Released before the daemon binds it; nothing else on this machine is expected to
    // grab an ephemeral port in between.
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Resize,
    List,
}

struct Sample {
    kind: Kind,
    latency: Duration,
    status: Option<u16>,
}

struct Api {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Api {
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let res = req.header("authorization", &self.auth).send().await?;
        let status = res.status().as_u16();
        let body = res.text().await?;
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    async fn resize(&self, pool: &str, target: u32) -> anyhow::Result<()> {
        let (status, body) = self
            .send(
                self.http
                    .patch(format!("{}/api/v1/pools/{pool}", self.base))
                    .json(&json!({ "target_size": target })),
            )
            .await?;
        ensure!(status == 200, "PATCH {pool}: {status} {body}");
        Ok(())
    }

    /// Desktops of any state, all pools.
    async fn desktops(&self) -> anyhow::Result<(u64, u64)> {
        let (status, body) = self
            .send(self.http.get(format!("{}/api/v1/pools", self.base)))
            .await?;
        ensure!(status == 200, "GET /pools: {status} {body}");
        let (mut ready, mut all) = (0, 0);
        for p in body["pools"].as_array().into_iter().flatten() {
            let s = &p["status"];
            let n = |k: &str| s[k].as_u64().unwrap_or(0);
            ready += n("ready");
            all += n("ready") + n("provisioning") + n("failed") + n("deleting");
        }
        Ok((ready, all))
    }
}

// ---------------------------------------------------------------------------------------------
// What the load costs: CPU per process and database transactions

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU ticks of a process so far; None once it is gone.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    // What follows starts at field 3, so utime (14) and stime (15) are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Every PostgreSQL server process on this machine (postmaster, backends, background workers).
fn postgres_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .collect()
}

/// CPU ticks of the processes the load runs through, at one moment.
struct CpuSnapshot {
    at: Instant,
    daemon: u64,
    simulator: u64,
    postgres: BTreeMap<u32, u64>,
    this: u64,
}

impl CpuSnapshot {
    fn take(daemon: u32, simulator: u32) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            daemon: cpu_ticks(daemon).unwrap_or(0),
            simulator: cpu_ticks(simulator).unwrap_or(0),
            postgres: postgres_pids()
                .into_iter()
                .filter_map(|p| Some((p, cpu_ticks(p)?)))
                .collect(),
            this: cpu_ticks(std::process::id()).unwrap_or(0),
        }
    }

    /// Prints what each used since `before`. `bench_backends` are the PostgreSQL backends
    /// serving the scratch database.
    fn print_since(&self, before: &CpuSnapshot, bench_backends: &[u32]) {
        let tick = clock_ticks();
        let window = self.at.duration_since(before.at).as_secs_f64();
        // A process that was not there at the start started during the window: all its time
        // counts. One that ended during the window is lost (counted below).
        let used = |pid: &u32, now: &u64| now - before.postgres.get(pid).copied().unwrap_or(0);
        let pg_all: u64 = self.postgres.iter().map(|(p, t)| used(p, t)).sum();
        let pg_bench: u64 = self
            .postgres
            .iter()
            .filter(|(p, _)| bench_backends.contains(p))
            .map(|(p, t)| used(p, t))
            .sum();
        let ended = before
            .postgres
            .keys()
            .filter(|p| !self.postgres.contains_key(p))
            .count();
        let cpu = |ticks: u64| ticks as f64 / tick;
        let line = |who: &str, ticks: u64| {
            println!(
                "  {who:<48} {:>6.2} s = {:>5.1} % of one core",
                cpu(ticks),
                100.0 * cpu(ticks) / window
            )
        };
        println!(
            "CPU during the load ({window:.1} s; {} cores; /proc/<pid>/stat utime + stime):",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        line("deskpool serve", self.daemon - before.daemon);
        line(
            "simulator (deskpool-vcsim)",
            self.simulator - before.simulator,
        );
        line(
            &format!("PostgreSQL, all {} processes", self.postgres.len()),
            pg_all,
        );
        line(
            &format!(
                "  of which the {} backends of the bench database",
                bench_backends.len()
            ),
            pg_bench,
        );
        line("this load generator", self.this - before.this);
        if ended > 0 {
            println!(
                "  ({ended} PostgreSQL processes ended during the load; their time is not counted)"
            );
        }
        println!("  note: PostgreSQL serves every user of this machine; the other processes include other databases' backends");
    }
}

/// The daemon's database work as PostgreSQL counts it: transactions (commits + rollbacks) in
/// the scratch database, from `pg_stat_database`. A backend reports its counts when idle, at
/// most once a second and at the latest 10 s later, so a reading waits [`STATS_LAG`] first.
struct DbCounter {
    admin: tokio::sync::Mutex<PgConnection>,
    name: String,
}

/// How long PostgreSQL may keep a backend's counts before reporting them (PGSTAT_IDLE_INTERVAL
/// is 10 s), plus a margin.
const STATS_LAG: Duration = Duration::from_secs(11);

impl DbCounter {
    async fn transactions(&self) -> anyhow::Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&self.name)
        .fetch_one(&mut *self.admin.lock().await)
        .await?;
        Ok(n)
    }

    /// PostgreSQL backends serving the scratch database now.
    async fn backends(&self) -> anyhow::Result<Vec<u32>> {
        let pids: Vec<(i32,)> =
            sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE datname = $1")
                .bind(&self.name)
                .fetch_all(&mut *self.admin.lock().await)
                .await?;
        Ok(pids.into_iter().map(|(p,)| p as u32).collect())
    }
}

/// Transactions per request of one kind on an idle daemon: `n` requests one after another,
/// then the wait for PostgreSQL's counts, less what the idle daemon does in as long
/// (`idle_per_sec`: lease renewals and the like).
async fn transactions_per(
    db: &DbCounter,
    n: u32,
    idle_per_sec: f64,
    request: impl Fn(u32) -> reqwest::RequestBuilder,
) -> anyhow::Result<f64> {
    let before = db.transactions().await?;
    let t0 = Instant::now();
    for i in 0..n {
        let res = request(i).send().await?;
        ensure!(
            res.status().is_success(),
            "calibration request: {}",
            res.status()
        );
        res.bytes().await?;
    }
    tokio::time::sleep(STATS_LAG).await;
    let idle = idle_per_sec * t0.elapsed().as_secs_f64();
    Ok(((db.transactions().await? - before) as f64 - idle) / f64::from(n))
}

/// Transactions per second of the idle daemon.
async fn idle_transactions(db: &DbCounter) -> anyhow::Result<f64> {
    let before = db.transactions().await?;
    let t0 = Instant::now();
    tokio::time::sleep(STATS_LAG * 2).await;
    Ok((db.transactions().await? - before) as f64 / t0.elapsed().as_secs_f64())
}

async fn load(api: &Api, pools: &[String], args: &Args) -> anyhow::Result<u64> {
    let total = u64::from(args.rate) * u64::from(args.seconds);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    println!(
        "\n== load: {} req/s open loop for {} s ({total} requests): PATCH /api/v1/pools/{{name}} (rotating pool, target toggling 0/1) alternating with GET /api/v1/pools ({} pools)",
        args.rate, args.seconds, pools.len()
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let start = tokio::time::Instant::now();
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let kind = if i % 2 == 0 { Kind::Resize } else { Kind::List };
        let n = i / 2;
        let pool = pools[n as usize % pools.len()].clone();
        let target = (n / pools.len() as u64) % 2;
        let req = match kind {
            Kind::Resize => api
                .http
                .patch(format!("{}/api/v1/pools/{pool}", api.base))
                .header("content-type", "application/json")
                .body(format!("{{\"target_size\":{target}}}")),
            Kind::List => api.http.get(format!("{}/api/v1/pools", api.base)),
        }
        .header("authorization", &api.auth);
        let tx = tx.clone();
        tokio::spawn(async move {
            let status = match req.send().await {
                // Read the body so the latency includes it.
                Ok(res) => {
                    let status = res.status().as_u16();
                    res.bytes().await.ok().map(|_| status)
                }
                Err(_) => None,
            };
            let _ = tx.send(Sample {
                kind,
                latency: scheduled.elapsed(),
                status,
            });
        });
    }
    let sent_for = start.elapsed();
    drop(tx);
    let mut samples = Vec::with_capacity(total as usize);
    while let Some(s) = rx.recv().await {
        samples.push(s);
    }
    let done_after = start.elapsed();
    println!(
        "sent {} in {:.2} s; all answered after {:.2} s; achieved {:.1} req/s ({:.3} of target)",
        samples.len(),
        sent_for.as_secs_f64(),
        done_after.as_secs_f64(),
        samples.len() as f64 / done_after.as_secs_f64(),
        samples.len() as f64 / done_after.as_secs_f64() / f64::from(args.rate)
    );
    println!(
        "{:<22} {:>7} {:>7} {:>9} {:>9} {:>9} {:>14}",
        "request", "count", "errors", "p50 ms", "p99 ms", "max ms", "p99/20 ms"
    );
    for (kind, label) in [
        (Kind::Resize, "PATCH /pools/{name}"),
        (Kind::List, "GET /pools"),
    ] {
        let mut lat: Vec<Duration> = samples
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.latency)
            .collect();
        let errors: Vec<Option<u16>> = samples
            .iter()
            .filter(|s| s.kind == kind && s.status != Some(200))
            .map(|s| s.status)
            .collect();
        lat.sort();
        let p99 = pct(&lat, 0.99);
        println!(
            "{label:<22} {:>7} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>14.2}",
            lat.len(),
            errors.len(),
            ms(pct(&lat, 0.50)),
            ms(p99),
            ms(lat.last().copied().unwrap_or_default()),
            ms(p99) / 20.0
        );
        if let Some(first) = errors.first() {
            println!("  first error: {first:?} (None: no HTTP answer)");
        }
    }
    Ok(total)
}

/// Every pool back to 0 and every desktop gone, so what follows starts idle.
async fn settle(api: &Api, pools: &[String]) -> anyhow::Result<()> {
    for p in pools {
        api.resize(p, 0).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, all) = api.desktops().await?;
        if all == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{all} desktops still exist 180 s after setting every pool to 0"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

async fn resize_to_clone(api: &Api, sim: &Vcsim, pools: &[String], n: u32) -> anyhow::Result<()> {
    println!(
        "\n== resize -> first CloneVM_Task at the simulator: {n} samples, each on an idle pool at target 0 (PATCH to 1, poll the simulator every ~2 ms)"
    );
    settle(api, pools).await?;

    let mut latencies = Vec::new();
    let mut patch_times = Vec::new();
    let mut calls_before_clone = 0u64;
    for (k, pool) in pools.iter().cycle().take(n as usize).enumerate() {
        let before = sim.stats().await;
        let base = before.calls("CloneVM_Task");
        let t0 = Instant::now();
        api.resize(pool, 1).await?;
        patch_times.push(t0.elapsed());
        let after = loop {
            let s = sim.stats().await;
            if s.calls("CloneVM_Task") > base {
                break s;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "no CloneVM_Task 30 s after resizing {pool}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        latencies.push(t0.elapsed());
        calls_before_clone += after.soap_calls_total - before.soap_calls_total - 1;
        // Let this desktop finish and the pool go back to 0, so the next sample starts idle.
        api.resize(pool, 0).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while api.desktops().await?.1 > 0 {
            ensure!(
                Instant::now() < deadline,
                "sample {k}: desktop not gone after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    latencies.sort();
    patch_times.sort();
    let p = |v: &[Duration], q| ms(pct(v, q));
    println!(
        "resize -> CloneVM_Task: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms (target < 200 ms; max/target {:.2})",
        p(&latencies, 0.5),
        p(&latencies, 0.95),
        ms(latencies.last().copied().unwrap_or_default()),
        ms(latencies.last().copied().unwrap_or_default()) / 200.0
    );
    println!(
        "  of which the PATCH round trip: p50 {:.1} ms, max {:.1} ms; other SOAP calls before each clone: {:.1} on average (inventory resolution; the cache survives a resize)",
        p(&patch_times, 0.5),
        ms(patch_times.last().copied().unwrap_or_default()),
        calls_before_clone as f64 / f64::from(n.max(1))
    );
    println!("  note: the poll itself (GET /stats every ~2 ms) adds up to ~2-3 ms of resolution");
    Ok(())
}

async fn run(
    args: &Args,
    sim: &Vcsim,
    db_url: &str,
    db: &DbCounter,
    dir: &tempfile::TempDir,
) -> anyhow::Result<()> {
    let bin = deskpool_bin();
    ensure!(
        bin.is_file(),
        "{} not found: build it with `cargo build --release -p deskpool` or set DESKPOOL_BIN",
        bin.display()
    );
    let port = free_port()?;
    let password_file = dir.path().join("sim.password");
    std::fs::write(&password_file, &sim.password)?;
    let config = dir.path().join("deskpool.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n\n[database]\nurl = \"{db_url}\"\n\n\
             [[vcenters]]\nname = \"sim\"\nurl = \"{}\"\nusername = \"{}\"\npassword_file = \"{}\"\n",
            sim.sdk_url,
            sim.username,
            password_file.display()
        ),
    )?;
    deskpool(&bin, &config, &["migrate"]).await?;
    let token = deskpool(
        &bin,
        &config,
        &["token", "create", "--name", "bench", "--role", "admin"],
    )
    .await?;
    ensure!(!token.is_empty(), "token create printed no secret");

    let log = dir.path().join("serve.log");
    let child = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let daemon = Daemon { child, log };
    let result = with_daemon(args, sim, db, &daemon, port, &token).await;
    if result.is_err() {
        eprintln!("deskpool serve log (last lines):\n{}", daemon.tail());
    }
    daemon.stop().await?;
    result
}

async fn with_daemon(
    args: &Args,
    sim: &Vcsim,
    db: &DbCounter,
    daemon: &Daemon,
    port: u16,
    token: &str,
) -> anyhow::Result<()> {
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(256)
            .build()?,
        base: format!("http://127.0.0.1:{port}"),
        auth: format!("Bearer {token}"),
    };
    // Ready: the database answers and the vCenter session is up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = api.http.get(format!("{}/readyz", api.base)).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("deskpool serve not ready after 60 s:\n{}", daemon.tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pools: Vec<String> = (1..=args.pools).map(|i| format!("api-{i:02}")).collect();
    for (i, name) in pools.iter().enumerate() {
        let spec = json!({
            "name": name, "vcenter": "sim", "datacenter": "DC0", "golden_vm": "golden",
            "snapshot": "current", "folder": name, "resource_pool": "DC0_C0",
            "datastore": "LocalDS_0", "naming_pattern": format!("a{:02}-{{n:3}}", i + 1),
            "target_size": 0, "min_size": 0, "max_size": 20
        });
        let (status, body) = api
            .send(
                api.http
                    .post(format!("{}/api/v1/pools", api.base))
                    .json(&spec),
            )
            .await?;
        ensure!(status == 201, "POST /api/v1/pools {name}: {status} {body}");
    }
    println!(
        "deskpool serve on 127.0.0.1:{port}; {} pools defined (target 0, max 20); simulator clone latency {} ms, power {} ms",
        pools.len(),
        args.clone_delay_ms,
        args.power_delay_ms
    );
    let daemon_pid = daemon.child.id().context("deskpool serve has no pid")?;
    let sim_pid = sim.pid().context("the simulator has no pid")?;
    let before = sim.stats().await;
    let xacts_before = db.transactions().await?;
    let cpu_before = CpuSnapshot::take(daemon_pid, sim_pid);
    let requests = load(&api, &pools, args).await?;
    let cpu_after = CpuSnapshot::take(daemon_pid, sim_pid);
    cpu_after.print_since(&cpu_before, &db.backends().await?);
    let s = sim.stats().await;
    let mut by_method: Vec<(&String, u64)> = s
        .soap_calls
        .iter()
        .map(|(m, n)| (m, n - before.calls(m)))
        .filter(|(_, n)| *n > 0)
        .collect();
    by_method.sort_by_key(|m| std::cmp::Reverse(m.1));
    println!(
        "reconciler meanwhile: {} SOAP calls for {} CloneVM_Task and {} Destroy_Task; by method: {}",
        s.soap_calls_total - before.soap_calls_total,
        s.calls("CloneVM_Task") - before.calls("CloneVM_Task"),
        s.calls("Destroy_Task") - before.calls("Destroy_Task"),
        by_method
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    transactions(&api, sim, db, &pools, requests, (&before, xacts_before)).await?;
    resize_to_clone(&api, sim, &pools, args.samples).await
}

/// The daemon's database transactions during the load, attributed: API requests of each kind
/// measured alone on the idle daemon afterwards, the rest is the reconciler's, per clone.
async fn transactions(
    api: &Api,
    sim: &Vcsim,
    db: &DbCounter,
    pools: &[String],
    requests: u64,
    (sim_before, xacts_before): (&deskpool_testkit::vcsim::Stats, i64),
) -> anyhow::Result<()> {
    // The reconciler still works off the last targets: count its transactions and its clones
    // over the same window, until the counts are in.
    tokio::time::sleep(STATS_LAG).await;
    let xacts = db.transactions().await? - xacts_before;
    let s = sim.stats().await;
    let clones = s.calls("CloneVM_Task") - sim_before.calls("CloneVM_Task");
    let destroys = s.calls("Destroy_Task") - sim_before.calls("Destroy_Task");

    settle(api, pools).await?;
    // Counts still owed from the settling come in during the first wait.
    tokio::time::sleep(STATS_LAG).await;
    let idle = idle_transactions(db).await?;
    const CALIBRATION: u32 = 500;
    let get = transactions_per(db, CALIBRATION, idle, |_| {
        api.http
            .get(format!("{}/api/v1/pools", api.base))
            .header("authorization", &api.auth)
    })
    .await?;
    // Setting a pool's target to the value it has: the request's own work plus the pass it
    // wakes, without clones.
    let patch = transactions_per(db, CALIBRATION, idle, |i| {
        api.http
            .patch(format!(
                "{}/api/v1/pools/{}",
                api.base,
                pools[i as usize % pools.len()]
            ))
            .header("authorization", &api.auth)
            .header("content-type", "application/json")
            .body("{\"target_size\":0}")
    })
    .await?;
    let (patches, gets) = (requests.div_ceil(2), requests / 2);
    let api_share = patch * patches as f64 + get * gets as f64;
    let reconciler = xacts as f64 - api_share;
    println!(
        "database transactions (pg_stat_database xact_commit + xact_rollback of the bench database; a transaction of k statements is k + 2 round trips, a lone statement 1):"
    );
    println!(
        "  load window (the load and {} s after it): {xacts} transactions for {requests} requests, {clones} clones and {destroys} destroys",
        STATS_LAG.as_secs()
    );
    println!(
        "  per API request measured alone ({CALIBRATION} each, idle daemon, less its idle {idle:.2}/s): GET /pools {get:.2}, PATCH /pools/{{name}} (target unchanged, includes the pass it wakes) {patch:.2}"
    );
    println!(
        "  hence API {api_share:.0}, reconciler {reconciler:.0} = {:.1} per clone (destroys included: {:.1} per clone or destroy)",
        reconciler / clones.max(1) as f64,
        reconciler / (clones + destroys).max(1) as f64
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "api_bench: {} CPUs, load average {}; daemon {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        deskpool_bin().display()
    );
    let sim = Vcsim::start(VcsimOptions {
        clone_delay: Duration::from_millis(args.clone_delay_ms),
        power_delay: Duration::from_millis(args.power_delay_ms),
        folders: (1..=args.pools).map(|i| format!("api-{i:02}")).collect(),
        ..Default::default()
    })
    .await;
    let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    let name = format!("deskpool_api_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&server)
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let mut url = url::Url::parse(&server)?;
    url.set_path(&name);
    let dir = tempfile::Builder::new()
        .prefix("deskpool-api-bench-")
        .tempdir()?;
    let db = DbCounter {
        admin: tokio::sync::Mutex::new(PgConnection::connect(&server).await?),
        name: name.clone(),
    };
    let result = run(&args, &sim, url.as_str(), &db, &dir).await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    drop(sim);
    result
}
