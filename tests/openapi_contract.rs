//! The served OpenAPI document is the contract: Schemathesis, an outside
//! property-based tester, drives a real host from it (every check, the
//! links between operations, signed in as a user and as an admin) and finds
//! nothing.
//!
//! Schemathesis comes from PyPI, pinned, in a throwaway virtual environment
//! that `.ci/run` makes at `target/schemathesis/`. Without it this test
//! skips with a message, except under `CI=true`, where it fails.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::web::client;
use common::{TestHost, FAST_SUPERVISOR};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";

fn schemathesis() -> Option<PathBuf> {
    let st = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis/bin/st");
    if st.is_file() {
        return Some(st);
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "CI=true but Schemathesis is not installed at {} (.ci/run installs it)",
        st.display()
    );
    eprintln!(
        "Schemathesis is not installed at {}: skipping",
        st.display()
    );
    None
}

/// How many operations the document describes.
fn operations() -> usize {
    let doc: Value = serde_json::from_str(include_str!("../web/openapi.json")).expect("JSON");
    doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|ops| ops.as_object().map_or(0, |o| o.len()))
        .sum()
}

fn login(host: &TestHost, name: &str) -> String {
    let res: Value = client()
        .post(format!("{}/api/v1/auth/login", host.url))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .expect("login")
        .json()
        .expect("JSON");
    res["token"].as_str().expect("a token").to_owned()
}

/// Runs Schemathesis against the host as the holder of `token`; panics with
/// its report unless it finds nothing.
fn fuzz(st: &Path, host: &TestHost, token: &str, who: &str) {
    let out = Command::new(st)
        .arg("--config-file")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", host.url))
        .args([
            "--checks",
            "all",
            "--seed",
            "20261125",
            "--max-examples",
            "25",
        ])
        .args(["--phases", "coverage,fuzzing,stateful", "--no-color"])
        // No example database: every run starts from the seed alone; and
        // its caches go to the host's temp dir, not into the checkout.
        .args(["--generation-database", "none"])
        .current_dir(host.dir.path())
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Schemathesis, signed in as {who}, found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every operation was tested (but the document itself, which
    // Schemathesis leaves out, and logout, logout-all and account deletion, which schemathesis.toml
    // turns off), through the links where they lead.
    let tested = format!("Tested: {}", operations() - 4);
    assert!(report.contains(&tested), "expected {tested}:\n{report}");
    assert!(!report.contains("failure"), "{report}");
}

#[test]
fn schemathesis_finds_nothing_as_a_user_or_as_an_admin() {
    let Some(st) = schemathesis() else {
        return;
    };
    // Limits high enough that the run is not throttled (429 would be a
    // right answer, but it would hide the rest).
    let host = TestHost::start_with_config(&format!(
        "{FAST_SUPERVISOR}
[limits]
messages_per_minute_per_user = 100000
messages_per_minute_per_ip = 100000
logins_per_minute_per_ip = 100000
conversations_per_minute_per_user = 100000
[[bots]]
name = \"helper\"
[bots.builtin]
token_delay = \"0s\"
"
    ));
    let mut add = Command::new(common::BOTHOST)
        .arg("--config")
        .arg(&host.config)
        .args(["user", "add", "boss", "--admin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bothost user add");
    writeln!(add.stdin.take().expect("stdin"), "{PASSWORD}").expect("password");
    let added = add.wait_with_output().expect("user add");
    assert!(
        added.status.success(),
        "bothost user add: {}{}",
        String::from_utf8_lossy(&added.stdout),
        String::from_utf8_lossy(&added.stderr)
    );
    let registered = client()
        .post(format!("{}/api/v1/auth/register", host.url))
        .json(&json!({"username": "tester", "password": PASSWORD}))
        .send()
        .expect("register");
    assert_eq!(registered.status(), 201);

    fuzz(&st, &host, &login(&host, "tester"), "a user");
    fuzz(&st, &host, &login(&host, "boss"), "an admin");
}
