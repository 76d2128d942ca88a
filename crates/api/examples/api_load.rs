//! Open-loop load generator for the API: `PATCH` resizes and `GET /api/v1/pools` at a fixed
//! rate, latency measured from each request's scheduled start (so a stalled server shows up
//! as latency, not as a lower send rate).
//!
//! Against a running server:
//!   cargo run --release -p deskpool-api --example api_load -- --url http://127.0.0.1:8080 --token dpt_...
//! Self-contained (fresh database from DATABASE_URL, in-process router on a loopback port,
//! 50 pools; dropped afterwards):
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo run --release -p deskpool-api --example api_load -- --self-contained

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use deskpool_api::{ApiState, Health, HealthSnapshot, PoolList, ReplicaRole};
use deskpool_store::tokens::{self, Role};
use sqlx::{Connection, Executor, PgConnection};

#[derive(Debug, Parser)]
struct Args {
    /// Base URL of a running deskpool (e.g. http://127.0.0.1:8080).
    #[arg(long, required_unless_present = "self_contained")]
    url: Option<String>,
    /// Token secret (helpdesk or admin: resizes need helpdesk).
    #[arg(
        long,
        env = "DESKPOOL_TOKEN",
        required_unless_present = "self_contained"
    )]
    token: Option<String>,
    /// Requests per second, both kinds together (alternating).
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Start an in-process API over a fresh database instead of using --url.
    #[arg(long)]
    self_contained: bool,
    /// Pools to create in self-contained mode.
    #[arg(long, default_value_t = 50)]
    pools: u32,
    /// Server database for self-contained mode (a scratch database is created in it).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
}

struct AlwaysReady;
impl Health for AlwaysReady {
    fn snapshot(&self) -> HealthSnapshot {
        HealthSnapshot {
            role: ReplicaRole::Leader,
            vcenters: vec![],
        }
    }
}

/// A scratch database with `pools` pools and an admin token, served on a loopback port.
struct SelfContained {
    url: String,
    token: String,
    server_url: String,
    db_name: String,
    db: sqlx::PgPool,
}

async fn self_contained(args: &Args) -> anyhow::Result<SelfContained> {
    let server_url = args
        .database_url
        .clone()
        .context("--self-contained needs DATABASE_URL or --database-url")?;
    let db_name = format!("deskpool_api_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&server_url).await?;
    admin
        .execute(format!("CREATE DATABASE {db_name}").as_str())
        .await?;
    let opts: sqlx::postgres::PgConnectOptions = server_url.parse()?;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .connect_with(opts.database(&db_name))
        .await?;
    deskpool_store::MIGRATOR.run(&db).await?;
    let mut c = db.acquire().await?;
    let (_, token) = tokens::create(&mut c, "bench", Role::Admin).await?;
    for i in 1..=args.pools {
        let name = format!("bench-{i:02}");
        let spec: deskpool_domain::PoolSpec = serde_json::from_value(serde_json::json!({
            "name": name, "vcenter": "vc1", "datacenter": "DC0", "golden_vm": "golden",
            "folder": name, "resource_pool": "DC0_C0", "naming_pattern": format!("b{i:02}-{{n:3}}"),
            "target_size": 5, "min_size": 0, "max_size": 100
        }))?;
        deskpool_store::pools::insert(&mut c, &spec).await?;
    }
    drop(c);
    let router = deskpool_api::router(ApiState {
        db: db.clone(),
        vcenters: vec!["vc1".into()],
        health: Arc::new(AlwaysReady),
        metrics: deskpool_api::install_metrics_recorder(),
        max_body_bytes: 64 * 1024,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(SelfContained {
        url,
        token,
        server_url,
        db_name,
        db,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Resize,
    List,
}

struct Sample {
    kind: Kind,
    latency: Duration,
    ok: bool,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let local = if args.self_contained {
        Some(self_contained(&args).await?)
    } else {
        None
    };
    let (base, token) = match &local {
        Some(l) => (l.url.clone(), l.token.clone()),
        None => (
            args.url.clone().unwrap_or_default(),
            args.token.clone().unwrap_or_default(),
        ),
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()?;
    let auth = format!("Bearer {token}");

    let pools: PoolList = client
        .get(format!("{base}/api/v1/pools"))
        .header("authorization", &auth)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let pools: Vec<(String, u32, u32)> = pools
        .pools
        .into_iter()
        .filter(|p| p.status.state != deskpool_api::PoolStateView::Deleting)
        .map(|p| (p.name, p.spec.min_size, p.spec.max_size))
        .collect();
    if pools.is_empty() {
        bail!("no pools to resize at {base}");
    }

    let total = u64::from(args.rate) * u64::from(args.seconds);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    println!(
        "mode: {}; {} pools; target {} req/s for {} s ({} requests)",
        if local.is_some() {
            "self-contained (in-process router, loopback HTTP, fresh database)"
        } else {
            "remote"
        },
        pools.len(),
        args.rate,
        args.seconds,
        total
    );
    let start = tokio::time::Instant::now();
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let (client, auth, base, tx) = (client.clone(), auth.clone(), base.clone(), tx.clone());
        let kind = if i % 2 == 0 { Kind::Resize } else { Kind::List };
        let (pool, min, max) = pools[(i / 2) as usize % pools.len()].clone();
        // Cycle targets within bounds so every resize is a real change.
        let span = u64::from(max - min) + 1;
        let target = min + ((i / 2 / pools.len() as u64) % span.min(10)) as u32;
        tokio::spawn(async move {
            let req = match kind {
                Kind::Resize => client
                    .patch(format!("{base}/api/v1/pools/{pool}"))
                    .header("content-type", "application/json")
                    .body(format!("{{\"target_size\":{target}}}")),
                Kind::List => client.get(format!("{base}/api/v1/pools")),
            };
            let ok = match req.header("authorization", auth).send().await {
                Ok(res) => {
                    let ok = res.status().is_success();
                    // Read the body so the latency includes it.
                    res.bytes().await.is_ok() && ok
                }
                Err(_) => false,
            };
            let _ = tx.send(Sample {
                kind,
                latency: scheduled.elapsed(),
                ok,
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
        "{:<22} {:>7} {:>7} {:>9} {:>9} {:>9} {:>8}",
        "request", "count", "errors", "p50 ms", "p99 ms", "max ms", "p99/p50"
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
        let errors = samples.iter().filter(|s| s.kind == kind && !s.ok).count();
        lat.sort();
        let (p50, p99) = (pct(&lat, 0.50), pct(&lat, 0.99));
        println!(
            "{label:<22} {:>7} {errors:>7} {:>9.2} {:>9.2} {:>9.2} {:>8.1}",
            lat.len(),
            ms(p50),
            ms(p99),
            ms(lat.last().copied().unwrap_or_default()),
            ms(p99) / ms(p50).max(1e-9)
        );
    }

    if let Some(l) = local {
        l.db.close().await;
        let mut admin = PgConnection::connect(&l.server_url).await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", l.db_name).as_str())
            .await?;
    }
    Ok(())
}
