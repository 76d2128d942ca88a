//! Shared by the process-level tests of the web page and of TLS: a real `deskpool serve`
//! against the test's database and simulator, a demo pool and tokens made in the store.

#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use deskpool_store::tokens::{self, Role};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::process::{Child, Command};

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test database's URL, for the daemon's config.
pub fn db_url(opts: &PgConnectOptions) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        opts.get_port(),
        opts.get_database().unwrap()
    )
}

/// A running `deskpool serve`, killed on drop.
pub struct Serve {
    pub child: Child,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Its log file.
    pub log: std::path::PathBuf,
    /// The config file it was started with.
    pub config: std::path::PathBuf,
}

impl Serve {
    /// Writes a config into `dir` (`http_extra` is appended to `[http]`) and starts `serve`.
    /// Does not wait for it: see [`Serve::wait_until`].
    pub fn start(
        dir: &Path,
        db_url: &str,
        sdk_url: &str,
        password: &str,
        http_extra: &str,
    ) -> Serve {
        let port = free_port();
        std::fs::write(dir.join("vc.pass"), password).unwrap();
        let config = format!(
            r#"[http]
listen = "127.0.0.1:{port}"
{http_extra}
[database]
url = "{db_url}"
connect_timeout_secs = 2
[reconciler]
resync_interval_secs = 5
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
        let config_path = dir.join("deskpool.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("serve-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_deskpool"))
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Serve {
            child,
            port,
            log,
            config: config_path,
        }
    }

    /// Waits until `probe` succeeds (the daemon answers), or panics with the daemon's log.
    pub async fn wait_until<F, Fut>(&mut self, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..300 {
            if probe().await {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("deskpool serve exited with {status}:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("deskpool serve did not answer:\n{}", self.log_text());
    }

    /// What the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Defines pool `name` (target `target`, bounds 1..=8) in the store.
pub async fn create_pool(db: &PgPool, name: &str, target: u32) {
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
        min_size: 1,
        max_size: 8,
        power_on: true,
        max_concurrent_clones: 4,
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

/// Makes a token in the store; returns its secret.
pub async fn token(db: &PgPool, name: &str, role: Role) -> String {
    let mut c = db.acquire().await.unwrap();
    tokens::create(&mut c, name, role).await.unwrap().1
}
