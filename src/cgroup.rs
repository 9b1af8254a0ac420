//! Memory ceilings the kernel enforces: one memory cgroup per worker
//! generation, so sampling is not the only guard against a runaway.
//!
//! At start the host finds its own memory cgroup (`/proc/self/cgroup` and
//! the memory controller's mount in `/proc/self/mountinfo`) and tries to
//! create a child group there. Where it can (cgroup v1's memory controller,
//! as on this project's machines), every worker gets
//! `<host's group>/bothost-<bot>-<generation>` with `memory.limit_in_bytes`
//! (and `memory.memsw.limit_in_bytes` where swap is accounted) at its
//! ceiling; the kernel kills a worker that would go past it, and the host
//! reads `memory.oom_control` to report that death as `memory`. Where it
//! cannot (no memory controller, no permission, cgroup v2: delegated v2
//! needs the host moved into a leaf first, which is not done yet), it says so
//! once at start and in `bothost status`, and the user-space ceiling in the
//! Supervisor is the guard.
//!
//! A worker joins its group between fork and exec ([`join_self`]), before
//! it has allocated anything of its own, so the limit counts the whole
//! worker (moving a process's pages along with it is gone from recent
//! kernels).
//! This module never decides anything about workers; it only sets limits
//! and reads them. At start it removes the empty groups that hosts killed
//! before they could clean up left behind.

use std::io;
use std::path::{Path, PathBuf};

/// Where workers' groups go, or why there are none.
#[derive(Debug, Clone)]
pub enum Ceilings {
    V1 { parent: PathBuf },
    Unavailable { why: String },
}

impl Ceilings {
    /// Finds a memory cgroup the host may create children in.
    pub fn detect() -> Self {
        match v1_parent() {
            Ok(parent) => match probe(&parent) {
                Ok(()) => {
                    remove_orphans(&parent);
                    Ceilings::V1 { parent }
                }
                Err(e) => Ceilings::Unavailable {
                    why: format!("cannot create a memory cgroup in {}: {e}", parent.display()),
                },
            },
            Err(why) => Ceilings::Unavailable { why },
        }
    }

    /// Who enforces a worker's ceiling: `kernel` or `supervisor` (a label).
    pub fn enforcer(&self) -> &'static str {
        match self {
            Ceilings::V1 { .. } => "kernel",
            Ceilings::Unavailable { .. } => "supervisor",
        }
    }

    /// What [`Ceilings::detect`] would find, changing nothing (no probe
    /// group, no cleanup): for `check-config`.
    pub fn inspect() -> Self {
        match v1_parent() {
            Ok(parent) => match nix::unistd::access(&parent, nix::unistd::AccessFlags::W_OK) {
                Ok(()) => Ceilings::V1 { parent },
                Err(e) => Ceilings::Unavailable {
                    why: format!("cannot create a memory cgroup in {}: {e}", parent.display()),
                },
            },
            Err(why) => Ceilings::Unavailable { why },
        }
    }

    /// One line for the log and `bothost status`.
    pub fn describe(&self) -> String {
        match self {
            Ceilings::V1 { parent } => format!(
                "kernel: a cgroup v1 memory limit per worker, under {}",
                parent.display()
            ),
            Ceilings::Unavailable { why } => {
                format!("user space only (the Supervisor kills a worker at its ceiling): {why}")
            }
        }
    }

    /// A group for one worker generation with its limit at `limit` bytes,
    /// or `None` when the kernel cannot enforce one here.
    pub fn create(&self, name: &str, limit: u64) -> io::Result<Option<Group>> {
        let Ceilings::V1 { parent } = self else {
            return Ok(None);
        };
        let dir = parent.join(name);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())?;
        // With swap accounted, the limit must cover swap too, or the worker
        // is pushed into swap instead of being stopped.
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            std::fs::write(memsw, limit.to_string())?;
        }
        Ok(Some(Group { dir }))
    }
}

/// One worker generation's memory cgroup; removed by [`Group::remove`]
/// once its process is gone.
#[derive(Debug)]
pub struct Group {
    dir: PathBuf,
}

impl Group {
    pub fn add(&self, pid: u32) -> io::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
    }

    /// `cgroup.procs`, for [`join_self`] in a child about to exec.
    pub fn procs_path(&self) -> Option<std::ffi::CString> {
        std::ffi::CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .ok()
    }

    /// Sets the limit so that `pid`'s RSS, not only what is charged to the
    /// group, stops at `ceiling`: pages the worker shares with the host (its
    /// binary, libraries) count in its RSS but were charged to whoever read
    /// them first.
    pub fn fit_to_rss(&self, pid: u32, ceiling: u64) -> io::Result<()> {
        let usage: u64 = std::fs::read_to_string(self.dir.join("memory.usage_in_bytes"))?
            .trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}")))?;
        let rss = crate::process::vm_rss(pid)
            .ok_or_else(|| io::Error::other("no VmRSS for the worker"))?;
        // The worker maps more of its binary as it runs (code paths its first
        // turns take); those pages too may count in RSS uncharged. 3 MiB
        // covers what a debug build maps after a cold start.
        const LATER_MAPPINGS: u64 = 3 << 20;
        let uncharged = rss.saturating_sub(usage) + LATER_MAPPINGS;
        let limit = ceiling.saturating_sub(uncharged).max(usage);
        // Lower the swap limit last when shrinking: it may not go below the
        // memory limit.
        std::fs::write(self.dir.join("memory.limit_in_bytes"), limit.to_string())?;
        let memsw = self.dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            std::fs::write(memsw, limit.to_string())?;
        }
        Ok(())
    }

    /// Whether `pid` is in the group.
    pub fn contains(&self, pid: u32) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .is_ok_and(|procs| procs.lines().any(|l| l.trim() == pid.to_string()))
    }

    /// Whether the kernel killed a process of this group for memory.
    pub fn oom_killed(&self) -> bool {
        std::fs::read_to_string(self.dir.join("memory.oom_control"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|n| n > 0)
    }

    /// The most memory the group held.
    pub fn peak(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("memory.max_usage_in_bytes"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Removes the group (it must be empty: call after the worker is reaped).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Moves the calling process into the group whose `cgroup.procs` is
/// `procs` (writing "0" means "me"). Only async-signal-safe calls and no
/// allocation: it runs in a forked child before exec. Failure is left for
/// the parent to notice ([`Group::contains`]).
pub fn join_self(procs: &std::ffi::CStr) {
    // SAFETY: open, write and close on a NUL-terminated path the parent
    // built; no memory is allocated or freed.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            let _ = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
}

/// The host's own cgroup v1 memory directory.
fn v1_parent() -> Result<PathBuf, String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let path = cgroups
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_owned())
        })
        .ok_or("no cgroup v1 memory controller (cgroup v2 is not supported yet)")?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let (root, mount) = mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split_whitespace();
            let (fstype, _, options) = (right.next()?, right.next()?, right.next()?);
            if fstype != "cgroup" || !options.split(',').any(|o| o == "memory") {
                return None;
            }
            let fields: Vec<&str> = left.split_whitespace().collect();
            Some((fields.get(3)?.to_string(), fields.get(4)?.to_string()))
        })
        .ok_or("the memory controller is not mounted")?;
    let relative = Path::new(&path).strip_prefix(&root).map_err(|_| {
        format!("the host's memory cgroup {path} is outside the mount's root {root}")
    })?;
    Ok(Path::new(&mount).join(relative))
}

/// Removes the empty groups of hosts that are gone (killed before they
/// could remove their workers' groups). A group's name carries its host's
/// pid: `bothost-<host pid>-<bot>-<generation>`.
fn remove_orphans(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let host = name
            .to_str()
            .and_then(|n| n.strip_prefix("bothost-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = host {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                // Fails, harmlessly, while a process is still inside.
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// Creates and removes a child group: the only sure test of permission.
fn probe(parent: &Path) -> io::Result<()> {
    let dir = parent.join(format!("bothost-probe-{}", std::process::id()));
    std::fs::create_dir(&dir)?;
    std::fs::remove_dir(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_limits_and_is_removed() {
        let ceilings = Ceilings::detect();
        let Ceilings::V1 { parent } = &ceilings else {
            eprintln!("no writable memory cgroup here: {}", ceilings.describe());
            return;
        };
        let group = ceilings
            .create("bothost-unit-test", 64 * 1024 * 1024)
            .unwrap()
            .unwrap();
        let limit = std::fs::read_to_string(parent.join("bothost-unit-test/memory.limit_in_bytes"))
            .unwrap();
        assert_eq!(limit.trim(), (64 * 1024 * 1024).to_string());
        assert!(!group.oom_killed());
        group.remove();
        assert!(!parent.join("bothost-unit-test").exists());
    }

    #[test]
    fn groups_of_hosts_that_are_gone_are_removed_at_start() {
        let ceilings = Ceilings::detect();
        let Ceilings::V1 { parent } = &ceilings else {
            eprintln!("no writable memory cgroup here: {}", ceilings.describe());
            return;
        };
        // pid_max is at most 2^22: this host cannot exist.
        let orphan = parent.join("bothost-99999999-bot-1");
        std::fs::create_dir(&orphan).unwrap();
        let ours = parent.join(format!("bothost-{}-bot-1", std::process::id()));
        std::fs::create_dir(&ours).unwrap();
        Ceilings::detect();
        let orphan_left = orphan.exists();
        let ours_left = ours.exists();
        let _ = std::fs::remove_dir(&orphan);
        let _ = std::fs::remove_dir(&ours);
        assert!(!orphan_left, "the dead host's group was removed");
        assert!(ours_left, "a live host's group was kept");
    }
}
