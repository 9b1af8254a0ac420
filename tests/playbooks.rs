//! The playbooks' commands work: every block fenced `sh runnable` in
//! `playbooks/*.md` is run, in order, one script per playbook, against a
//! real host on SQLite and one on PostgreSQL (`sh runnable sqlite` /
//! `sh runnable postgres` on that backend only), with the environment the
//! playbooks' README promises (`BOTHOST_CONFIG`, `BOTHOST_URL`,
//! `DATABASE_URL`, `bothost` on the `PATH`). Also: every alert's runbook
//! exists, and each playbook has the sections an operator looks for.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bothost_testkit::PgDatabase;
use common::fake::FakeServer;
use common::*;

fn playbooks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks")
}

/// (file name, markdown) of every playbook.
fn playbooks() -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = std::fs::read_dir(playbooks_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter(|p| p.file_name().is_some_and(|n| n != "README.md"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    all.sort();
    all
}

/// The code of each fenced block whose info string is `sh runnable` or
/// `sh runnable BACKEND` for this `backend`.
fn runnable_blocks(markdown: &str, backend: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<(bool, String)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        match (&mut current, trimmed.strip_prefix("```")) {
            (None, Some(info)) => {
                let words: Vec<&str> = info.split_whitespace().collect();
                let runs = match words.as_slice() {
                    ["sh", "runnable"] => true,
                    ["sh", "runnable", only] => *only == backend,
                    _ => false,
                };
                current = Some((runs, String::new()));
            }
            (Some(_), Some(_)) => {
                if let Some((true, code)) = current.take() {
                    blocks.push(code);
                }
            }
            (Some((_, code)), None) => {
                code.push_str(trimmed);
                code.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(current.is_none(), "an unclosed code fence");
    blocks
}

#[test]
fn runnable_blocks_are_found_by_backend() {
    let md =
        "text\n```sh runnable\na\n```\n```sh\nb\n```\n   ```sh runnable postgres\n   c\n   ```\n";
    assert_eq!(runnable_blocks(md, "sqlite"), ["a\n"]);
    assert_eq!(runnable_blocks(md, "postgres"), ["a\n", "c\n"]);
}

#[test]
fn every_alert_has_its_playbook_and_every_playbook_its_sections() {
    let alerts = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/prometheus/rules/alerts.yml"),
    )
    .unwrap();
    let names: Vec<String> = playbooks().into_iter().map(|(n, _)| n).collect();
    for runbook in bothost::checks::runbooks(&alerts) {
        assert!(names.contains(&runbook), "no playbook {runbook}");
    }
    // The seed's five, and the procedures.
    for name in [
        "memory-leak.md",
        "pool-exhaustion.md",
        "inference-outage.md",
        "websocket-drops.md",
        "replication-failover.md",
        "deploy.md",
        "rollback.md",
        "backup-and-restore.md",
        "certificate-renewal.md",
    ] {
        assert!(names.contains(&name.to_owned()), "no playbook {name}");
    }
    for (name, md) in playbooks() {
        let has = |heading: &str| md.lines().any(|l| l.trim() == heading);
        let incident = has("## Symptoms") && has("## Diagnosis") && has("## Fix");
        let procedure = has("## Steps") || has("## Restore");
        assert!(
            incident || procedure,
            "{name}: symptoms/diagnosis/fix, or steps"
        );
        assert!(has("## Verify"), "{name}: no Verify section");
        assert!(has("## Escalation"), "{name}: no Escalation section");
        assert!(
            !runnable_blocks(&md, "sqlite").is_empty()
                || !runnable_blocks(&md, "postgres").is_empty(),
            "{name}: no runnable command"
        );
    }
}

/// Runs every playbook's runnable blocks against `host`.
fn run_playbooks(host: &TestHost, backend: &str, database_url: Option<&str>) {
    let bin = bothost_testkit::binary_dir().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    for (name, md) in playbooks() {
        let blocks = runnable_blocks(&md, backend);
        if blocks.is_empty() {
            continue;
        }
        let script: String = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| format!("echo '--- {name} block {}'\n{b}", i + 1))
            .collect();
        let mut command = std::process::Command::new("bash");
        command
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(host.dir.path())
            .env("PATH", &path)
            .env("BOTHOST_CONFIG", &host.config)
            .env("BOTHOST_URL", &host.url)
            .env_remove("RUST_LOG")
            .env_remove("BOTHOST_DATABASE_URL");
        if let Some(url) = database_url {
            command.env("DATABASE_URL", url);
        }
        let out = command.output().expect("bash");
        assert!(
            out.status.success(),
            "{name} on {backend}: {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += blocks.len();
    }
    assert!(ran >= 20, "{ran} blocks ran on {backend}");
}

/// A host with built-in bots and one on a (fake) Ollama server, as the
/// playbooks' examples name them.
fn host_config(fake: &FakeServer, database: &str) -> String {
    format!(
        "{FAST_SUPERVISOR}\n[auth]\njwt_secret = \"q8Zr1pX0vN4mK7tL2sB9wY6cH3jD5fG0aE1\"\n\
         [database]\nurl = \"{database}\"\n\n\
         [[inference]]\nname = \"primary\"\nurl = \"{}\"\n\
         {}[[bots]]\nname = \"llama\"\nengine = \"ollama\"\nmodel = \"llama3.2\"\n",
        fake.url,
        bots(&["helper", "support"])
    )
}

fn wait_ready(host: &TestHost) {
    host.wait_for("every bot ready", Duration::from_secs(20), || {
        host.status()
            .bots
            .iter()
            .all(|b| b.state == bothost::status::BotState::Ready)
            .then_some(())
    });
}

#[test]
fn every_runnable_command_works_on_sqlite() {
    let fake = FakeServer::start("primary", &[]);
    let host = TestHost::start_with_config(&host_config(&fake, "sqlite://data/bothost.db"));
    wait_ready(&host);
    run_playbooks(&host, "sqlite", None);
}

#[test]
fn every_runnable_command_works_on_postgres() {
    let Some(base) = bothost_testkit::test_database_url() else {
        return;
    };
    let rt = runtime();
    let db = rt.block_on(PgDatabase::create(&base, "playbook")).unwrap();
    let fake = FakeServer::start("primary", &[]);
    let host = TestHost::start_with_config(&host_config(&fake, &db.url));
    wait_ready(&host);
    run_playbooks(&host, "postgres", Some(&db.url));
    drop(host);
    rt.block_on(db.drop_database()).unwrap();
}
