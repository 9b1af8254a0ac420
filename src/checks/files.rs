//! The checks of what lives beside the host: monitoring configuration,
//! alert receivers' secret files, a playbook for every alert, and backups.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::report::{can_write, nearest_existing, Check};
use crate::config::Config;

/// Prometheus's and Alertmanager's files, checked by their own tools when
/// they are installed.
pub fn monitoring(dir: &Path) -> Check {
    let prometheus = dir.join("prometheus/prometheus.yml");
    let alertmanager = dir.join("alertmanager/alertmanager.yml");
    let missing: Vec<String> = [&prometheus, &alertmanager]
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Check::warn(
            "monitoring",
            format!(
                "not found: {} (the repository's monitoring/, or pass --monitoring DIR)",
                missing.join(", ")
            ),
        );
    }
    let mut checked = Vec::new();
    for (tool, args, file) in [
        ("promtool", vec!["check", "config"], &prometheus),
        ("amtool", vec!["check-config"], &alertmanager),
    ] {
        let out = match Command::new(tool).args(&args).arg(file).output() {
            Ok(out) => out,
            Err(_) => continue, // not installed: present is all we can say
        };
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = if said.trim().is_empty() {
                String::from_utf8_lossy(&out.stdout).into_owned()
            } else {
                said.into_owned()
            };
            return Check::fail(
                "monitoring",
                format!(
                    "{tool} rejects {}: {}",
                    file.display(),
                    said.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("")
                ),
            );
        }
        checked.push(tool);
    }
    if checked.is_empty() {
        Check::pass(
            "monitoring",
            "present (promtool and amtool are not installed to check them)",
        )
    } else {
        Check::pass("monitoring", format!("valid ({})", checked.join(", ")))
    }
}

/// The files Alertmanager reads its receivers' secrets from
/// (`*_file: PATH` in alertmanager.yml) exist and only their owner can
/// read them.
pub fn alert_receivers(dir: &Path) -> Check {
    let config = dir.join("alertmanager/alertmanager.yml");
    let Ok(text) = std::fs::read_to_string(&config) else {
        return Check::warn(
            "alert_receivers",
            format!("{} not found: alerts reach nobody", config.display()),
        );
    };
    let files = secret_files(&text);
    if files.is_empty() {
        return Check::warn(
            "alert_receivers",
            "no receiver reads a secret file (`*_file:`): are Slack and PagerDuty configured?",
        );
    }
    let mut problems = Vec::new();
    for (key, file) in &files {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(file) {
            Err(e) => problems.push(format!("{key}: {}: {e}", file.display())),
            Ok(m) if m.permissions().mode() & 0o004 != 0 => problems.push(format!(
                "{key}: {} is world-readable: `chmod 600` it",
                file.display()
            )),
            Ok(m) if m.len() == 0 => problems.push(format!("{key}: {} is empty", file.display())),
            Ok(_) => {}
        }
    }
    if problems.is_empty() {
        Check::pass(
            "alert_receivers",
            format!("{} secret file(s) present, not world-readable", files.len()),
        )
    } else {
        Check::fail("alert_receivers", problems.join("; "))
    }
}

/// `key_file: PATH` lines of an Alertmanager configuration.
pub fn secret_files(yaml: &str) -> Vec<(String, PathBuf)> {
    yaml.lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches("- ");
            let (key, value) = line.split_once(':')?;
            let value = value.trim().trim_matches(['"', '\'']);
            (key.ends_with("_file") && !value.is_empty() && !key.starts_with('#'))
                .then(|| (key.to_owned(), PathBuf::from(value)))
        })
        .collect()
}

/// Every alert's `runbook_url: playbooks/NAME.md` names a file in
/// `playbooks`.
pub fn playbooks(monitoring: &Path, playbooks: &Path) -> Check {
    let rules = monitoring.join("prometheus/rules/alerts.yml");
    let Ok(text) = std::fs::read_to_string(&rules) else {
        return Check::warn("playbooks", format!("{} not found", rules.display()));
    };
    let named = runbooks(&text);
    let missing: Vec<String> = named
        .iter()
        .filter(|name| !playbooks.join(name).is_file())
        .map(|name| playbooks.join(name).display().to_string())
        .collect();
    if missing.is_empty() {
        Check::pass(
            "playbooks",
            format!("every alert's runbook exists ({} playbooks)", named.len()),
        )
    } else {
        Check::fail(
            "playbooks",
            format!("alerts point at missing playbooks: {}", missing.join(", ")),
        )
    }
}

/// The distinct playbook file names `runbook_url`s point at.
pub fn runbooks(alerts_yaml: &str) -> Vec<String> {
    let mut names: Vec<String> = alerts_yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url:"))
        .map(|url| url.trim().trim_matches(['"', '\'']))
        .map(|url| url.rsplit('/').next().unwrap_or(url).to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Backups are scheduled, their directory is writable, and the newest is
/// younger than two hours and matches its manifest.
pub fn backups(config: &Config, now: chrono::DateTime<chrono::Utc>) -> Check {
    let dir = &config.backup.dir;
    let scheduled = match config.backup_schedule() {
        Ok(Some(cron)) => crate::schedule::next_times(&cron, 1)
            .first()
            .map(|t| t.format("%H:%M").to_string()),
        _ => None,
    };
    let writable_at = nearest_existing(dir);
    if !can_write(writable_at) {
        return Check::fail(
            "backups",
            format!(
                "backup.dir {}: {} is not writable",
                dir.display(),
                writable_at.display()
            ),
        );
    }
    let newest = match crate::backup::list(dir) {
        Ok(list) => list.into_iter().next(),
        Err(e) => return Check::fail("backups", e.to_string()),
    };
    let Some(newest) = newest else {
        let when = scheduled.map_or_else(
            || "backup.schedule is off".to_owned(),
            |t| format!("the schedule's next is at {t}"),
        );
        return Check::warn(
            "backups",
            format!(
                "no backup in {} yet: run `bothost backup` now ({when})",
                dir.display()
            ),
        );
    };
    let manifest = match crate::backup::verify(&newest) {
        Ok(m) => m,
        Err(e) => {
            return Check::fail(
                "backups",
                format!("the newest backup fails verification: {e}"),
            )
        }
    };
    let age = chrono::DateTime::parse_from_rfc3339(&manifest.created_at)
        .map(|t| now.signed_duration_since(t).num_minutes())
        .unwrap_or(i64::MAX);
    if age > 120 {
        return Check::fail(
            "backups",
            format!(
                "the newest backup ({}) is {} h old: backups have stopped (`bothost backup`, \
                 and see the log for \"backup failed\")",
                newest.display(),
                age / 60
            ),
        );
    }
    let base = format!(
        "newest {age} min old, verified ({} messages)",
        manifest.rows.messages
    );
    match scheduled {
        Some(_) => Check::pass("backups", base),
        None => Check::warn(
            "backups",
            format!("{base}, but backup.schedule is off: nothing makes the next one"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_and_runbooks_are_read_from_the_yaml() {
        let am = "global:\n  slack_api_url_file: /s/slack\nreceivers:\n  - name: p\n    pagerduty_configs:\n      - routing_key_file: '/s/pd'\n";
        let files = secret_files(am);
        assert_eq!(
            files,
            [
                ("slack_api_url_file".to_owned(), PathBuf::from("/s/slack")),
                ("routing_key_file".to_owned(), PathBuf::from("/s/pd")),
            ]
        );
        let alerts = "  runbook_url: playbooks/a.md\n  runbook_url: \"playbooks/b.md\"\n  runbook_url: playbooks/a.md\n";
        assert_eq!(runbooks(alerts), ["a.md", "b.md"]);
    }
}
