//! Unauthenticated traffic must not starve the reconciler of database connections: a flood of
//! requests with bogus (well-formed) tokens against a daemon whose API has only two
//! connections, over a slow database link, leaves the leader leading.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deskpool_testkit::proxy::Proxy;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::process::Command;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct LeaseRow {
    owner: String,
    token: i64,
    valid: bool,
}

async fn lease(db: &sqlx::PgPool) -> Option<LeaseRow> {
    sqlx::query_as(
        "SELECT owner, token, expires_at > now() AS valid FROM leases WHERE name = 'reconciler'",
    )
    .fetch_optional(db)
    .await
    .unwrap()
}

fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("dpt_{hex}")
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn bogus_token_flood_does_not_depose_the_leader(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    // Every query of the daemon crosses a link with 20 ms each way.
    let pg = format!("127.0.0.1:{}", opts.get_port()).parse().unwrap();
    let link = Proxy::start_with_latency(pg, Duration::from_millis(20)).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\
         [database]\nurl = \"postgres://postgres@{}/{}\"\nmax_connections = 2\nconnect_timeout_secs = 2\n\
         [reconciler]\nlease_ttl_secs = 3\n",
        link.addr,
        opts.get_database().unwrap()
    );
    std::fs::write(dir.path().join("deskpool.toml"), config).unwrap();
    let log_path = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_deskpool"))
        .arg("--config")
        .arg(dir.path().join("deskpool.toml"))
        .arg("serve")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The log's last lines: enough to see why, without the flood's thousands of request lines.
    let log = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("deskpool_api::"))
            .collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        if let Some(l) = lease(&db).await.filter(|l| l.valid) {
            break l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon never took the lease:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(200)
        .build()
        .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let flood: Vec<_> = (0..150)
        .map(|_| {
            let (http, base, sent, stop) = (http.clone(), base.clone(), sent.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let r = http
                        .get(format!("{base}/api/v1/pools"))
                        .bearer_auth(random_secret())
                        .send()
                        .await;
                    if let Ok(r) = r {
                        // Refused as unknown, or shed as overloaded: never let in.
                        let status = r.status().as_u16();
                        assert!(matches!(status, 401 | 503), "bogus token got {status}");
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Through 10 s of flood (more than three lease lifetimes), the same leader keeps a valid
    // lease under the same fencing token.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < until {
        let now = lease(&db).await;
        assert_eq!(
            now.as_ref(),
            Some(&before),
            "the leader lost its lease during the flood ({} requests sent):\n{}",
            sent.load(Ordering::Relaxed),
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    for f in flood {
        f.await.unwrap();
    }
    assert!(
        sent.load(Ordering::Relaxed) > 150,
        "the flood never got going"
    );
    assert!(
        !log().contains("could not be renewed"),
        "the leader stepped down:\n{}",
        log()
    );
    // The API still answers once the flood is over.
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["role"], "leader", "{body}");
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
