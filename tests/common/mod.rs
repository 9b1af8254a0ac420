//! Test support on top of `bothost-testkit` (the real host as a child
//! process, throwaway schemas, waiting with deadlines): the fast settings
//! tests start hosts with, and what only tests need (a chat load, process
//! inspection, the example binaries).
//!
//! `bot-worker` must have been built next to `bothost` (`cargo build
//! --workspace`, which the README's test command does first).

#![allow(dead_code)] // each test file uses its own subset

pub mod db;
pub mod fake;
pub mod web;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bothost::control::{Client, ControlRequest};
#[allow(unused_imports)] // each test file uses its own subset
pub use bothost_testkit::{eventually, eventually_async, http_get, runtime, HostProcess};

pub const BOTHOST: &str = env!("CARGO_BIN_EXE_bothost");

/// Supervisor settings fast enough for tests; everything else is default.
pub const FAST_SUPERVISOR: &str = r#"
[server]
bind = "127.0.0.1:0"

[supervisor]
runtime_dir = "run"
sample_interval = "250ms"
heartbeat_interval = "200ms"
heartbeat_timeout = "3s"
start_timeout = "5s"
backoff_initial = "50ms"
backoff_max = "200ms"
crash_limit = 3
crash_window = "30s"
drain_timeout = "2s"
stop_grace = "1s"

[logging]
format = "json"
level = "info"
"#;

/// `[[bots]]` entries for `names`, builtin engine, no token delay.
pub fn bots(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("[[bots]]\nname = \"{n}\"\n[bots.builtin]\ntoken_delay = \"0s\"\n"))
        .collect()
}

/// The real host for a test: [`HostProcess`] started with `bothost` as
/// cargo built it for this test.
pub struct TestHost(HostProcess);

impl TestHost {
    /// Starts a host with [`FAST_SUPERVISOR`] plus `bots_toml`.
    pub fn start(bots_toml: &str) -> Self {
        Self::start_with_config(&format!("{FAST_SUPERVISOR}\n{bots_toml}"))
    }

    pub fn start_with_config(config_text: &str) -> Self {
        Self(
            HostProcess::start(Path::new(BOTHOST), config_text).unwrap_or_else(|e| panic!("{e:#}")),
        )
    }

    /// Opens a control connection and starts a chat turn on it; read the
    /// reply with `next()`.
    pub async fn control_chat(&self, bot: &str, text: &str) -> Client {
        let mut client = self.control().await.expect("connect to the control socket");
        client
            .send(ControlRequest::Chat {
                bot: bot.into(),
                text: text.into(),
            })
            .await
            .expect("send chat");
        client
    }
}

impl TestHost {
    /// `bothost user add NAME [--admin]` with the tests' password on stdin.
    pub fn add_user(&self, name: &str, admin: bool) {
        let mut args = vec!["add", name];
        if admin {
            args.push("--admin");
        }
        let out = self.user_cli(&args, PASSWORD);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `bothost user ARGS…` with `stdin` as its input.
    pub fn user_cli(&self, args: &[&str], stdin: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new(BOTHOST)
            .arg("--config")
            .arg(&self.config)
            .arg("user")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("bothost user");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{stdin}\n").as_bytes())
            .expect("stdin");
        child.wait_with_output().expect("bothost user")
    }
}

/// The password every test account gets.
pub const PASSWORD: &str = "correct horse battery";

impl std::ops::Deref for TestHost {
    type Target = HostProcess;

    fn deref(&self) -> &HostProcess {
        &self.0
    }
}

impl std::ops::DerefMut for TestHost {
    fn deref_mut(&mut self) -> &mut HostProcess {
        &mut self.0
    }
}

/// Whether `pid` is gone: no such process, or a zombie awaiting its reaper.
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => proc_stat_field(&stat, 0) == Some("Z".to_owned()),
    }
}

/// (parent pid, process group) of a live process.
pub fn parent_and_group(pid: u32) -> (u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process exists");
    let field = |i| {
        proc_stat_field(&stat, i)
            .and_then(|f| f.parse().ok())
            .expect("stat field")
    };
    (field(1), field(2))
}

/// Fields after the `(comm)`: 0 is the state, 1 the ppid, 2 the pgrp.
fn proc_stat_field(stat: &str, index: usize) -> Option<String> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(index).map(str::to_owned)
}

/// The `examples/` directory next to the binaries under test.
pub fn example(name: &str) -> PathBuf {
    Path::new(BOTHOST)
        .parent()
        .expect("bin dir")
        .join("examples")
        .join(name)
}

/// What one load connection saw.
#[derive(Debug)]
pub struct LoadReport {
    pub bot: String,
    pub completed: u64,
    /// Every turn that did not end in a reply answering its own message.
    pub failures: Vec<String>,
}

/// Continuous chat traffic over control connections, `per_bot` connections
/// per bot, each sending its next message as soon as the last is answered
/// (after `pace`, if given). Every message carries a unique nonce, and the
/// reply must echo it: a lost, duplicated or crossed reply is a failure.
pub struct ChatLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    completed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<LoadReport>>,
}

impl ChatLoad {
    pub fn start(host: &TestHost, bots: &[&str], per_bot: usize, pace: Option<Duration>) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let completed = std::sync::Arc::new(AtomicU64::new(0));
        let socket = host.control_socket();
        let mut threads = Vec::new();
        for bot in bots {
            for conn in 0..per_bot {
                let (stop, socket, bot) = (stop.clone(), socket.clone(), bot.to_string());
                let total = completed.clone();
                threads.push(std::thread::spawn(move || {
                    runtime().block_on(async move {
                        let mut report = LoadReport {
                            bot: bot.clone(),
                            completed: 0,
                            failures: Vec::new(),
                        };
                        let mut client = Client::connect(&socket).await.expect("connect");
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            n += 1;
                            let nonce = format!("n{conn}x{n}");
                            if let Err(e) = one_turn(&mut client, &bot, &nonce).await {
                                report.failures.push(format!("{bot} {nonce}: {e}"));
                            } else {
                                report.completed += 1;
                                total.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(pace) = pace {
                                tokio::time::sleep(pace).await;
                            }
                        }
                        report
                    })
                }));
            }
        }
        Self {
            stop,
            completed,
            threads,
        }
    }

    /// Turns completed so far, over all connections.
    pub fn completed(&self) -> u64 {
        self.completed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops sending, lets every connection finish its turn in flight, and
    /// returns what each saw.
    pub fn finish(self) -> Vec<LoadReport> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("load thread"))
            .collect()
    }
}

async fn one_turn(client: &mut Client, bot: &str, nonce: &str) -> Result<(), String> {
    let text = format!("{nonce} please");
    let reply = tokio::time::timeout(Duration::from_secs(10), client.chat(bot, &text))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{:?}: {}", e.code, e.message))?;
    if reply.contains(&format!("\"{text}\"")) {
        Ok(())
    } else {
        Err(format!("reply for someone else: {reply}"))
    }
}
