//! `bothost top` as an operator sees it: under a real pseudo-terminal
//! (tmux) it draws every bot with its budget and memory bar, redraws, and
//! quits on `q`; piped, it prints one frame and exits.
//!
//! tmux comes from Debian (`.ci/run` installs it); without it the terminal
//! half skips with a message, except under `CI=true`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{bots, eventually, TestHost, BOTHOST, FAST_SUPERVISOR};

fn host() -> TestHost {
    TestHost::start_with_config(&format!(
        "{FAST_SUPERVISOR}\n{}[[bots]]\nname = \"small\"\nmemory_budget = \"40MB\"\n",
        bots(&["alpha", "bravo"])
    ))
}

#[test]
fn piped_top_prints_one_frame_with_every_bot_and_exits() {
    let host = host();
    let out = host.cli(&["top"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frame = String::from_utf8_lossy(&out.stdout);
    assert!(frame.starts_with("bothost top · 3 bots"), "{frame}");
    for (bot, budget) in [
        ("alpha", "125.0 MB"),
        ("bravo", "125.0 MB"),
        ("small", "40.0 MB"),
    ] {
        let line = frame
            .lines()
            .find(|l| l.starts_with(bot))
            .unwrap_or_else(|| panic!("no line for {bot}:\n{frame}"));
        assert!(line.contains(&format!("/ {budget}")), "{line}");
        assert!(line.contains("ready") && line.contains('|'), "{line}");
    }
}

#[test]
fn top_under_a_terminal_draws_refreshes_and_quits_on_q() {
    let tmux = Path::new("/usr/bin/tmux");
    if !tmux.exists() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true but tmux is not installed (.ci/run installs it)"
        );
        eprintln!("tmux is not installed: skipping");
        return;
    }
    let host = host();
    // A private tmux server, so the test never touches anyone's sessions.
    let socket = host.dir.path().join("tmux.sock");
    let tmux_cmd = |args: &[&str]| {
        Command::new(tmux)
            .arg("-S")
            .arg(&socket)
            .args(args)
            .output()
            .expect("run tmux")
    };
    let command = format!("{BOTHOST} --config {} top", host.config.display());
    let started = tmux_cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "40",
        &command,
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let screen = || {
        String::from_utf8_lossy(&tmux_cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    };
    let first = eventually("top to draw every bot", Duration::from_secs(15), || {
        let s = screen();
        [
            "alpha",
            "bravo",
            "small",
            "/ 40.0 MB",
            "/ 125.0 MB",
            "q quits",
        ]
        .iter()
        .all(|w| s.contains(w))
        .then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}; screen:\n{}", screen()));
    // The clock in the title moves: the view refreshes by itself.
    let title = |s: &str| s.lines().next().unwrap_or_default().to_owned();
    eventually("a redraw", Duration::from_secs(5), || {
        (title(&screen()) != title(&first)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; screen:\n{}", screen()));
    tmux_cmd(&["send-keys", "-t", "top", "q"]);
    eventually("top to quit on q", Duration::from_secs(5), || {
        (!tmux_cmd(&["has-session", "-t", "top"]).status.success()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; screen:\n{}", screen()));
}
