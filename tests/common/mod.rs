//! Test support: start the real `bothost` (which starts real `bot-worker`
//! children) in a temporary directory, talk to it the way operators do, and
//! wait on conditions with deadlines instead of sleeping.
//!
//! `bot-worker` must have been built next to `bothost` (`cargo build
//! --workspace`, which the README's test command does first).

#![allow(dead_code)] // each test file uses its own subset

pub mod db;
pub mod fake;
pub mod web;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bothost::control::{Client, ControlRequest};
use bothost::status::{BotStatus, StatusReport};

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

pub struct TestHost {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub url: String,
    child: Child,
}

impl TestHost {
    /// Starts a host with [`FAST_SUPERVISOR`] plus `bots_toml`.
    pub fn start(bots_toml: &str) -> Self {
        Self::start_with_config(&format!("{FAST_SUPERVISOR}\n{bots_toml}"))
    }

    pub fn start_with_config(config_text: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("supervisor.toml");
        std::fs::write(&config, config_text).expect("write config");
        let log = std::fs::File::create(dir.path().join("host.log")).expect("log file");
        let mut child = Command::new(BOTHOST)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn bothost");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("bothost listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let mut host = Self {
            dir,
            config,
            url: String::new(),
            child,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => host.url = url,
            Err(_) => panic!("bothost did not start within 30 s; log:\n{}", host.log()),
        }
        host
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host.log")).unwrap_or_default()
    }

    /// Runs `bothost --config <ours> ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BOTHOST)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run bothost")
    }

    pub fn status(&self) -> StatusReport {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    pub fn bot(&self, name: &str) -> BotStatus {
        self.status()
            .bots
            .into_iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no bot {name} in status"))
    }

    /// `bothost chat BOT TEXT`: (succeeded, stdout, stderr).
    pub fn chat(&self, bot: &str, text: &str) -> (bool, String, String) {
        let out = self.cli(&["chat", bot, text]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Opens a control connection and starts a chat turn on it; read the
    /// reply with `next()`.
    pub async fn control_chat(&self, bot: &str, text: &str) -> Client {
        let mut client = Client::connect(&self.dir.path().join("run/control.sock"))
            .await
            .expect("connect to the control socket");
        client
            .send(ControlRequest::Chat {
                bot: bot.into(),
                text: text.into(),
            })
            .await
            .expect("send chat");
        client
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(&self.url, path)
    }

    /// The value of one metric series, e.g. `bothost_worker_up{bot="a"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics");
        body.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }

    /// Polls `check` until it returns `Some`, or panics after `limit` with
    /// `what` and the host's log.
    pub fn wait_for<T>(&self, what: &str, limit: Duration, check: impl FnMut() -> Option<T>) -> T {
        wait_for(what, limit, check).unwrap_or_else(|| {
            panic!(
                "timed out after {limit:?} waiting for {what}; host log:\n{}",
                self.log()
            )
        })
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal)
            .expect("signal host");
    }

    /// Waits for the host process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Polls every 20 ms until `check` gives `Some` or `limit` passes.
pub fn wait_for<T>(
    _what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal HTTP/1.0 GET, enough for `/healthz` and `/metrics`.
pub fn http_get(base: &str, path: &str) -> (u16, String) {
    let authority = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(authority).expect("connect to host");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
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
        let socket = host.dir.path().join("run/control.sock");
        let mut threads = Vec::new();
        for bot in bots {
            for conn in 0..per_bot {
                let (stop, socket, bot) = (stop.clone(), socket.clone(), bot.to_string());
                let total = completed.clone();
                threads.push(std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(async move {
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
