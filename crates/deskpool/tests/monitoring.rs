//! deploy/prometheus/alerts.yml and deploy/grafana/deskpool.json: the rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), and every metric they
//! name is one deskpool exports: seen on a running daemon's /metrics, or (for counters and
//! histograms, which appear only after their first sample) registered in the source through
//! the `metrics` macros.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::{create_pool, db_url, Serve};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e}: run scripts/ensure-promtool.sh (Debian package prometheus)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// `deskpool_...` names in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"deskpool_[a-z_]+[a-z]").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_owned()).collect()
}

/// Names registered with `metrics::counter!`/`histogram!`/`gauge!` in the workspace's source,
/// with the series a histogram adds.
fn registered_in_source() -> BTreeSet<String> {
    let re = regex::Regex::new(r#"metrics::(counter|histogram|gauge)!\(\s*"(deskpool_[a-z_]+)""#)
        .unwrap();
    let mut names = BTreeSet::new();
    let mut dirs = vec![repo().join("crates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("tests") && !path.ends_with("target") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for c in re.captures_iter(&text) {
                    let name = c[2].to_owned();
                    if &c[1] == "histogram" {
                        for suffix in ["_bucket", "_sum", "_count"] {
                            names.insert(format!("{name}{suffix}"));
                        }
                    }
                    names.insert(name);
                }
            }
        }
    }
    // HTTP_DURATION is a constant in crates/api; it is on a live /metrics anyway.
    names
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let out = promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    assert!(out.contains("SUCCESS: 6 rules found"), "{out}");
    promtool(&["test", "rules", "deploy/prometheus/alerts.test.yml"]);
}

#[test]
fn dashboard_is_grafana_json_with_a_query_in_every_panel() {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/deskpool.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dash["uid"], "deskpool");
    let panels = dash["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Desktops by state",
        "Target vs ready",
        "Clone duration",
        "Clone failures by kind",
        "HTTP latency p99 by route",
        "Leader",
    ] {
        assert!(
            titles.contains(&wanted),
            "no panel {wanted:?} in {titles:?}"
        );
    }
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(!metric_names(expr).is_empty(), "{}: {expr}", p["title"]);
        }
    }
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn every_metric_in_the_dashboard_and_the_alerts_is_exported(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(VcsimOptions {
        folders: vec!["mon".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    create_pool(&db, "mon", 2).await;
    let mut serve = Serve::start(dir.path(), &db_url(&opts), &sim.sdk_url, &sim.password, "");
    let metrics_url = format!("http://127.0.0.1:{}/metrics", serve.port);
    let http = reqwest::Client::new();
    // Until the pool has filled (a clone histogram sample) and requests were measured.
    serve
        .wait_until(|| {
            let r = http.get(&metrics_url).send();
            async move {
                match r.await {
                    Ok(r) => r.text().await.is_ok_and(|t| {
                        t.contains("deskpool_clone_duration_seconds_count")
                            && t.contains("deskpool_http_request_duration_seconds_count")
                            && t.contains("deskpool_leader 1")
                    }),
                    Err(_) => false,
                }
            }
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let live = http
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<String> = live
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let source = registered_in_source();
    assert!(
        source.contains("deskpool_clone_failures_total"),
        "the source scan found nothing: {source:?}"
    );

    let mut named = BTreeSet::new();
    for file in [
        "deploy/grafana/deskpool.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 5, "{file}: {names:?}");
        named.extend(names);
    }
    let unknown: Vec<&String> = named
        .iter()
        .filter(|n| !exported.contains(*n) && !source.contains(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "named in deploy/ but not exported by deskpool: {unknown:?}\nlive /metrics:\n{live}"
    );
    // The gauges the alerts rest on are live, not only in the source.
    for gauge in [
        "deskpool_pool_state",
        "deskpool_pool_paused",
        "deskpool_leader",
        "deskpool_vcenter_connected",
        "deskpool_desktops",
        "deskpool_pool_target",
        "deskpool_metrics_database_up",
    ] {
        assert!(exported.contains(gauge), "{gauge} not on /metrics:\n{live}");
    }
}
