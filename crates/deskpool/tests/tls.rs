//! HTTPS: `deskpool serve` with a self-signed certificate the test makes, and `deskpool check`
//! reporting when it expires.

mod support;

use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::{db_url, Serve};

/// `deskpool check`: whether it passed, and what it printed.
async fn check(config: &std::path::Path) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_deskpool"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn serves_https_with_the_configured_certificate_and_check_reports_its_expiry(
    _pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 7, 15);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("api.pem"), dir.path().join("api.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let tls = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        cert_file.display(),
        key_file.display()
    );

    let mut serve = Serve::start(
        dir.path(),
        &db_url(&opts),
        &sim.sdk_url,
        &sim.password,
        &tls,
    );
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", serve.port);
    let healthz = format!("{base}/healthz");
    serve
        .wait_until(|| {
            let r = https.get(&healthz).send();
            async move { r.await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
    // The API and the web page, over TLS.
    let pools = https
        .get(format!("{base}/api/v1/pools"))
        .send()
        .await
        .unwrap();
    assert_eq!(pools.status(), 401, "the API answers, and wants a token");
    let page = https.get(format!("{base}/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers().contains_key("content-security-policy"));

    // Plain HTTP on the same port gets no answer, and a client that does not trust the
    // certificate refuses it.
    let plain = reqwest::get(format!("http://127.0.0.1:{}/healthz", serve.port)).await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    let untrusting = reqwest::get(&healthz).await;
    assert!(untrusting.is_err(), "an untrusted certificate was accepted");
    assert!(serve.child.try_wait().unwrap().is_none(), "serve died");

    let (_, out) = check(&serve.config).await;
    let line = out
        .lines()
        .find(|l| l.contains(" tls: "))
        .unwrap_or_else(|| panic!("no tls line in:\n{out}"));
    assert!(line.starts_with("ok   tls: certificate "), "{line}");
    assert!(line.contains("expires 2031-07-15 00:00:00Z (in "), "{line}");

    // An expired certificate is a failed check, saying so.
    let mut old = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    old.not_before = rcgen::date_time_ymd(2020, 1, 1);
    old.not_after = rcgen::date_time_ymd(2021, 1, 1);
    std::fs::write(&cert_file, old.self_signed(&key).unwrap().pem()).unwrap();
    let (passed, out) = check(&serve.config).await;
    assert!(!passed);
    assert!(
        out.contains("FAIL tls: ") && out.contains("expired 2021-01-01 00:00:00Z: renew it"),
        "{out}"
    );
}
