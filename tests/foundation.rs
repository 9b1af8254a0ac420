//! The foundation, end to end: the real `bothost` supervising real
//! `bot-worker` children over real Unix sockets.

mod common;

use std::time::{Duration, Instant};

use bothost::control::ControlResponse;
use bothost::status::BotState;
use bothost::turn::ErrorCode;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const FIVE: [&str; 5] = ["alpha", "bravo", "charlie", "delta", "echo"];

fn send_signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).expect("signal worker");
}

fn ready_pids(host: &TestHost) -> Vec<(String, u32, u64)> {
    host.status()
        .bots
        .into_iter()
        .map(|b| (b.name, b.pid.unwrap_or(0), b.generation))
        .collect()
}

#[test]
fn five_workers_come_up_as_children_each_in_its_own_process_group() {
    let host = TestHost::start(&bots(&FIVE));
    let status = host.status();
    assert_eq!(status.bots.len(), 5);
    let mut pids = Vec::new();
    for bot in &status.bots {
        assert_eq!(bot.state, BotState::Ready, "{bot:?}");
        assert_eq!(bot.generation, 1);
        let pid = bot.pid.expect("a ready bot has a pid");
        let (parent, group) = parent_and_group(pid);
        assert_eq!(parent, host.pid(), "{} is a child of the host", bot.name);
        assert_eq!(group, pid, "{} leads its own process group", bot.name);
        pids.push(pid);
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 5, "five distinct pids");
    for name in FIVE {
        assert_eq!(
            host.metric(&format!("bothost_worker_up{{bot=\"{name}\"}}")),
            Some(1.0)
        );
        assert_eq!(
            host.metric(&format!("bothost_worker_generation{{bot=\"{name}\"}}")),
            Some(1.0)
        );
    }
    // The runtime directory is private, and the only socket left in it is
    // the control socket (worker sockets are removed once connected).
    use std::os::unix::fs::PermissionsExt;
    let run = host.dir.path().join("run");
    assert_eq!(
        std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let control = run.join("control.sock");
    assert_eq!(
        std::fs::metadata(&control).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let entries: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("control.sock")]);
}

#[test]
fn every_bot_streams_a_reply_and_worker_logs_reach_the_host_log() {
    let host = TestHost::start(&bots(&FIVE));
    for name in FIVE {
        let (ok, out, err) = host.chat(name, "hello there");
        assert!(ok, "{name}: {err}");
        assert!(
            out.contains(&format!("You said \"hello there\", 2 words. I am {name}")),
            "{name}: {out}"
        );
    }
    // Streamed, not sent whole: one reply arrives as many deltas.
    let deltas = runtime().block_on(async {
        let mut client = host.control_chat("alpha", "count my deltas").await;
        let mut deltas = 0;
        loop {
            match client.next().await.unwrap() {
                ControlResponse::Delta { .. } => deltas += 1,
                ControlResponse::Done { usage } => {
                    assert_eq!(usage.completion_tokens, deltas);
                    break deltas;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    assert!(deltas > 10, "{deltas} deltas");
    let log = host.log();
    assert!(
        log.lines().any(|l| l.contains("\"target\":\"bot_worker\"")
            && l.contains("\"bot\":\"charlie\"")
            && l.contains("ready")),
        "worker log lines carry the bot's name:\n{log}"
    );
}

#[test]
fn unknown_bot_and_no_host_are_plain_errors() {
    let host = TestHost::start(&bots(&["alpha"]));
    let (ok, _, err) = host.chat("nobody", "hi");
    assert!(!ok);
    assert!(
        err.contains("unknown_bot") && err.contains("no bot named 'nobody'"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("supervisor.toml");
    std::fs::write(&config, format!("{FAST_SUPERVISOR}\n{}", bots(&["alpha"]))).unwrap();
    for args in [&["status"][..], &["chat", "alpha", "hi"][..]] {
        let out = std::process::Command::new(BOTHOST)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no bothost is running"), "{args:?}: {err}");
    }
}

#[test]
fn kill_9_mid_reply_fails_the_turn_at_once_and_only_that_bot_restarts() {
    let mut toml = bots(&["alpha", "bravo", "charlie", "delta"]);
    toml.push_str("[[bots]]\nname = \"slow\"\n[bots.builtin]\ntoken_delay = \"100ms\"\n");
    let host = TestHost::start(&toml);
    let before = ready_pids(&host);
    let victim = host.bot("slow").pid.unwrap();

    let (code, elapsed) = runtime().block_on(async {
        let mut client = host.control_chat("slow", "tell me a long story").await;
        assert!(matches!(
            client.next().await.unwrap(),
            ControlResponse::Delta { .. }
        ));
        send_signal(victim, Signal::SIGKILL);
        let killed = Instant::now();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), client.next())
                .await
                .expect("the turn must end, not hang")
                .unwrap();
            match next {
                ControlResponse::Delta { .. } => continue,
                ControlResponse::Error { code, .. } => break (code, killed.elapsed()),
                other => panic!("expected an error, got {other:?}"),
            }
        }
    });
    assert_eq!(code, ErrorCode::WorkerDied);
    assert!(elapsed < Duration::from_secs(1), "error after {elapsed:?}");

    let replacement = host.wait_for(
        "slow back with generation 2",
        Duration::from_secs(10),
        || {
            let b = host.bot("slow");
            (b.state == BotState::Ready && b.generation == 2).then_some(b)
        },
    );
    assert_ne!(replacement.pid, Some(victim));
    assert_eq!(replacement.restarts, 1);
    let (ok, out, err) = host.chat("slow", "are you back?");
    assert!(ok, "{err}");
    assert!(out.contains("are you back?"));
    assert_eq!(
        host.metric("bothost_worker_restarts_total{bot=\"slow\",reason=\"crash\"}"),
        Some(1.0)
    );

    let after = ready_pids(&host);
    for (name, pid, generation) in before.iter().filter(|(n, ..)| n != "slow") {
        assert!(
            after.contains(&(name.clone(), *pid, *generation)),
            "{name} must not notice: before {before:?}, after {after:?}"
        );
        assert_eq!(host.bot(name).restarts, 0);
    }
}

/// A message that arrives while a bot's worker is gone (killed, its
/// replacement still starting) waits for the replacement instead of failing:
/// whether it reached the Supervisor before or after it learned of the death.
#[test]
fn a_message_sent_just_after_a_crash_is_answered_by_the_replacement() {
    let host = TestHost::start(&bots(&["alpha", "bravo"]));
    for round in 1..=2u64 {
        let victim = host.bot("alpha").pid.expect("alpha serving");
        send_signal(victim, Signal::SIGKILL);
        let (ok, out, err) = host.chat("alpha", &format!("still there {round}?"));
        assert!(ok, "round {round}: {err}");
        assert!(out.contains(&format!("still there {round}?")), "{out}");
        let alpha = host.bot("alpha");
        assert_eq!(alpha.generation, round + 1, "{alpha:?}");
        assert_ne!(alpha.pid, Some(victim));
    }
    assert_eq!(host.bot("bravo").restarts, 0);
}

#[test]
fn a_worker_that_stops_answering_heartbeats_is_replaced() {
    let host = TestHost::start(&bots(&["alpha", "frozen"]));
    let victim = host.bot("frozen").pid.unwrap();
    let alpha = host.bot("alpha").pid;
    send_signal(victim, Signal::SIGSTOP);
    let replaced = host.wait_for("frozen replaced", Duration::from_secs(10), || {
        let b = host.bot("frozen");
        (b.state == BotState::Ready && b.generation == 2).then_some(b)
    });
    assert_ne!(replaced.pid, Some(victim));
    assert!(
        replaced
            .last_failure
            .as_deref()
            .is_some_and(|f| f.contains("hung")),
        "{replaced:?}"
    );
    assert_eq!(
        host.metric("bothost_worker_restarts_total{bot=\"frozen\",reason=\"hung\"}"),
        Some(1.0)
    );
    host.wait_for("the hung worker killed", Duration::from_secs(5), || {
        process_gone(victim).then_some(())
    });
    assert_eq!(host.bot("alpha").pid, alpha);
    assert!(host.chat("frozen", "hi").0);
}

#[test]
fn a_bot_that_crashes_at_start_backs_off_then_is_marked_failed() {
    let mut toml = bots(&["alpha"]);
    toml.push_str("[[bots]]\nname = \"broken\"\nworker_binary = \"/bin/false\"\n");
    let host = TestHost::start_with_config(&format!(
        "{}\n{toml}",
        FAST_SUPERVISOR.replace(
            "[supervisor]\n",
            "[supervisor]\nquarantine_initial = \"2s\"\nquarantine_max = \"4s\"\n"
        )
    ));
    let broken = host.wait_for("broken marked failed", Duration::from_secs(10), || {
        let b = host.bot("broken");
        (b.state == BotState::Failed).then_some(b)
    });
    // crash_limit = 3: two restarts, then the third crash gives up.
    assert_eq!(broken.restarts, 2);
    assert_eq!(broken.generation, 3);
    assert!(
        broken
            .last_failure
            .as_deref()
            .is_some_and(|f| f.contains("exited with status 1")),
        "{broken:?}"
    );
    assert_eq!(host.metric("bothost_worker_up{bot=\"broken\"}"), Some(0.0));
    assert_eq!(
        host.metric("bothost_worker_state{bot=\"broken\",state=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(
        host.metric("bothost_worker_restarts_total{bot=\"broken\",reason=\"crash\"}"),
        Some(2.0)
    );
    let (ok, _, err) = host.chat("broken", "hi");
    assert!(!ok);
    assert!(err.contains("bot_unavailable"), "{err}");
    assert!(
        broken.retry_in_seconds.is_some_and(|s| s <= 2),
        "{broken:?}"
    );

    let alpha = host.bot("alpha");
    assert_eq!(
        (alpha.state, alpha.generation, alpha.restarts),
        (BotState::Ready, 1, 0)
    );
    assert!(host.chat("alpha", "still fine?").0);
    let status = host.cli(&["status"]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        table.contains("failed") && table.contains("last failure"),
        "{table}"
    );
    assert!(table.contains("tried again by itself in"), "{table}");

    // Its quarantine over, the failed bot is tried again by itself (and,
    // still broken, fails again).
    host.wait_for("broken tried again", Duration::from_secs(10), || {
        let b = host.bot("broken");
        (b.generation > broken.generation).then_some(())
    });
}

#[test]
fn sigkill_of_the_host_takes_every_worker_down_within_two_seconds() {
    let mut host = TestHost::start(&bots(&FIVE));
    let pids: Vec<u32> = host.status().bots.iter().filter_map(|b| b.pid).collect();
    assert_eq!(pids.len(), 5);
    // A stopped worker cannot notice its socket closing; it must go all the
    // same. (The parent-death signal itself is unit-tested in `worker`.)
    send_signal(pids[0], Signal::SIGSTOP);
    host.signal(Signal::SIGKILL);
    host.wait_exit(Duration::from_secs(5)).expect("host died");
    let gone = eventually("workers gone", Duration::from_secs(2), || {
        pids.iter().all(|&p| process_gone(p)).then_some(())
    });
    let alive: Vec<_> = pids.iter().filter(|&&p| !process_gone(p)).collect();
    assert!(gone.is_ok(), "workers outlived the host: {alive:?}");
}

#[test]
fn sigterm_drains_and_stops_everything_cleanly() {
    let mut host = TestHost::start(&bots(&["alpha", "bravo"]));
    let pids: Vec<u32> = host.status().bots.iter().filter_map(|b| b.pid).collect();
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(Duration::from_secs(10)).expect("host exits");
    assert!(status.success(), "{status:?}");
    assert!(pids.iter().all(|&p| process_gone(p)));
    assert!(!host.dir.path().join("run/control.sock").exists());
    let log = host.log();
    assert!(
        log.contains("worker exited after drain (exited with status 0)"),
        "{log}"
    );
}

#[test]
fn a_worker_that_ignores_drain_and_sigterm_is_killed_after_the_grace_period() {
    let mut toml = bots(&["alpha"]);
    toml.push_str(&format!(
        "[[bots]]\nname = \"rogue-stubborn\"\nworker_binary = \"{}\"\n",
        example("rogue_worker").display()
    ));
    let mut host = TestHost::start(&toml);
    let stubborn = host.bot("rogue-stubborn").pid.expect("stubborn is ready");
    host.signal(Signal::SIGTERM);
    // drain_timeout 2 s + stop_grace 1 s in the test configuration.
    let status = host.wait_exit(Duration::from_secs(10)).expect("host exits");
    assert!(status.success(), "{status:?}");
    assert!(process_gone(stubborn));
    let log = host.log();
    assert!(log.contains("drain timed out; sending SIGTERM"), "{log}");
    assert!(
        log.contains("still running after SIGTERM; sending SIGKILL"),
        "{log}"
    );
    assert!(log.contains("was killed by SIGKILL"), "{log}");
}

#[test]
fn a_second_host_on_the_same_runtime_dir_is_refused() {
    let host = TestHost::start(&bots(&["alpha"]));
    let out = host.cli(&["serve"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another bothost is already running"), "{err}");
    assert_eq!(host.bot("alpha").state, BotState::Ready);
}

#[test]
fn workers_that_break_the_protocol_are_replaced_and_the_host_carries_on() {
    let rogue = example("rogue_worker");
    assert!(rogue.exists(), "{} is built by cargo test", rogue.display());
    let mut toml = bots(&["alpha"]);
    let cases = [
        ("rogue-oversized", "exceeds the 1048576-byte limit"),
        ("rogue-truncated", "closed in the middle of a frame"),
        ("rogue-garbage", "not valid JSON"),
        ("rogue-unknown", "unknown variant `launch_missiles`"),
    ];
    for (name, _) in cases {
        toml.push_str(&format!(
            "[[bots]]\nname = \"{name}\"\nworker_binary = \"{}\"\n",
            rogue.display()
        ));
    }
    let host = TestHost::start(&toml);
    for (name, expected) in cases {
        let bot = host.wait_for(&format!("{name} to fail"), Duration::from_secs(15), || {
            let b = host.bot(name);
            (b.state == BotState::Failed).then_some(b)
        });
        let why = bot.last_failure.unwrap_or_default();
        assert!(
            why.contains("protocol error") && why.contains(expected),
            "{name}: {why}"
        );
    }
    assert_eq!(host.http_get("/healthz").0, 200);
    let alpha = host.bot("alpha");
    assert_eq!((alpha.state, alpha.generation), (BotState::Ready, 1));
    assert!(host.chat("alpha", "still here?").0);
}

#[test]
fn garbage_on_the_control_socket_closes_that_connection_only() {
    use std::io::Write;
    let host = TestHost::start(&bots(&["alpha"]));
    let path = host.dir.path().join("run/control.sock");
    let mut raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
    raw.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    let mut raw2 = std::os::unix::net::UnixStream::connect(&path).unwrap();
    raw2.write_all(b"\x00\x00\x00\x05hello").unwrap();
    assert!(host.chat("alpha", "fine?").0);
    assert_eq!(
        host.http_get("/healthz"),
        (200, "{\"status\":\"ok\"}".to_owned())
    );
}

#[test]
fn healthz_and_metrics_answer_over_http() {
    let host = TestHost::start(&bots(&["alpha"]));
    assert_eq!(host.http_get("/healthz").0, 200);
    let (code, body) = host.http_get("/metrics");
    assert_eq!(code, 200);
    for series in [
        "bothost_worker_up{bot=\"alpha\"} 1",
        "bothost_worker_generation{bot=\"alpha\"} 1",
        "bothost_worker_in_flight{bot=\"alpha\"} 0",
        "bothost_worker_restarts_total{bot=\"alpha\",reason=\"crash\"} 0",
        "bothost_worker_restarts_total{bot=\"alpha\",reason=\"hung\"} 0",
        "bothost_worker_memory_budget_bytes{bot=\"alpha\"} 125000000",
    ] {
        assert!(body.contains(series), "missing {series}:\n{body}");
    }
    let rss = host.wait_for("an RSS sample", Duration::from_secs(5), || {
        host.metric("bothost_worker_rss_bytes{bot=\"alpha\"}")
            .filter(|&v| v > 0.0)
    });
    assert!(rss < 64.0 * 1024.0 * 1024.0, "{rss}");
    assert_eq!(host.http_get("/nope").0, 404);
}
