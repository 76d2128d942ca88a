//! The claim benchmark: `POST /api/v1/pools/{name}/claim` latency at a steady open-loop rate
//! against a pool of ready desktops. Prints p50/p99 and their ratio to the target; never
//! asserts on time.
//!
//! ```text
//! cargo run --release -p deskpool --example claim_bench
//! cargo run --release -p deskpool --example claim_bench -- --rate 200 --seconds 4 --desktops 1000
//! ```
//!
//! The API router (the same one `deskpool serve` runs, with its concurrency bound and request
//! log) is served in this process on 127.0.0.1; the PostgreSQL server is `DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`), in which a scratch database is
//! created, filled with `--desktops` ready rows through the store, and dropped at the end. No
//! reconciler runs: the figures are the claim path's own (HTTP, auth, one short transaction).
//!
//! 1. New claims: `--rate` claims/s for `--seconds`, each for a different user; latency is
//!    measured from each request's scheduled start (open loop). Target: p99 < 20 ms.
//! 2. Renewals: the same users claim again at the same rate (the portal-on-every-login
//!    case: same desktop back, lease extended).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use clap::Parser;
use deskpool_api::{ApiState, Health, HealthSnapshot, ReplicaRole};
use deskpool_domain::{GuestOs, OnRelease, PoolSpec};
use deskpool_store::desktops::{self, NewDesktop, Progress};
use deskpool_store::tokens::{self, Role};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection};

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The target for p99 claim latency.
const TARGET_P99: Duration = Duration::from_millis(20);

#[derive(Debug, Parser)]
struct Args {
    /// Claims per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Length of each phase, in seconds (rate x seconds claims; keep it below --desktops).
    #[arg(long, default_value_t = 4)]
    seconds: u32,
    /// Ready desktops in the pool.
    #[arg(long, default_value_t = 1000)]
    desktops: u32,
}

struct Leader;

impl Health for Leader {
    fn snapshot(&self) -> HealthSnapshot {
        HealthSnapshot {
            role: ReplicaRole::Leader,
            vcenters: vec![],
        }
    }
}

/// This bench pushes no image.
struct NoImages;

impl deskpool_api::Images for NoImages {
    fn resolve<'a>(
        &'a self,
        _spec: &'a PoolSpec,
        _selector: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<String, deskpool_api::ImageError>> + Send + 'a>,
    > {
        Box::pin(async {
            Err(deskpool_api::ImageError::Unavailable(
                "the claim bench has no vCenter".into(),
            ))
        })
    }
}

fn spec(max: u32) -> PoolSpec {
    PoolSpec {
        name: "bench".into(),
        vcenter: "vc1".into(),
        datacenter: "DC0".into(),
        golden_vm: "golden".into(),
        snapshot: "current".into(),
        folder: "bench".into(),
        resource_pool: "DC0_C0".into(),
        datastore: None,
        customization_spec: None,
        naming_pattern: "bench-{n:5}".into(),
        guest_os: GuestOs::Other,
        target_size: max,
        min_size: 0,
        max_size: max,
        power_on: true,
        max_concurrent_clones: 8,
        enabled: true,
        max_surge: None,
        max_unavailable: 0,
        stop_on_error: true,
        logoff_policy: deskpool_domain::LogoffPolicy::Wait,
        force_after_secs: 3600,
        min_spare: 0,
        claim_lease_secs: 86_400,
        on_release: OnRelease::Delete,
        ready_timeout_secs: deskpool_domain::DEFAULT_READY_TIMEOUT_SECS,
        ready_when: deskpool_domain::ReadyWhen::GuestIp,
    }
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

/// One phase: `n` claims at `rate`/s, user `user<i>`; (latencies, statuses).
async fn phase(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    rate: u32,
    n: u32,
) -> (Vec<Duration>, Vec<u16>) {
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
        let (http, url, secret) = (http.clone(), url.to_owned(), secret.to_owned());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let status = http
                .post(&url)
                .bearer_auth(&secret)
                .json(&serde_json::json!({ "user": format!("user{i:05}") }))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            (at.elapsed(), status)
        }));
    }
    let mut lat = Vec::new();
    let mut statuses = Vec::new();
    for t in tasks {
        let (l, s) = t.await.expect("claim task");
        lat.push(l);
        statuses.push(s);
    }
    lat.sort();
    (lat, statuses)
}

fn report(what: &str, lat: &[Duration], statuses: &[u16], rate: u32) {
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let conflict = statuses.iter().filter(|s| **s == 409).count();
    let other = statuses.len() - ok - conflict;
    let (p50, p99) = (pct(lat, 0.50), pct(lat, 0.99));
    println!(
        "{what}: {} requests at {rate}/s: 200 x{ok}, 409 x{conflict}, other x{other}; \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; p99 / target {:.0} ms = {:.2}",
        statuses.len(),
        ms(p50),
        ms(p99),
        ms(lat.last().copied().unwrap_or_default()),
        ms(TARGET_P99),
        p99.as_secs_f64() / TARGET_P99.as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    let scratch = format!("claim_bench_{}", std::process::id());
    let mut admin = PgConnection::connect(&server)
        .await
        .with_context(|| format!("cannot connect to {server} (set DATABASE_URL)"))?;
    admin
        .execute(format!("CREATE DATABASE {scratch}").as_str())
        .await?;
    let result = run(&args, &server, &scratch).await;
    admin
        .execute(format!("DROP DATABASE {scratch} WITH (FORCE)").as_str())
        .await?;
    result
}

async fn run(args: &Args, server: &str, scratch: &str) -> anyhow::Result<()> {
    let base = server.rsplit_once('/').map_or(server, |(b, _)| b);
    let db = PgPoolOptions::new()
        .max_connections(20)
        .connect(&format!("{base}/{scratch}"))
        .await?;
    deskpool_store::MIGRATOR.run(&db).await?;
    let filled = Instant::now();
    let secret = {
        let mut tx = db.begin().await?;
        let pool = deskpool_store::pools::insert(&mut tx, &spec(args.desktops)).await?;
        for i in 1..=args.desktops {
            let d = desktops::insert_pending(
                &mut tx,
                &NewDesktop {
                    pool_id: pool.id,
                    name: &format!("bench-{i:05}"),
                    index: i,
                    instance_uuid: uuid::Uuid::new_v4(),
                    snapshot_moref: "snapshot-1",
                },
            )
            .await?;
            let mut ready = Progress::powered_on();
            ready.vm_moref = Some(format!("vm-{i}"));
            desktops::set_progress(&mut tx, d.id, &ready).await?;
        }
        let (_, secret) = tokens::create(&mut tx, "bench-portal", Role::Broker).await?;
        tx.commit().await?;
        secret
    };
    sqlx::query("ANALYZE desktops").execute(&db).await?;
    println!(
        "pool 'bench' with {} ready desktops in {:.1} s",
        args.desktops,
        filled.elapsed().as_secs_f64()
    );

    let router = deskpool_api::router(ApiState {
        db: db.clone(),
        vcenters: vec!["vc1".into()],
        health: Arc::new(Leader),
        metrics: deskpool_api::install_metrics_recorder(),
        max_body_bytes: 64 * 1024,
        limits: deskpool_api::RequestLimits::default(),
        images: Arc::new(NoImages),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/api/v1/pools/bench/claim", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    // Warm the connections and the token cache with a few claims of users outside the run.
    for i in 0..5 {
        let r = http
            .post(&url)
            .bearer_auth(&secret)
            .json(&serde_json::json!({ "user": format!("warmup{i}") }))
            .send()
            .await?;
        ensure!(r.status().as_u16() == 200, "warm-up claim: {}", r.status());
    }
    let n = args.rate * args.seconds;
    let (lat, statuses) = phase(&http, &url, &secret, args.rate, n).await;
    report("new claims", &lat, &statuses, args.rate);
    let (lat, statuses) = phase(&http, &url, &secret, args.rate, n).await;
    report("renewals  ", &lat, &statuses, args.rate);
    let (claimed,): (i64,) =
        sqlx::query_as("SELECT count(DISTINCT id) FROM desktops WHERE claimed_by IS NOT NULL")
            .fetch_one(&db)
            .await?;
    println!(
        "claimed desktops at the end: {claimed} (expected {} distinct: {n} users + 5 warm-up)",
        n + 5
    );
    server.abort();
    db.close().await;
    Ok(())
}
