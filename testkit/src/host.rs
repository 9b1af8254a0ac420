//! The real host as a child process: `bothost --config <tmp>/supervisor.toml
//! serve`, with its log in `<tmp>/host.log`, stopped with SIGTERM (then
//! SIGKILL) when dropped.
//!
//! Start-up is over when the host prints `bothost listening on URL`, the
//! line scripts wait for; nothing is assumed ready before it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use bothost::control::Client;
use bothost::status::{BotStatus, StatusReport};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::wait::eventually;

/// How long a host may take to print its `listening on` line.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The directory holding `bothost` and `bot-worker` for the running test
/// or benchmark: next to its executable (a bench binary), or one up (an
/// integration test, in `deps/`).
pub fn binary_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let here = exe.parent().context("no directory for this executable")?;
    for dir in [Some(here), here.parent()].into_iter().flatten() {
        if dir.join("bothost").exists() && dir.join("bot-worker").exists() {
            return Ok(dir.to_owned());
        }
    }
    bail!(
        "bothost and bot-worker are not built next to {}: run `cargo build --workspace` \
         (or `--release` for benchmarks) first",
        here.display()
    )
}

pub struct HostProcess {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// `http://127.0.0.1:PORT` (or `https://`).
    pub url: String,
    bothost: PathBuf,
    child: Child,
}

impl HostProcess {
    /// Writes `config_text` as the host's `supervisor.toml` in a fresh
    /// temporary directory, starts `bothost serve` there, and returns once
    /// it listens.
    pub fn start(bothost: &Path, config_text: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("supervisor.toml");
        std::fs::write(&config, config_text)?;
        let log = std::fs::File::create(dir.path().join("host.log"))?;
        let mut child = Command::new(bothost)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bothost.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
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
            bothost: bothost.to_owned(),
            child,
        };
        match rx.recv_timeout(START_LIMIT) {
            Ok(url) => host.url = url,
            Err(_) => bail!(
                "bothost did not start within {START_LIMIT:?}; log:\n{}",
                host.log()
            ),
        }
        Ok(host)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` of the HTTP front end.
    pub fn addr(&self) -> &str {
        self.url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, a)| a)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host.log")).unwrap_or_default()
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("run/control.sock")
    }

    /// A connection to the host's control socket.
    pub async fn control(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.control_socket()).await?)
    }

    /// Runs `bothost --config <ours> ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bothost)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run bothost")
    }

    /// `bothost status --json`.
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

    /// `GET path` on the host: (status, body).
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

    /// Polls `check` until it gives `Some`; after `limit`, panics with
    /// `what` and the host's log.
    pub fn wait_for<T>(&self, what: &str, limit: Duration, check: impl FnMut() -> Option<T>) -> T {
        eventually(what, limit, check).unwrap_or_else(|e| panic!("{e}; host log:\n{}", self.log()))
    }

    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.pid()).expect("pid fits");
        kill(Pid::from_raw(pid), signal).expect("signal host");
    }

    /// Waits up to `limit` for the host process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        eventually("the host to exit", limit, || {
            self.child.try_wait().ok().flatten()
        })
        .ok()
    }

    /// SIGTERM, then waits for the host to finish draining and exit.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::SIGTERM);
        if let Some(status) = self.wait_exit(Duration::from_secs(15)) {
            return Ok(status);
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// A minimal HTTP/1.0 GET, enough for `/healthz` and `/metrics`: (status,
/// body). Panics when the host cannot be reached: a test wants to know.
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
