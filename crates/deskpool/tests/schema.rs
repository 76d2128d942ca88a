//! The OpenAPI document tells the truth (#12 item 14): schemathesis (PyPI) generates requests
//! from `/openapi.json` and runs every check against a real `deskpool serve`, PostgreSQL and
//! the simulator. A request the schema allows must not be refused as malformed, a response must
//! match its schema, no request may cause a server error.
//!
//! Needs the `schemathesis` Python package: `scripts/test.sh` installs it through
//! `scripts/ensure-schemathesis.sh`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use deskpool_store::tokens::Role;
use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::{create_pool, db_url, token, Serve};

fn python() -> String {
    std::env::var("DESKPOOL_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn schemathesis_finds_no_request_the_schema_allows_but_the_server_mishandles(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let found = std::process::Command::new(python())
        .args(["-c", "import schemathesis"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the Python package schemathesis is missing for {}: run scripts/ensure-schemathesis.sh",
        python()
    );
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(VcsimOptions {
        clone_delay: Duration::from_millis(50),
        folders: vec!["lab".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    create_pool(&db, "lab", 2).await;
    let admin = token(&db, "schemathesis", Role::Admin).await;

    let mut serve = Serve::start(dir.path(), &db_url(&opts), &sim.sdk_url, &sim.password, "");
    let url = format!("http://127.0.0.1:{}", serve.port);
    let http = reqwest::Client::new();
    let healthz = format!("{url}/healthz");
    serve
        .wait_until(|| {
            let r = http.get(&healthz).send();
            async move { r.await.is_ok() }
        })
        .await;

    // The token reaches schemathesis through its environment and the config file, never argv.
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schema");
    let config = here.join("schemathesis.toml");
    let seed = std::env::var("DESKPOOL_TEST_SEED").unwrap_or_else(|_| "1".to_owned());
    let out = tokio::process::Command::new(python())
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .args(["run", "--checks", "all", "--max-examples", "25", "--seed"])
        .arg(&seed)
        // One worker: hypothesis's internals are not thread-safe (a run with two hit "AST
        // constructor recursion depth mismatch" in its lambda descriptions).
        .args(["--workers", "1", "--no-color"])
        .arg(format!("{url}/openapi.json"))
        .env("DESKPOOL_ST_TOKEN", &admin)
        .env("PYTHONPATH", &here)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "schemathesis found failures (seed {seed}):\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("passed") && !stdout.contains("No operations"),
        "schemathesis tested nothing:\n{stdout}"
    );
    drop(serve);
}
