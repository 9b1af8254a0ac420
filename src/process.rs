//! Child processes the host starts: workers and supervised model servers.
//!
//! Owns the rules every such child follows: it runs in its own process
//! group (so it is signalled as a whole, grandchildren included) and dies
//! with the host (parent-death signal SIGKILL, set between fork and exec).
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
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
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
