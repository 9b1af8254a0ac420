//! The real host as a child process: `bothost --config <tmp>/supervisor.toml
//! serve`, with its log in `<tmp>/host.log`, stopped with SIGTERM (then
//! SIGKILL) when dropped.
//!
//! Start-up is over when the host prints `bothost listening on URL`, the
//! line scripts wait for; nothing is assumed ready before it.
//!
//! [`HostProcess::start_on`] plays systemd's socket activation: the caller's
//! listening socket becomes the host's fd 3 (`LISTEN_PID`, `LISTEN_FDS`), and
//! stays open across [`HostProcess::restart`], so connections made while no
//! host runs wait in its queue.

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
    /// The socket handed to the host as fd 3, when socket-activated.
    listener: Option<std::net::TcpListener>,
}

impl HostProcess {
    /// Writes `config_text` as the host's `supervisor.toml` in a fresh
    /// temporary directory, starts `bothost serve` there, and returns once
    /// it listens.
    pub fn start(bothost: &Path, config_text: &str) -> anyhow::Result<Self> {
        Self::launch(bothost, config_text, None)
    }

    /// [`HostProcess::start`], serving `listener` as if systemd had passed
    /// it (`server.bind` is then ignored).
    pub fn start_on(
        bothost: &Path,
        config_text: &str,
        listener: std::net::TcpListener,
    ) -> anyhow::Result<Self> {
        Self::launch(bothost, config_text, Some(listener))
    }

    fn launch(
        bothost: &Path,
        config_text: &str,
        listener: Option<std::net::TcpListener>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("supervisor.toml");
        std::fs::write(&config, config_text)?;
        let (child, url) = spawn(bothost, &config, dir.path(), listener.as_ref())?;
        Ok(Self {
            dir,
            config,
            url,
            bothost: bothost.to_owned(),
            child,
            listener,
        })
    }

    /// SIGTERM, wait for the host to drain and exit, then start it again
    /// with the same directory and configuration (and socket). Returns the
    /// time from the signal to the new host listening.
    pub fn restart(&mut self) -> anyhow::Result<Duration> {
        let started = std::time::Instant::now();
        let status = self.terminate()?;
        if !status.success() {
            bail!("the host exited with {status} at restart");
        }
        self.respawn()?;
        Ok(started.elapsed())
    }

    /// A new host process on the same configuration, directory and listener.
    fn respawn(&mut self) -> anyhow::Result<()> {
        let (child, url) = spawn(
            &self.bothost,
            &self.config,
            self.dir.path(),
            self.listener.as_ref(),
        )?;
        self.child = child;
        self.url = url;
        Ok(())
    }

    /// `kill -9` of the host (its workers die with it), then a new host on
    /// the same configuration, database and listener.
    pub fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGKILL);
        self.child.wait()?;
        self.respawn()
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

/// Starts `bothost --config CONFIG serve` with its log appended to
/// `dir/host.log` (on `listener` as fd 3 when given); returns it and its
/// URL once it prints `bothost listening on URL`.
fn spawn(
    bothost: &Path,
    config: &Path,
    dir: &Path,
    listener: Option<&std::net::TcpListener>,
) -> anyhow::Result<(Child, String)> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("host.log"))?;
    let mut command = match listener {
        None => {
            let mut c = Command::new(bothost);
            c.arg("--config").arg(config).arg("serve");
            c
        }
        Some(listener) => {
            use std::os::fd::AsRawFd;
            let fd = listener.as_raw_fd();
            let mut c = Command::new("sh");
            // `exec` keeps the shell's pid, so `$$` is the host's.
            c.args([
                "-c",
                "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --config \"$1\" serve",
            ])
            .arg(bothost)
            .arg(config);
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                c.pre_exec(move || {
                    if nix::libc::dup2(fd, 3) < 0 || nix::libc::fcntl(3, nix::libc::F_SETFD, 0) < 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            c
        }
    };
    let mut child = command
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
    match rx.recv_timeout(START_LIMIT) {
        Ok(url) => Ok((child, url)),
        Err(_) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.join("host.log")).unwrap_or_default();
            bail!("bothost did not start within {START_LIMIT:?}; log:\n{log}")
        }
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
