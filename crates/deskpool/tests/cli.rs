//! The `deskpool` binary as a user runs it: exit codes, one-line errors, no leaked secrets, and
//! the database commands against the local PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `scripts/ensure-postgres.sh` starts one).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection as _;

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The binary with a clean environment: no overrides, no credentials, run in `dir` so the
/// repository's `config/deskpool.toml` is not picked up by accident.
fn deskpool(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deskpool"));
    for (key, _) in std::env::vars() {
        if key.starts_with("DESKPOOL__") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .current_dir(dir);
    cmd
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// A database of its own for one test, dropped afterwards (even when the test fails).
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// A unique name; the database is created only when `create` is set.
    fn new(create: bool) -> Self {
        let name = format!("deskpool_test_{}", uuid::Uuid::new_v4().simple());
        let mut url = url::Url::parse(&admin_url()).unwrap();
        url.set_path(&name);
        if create {
            let sql = format!("CREATE DATABASE {name}");
            block_on(async move {
                let mut conn = sqlx::PgConnection::connect(&admin_url())
                    .await
                    .expect("cannot connect to DATABASE_URL: run scripts/ensure-postgres.sh");
                sqlx::query(&sql).execute(&mut conn).await.unwrap();
            });
        }
        Self {
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        block_on(async move {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
                let _ = sqlx::query(&sql).execute(&mut conn).await;
            }
        });
    }
}

fn block_on<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    // Run on a thread of its own so this also works from Drop inside a runtime.
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .unwrap();
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn help_lists_subcommands_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let (out, stdout, _) = run(deskpool(dir.path()).arg("--help"));
    assert!(out.status.success());
    for word in [
        "serve",
        "migrate",
        "check",
        "token",
        "--config",
        "--log-format",
    ] {
        assert!(stdout.contains(word), "--help lacks {word}:\n{stdout}");
    }
    let (out, stdout, _) = run(deskpool(dir.path()).args(["token", "--help"]));
    assert!(out.status.success());
    for word in ["create", "list", "revoke"] {
        assert!(
            stdout.contains(word),
            "token --help lacks {word}:\n{stdout}"
        );
    }
    let (out, stdout, _) = run(deskpool(dir.path()).args(["token", "create", "--help"]));
    assert!(out.status.success());
    for word in ["--name", "--role", "admin", "helpdesk", "viewer"] {
        assert!(
            stdout.contains(word),
            "token create --help lacks {word}:\n{stdout}"
        );
    }
}

#[test]
fn config_errors_are_one_line_naming_the_key_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    // (environment, config file, expected start of the message after "config error: ")
    type Case<'a> = (Vec<(&'a str, &'a str)>, std::path::PathBuf, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![],
            write("malformed.toml", "[http\nlisten = \"127.0.0.1:1\"\n"),
            "malformed.toml: TOML parse error at line 1",
        ),
        (
            vec![],
            write("unknown.toml", "[reconciler]\nresync_secs = 5\n"),
            "reconciler.resync_secs: unknown key",
        ),
        (
            vec![],
            write(
                "nopass.toml",
                "[[vcenters]]\nname = \"vc1\"\nurl = \"https://vc1.example.com/sdk\"\nusername = \"u\"\npassword_file = \"/nonexistent/vc1.pass\"\n",
            ),
            "vcenters[0].password_file: /nonexistent/vc1.pass: No such file or directory",
        ),
        // README, Secrets: a password comes from exactly one source.
        (
            vec![],
            write(
                "twopass.toml",
                "[[vcenters]]\nname = \"vc1\"\nurl = \"https://vc1.example.com/sdk\"\nusername = \"u\"\npassword = \"p\"\npassword_file = \"/etc/hostname\"\n",
            ),
            "vcenters[0].password: set either password or password_file, not both",
        ),
        // README, vcenters[].insecure: not together with ca_file.
        (
            vec![],
            write(
                "insecure.toml",
                "[[vcenters]]\nname = \"vc1\"\nurl = \"https://vc1.example.com/sdk\"\nusername = \"u\"\npassword = \"p\"\ninsecure = true\nca_file = \"/etc/hostname\"\n",
            ),
            "vcenters[0].insecure: ",
        ),
        // README: backoff_base_ms must not exceed backoff_max_secs.
        (
            vec![],
            write(
                "backoff.toml",
                "[reconciler]\nbackoff_base_ms = 5000\nbackoff_max_secs = 2\n",
            ),
            "reconciler.backoff_base_ms: ",
        ),
        (
            vec![("DESKPOOL__RECONCILER__LEASE_TTL_SECS", "soon")],
            write("empty.toml", ""),
            "reconciler.lease_ttl_secs: invalid type",
        ),
        (
            vec![("DESKPOOL__HTTP__LISTN", "127.0.0.1:1")],
            write("empty2.toml", ""),
            "http.listn: unknown key",
        ),
    ];
    for (env, file, expected) in cases {
        let mut cmd = deskpool(dir.path());
        cmd.arg("--config")
            .arg(&file)
            .arg("check")
            .envs(env.clone());
        let (out, stdout, stderr) = run(&mut cmd);
        assert_eq!(out.status.code(), Some(2), "{file:?} {env:?}: {stderr}");
        assert_eq!(lines(&stderr).len(), 1, "{file:?}: not one line:\n{stderr}");
        assert!(
            stderr.starts_with(&format!("config error: {expected}")),
            "{file:?} {env:?}: expected {expected:?}, got {stderr:?}"
        );
        assert!(stdout.is_empty(), "{stdout}");
    }

    let (out, _, stderr) = run(deskpool(dir.path()).args(["--config", "missing.toml", "check"]));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr.trim_end(),
        "config error: missing.toml: no such file (given with --config)"
    );
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn unreachable_database_is_one_redacted_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    for sub in ["migrate", "serve"] {
        let (out, _, stderr) = run(deskpool(dir.path()).arg(sub).env(
            "DESKPOOL__DATABASE__URL",
            format!("postgres://postgres:db-s3cret@127.0.0.1:{port}/deskpool"),
        ));
        assert_eq!(out.status.code(), Some(1), "{sub}: {stderr}");
        assert_eq!(lines(&stderr).len(), 1, "{sub}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "cannot connect to database at postgres://postgres:***@127.0.0.1:{port}/deskpool: "
            )),
            "{sub}: {stderr}"
        );
        assert!(!stderr.contains("db-s3cret"), "{stderr}");
    }
}

#[test]
fn secrets_never_appear_in_output() {
    let dir = tempfile::tempdir().unwrap();
    let pass_file = dir.path().join("vc2.pass");
    std::fs::write(&pass_file, "file-s3cret\n").unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("vc3"), "cred-s3cret").unwrap();
    let cfg = dir.path().join("deskpool.toml");
    // vCenters on a closed local port: check tries them and fails without leaving the machine.
    let vc = format!("https://127.0.0.1:{}/sdk", closed_port());
    std::fs::write(
        &cfg,
        format!(
            "[[vcenters]]\nname = \"vc1\"\nurl = \"{vc}\"\nusername = \"u\"\npassword = \"inline-s3cret\"\n\
             [[vcenters]]\nname = \"vc2\"\nurl = \"{vc}\"\nusername = \"u\"\npassword_file = \"{}\"\n\
             [[vcenters]]\nname = \"vc3\"\nurl = \"{vc}\"\nusername = \"u\"\n",
            pass_file.display()
        ),
    )
    .unwrap();
    let secrets = ["inline-s3cret", "file-s3cret", "cred-s3cret", "db-s3cret"];
    let port = closed_port();
    let db_url = format!("postgres://postgres:db-s3cret@127.0.0.1:{port}/deskpool");
    let mut runs = vec![
        vec!["--help"],
        vec!["check"],
        vec!["--log-format", "json", "check"],
        vec!["migrate"],
        vec!["token", "list"],
    ];
    for args in &mut runs {
        args.splice(0..0, ["--config", "deskpool.toml"]);
    }
    for args in &runs {
        let (out, stdout, stderr) = run(deskpool(dir.path())
            .args(args)
            .env("RUST_LOG", "trace")
            .env("CREDENTIALS_DIRECTORY", &creds)
            .env("DESKPOOL__DATABASE__URL", &db_url));
        for s in secrets {
            assert!(
                !stdout.contains(s),
                "{args:?} leaked {s} on stdout:\n{stdout}"
            );
            assert!(
                !stderr.contains(s),
                "{args:?} leaked {s} on stderr:\n{stderr}"
            );
        }
        if args.contains(&"check") {
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
            assert!(stdout.contains("FAIL database: cannot connect"), "{stdout}");
            assert!(
                stdout.contains("FAIL vcenter 'vc1'"),
                "unreachable vCenters must fail the check: {stdout}"
            );
        }
    }
}

#[test]
fn migrate_check_and_tokens_on_a_fresh_database() {
    let db = TestDb::new(true);
    let dir = tempfile::tempdir().unwrap();
    let cmd = |args: &[&str]| {
        let mut c = deskpool(dir.path());
        c.args(args).env("DESKPOOL__DATABASE__URL", &db.url);
        c
    };

    // Before migrating, check says what to do.
    let (out, stdout, _) = run(&mut cmd(&["check"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("FAIL migrations: database has no deskpool schema: run `deskpool migrate`"),
        "{stdout}"
    );

    let (out, _, stderr) = run(&mut cmd(&["migrate"]));
    assert!(out.status.success(), "{stderr}");
    let (out, _, stderr) = run(&mut cmd(&["migrate"]));
    assert!(out.status.success(), "second migrate: {stderr}");

    let expected = deskpool_store::MIGRATOR.iter().count() as i64;
    let url = db.url.clone();
    block_on(async move {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let applied: i64 =
            sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(applied, expected);
    });

    // No vCenters configured: every check passes.
    let (out, stdout, stderr) = run(&mut cmd(&["check"]));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("ok   migrations: "), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // The installation id is generated once and shown the same by every check.
    let id_line = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("ok   installation: "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no installation line: {out}"))
    };
    let first = id_line(&stdout);
    let (_, again, _) = run(&mut cmd(&["check"]));
    assert_eq!(id_line(&again), first);

    let (out, secret, stderr) = run(&mut cmd(&[
        "token", "create", "--name", "alice", "--role", "helpdesk",
    ]));
    assert!(out.status.success(), "{stderr}");
    let secret = secret.trim();
    assert!(
        secret.starts_with("dpt_") && !secret.contains(char::is_whitespace),
        "{secret}"
    );

    let (out, list, _) = run(&mut cmd(&["token", "list"]));
    assert!(out.status.success());
    let row = list.lines().find(|l| l.starts_with("alice")).expect(&list);
    assert!(row.contains("helpdesk") && row.ends_with("active"), "{row}");
    assert!(!list.contains(secret));

    let (out, _, stderr) = run(&mut cmd(&["token", "revoke", "--name", "alice"]));
    assert!(out.status.success(), "{stderr}");
    let (_, list, _) = run(&mut cmd(&["token", "list"]));
    assert!(list.contains("revoked"), "{list}");
    let (out, _, stderr) = run(&mut cmd(&["token", "revoke", "--name", "alice"]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        lines(&stderr),
        ["revoking token: active token 'alice' not found"]
    );
}

#[test]
fn migrate_creates_a_missing_database_and_logs_json() {
    let db = TestDb::new(false);
    let dir = tempfile::tempdir().unwrap();
    let (out, _, stderr) = run(deskpool(dir.path())
        .args(["--log-format", "json", "migrate"])
        .env("DESKPOOL__DATABASE__URL", &db.url));
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.is_empty());
    for line in lines(&stderr) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(stderr.contains("created database"), "{stderr}");
    let url = db.url.clone();
    block_on(async move {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pools")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0);
    });
}

#[test]
fn serve_answers_healthz_and_stops_on_sigterm() {
    let db = TestDb::new(true);
    let dir = tempfile::tempdir().unwrap();
    let mut child = deskpool(dir.path())
        .arg("serve")
        .env("DESKPOOL__DATABASE__URL", &db.url)
        .env("DESKPOOL__HTTP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A hung serve must fail the test, not hang it: kill it after a minute.
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    let pid = child.id().to_string();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    });
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let addr = loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("serve exited before listening:\n{seen}");
        }
        seen.push_str(&line);
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };

    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    assert!(response.ends_with("{\"status\":\"ok\"}"), "{response}");

    // serve applied the migrations itself.
    let url = db.url.clone();
    block_on(async move {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("SELECT 1 FROM pools")
            .execute(&mut conn)
            .await
            .unwrap();
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = done.send(());
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert_eq!(code, Some(0), "{seen}{rest}");
    assert!(rest.contains("shutting down"), "{rest}");
}

/// The README's install steps run `migrate` and `token create` as the service user, who has
/// neither the systemd credential nor read access to the root-only password file: those
/// commands must not need the vCenter password, while `check` and `serve` still do.
#[test]
fn database_commands_work_without_the_vcenter_password() {
    let db = TestDb::new(true);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deskpool.toml");
    std::fs::write(
        &config,
        "[[vcenters]]\nname = \"vc1\"\nurl = \"https://vc1.example.com/sdk\"\nusername = \"u\"\n\
         [[vcenters]]\nname = \"vc2\"\nurl = \"https://vc2.example.com/sdk\"\nusername = \"u\"\npassword_file = \"/nonexistent/vc2.password\"\n",
    )
    .unwrap();
    let cmd = |args: &[&str]| {
        let mut c = deskpool(dir.path());
        c.arg("--config")
            .arg(&config)
            .args(args)
            .env("DESKPOOL__DATABASE__URL", &db.url);
        c
    };
    let (out, _, stderr) = run(&mut cmd(&["migrate"]));
    assert!(out.status.success(), "migrate: {stderr}");
    let (out, secret, stderr) = run(&mut cmd(&[
        "token",
        "create",
        "--name",
        "first-admin",
        "--role",
        "admin",
    ]));
    assert!(out.status.success(), "token create: {stderr}");
    assert!(secret.trim().starts_with("dpt_"), "{secret}");
    let (out, list, stderr) = run(&mut cmd(&["token", "list"]));
    assert!(out.status.success(), "token list: {stderr}");
    assert!(list.contains("first-admin"), "{list}");

    // What connects to vCenter still insists on the password, naming what to set.
    let (out, _, stderr) = run(&mut cmd(&["check"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .starts_with("config error: vcenters[0].password_file: no password for vCenter 'vc1'"),
        "{stderr}"
    );
}
