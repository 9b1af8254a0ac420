//! A worker's process and its end of the socket: the private listening
//! socket, the spawn, the writer task that batches frames into the socket,
//! and the relay of the worker's log lines.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::ceiling::AtExec;
use crate::process::bind_to_host;

/// A listening socket only its owner can connect to. The runtime directory
/// is already 0700; 0600 on the socket says the same thing twice.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Starts `bot-worker --socket SOCKET` under its memory ceiling (`at_exec`,
/// applied before exec, so the whole worker is counted), with the host's
/// environment scrubbed to the basics and `keys` (its own endpoints'
/// API-key variables).
pub fn spawn_child(
    binary: &Path,
    socket: &Path,
    at_exec: AtExec,
    keys: &[String],
) -> io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(binary);
    crate::process::scrub_env(&mut cmd, keys);
    cmd.arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    bind_to_host(&mut cmd);
    // SAFETY: `AtExec::apply` makes only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || {
            at_exec.apply();
            Ok(())
        });
    }
    cmd.spawn()
}

/// Writes queued frames, batching whatever is waiting into one flush.
pub async fn write_loop(
    write: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut writer = tokio::io::BufWriter::new(write);
    while let Some(frame) = rx.recv().await {
        if writer.write_all(&frame).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if writer.write_all(&more).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}

/// Re-logs the worker's stderr (`LEVEL message` lines) under its bot's name.
pub async fn relay_logs(
    stderr: tokio::process::ChildStderr,
    bot: String,
    generation: u64,
    pid: u32,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (level, text) = line.trim_start().split_once(' ').unwrap_or(("", &line));
        let text = text.trim_start();
        match level {
            "ERROR" => error!(target: "bot_worker", bot = %bot, generation, pid, "{text}"),
            "WARN" => warn!(target: "bot_worker", bot = %bot, generation, pid, "{text}"),
            "INFO" => info!(target: "bot_worker", bot = %bot, generation, pid, "{text}"),
            "DEBUG" | "TRACE" => {
                debug!(target: "bot_worker", bot = %bot, generation, pid, "{text}")
            }
            _ => info!(target: "bot_worker", bot = %bot, generation, pid, "{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    use super::*;

    /// The parent-death signal is tied to the thread that forked: when it
    /// exits, the kernel SIGKILLs the child, whatever the child is doing.
    #[test]
    fn a_worker_dies_with_the_thread_that_spawned_it() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-worker");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("unused.sock");
        let pid = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                spawn_child(&fake, &socket, AtExec::default(), &[])
                    .unwrap()
                    .id()
                    .unwrap()
            })
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let gone = loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie: killed and waiting to be reaped.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            if stat.is_empty() || state == Some("Z") {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !gone {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        assert!(gone, "the worker outlived the thread that spawned it");
    }
}
