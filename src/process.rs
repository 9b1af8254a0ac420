//! Child processes the host starts: workers and supervised model servers.
//!
//! Owns the rules every such child follows: it runs in its own process
//! group (so it is signalled as a whole, grandchildren included), dies
//! with the host (parent-death signal SIGKILL, set between fork and exec),
//! and inherits none of the host's secrets ([`scrub_env`]).
//! A leaf module: it starts and signals processes and decides nothing about
//! them.
//!
//! Linux sends the parent-death signal when the *thread* that forked the
//! child exits, so callers spawn from a thread that lives as long as the
//! host (the System arbiter's).

use std::io;
use std::process::ExitStatus;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Makes `cmd`'s child run in its own process group and die with the host.
pub fn bind_to_host(cmd: &mut tokio::process::Command) {
    cmd.process_group(0);
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes two
    // async-signal-safe system calls; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The host may have died between fork and prctl: then nobody
            // would ever send the signal.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
    }
}

/// Variables every child keeps: what a program needs to run at all.
const BASIC_ENV: [&str; 9] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "RUST_BACKTRACE",
];

/// Whether a child keeps the host's variable `name`: the basic ones, the
/// locale (`LC_*`), and those in `own` (its own API keys). Nothing else: the
/// host's environment holds the signing secret, the database URL and every
/// model server's key.
pub fn child_keeps(name: &str, own: &[String]) -> bool {
    BASIC_ENV.contains(&name) || name.starts_with("LC_") || own.iter().any(|o| o == name)
}

/// Gives `cmd` only the variables [`child_keeps`] allows (`own`: the
/// child's own API-key variables), from the host's environment.
pub fn scrub_env(cmd: &mut tokio::process::Command, own: &[String]) {
    cmd.env_clear();
    for (name, value) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| child_keeps(n, own)) {
            cmd.env(name, value);
        }
    }
}

/// Signals the process group led by `pid`. The caller must know the child
/// has not been reaped yet (else the pid may belong to someone else).
pub fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        // Already gone is fine: that is what we wanted.
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// "exited with status 3", "was killed by SIGKILL".
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("was killed by {s}"),
            Err(_) => format!("was killed by signal {sig}"),
        },
        _ => format!("exited ({status})"),
    }
}

/// VmRSS of `pid` in bytes, as `/proc/PID/status` gives it; `None` once
/// the process is gone.
pub fn vm_rss(pid: u32) -> Option<u64> {
    proc_bytes(pid, "status", "VmRSS:")
}

/// Proportional set size of `pid` in bytes (shared pages split between
/// their users), from `/proc/PID/smaps_rollup`.
pub fn pss(pid: u32) -> Option<u64> {
    proc_bytes(pid, "smaps_rollup", "Pss:")
}

/// The `KEY  N kB` line of `/proc/PID/FILE`, in bytes.
fn proc_bytes(pid: u32, file: &str, key: &str) -> Option<u64> {
    status_bytes(
        &std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?,
        key,
    )
}

/// The `KEY  N kB` line of a `/proc/PID/status`-like text, in bytes.
pub fn status_bytes(text: &str, key: &str) -> Option<u64> {
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_keep_what_they_need_and_their_own_keys_only() {
        let own = ["OPENAI_KEY".to_owned()];
        for kept in ["PATH", "HOME", "LC_ALL", "TZ", "OPENAI_KEY"] {
            assert!(child_keeps(kept, &own), "{kept}");
        }
        for dropped in [
            "BOTHOST_JWT_SECRET",
            "BOTHOST_DATABASE_URL",
            "OTHER_KEY",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(!child_keeps(dropped, &own), "{dropped}");
        }
    }
}
