//! Backups and restores, end to end with the real host and the real CLI, on
//! both backends: the restore drill (back up while users chat, restore into
//! a fresh database, start a host on it), the refusals that keep a restore
//! from destroying anything, and the host's own backup schedule.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bothost_testkit::PgDatabase;
use common::web::{login, register, ApiUser};
use common::*;
use serde_json::{json, Value};

fn config(database_url: &str, backup: &str) -> String {
    format!(
        "{FAST_SUPERVISOR}\n[database]\nurl = \"{database_url}\"\n\n[backup]\n{backup}\n{}",
        bots(&["echo"])
    )
}

/// Sends `content` and waits for the whole reply.
fn turn(user: &ApiUser, conv: i64, content: &str) -> Value {
    let res = user.post(
        &format!("/api/v1/conversations/{conv}/messages"),
        json!({"client_msg_id": content, "content": content}),
    );
    assert_eq!(res.status(), 200, "{content}");
    res.json().expect("json")
}

/// A conversation's messages, oldest first.
fn oldest_first(user: &ApiUser, conv: i64) -> Vec<Value> {
    let mut history = user.history(conv);
    history.sort_by_key(|m| m["id"].as_i64());
    history
}

/// The last line of a command's stdout.
fn last_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

fn run(config: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BOTHOST)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run bothost")
}

/// Chat N turns; back up while another user keeps chatting; chat M more;
/// restore into a fresh database; start a host on it. Exactly what was
/// stored before the backup is there, nothing after it, and no reply is
/// half-written.
fn drill(source_url: &str, restore_url: &str) {
    let host = TestHost::start_with_config(&config(source_url, "schedule = \"off\""));
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("echo");
    for i in 0..5 {
        turn(&alice, conv, &format!("before {i}"));
    }
    // Chatting goes on while the backup runs.
    let bob = register(&host.url, "bob");
    let bob_conv = bob.conversation("echo");
    let stop = Arc::new(AtomicBool::new(false));
    let chatter = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) && sent < 20 {
                turn(&bob, bob_conv, &format!("during {sent}"));
                sent += 1;
            }
            sent
        })
    };
    let out = host.cli(&["backup"]);
    stop.store(true, Ordering::Relaxed);
    let during = chatter.join().expect("chatter");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup = PathBuf::from(last_line(&out));
    assert!(backup.is_file(), "{backup:?}");
    for i in 0..3 {
        turn(&alice, conv, &format!("after {i}"));
    }
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(bothost::backup::manifest_of(&backup)).unwrap())
            .unwrap();
    assert_eq!(manifest["rows"]["users"], 2, "{manifest}");
    assert!(manifest["rows"]["messages"].as_i64().unwrap() >= 10);
    assert_eq!(manifest["sha256"].as_str().unwrap().len(), 64);

    // A restore while this host serves its database is refused.
    let out = host.cli(&["restore", backup.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a host is serving"), "{err}");

    // Into a fresh database, with a configuration of its own.
    let dir = tempfile::tempdir().unwrap();
    let restored_config = config(restore_url, "schedule = \"off\"");
    let config_path = dir.path().join("supervisor.toml");
    std::fs::write(&config_path, &restored_config).unwrap();
    let out = run(&config_path, &["restore", backup.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("restored 2 users"), "{stdout}");
    // A second restore over it is refused: it holds data now.
    let out = run(&config_path, &["restore", backup.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--force"), "{err}");

    let restored = TestHost::start_with_config(&restored_config);
    let alice = login(&restored.url, "alice").expect("alice logs in on the restored host");
    let history = oldest_first(&alice, conv);
    let texts: Vec<&str> = history
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        (0..5).map(|i| format!("before {i}")).collect::<Vec<_>>(),
        "exactly the turns before the backup"
    );
    for reply in history.iter().filter(|m| m["role"] == "assistant") {
        assert_eq!(reply["status"], "complete", "{reply}");
    }
    // Bob's turns during the backup: his user messages are a prefix of what
    // he sent; every reply is complete, but for the one streaming at the
    // backup's instant, which is kept `partial` with what was shown by then.
    let bob = login(&restored.url, "bob").expect("bob logs in");
    let bob_history = oldest_first(&bob, bob_conv);
    let bob_sent: Vec<&str> = bob_history
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert!(bob_sent.len() <= during, "{bob_sent:?}");
    for (i, text) in bob_sent.iter().enumerate() {
        assert_eq!(*text, format!("during {i}"));
    }
    let bob_replies: Vec<&Value> = bob_history
        .iter()
        .filter(|m| m["role"] == "assistant")
        .collect();
    if let Some((last, earlier)) = bob_replies.split_last() {
        for reply in earlier {
            assert_eq!(reply["status"], "complete", "{reply}");
        }
        assert!(
            matches!(last["status"].as_str(), Some("complete" | "partial")),
            "{last}"
        );
    }
    let total = history.len() + bob_history.len();
    assert_eq!(
        i64::try_from(total).unwrap(),
        manifest["rows"]["messages"].as_i64().unwrap(),
        "the manifest counts what was restored"
    );
    // The restored host takes new turns.
    let reply = turn(&alice, conv, "after the restore");
    assert_eq!(reply["reply"]["status"], "complete", "{reply}");
}

#[test]
fn sqlite_restore_drill() {
    let dir = tempfile::tempdir().unwrap();
    let source = format!("sqlite://{}", dir.path().join("live.db").display());
    let restore = format!(
        "sqlite://{}",
        dir.path().join("restored/bothost.db").display()
    );
    drill(&source, &restore);
}

#[test]
fn postgres_restore_drill() {
    let Some(base) = bothost_testkit::test_database_url() else {
        return;
    };
    let rt = runtime();
    let source = rt.block_on(PgDatabase::create(&base, "drill_src")).unwrap();
    let target = rt.block_on(PgDatabase::create(&base, "drill_dst")).unwrap();
    drill(&source.url, &target.url);
    rt.block_on(async {
        let _ = source.drop_database().await;
        let _ = target.drop_database().await;
    });
}

#[test]
fn a_damaged_backup_is_refused_before_anything_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let host = TestHost::start_with_config(&config(
        &format!("sqlite://{}", db.display()),
        "schedule = \"off\"",
    ));
    register(&host.url, "alice");
    let out = host.cli(&["backup", "--to", dir.path().join("b").to_str().unwrap()]);
    assert!(out.status.success());
    let backup = PathBuf::from(last_line(&out));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a backup is readable by its owner only");
    let mut bytes = std::fs::read(&backup).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&backup, bytes).unwrap();

    let target = dir.path().join("restored.db");
    let config_path = dir.path().join("restore.toml");
    std::fs::write(
        &config_path,
        config(&format!("sqlite://{}", target.display()), ""),
    )
    .unwrap();
    let out = run(&config_path, &["restore", backup.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged"), "{err}");
    assert!(!target.exists(), "nothing was written");
}

#[test]
fn the_host_backs_up_on_schedule_keeps_the_newest_and_survives_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let host = TestHost::start_with_config(&config(
        &format!("sqlite://{}", dir.path().join("live.db").display()),
        &format!(
            "schedule = \"* * * * * *\"\nkeep = 2\ndir = \"{}\"",
            backups.display()
        ),
    ));
    register(&host.url, "alice");
    host.wait_for("three scheduled backups", Duration::from_secs(15), || {
        let log = host.log();
        (log.matches("backup written").count() >= 3).then_some(())
    });
    assert!(host
        .metric("bothost_backup_last_success_timestamp_seconds")
        .is_some_and(|t| t > 1.7e9));
    assert!(host
        .metric("bothost_backup_size_bytes")
        .is_some_and(|b| b > 0.0));
    host.wait_for("old backups deleted", Duration::from_secs(5), || {
        let kept = bothost::backup::list(&backups).unwrap();
        (kept.len() == 2).then_some(())
    });
    for kept in bothost::backup::list(&backups).unwrap() {
        let manifest = bothost::backup::verify(&kept).expect("verifiable");
        assert_eq!(manifest.rows.users, 1);
    }

    // The backup directory becomes a file: backups fail, the host serves on.
    std::fs::remove_dir_all(&backups).unwrap();
    std::fs::write(&backups, "not a directory").unwrap();
    host.wait_for("a failed backup counted", Duration::from_secs(10), || {
        host.metric("bothost_backup_failures_total")
            .filter(|&n| n >= 1.0)
    });
    assert!(host.log().contains("backup failed"));
    let (status, _) = host.http_get("/healthz");
    assert_eq!(status, 200);
}
