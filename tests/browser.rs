//! The web page in a real browser: Debian's Chromium driven by
//! playwright-core (`tests/browser/chat.mjs`, installed by `.ci/run`).
//! Without Chromium or the npm packages the test skips with a message,
//! except under CI, where it must run. Screenshots land in
//! `target/browser-screenshots/`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn a_user_chats_survives_a_dropped_connection_and_sees_nothing_twice() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script_dir = root.join("tests/browser");
    let missing = [
        (Path::new("/usr/bin/chromium").exists(), "/usr/bin/chromium"),
        (
            script_dir.join("node_modules/playwright-core").exists(),
            "tests/browser/node_modules (npm ci --prefix tests/browser)",
        ),
        (
            Command::new("node").arg("--version").output().is_ok(),
            "node",
        ),
    ];
    if let Some((_, what)) = missing.iter().find(|(ok, _)| !ok) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but {what} is missing: .ci/run installs it");
        }
        eprintln!("skipping the browser test: {what} is missing");
        return;
    }
    let host = TestHost::start_with_config(&format!(
        "{FAST_SUPERVISOR}\n[[bots]]\nname = \"fast\"\n[bots.builtin]\ntoken_delay = \"40ms\"\n{}",
        bots(&["second", "third", "fourth", "fifth"])
    ));
    // An admin, for the admin section (the script signs in as root last).
    host.add_user("root", true);
    let shots = root.join("target/browser-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(script_dir.join("chat.mjs"))
        .arg(&host.url)
        .arg(&shots)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}\nhost log:\n{}",
        host.log()
    );
    assert!(stdout.contains("browser test passed"));
    assert!(shots.join("3-history.png").exists());
}
