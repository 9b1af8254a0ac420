//! Memory governance and restarts, end to end with real workers: leaks and
//! oversized workers replaced by handover, rolling restarts under load with
//! nothing lost, a failed handover that leaves the old worker serving, and
//! the restart schedule.

mod common;

use std::path::Path;
use std::time::Duration;

use bothost::status::BotState;
use common::*;

/// Fast sampling and a short leak window, so a test sees a trend in seconds.
/// These tests time workers' memory against the Supervisor's readings.
/// Side by side on two cores, one test's leaking workers starved another's
/// Supervisor: CI saw its first reading of a fast grower land past the
/// ceiling (a kill, turns and all) and a reading land mid-burst. One at a
/// time, as on a host: about 19 s for the file instead of 10.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn governed(bots_toml: &str) -> String {
    let supervisor = FAST_SUPERVISOR.replace(
        "[supervisor]\n",
        "[supervisor]\nleak_window = \"4s\"\nleak_warmup = \"1s\"\nleak_horizon = \"1h\"\n\
         leak_min_growth = \"2MB\"\nover_budget_samples = 3\nrestart_schedule = \"off\"\n",
    );
    format!("{supervisor}\n{bots_toml}")
}

fn assert_no_failures(reports: &[LoadReport]) -> u64 {
    let failures: Vec<_> = reports.iter().flat_map(|r| &r.failures).collect();
    assert!(failures.is_empty(), "failed turns: {failures:#?}");
    reports.iter().map(|r| r.completed).sum()
}

/// The `rss` field of the first JSON log line whose message contains `needle`
/// for `bot`.
fn logged_rss(log: &str, bot: &str, needle: &str) -> Option<u64> {
    logged_rss_all(log, bot, needle).into_iter().next()
}

/// The `rss` field of every such line, in order.
fn logged_rss_all(log: &str, bot: &str, needle: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["bot"] == bot && v["message"].as_str().is_some_and(|m| m.contains(needle)))
        .filter_map(|v| v["rss"].as_u64())
        .collect()
}

#[test]
fn leaks_and_oversized_workers_are_replaced_and_healthy_bots_are_left_alone() {
    let _one = one_at_a_time();
    // A later warm-up: `fat` must reach its warning line before its growth
    // can be judged a leak (see below).
    let host = TestHost::start_with_config(
        &governed(
            r#"
[[bots]]
name = "leaky"
memory_budget = "300MB"
[bots.builtin]
token_delay = "0s"
leak_per_message = "256KB"

[[bots]]
name = "fat"
memory_budget = "200MB"
[bots.builtin]
token_delay = "0s"
leak_per_message = "2MB"

[[bots]]
name = "steady-a"
[bots.builtin]
token_delay = "0s"

[[bots]]
name = "steady-b"
[bots.builtin]
token_delay = "0s"
"#,
        )
        .replace("leak_warmup = \"1s\"", "leak_warmup = \"4s\""),
    );
    // About 20 turns a second per bot: the leaky bot grows ~5 MB/s.
    let load = ChatLoad::start(
        &host,
        &["leaky", "fat", "steady-a", "steady-b"],
        1,
        Some(Duration::from_millis(50)),
    );
    host.wait_for(
        "a leak restart and a memory restart",
        Duration::from_secs(30),
        || {
            let leak =
                host.metric("bothost_worker_restarts_total{bot=\"leaky\",reason=\"leak\"}")?;
            let memory =
                host.metric("bothost_worker_restarts_total{bot=\"fat\",reason=\"memory\"}")?;
            (leak >= 1.0 && memory >= 1.0).then_some(())
        },
    );
    let reports = load.finish();
    let completed = assert_no_failures(&reports);
    assert!(completed > 100, "{completed} turns");

    let log = host.log();
    let leak_rss = logged_rss(&log, "leaky", "leaking").expect("leak restart logged with its RSS");
    assert!(
        leak_rss < 300_000_000 / 2,
        "replaced at {leak_rss} bytes, well before the 300MB budget"
    );
    // ~40 MB/s: read faster above the warning line, and replaced before
    // (or, on a slow machine, just after) the budget. Between the warning
    // line (160 MB) and the ceiling (210 MB) lie 50 MB, 1.25 s of growth
    // (with a 120 MB budget, 30 MB: a CI run on a slow hour had its
    // readings late enough for the ceiling to kill it first). The line is
    // reached in about 4 s, before the leak detector can judge (4 s warm-up
    // here, then 3 s of readings) unless the bot grows slower than 23 MB/s.
    let fat_rss = logged_rss(&log, "fat", "replacing the worker").expect("memory restart logged");
    assert!(
        fat_rss >= 160_000_000,
        "not before the warning line: {fat_rss}"
    );
    assert!(fat_rss <= 210_000_000, "below the ceiling: {fat_rss}");
    let warned = logged_rss(&log, "fat", "memory above 80% of budget").expect("warning logged");
    assert!(warned >= 160_000_000, "{warned}");

    for name in ["steady-a", "steady-b"] {
        let bot = host.bot(name);
        assert_eq!((bot.generation, bot.restarts), (1, 0), "{bot:?}");
        assert!(!bot.memory_warning);
    }
    let leaky = host.bot("leaky");
    assert!(leaky.generation >= 2);
    assert_eq!(
        host.metric("bothost_worker_restarts_total{bot=\"leaky\",reason=\"crash\"}"),
        Some(0.0)
    );
    assert!(host
        .metric("bothost_worker_leak_slope_bytes_per_second{bot=\"steady-a\"}")
        .is_some());
}

#[test]
fn a_rolling_restart_under_continuous_load_loses_nothing() {
    let _one = one_at_a_time();
    let names = ["alpha", "bravo", "charlie"];
    let toml: String = names
        .iter()
        .map(|n| format!("[[bots]]\nname = \"{n}\"\n[bots.builtin]\ntoken_delay = \"10ms\"\n"))
        .collect();
    let host = TestHost::start_with_config(&governed(&toml));
    let before: Vec<_> = host.status().bots.iter().map(|b| b.pid).collect();
    // Turns take ~250 ms (25 tokens, 10 ms apart), so every handover has
    // turns in flight on the old generation that must finish there.
    let load = ChatLoad::start(&host, &names, 4, None);
    host.wait_for(
        "traffic on the first generation",
        Duration::from_secs(10),
        || (load.completed() >= 24).then_some(()),
    );
    let out = host.cli(&["restart", "--all", "--rolling"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in names {
        assert!(
            printed.contains(&format!("{name}: restarted, generation 1 -> 2")),
            "{printed}"
        );
    }
    let at_restart = load.completed();
    host.wait_for(
        "traffic on the second generation",
        Duration::from_secs(10),
        || (load.completed() >= at_restart + 24).then_some(()),
    );
    let reports = load.finish();
    assert_no_failures(&reports);
    let log = host.log();
    assert_eq!(
        log.matches("worker exited after drain (exited with status 0)")
            .count(),
        3,
        "each old generation drained and exited cleanly:\n{log}"
    );

    let after = host.status();
    for (bot, old_pid) in after.bots.iter().zip(before) {
        assert_eq!(
            (bot.state, bot.generation, bot.restarts),
            (BotState::Ready, 2, 1),
            "{bot:?}"
        );
        assert_ne!(bot.pid, old_pid);
        assert_eq!(
            host.metric(&format!(
                "bothost_worker_restarts_total{{bot=\"{}\",reason=\"operator\"}}",
                bot.name
            )),
            Some(1.0)
        );
    }
}

/// A wrapper the test can rewrite to make the next worker start fail.
fn worker_wrapper(dir: &Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("wrapper.sh");
    let tmp = dir.join("wrapper.tmp");
    std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &path).unwrap(); // atomic: never a half-written script
    path
}

fn real_worker() -> String {
    Path::new(BOTHOST)
        .with_file_name("bot-worker")
        .display()
        .to_string()
}

#[test]
fn a_new_generation_that_fails_to_start_leaves_the_old_one_serving() {
    let _one = one_at_a_time();
    let scripts = tempfile::tempdir().unwrap();
    let wrapper = worker_wrapper(scripts.path(), &format!("exec {} \"$@\"", real_worker()));
    let host = TestHost::start_with_config(&governed(&format!(
        "[[bots]]\nname = \"flaky\"\nworker_binary = \"{}\"\n",
        wrapper.display()
    )));
    let before = host.bot("flaky");
    worker_wrapper(scripts.path(), "exit 3");

    let out = host.cli(&["restart", "flaky"]);
    assert!(!out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("flaky: FAILED: generation 2 crashed: the worker exited with status 3; generation 1 keeps serving"),
        "{printed}"
    );
    let after = host.bot("flaky");
    assert_eq!(
        (after.state, after.generation, after.pid),
        (BotState::Ready, 1, before.pid)
    );
    assert!(host.chat("flaky", "still answering?").0);
    assert_eq!(
        host.metric("bothost_worker_handover_failures_total{bot=\"flaky\"}"),
        Some(1.0)
    );
    assert_eq!(host.metric("bothost_worker_up{bot=\"flaky\"}"), Some(1.0));
}

#[test]
fn an_operator_restart_brings_a_failed_bot_back() {
    let _one = one_at_a_time();
    let scripts = tempfile::tempdir().unwrap();
    let wrapper = worker_wrapper(scripts.path(), "exit 1");
    let host = TestHost::start_with_config(&governed(&format!(
        "[[bots]]\nname = \"phoenix\"\nworker_binary = \"{}\"\n",
        wrapper.display()
    )));
    host.wait_for("phoenix failed", Duration::from_secs(10), || {
        (host.bot("phoenix").state == BotState::Failed).then_some(())
    });
    worker_wrapper(scripts.path(), &format!("exec {} \"$@\"", real_worker()));
    let out = host.cli(&["restart", "phoenix"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("phoenix: restarted, generation - -> "),
        "{printed}"
    );
    assert_eq!(host.bot("phoenix").state, BotState::Ready);
    assert!(host.chat("phoenix", "back?").0);
}

#[test]
fn only_one_rolling_restart_runs_at_a_time() {
    let _one = one_at_a_time();
    let scripts = tempfile::tempdir().unwrap();
    // Each new generation takes a second to start, so the rolling restart of
    // two bots takes at least two.
    let wrapper = worker_wrapper(scripts.path(), &format!("exec {} \"$@\"", real_worker()));
    let toml = format!(
        "[[bots]]\nname = \"a\"\nworker_binary = \"{w}\"\n[[bots]]\nname = \"b\"\nworker_binary = \"{w}\"\n",
        w = wrapper.display()
    );
    let host = TestHost::start_with_config(&governed(&toml));
    worker_wrapper(
        scripts.path(),
        &format!("sleep 1\nexec {} \"$@\"", real_worker()),
    );
    let first = std::process::Command::new(BOTHOST)
        .arg("--config")
        .arg(&host.config)
        .args(["restart", "--all", "--rolling"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    host.wait_for(
        "the first rolling restart under way",
        Duration::from_secs(5),
        || host.bot("a").pending_generation.map(|_| ()),
    );
    let out = host.cli(&["restart", "--all", "--rolling"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a rolling restart is already running"),
        "{err}"
    );
    let first = first.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{printed}");
    assert!(
        printed.contains("a: restarted") && printed.contains("b: restarted"),
        "{printed}"
    );
}

#[test]
fn the_restart_schedule_fires() {
    let _one = one_at_a_time();
    let toml = bots(&["alpha", "bravo"]);
    let config = governed(&toml).replace(
        "restart_schedule = \"off\"",
        "restart_schedule = \"* * * * * *\"",
    );
    let host = TestHost::start_with_config(&config);
    host.wait_for(
        "a scheduled restart of every bot",
        Duration::from_secs(10),
        || {
            ["alpha", "bravo"]
                .iter()
                .all(|b| {
                    host.metric(&format!(
                        "bothost_worker_restarts_total{{bot=\"{b}\",reason=\"schedule\"}}"
                    ))
                    .is_some_and(|v| v >= 1.0)
                })
                .then_some(())
        },
    );
    assert!(host.log().contains("rolling restart started"));
    assert!(host.chat("alpha", "hi").0);
}

/// Watches `pid` every 5 ms until it is gone; the largest RSS seen.
fn watch_peak(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Some(rss) = bothost::process::vm_rss(pid) {
            peak = peak.max(rss);
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    })
}

/// `governed` with `supervisor.memory_ceiling = ceiling`.
fn ceiling_config(ceiling: &str, bots_toml: &str) -> String {
    governed(bots_toml).replace(
        "[supervisor]\n",
        &format!("[supervisor]\nmemory_ceiling = \"{ceiling}\"\n"),
    )
}

/// The host's log lines about workers, for a failure message.
fn worker_lines(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("worker") || l.contains("memory"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Who stops a worker at its ceiling on this host: the `ceiling` label of
/// `bothost_memory_enforcement_info`, checked against `bothost status`.
fn enforcer(host: &TestHost) -> &'static str {
    let described = host.status().memory_enforcement;
    let enforcer = ["kernel", "rlimit", "user space only"]
        .into_iter()
        .find(|e| described.starts_with(e))
        .unwrap_or_else(|| panic!("unknown enforcement: {described}"));
    let label = if enforcer == "user space only" {
        "supervisor"
    } else {
        enforcer
    };
    assert_eq!(
        host.metric(&format!(
            r#"bothost_memory_enforcement_info{{ceiling="{label}",measure="rss_tree"}}"#
        )),
        Some(1.0),
        "{described}"
    );
    label
}

#[test]
fn a_runaway_inside_one_turn_is_stopped_at_its_ceiling_and_nobody_else_notices() {
    let _one = one_at_a_time();
    // Where the kernel may make cgroups, `auto` uses one; `rlimit` uses the
    // data-segment limit there is everywhere.
    for ceiling in ["auto", "rlimit"] {
        runaway_is_stopped(ceiling);
    }
}

fn runaway_is_stopped(ceiling: &str) {
    // 1 MB a token, a token every 10 ms: 100 MB/s inside one long turn.
    let host = TestHost::start_with_config(&ceiling_config(
        ceiling,
        r#"
[[bots]]
name = "runaway"
memory_budget = "40MB"
[bots.builtin]
token_delay = "10ms"
leak_per_token = "1MB"

[[bots]]
name = "calm"
[bots.builtin]
token_delay = "0s"
"#,
    ));
    let before = host.bot("runaway");
    let calm = host.bot("calm");
    let host_rss = host.wait_for("a reading of the host", Duration::from_secs(5), || {
        host.status().host_rss_bytes
    });
    let peak = watch_peak(before.pid.expect("runaway serves"));
    let words = vec!["more"; 300].join(" ");
    let (ok, out, err) = host.chat("runaway", &words);
    assert!(!ok, "the runaway turn cannot complete: {out}");
    assert!(
        err.contains("worker_died") || err.contains("stopped"),
        "{err}"
    );
    let peak = peak.join().expect("watcher");
    let budget = before.budget_bytes;
    let enforcer = enforcer(&host);
    if ceiling == "rlimit" {
        assert_eq!(enforcer, "rlimit");
    }
    // A cgroup's limit (110 %) is exact. A data-segment limit bounds the
    // heap, not the code and file pages a turn first touches (CI once saw
    // 44.17 MB against 44.00); alone, the Supervisor's 105 % ceiling may
    // see the worker a reading late.
    let bound = match enforcer {
        "supervisor" => budget * 125 / 100,
        "rlimit" => budget * 110 / 100 + 1_000_000,
        _ => budget * 110 / 100,
    };
    assert!(
        peak <= bound,
        "peak {peak} over {bound} (budget {budget}, ceiling: {enforcer})"
    );
    host.wait_for("the runaway replaced", Duration::from_secs(10), || {
        let b = host.bot("runaway");
        (b.state == BotState::Ready && b.generation >= 2).then_some(())
    });
    assert_eq!(
        host.metric(r#"bothost_worker_restarts_total{bot="runaway",reason="memory"}"#),
        Some(1.0),
        "{ceiling}: {}",
        worker_lines(&host.log())
    );
    assert_eq!(
        host.metric(r#"bothost_worker_restarts_total{bot="runaway",reason="crash"}"#),
        Some(0.0)
    );
    let after = host.bot("calm");
    assert_eq!((after.generation, after.pid), (calm.generation, calm.pid));
    let host_after = host.status().host_rss_bytes.expect("host RSS");
    assert!(
        host_after < host_rss + 5_000_000,
        "the host itself grew from {host_rss} to {host_after}"
    );
    let (ok, out, err) = host.chat("calm", "still there?");
    assert!(ok, "{out}{err}");
}

/// One allocation far past the ceiling, made and touched between two
/// readings: only a ceiling the kernel enforces can stop it before it
/// lands. With `off`, the same worker really does reach it (the test
/// would catch a kernel ceiling that silently does nothing).
#[test]
fn a_burst_past_the_ceiling_is_refused_by_the_kernel() {
    let _one = one_at_a_time();
    let bots = r#"
[[bots]]
name = "burst"
memory_budget = "40MB"
[bots.builtin]
leak_per_message = "150MB"
token_delay = "100ms"
"#;
    // Readings 2 s apart and a turn longer than that (some 50 tokens 100 ms
    // apart): the burst lands (or is refused) well before the Supervisor's
    // next reading, even on a loaded machine where touching 150 MB takes a
    // while (CI once saw the 250 ms reading catch it half-way, at 43 MB).
    let words = vec!["more"; 300].join(" ");
    for ceiling in ["auto", "rlimit", "off"] {
        let config = ceiling_config(ceiling, bots)
            .replace("sample_interval = \"250ms\"", "sample_interval = \"2s\"")
            .replace("leak_window = \"4s\"", "leak_window = \"20s\"");
        assert!(config.contains("\"2s\""), "{config}");
        let host = TestHost::start_with_config(&config);
        // Without a kernel ceiling a Supervisor reading can still land
        // mid-burst and kill it first (CI saw 43 MB of 150 on a slow day):
        // that burst proves nothing either way, so it is tried again, on
        // the next generation, up to three times.
        for burst in 1..=3 {
            let before = host.bot("burst");
            let budget = before.budget_bytes;
            let peak = watch_peak(before.pid.expect("burst serves"));
            let (ok, out, _) = host.chat("burst", &words);
            assert!(!ok, "{ceiling}: the burst turn cannot complete: {out}");
            let peak = peak.join().expect("watcher");
            host.wait_for("the burst replaced", Duration::from_secs(10), || {
                (host.bot("burst").generation > before.generation).then_some(())
            });
            assert_eq!(
                host.metric(r#"bothost_worker_restarts_total{bot="burst",reason="memory"}"#),
                Some(f64::from(burst)),
                "{ceiling}: {}",
                worker_lines(&host.log())
            );
            match enforcer(&host) {
                // The Supervisor's own reading at the kill counts too: on a
                // loaded machine the watcher can be descheduled through the
                // whole burst (CI once saw 38.9 MB of a 150 MB burst).
                "supervisor" => {
                    let log = host.log();
                    let read = ["at its memory ceiling", "replacing the worker"]
                        .iter()
                        .flat_map(|needle| logged_rss_all(&log, "burst", needle))
                        .max()
                        .unwrap_or(0);
                    let landed = peak.max(read) > budget * 110 / 100;
                    if landed {
                        break;
                    }
                    assert!(
                        burst < 3,
                        "{ceiling}: without a kernel ceiling the burst lands \
                         (watched {peak}, read {read}, {burst} bursts)"
                    );
                }
                kernel => {
                    assert!(
                        peak <= budget * 110 / 100,
                        "{ceiling} ({kernel}): peak {peak} over 110 % of {budget}"
                    );
                    break;
                }
            }
        }
    }
}

/// Processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .ok()
                        .and_then(|stat| {
                            stat.rsplit(')')
                                .next()?
                                .split_whitespace()
                                .nth(2)?
                                .parse::<u32>()
                                .ok()
                        })
                        == Some(pgid)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_helper_process_that_leaks_counts_against_its_worker_and_goes_with_it() {
    let _one = one_at_a_time();
    // The worker starts a helper that grows 10 MB a second; the worker
    // itself stays small. Only counting the whole tree sees it.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("worker-with-helper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\npython3 -c '
import time
kept = []
while True:
    kept.append(bytearray(1_000_000))
    time.sleep(0.1)
' &\nexec {} \"$@\"\n",
            real_worker()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let host = TestHost::start_with_config(&governed(&format!(
        "[[bots]]\nname = \"helped\"\nmemory_budget = \"60MB\"\nworker_binary = \"{}\"\n\
         [bots.builtin]\ntoken_delay = \"0s\"\n",
        wrapper.display()
    )));
    let first = host.bot("helped").pid.expect("serving");
    host.wait_for(
        "the tree replaced for memory",
        Duration::from_secs(20),
        || {
            let n =
                host.metric(r#"bothost_worker_restarts_total{bot="helped",reason="memory"}"#)?;
            (n >= 1.0).then_some(())
        },
    );
    host.wait_for(
        "the first generation's helper gone with it",
        Duration::from_secs(10),
        || group_members(first).is_empty().then_some(()),
    );
}

#[test]
fn without_room_for_a_second_generation_a_restart_stops_the_old_one_first() {
    let _one = one_at_a_time();
    // No machine has a petabyte free: a handover would not fit.
    let host = TestHost::start_with_config(&governed(
        "[[bots]]\nname = \"huge\"\nmemory_budget = \"1PB\"\n\
         [[bots]]\nname = \"small\"\n",
    ));
    for bot in ["huge", "small"] {
        let out = host.cli(&["restart", bot]);
        assert!(
            out.status.success(),
            "{bot}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let b = host.bot(bot);
        assert_eq!((b.state, b.generation), (BotState::Ready, 2), "{b:?}");
    }
    assert_eq!(
        host.metric(r#"bothost_worker_cold_restarts_total{bot="huge"}"#),
        Some(1.0)
    );
    assert_eq!(
        host.metric(r#"bothost_worker_cold_restarts_total{bot="small"}"#),
        Some(0.0)
    );
    assert!(host
        .log()
        .contains("no room on the machine for a second generation"));
}
