//! The shipped systemd units (service, and the optional socket) are ones
//! systemd accepts, hardened as the deploy
//! playbook promises: `systemd-analyze verify` passes on it (with the
//! binary path pointed at this build), its offline security exposure stays
//! low, and a broken unit is caught by the same check.

use std::path::Path;
use std::process::Command;

const BOTHOST: &str = env!("CARGO_BIN_EXE_bothost");

fn unit_text() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/bothost.service"),
    )
    .unwrap()
    .replace("/usr/local/bin/bothost", BOTHOST)
}

/// `systemd-analyze ARGS unit` on `text`: (success, stdout + stderr).
fn analyze(args: &[&str], text: &str) -> Option<(bool, String)> {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("bothost.service");
    std::fs::write(&unit, text).unwrap();
    let out = match Command::new("systemd-analyze")
        .args(args)
        .arg(&unit)
        .output()
    {
        Ok(out) => out,
        Err(_) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("systemd-analyze is not installed: skipping");
            return None;
        }
        Err(e) => panic!("CI=true but systemd-analyze cannot run: {e}"),
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), said))
}

#[test]
fn systemd_accepts_the_unit_and_rejects_a_broken_one() {
    let Some((ok, said)) = analyze(&["verify"], &unit_text()) else {
        return;
    };
    assert!(ok && said.trim().is_empty(), "{said}");
    let (ok, said) = analyze(
        &["verify"],
        &unit_text().replace("KillMode=mixed", "KillMode=mixd"),
    )
    .unwrap();
    assert!(
        !(ok && said.trim().is_empty()),
        "the check above would pass a typo"
    );
}

#[test]
fn the_unit_is_hardened_and_drains_before_it_kills() {
    let text = unit_text();
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "KillMode=mixed",
        "LimitNOFILE=65536",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}");
    }
    let Some((ok, said)) = analyze(&["security", "--offline=yes"], &text) else {
        return;
    };
    assert!(ok, "{said}");
    let level: f64 = said
        .lines()
        .find_map(|l| l.split("exposure level for bothost.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {said}"));
    assert!(level <= 4.0, "exposure {level}: {said}");
}
