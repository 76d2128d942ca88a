//! The files in deploy/ as an operator installs them: the systemd unit must load without a
//! single warning (`systemd-analyze verify`, from Debian's systemd package).

use std::path::Path;
use std::process::Command;

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn systemd_unit_verifies_cleanly() {
    let unit = repo_file("deploy/deskpool.service");
    // verify checks that ExecStart's binary exists and is executable: point it at the one
    // cargo built, at the path the unit expects it (a symlink of that name in a scratch dir).
    let dir = tempfile::tempdir().unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    let installed = exec.split_whitespace().next().unwrap();
    assert_eq!(
        installed, "/usr/local/bin/deskpool",
        "README's install path"
    );
    let unit = unit.replace(installed, env!("CARGO_BIN_EXE_deskpool"));
    let path = dir.path().join("deskpool.service");
    std::fs::write(&path, &unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Unknown keys and unparsable values are only warnings to systemd, but a hardening line
    // it ignores is a hardening line that does nothing.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );
}

#[test]
fn systemd_unit_does_not_restart_on_a_config_error() {
    let unit = repo_file("deploy/deskpool.service");
    let service: Vec<&str> = unit
        .lines()
        .skip_while(|l| l.trim() != "[Service]")
        .take_while(|l| !l.starts_with("[Install]"))
        .collect();
    assert!(service.contains(&"Restart=on-failure"), "{service:?}");
    // deskpool exits 2 on a usage or config error (main.rs): a restart loop cannot fix it.
    assert!(
        service.contains(&"RestartPreventExitStatus=2"),
        "the unit must not restart forever on a config error"
    );
}
