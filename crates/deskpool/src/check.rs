//! `deskpool check`: one line per check, `ok` or `FAIL`, exit 1 on any failure.

use std::collections::HashSet;
use std::io::Write as _;

use deskpool_domain::PoolSpec;
use sqlx::migrate::Migrate as _;
use sqlx::PgPool;

use crate::config::{Config, VcenterConfig};
use crate::db;

/// Check results, printed as they come so a hanging check shows where it hangs.
#[derive(Debug, Default)]
pub struct Report {
    failures: usize,
}

impl Report {
    /// Records and prints a passed check.
    pub fn ok(&mut self, what: &str, detail: impl AsRef<str>) {
        Self::print("ok  ", what, detail.as_ref());
    }

    /// Records and prints a failed check.
    pub fn fail(&mut self, what: &str, detail: impl AsRef<str>) {
        self.failures += 1;
        Self::print("FAIL", what, detail.as_ref());
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures == 0
    }

    fn print(status: &str, what: &str, detail: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{status} {what}: {detail}");
        let _ = out.flush();
    }
}

/// Runs every check; `Ok(true)` when all passed.
pub async fn check(cfg: &Config) -> anyhow::Result<bool> {
    let mut report = Report::default();
    let source = cfg.source.as_ref().map_or_else(
        || "built-in defaults".to_owned(),
        |p| p.display().to_string(),
    );
    report.ok(
        "config",
        format!("{source} is valid ({} vCenter(s))", cfg.vcenters.len()),
    );

    if let Some((cert, key)) = cfg.http.tls_files() {
        check_tls(cert, key, chrono::Utc::now(), &mut report);
    }

    let pools = match db::connect(&cfg.database).await {
        Err(e) => {
            report.fail("database", format!("{e:#}"));
            Vec::new()
        }
        Ok(db) => {
            report.ok(
                "database",
                format!("connected to {}", cfg.database.redacted_url()),
            );
            let pools = check_database(&db, cfg, &mut report).await;
            db.close().await;
            pools
        }
    };

    check_vcenters(&cfg.vcenters, &pools, &mut report).await;
    Ok(report.passed())
}

/// The API's certificate: readable, fits its key, and when it expires.
fn check_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
    now: chrono::DateTime<chrono::Utc>,
    report: &mut Report,
) {
    let identity = match crate::tls::read_identity(cert, key) {
        Ok(i) => i,
        Err(e) => return report.fail("tls", format!("{e:#}")),
    };
    let validity = crate::tls::validity(&identity.chain[0]);
    if let Err(e) = crate::tls::server_config(identity) {
        return report.fail("tls", format!("{e:#}"));
    }
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%SZ").to_string();
    match validity {
        Err(e) => report.fail("tls", format!("{}: {e:#}", cert.display())),
        Ok((from, _)) if now < from => report.fail(
            "tls",
            format!(
                "{}: not valid before {}: check the clock or the certificate",
                cert.display(),
                fmt(from)
            ),
        ),
        Ok((_, until)) if until <= now => report.fail(
            "tls",
            format!(
                "{}: expired {}: renew it (http.tls_cert_file)",
                cert.display(),
                fmt(until)
            ),
        ),
        Ok((_, until)) => report.ok(
            "tls",
            format!(
                "certificate {} expires {} (in {} days)",
                cert.display(),
                fmt(until),
                (until - now).num_days()
            ),
        ),
    }
}

/// Checks the schema is current and every pool names a configured vCenter; returns the pools.
async fn check_database(db: &PgPool, cfg: &Config, report: &mut Report) -> Vec<PoolSpec> {
    let mut conn = match db.acquire().await {
        Ok(c) => c,
        Err(e) => {
            report.fail("migrations", format!("cannot read: {e}"));
            return Vec::new();
        }
    };
    // `list_applied_migrations` fails when the bookkeeping table does not exist yet.
    let applied = match conn.list_applied_migrations().await {
        Ok(a) => a,
        Err(_) => {
            report.fail(
                "migrations",
                "database has no deskpool schema: run `deskpool migrate`",
            );
            return Vec::new();
        }
    };
    let mut problems = Vec::new();
    let mut pending = 0;
    for m in deskpool_store::MIGRATOR.iter() {
        match applied.iter().find(|a| a.version == m.version) {
            None => pending += 1,
            Some(a) if a.checksum != m.checksum => problems.push(format!(
                "migration {} ({}) was changed after it was applied",
                m.version, m.description
            )),
            Some(_) => {}
        }
    }
    let known: HashSet<i64> = deskpool_store::MIGRATOR.iter().map(|m| m.version).collect();
    if let Some(a) = applied.iter().find(|a| !known.contains(&a.version)) {
        problems.push(format!(
            "migration {} is applied but unknown to this build (is this deskpool older than the database?)",
            a.version
        ));
    }
    if !problems.is_empty() {
        report.fail("migrations", problems.join("; "));
    } else if pending > 0 {
        report.fail(
            "migrations",
            format!("{pending} pending: run `deskpool migrate` (serve also applies them)"),
        );
    } else {
        report.ok(
            "migrations",
            format!("{} applied, none pending", applied.len()),
        );
    }
    if pending > 0 || !problems.is_empty() {
        return Vec::new();
    }
    match deskpool_store::installation::id(&mut conn).await {
        Ok(id) => report.ok(
            "installation",
            format!("{id} (marks every VM this installation makes)"),
        ),
        Err(e) => report.fail("installation", e.to_string()),
    }

    let pools = match deskpool_store::pools::list(&mut conn).await {
        Ok(p) => p,
        Err(e) => {
            report.fail("pools", format!("cannot list: {e}"));
            return Vec::new();
        }
    };
    let configured: HashSet<&str> = cfg.vcenters.iter().map(|v| v.name.as_str()).collect();
    let mut all_known = true;
    for p in &pools {
        if !configured.contains(p.spec.vcenter.as_str()) {
            all_known = false;
            report.fail(
                &format!("pool '{}'", p.spec.name),
                format!(
                    "vcenter '{}' is not configured (add a [[vcenters]] entry named '{}')",
                    p.spec.vcenter, p.spec.vcenter
                ),
            );
        }
    }
    if all_known {
        report.ok(
            "pools",
            format!("{} defined, each names a configured vCenter", pools.len()),
        );
    }
    match deskpool_store::pools::image_counts_all(&mut conn).await {
        Ok(images) => {
            let mut spread = false;
            for p in &pools {
                let on = images.get(&p.id).map_or(&[][..], Vec::as_slice);
                if on.len() > 2 {
                    spread = true;
                    let list: Vec<String> = on
                        .iter()
                        .map(|(m, n)| format!("{} on {}", n, m.as_deref().unwrap_or("unrecorded")))
                        .collect();
                    report.fail(
                        &format!("pool '{}'", p.spec.name),
                        format!(
                            "its desktops span {} images ({}): let the rollout to {} finish (POST /api/v1/pools/{}/image/resume if it stopped) before pushing another",
                            on.len(),
                            list.join(", "),
                            p.snapshot_moref.as_deref().unwrap_or("its image"),
                            p.spec.name
                        ),
                    );
                }
            }
            if !spread {
                report.ok("images", "no pool's desktops span more than two images");
            }
        }
        Err(e) => report.fail("images", format!("cannot count desktops per image: {e}")),
    }
    pools.into_iter().map(|p| p.spec).collect()
}

/// Connects to every configured vCenter and, for every pool on it, resolves the golden VM,
/// snapshot, folder, resource pool, datastore and customization spec, as the reconciler
/// would before cloning.
async fn check_vcenters(vcenters: &[VcenterConfig], pools: &[PoolSpec], report: &mut Report) {
    if vcenters.is_empty() {
        report.ok("vCenter checks", "no vCenters configured");
        return;
    }
    for vc in vcenters {
        let what = format!("vcenter '{}'", vc.name);
        let client = match deskpool_vsphere::Client::connect(vc.client_options()).await {
            Ok(c) => c,
            Err(e) => {
                report.fail(&what, format!("{}: {e}", vc.url));
                for p in pools.iter().filter(|p| p.vcenter == vc.name) {
                    report.fail(
                        &format!("pool '{}'", p.name),
                        format!("not checked: vCenter '{}' is unreachable", vc.name),
                    );
                }
                continue;
            }
        };
        let about = client.about();
        report.ok(
            &what,
            format!(
                "logged in to {} ({}) as {}",
                vc.url, about.full_name, vc.username
            ),
        );
        for p in pools.iter().filter(|p| p.vcenter == vc.name) {
            let label = format!("pool '{}'", p.name);
            match deskpool_reconciler::check_pool(&client, p).await {
                Ok(found) => report.ok(&label, found),
                Err(problem) => report.fail(&label, problem),
            }
        }
        if let Err(e) = client.logout().await {
            tracing::debug!(vcenter = %vc.name, error = %e, "logout failed");
        }
    }
}
