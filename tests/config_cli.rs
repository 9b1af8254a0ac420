//! Invalid configuration is refused by the real binary before anything
//! starts, naming the file, the key and the reason.

mod common;

use std::process::Command;

use common::{BOTHOST, FAST_SUPERVISOR};

fn serve_with(config_text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config_text).unwrap();
    let out = Command::new(BOTHOST)
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains(&path.display().to_string()),
        "the error names the file: {err}"
    );
    assert!(!dir.path().join("run").exists(), "nothing started: {err}");
    (out.status.success(), err)
}

#[test]
fn invalid_files_are_refused_with_file_key_and_reason() {
    let bot = "[[bots]]\nname = \"a\"\n";
    let cases = [
        (
            format!("{FAST_SUPERVISOR}\n[[bots]]\nname = \"a\"\ncolour = \"blue\"\n"),
            "bots[0].colour: unknown field `colour`",
        ),
        (
            format!("{FAST_SUPERVISOR}\n{bot}{bot}"),
            "bots[1].name: duplicate bot name 'a'",
        ),
        (
            FAST_SUPERVISOR.replace("sample_interval = \"250ms\"", "sample_interval = \"soon\"")
                + bot,
            "supervisor.sample_interval: ",
        ),
        (
            format!("{FAST_SUPERVISOR}\n{bot}memory_budget = \"huge\"\n"),
            "bots[0].memory_budget: ",
        ),
        (
            FAST_SUPERVISOR.replace("crash_limit = 3", "crash_limit = 0") + bot,
            "supervisor.crash_limit: must be at least 1",
        ),
        (
            FAST_SUPERVISOR.replace("bind = \"127.0.0.1:0\"", "bind = \"localhost\"") + bot,
            "server.bind: ",
        ),
        ("[[bots]\n".to_owned(), "line 1"),
    ];
    for (text, expected) in cases {
        let (ok, err) = serve_with(&text);
        assert!(!ok, "{expected}");
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let out = Command::new(BOTHOST)
        .args(["--config", "/nonexistent/supervisor.toml", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/supervisor.toml: cannot read the configuration"),
        "{err}"
    );
}

#[test]
fn migrate_applies_once_then_reports_the_schema_current() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("supervisor.toml");
    std::fs::write(
        &config,
        format!("{FAST_SUPERVISOR}\n[[bots]]\nname = \"a\"\n"),
    )
    .unwrap();
    let migrate = || {
        let out = Command::new(BOTHOST)
            .arg("--config")
            .arg(&config)
            .arg("migrate")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        migrate().starts_with("applied "),
        "first run applies the schema"
    );
    assert_eq!(migrate(), "the database schema is current\n");
    assert!(
        dir.path().join("data/bothost.db").exists(),
        "created next to the config"
    );
}
