//! The fallback ceiling where no memory cgroup is to be had: a limit on the
//! worker's data segment (`RLIMIT_DATA`, which since Linux 4.7 counts every
//! private writable mapping, so the heap and large allocations alike).
//!
//! The limit is on *virtual* data, the budget on *resident* memory, and the
//! two drift apart (freed pages the allocator keeps mapped, thread stacks
//! touched only in part). So the limit is never a fixed number: it is set
//! to `data now + (ceiling − RSS now)` once the worker is ready and again
//! at every reading the Supervisor takes, which lets the worker grow by
//! exactly what it has left to its ceiling before the next reading.
//!
//! A worker whose allocation is refused exits with
//! [`bot_worker::EXIT_OUT_OF_MEMORY`] (its allocator says so), which the
//! host reports as a death at the memory ceiling, not a crash. The limit is
//! per process: a helper a worker starts inherits its own copy, and its
//! memory still counts against the bot through the process-tree reading.

use std::io;

/// Before the worker's first reading: room for the start-up of a process
/// whose heap is not yet known (its runtime, a thread's stack), on top of
/// its ceiling.
pub const AT_EXEC_MARGIN: u64 = 64 << 20;

/// Sets the calling process's `RLIMIT_DATA`. Only a system call, nothing
/// allocated: it runs in a forked child before exec.
pub fn limit_self(bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain system call on a value on the stack. Failure leaves the
    // worker without the limit, which the parent notices at the first fit.
    unsafe {
        libc::setrlimit(libc::RLIMIT_DATA, &limit);
    }
}

/// Fits `pid`'s data limit so that its RSS can grow to `ceiling` and no
/// further; returns the limit set.
pub fn fit(pid: u32, ceiling: u64) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |key: &str| {
        crate::process::status_bytes(&status, key)
            .ok_or_else(|| io::Error::other(format!("no {key} for process {pid}")))
    };
    let (data, rss) = (field("VmData:")?, field("VmRSS:")?);
    let bytes = data + ceiling.saturating_sub(rss);
    set(pid, bytes)?;
    Ok(bytes)
}

/// The data limit `pid` runs under (soft and hard).
fn get(pid: u32) -> io::Result<libc::rlimit> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with no new value only fills `old`.
    let rc = unsafe { libc::prlimit(pid_t(pid)?, libc::RLIMIT_DATA, std::ptr::null(), &mut old) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(old)
}

fn set(pid: u32, bytes: u64) -> io::Result<()> {
    // The soft limit never asks for more than the hard one allows.
    let hard = get(pid)?.rlim_max;
    let new = libc::rlimit {
        rlim_cur: bytes.min(hard),
        rlim_max: hard,
    };
    // SAFETY: prlimit sets from a value on the stack and reads nothing back.
    let rc = unsafe { libc::prlimit(pid_t(pid)?, libc::RLIMIT_DATA, &new, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn pid_t(pid: u32) -> io::Result<libc::pid_t> {
    libc::pid_t::try_from(pid).map_err(|_| io::Error::other(format!("pid {pid} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_leaves_exactly_the_room_to_the_ceiling() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        // Asleep: past exec and start-up, so its memory holds still.
        let status = loop {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            if status.contains("State:\tS") {
                break status;
            }
            std::thread::yield_now();
        };
        let data = crate::process::status_bytes(&status, "VmData:").unwrap();
        let rss = crate::process::status_bytes(&status, "VmRSS:").unwrap();
        let ceiling = rss + (10 << 20);
        let set = fit(pid, ceiling).unwrap();
        let now = get(pid).map(|l| l.rlim_cur);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(set, data + (10 << 20));
        assert_eq!(now.unwrap(), set, "the kernel holds the limit set");
    }
}
