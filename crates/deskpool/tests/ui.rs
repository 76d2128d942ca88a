//! The web page in a real browser: Debian's headless Chromium, driven by Playwright for Python
//! (tests/ui/browser.py), against a real `deskpool serve`, PostgreSQL and the simulator.
//!
//! Needs `/usr/bin/chromium` and the `playwright` Python package: `scripts/test.sh` installs
//! both through `scripts/ensure-chromium.sh`. Screenshots land in `target/ui-screenshots/`.

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use deskpool_store::tokens::Role;
use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use support::{create_pool, db_url, token, Serve};

fn chromium() -> String {
    std::env::var("DESKPOOL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

fn python() -> String {
    std::env::var("DESKPOOL_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// The browser and its driver are there; otherwise a failure saying how to get them.
fn preflight() {
    assert!(
        std::path::Path::new(&chromium()).exists(),
        "{} not found: run scripts/ensure-chromium.sh (or set DESKPOOL_CHROMIUM)",
        chromium()
    );
    let found = std::process::Command::new(python())
        .args(["-c", "import playwright.sync_api"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the Python package playwright is missing for {}: run scripts/ensure-chromium.sh",
        python()
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn helpdesk_viewer_and_admin_use_the_page_in_a_real_browser(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    preflight();
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(VcsimOptions {
        clone_delay: Duration::from_millis(300),
        folders: vec!["demo".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    create_pool(&db, "demo", 3).await;
    let helpdesk = token(&db, "ui-helpdesk", Role::Helpdesk).await;
    let viewer = token(&db, "ui-viewer", Role::Viewer).await;
    let admin = token(&db, "ui-admin", Role::Admin).await;

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

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui/browser.py");
    let out = tokio::process::Command::new(python())
        .arg(&script)
        .env("DESKPOOL_UI_URL", &url)
        .env("DESKPOOL_UI_POOL", "demo")
        .env("DESKPOOL_UI_HELPDESK", &helpdesk)
        .env("DESKPOOL_UI_VIEWER", &viewer)
        .env("DESKPOOL_UI_ADMIN", &admin)
        .env("DESKPOOL_UI_SHOTS", &shots)
        .env("DESKPOOL_CHROMIUM", chromium())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let result: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "the driver printed no result ({e}):\n{stdout}\n{stderr}\n{}",
            serve.log_text()
        )
    });
    assert!(
        out.status.success() && result["ok"] == true,
        "browser scenario failed: {}\n{stderr}",
        result["error"]
    );
    for shot in result["screenshots"].as_array().unwrap() {
        let path = PathBuf::from(shot.as_str().unwrap());
        assert!(std::fs::metadata(&path).unwrap().len() > 1000, "{path:?}");
    }
    assert_eq!(result["screenshots"].as_array().unwrap().len(), 9);
    assert_eq!(result["made_token_works"], true);

    // What the browser did reached the database under the tokens' names.
    let mut c = db.acquire().await.unwrap();
    let pool = deskpool_store::pools::get(&mut c, "demo")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pool.spec.target_size, 4);
    assert!(pool.spec.enabled, "the admin resumed the pool");
    let replaced = result["replaced"].as_str().unwrap();
    let replacement = result["replacement"].as_str().unwrap();
    let names: Vec<String> = deskpool_store::desktops::list_for_pool(&mut c, pool.id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(!names.iter().any(|n| n == replaced), "{names:?}");
    assert!(names.iter().any(|n| n == replacement), "{names:?}");
    let actors: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, kind FROM events WHERE actor LIKE 'ui-%' ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
    let has = |actor: &str, kind: &str| actors.iter().any(|(a, k)| a == actor && k == kind);
    assert!(has("ui-helpdesk", "pool_resized"), "{actors:?}");
    assert!(has("ui-helpdesk", "desktop_deleting"), "{actors:?}");
    assert!(
        has("ui-admin", "pool_paused") && has("ui-admin", "pool_resumed"),
        "{actors:?}"
    );
    assert!(has("ui-admin", "token_created"), "{actors:?}");
    assert!(!has("ui-viewer", "pool_resized"), "{actors:?}");
}
