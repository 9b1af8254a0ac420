//! Memory cgroups, v1 and v2: finding one the host may create children in,
//! and one group per worker generation with its limit.
//!
//! **v1** (the memory controller mounted on its own, as on this project's
//! machines): the host's group is `/proc/self/cgroup`'s `memory` line under
//! the controller's mount; a worker's group gets `memory.limit_in_bytes`
//! (and `memory.memsw.limit_in_bytes` where swap is accounted) at its
//! ceiling, and `memory.oom_control` says whether the kernel killed it.
//!
//! **v2** (the unified hierarchy): the host's group is the `0::` line under
//! the `cgroup2` mount, and it must have been *delegated* the memory
//! controller (systemd: `Delegate=memory`). v2 forbids processes in a group
//! whose children get controllers, so the host first moves itself into a
//! leaf of its own, `bothost-host-<pid>`, then enables `+memory` for the
//! group's children. A worker's group gets `memory.high` at its budget (the
//! kernel reclaims and slows it there), `memory.max` at its ceiling (killed
//! there) and `memory.swap.max` 0 (stopped, not pushed into swap);
//! `memory.events` says whether it was killed.
//!
//! Groups are named `bothost-<host pid>-<bot>-<generation>`, so several
//! hosts may share a parent and a host can tell the leftovers of dead ones.
//! This module never decides anything about workers; it sets limits and
//! reads them back.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The files a version keeps a group's figures in.
struct Files {
    limit: &'static str,
    usage: &'static str,
    events: &'static str,
    peak: &'static str,
}

impl Version {
    fn files(self) -> Files {
        match self {
            Version::V1 => Files {
                limit: "memory.limit_in_bytes",
                usage: "memory.usage_in_bytes",
                events: "memory.oom_control",
                peak: "memory.max_usage_in_bytes",
            },
            Version::V2 => Files {
                limit: "memory.max",
                usage: "memory.current",
                events: "memory.events",
                peak: "memory.peak",
            },
        }
    }
}

/// A memory cgroup the host creates its workers' groups in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    pub parent: PathBuf,
}

impl Hierarchy {
    /// The host's own memory cgroup: v1 if the memory controller is mounted
    /// on its own, else v2 if the unified hierarchy gives the host's group
    /// the controller. Changes nothing.
    pub fn find() -> Result<Self, String> {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let v1 = match locate(&cgroups, &mountinfo, Version::V1) {
            Ok(parent) => {
                return Ok(Self {
                    version: Version::V1,
                    parent,
                })
            }
            Err(why) => why,
        };
        let parent = locate(&cgroups, &mountinfo, Version::V2)
            .map_err(|v2| format!("cgroup v1: {v1}; cgroup v2: {v2}"))?;
        let controllers = std::fs::read_to_string(parent.join("cgroup.controllers"))
            .map_err(|e| format!("cgroup v1: {v1}; cgroup v2: {e}"))?;
        if !has_word(&controllers, "memory") {
            return Err(format!(
                "cgroup v1: {v1}; cgroup v2: the memory controller is not delegated to {} \
                 (systemd: Delegate=memory)",
                parent.display()
            ));
        }
        Ok(Self {
            version: Version::V2,
            parent,
        })
    }

    /// Makes the parent ready for children, then proves it with a probe
    /// group. v2: moves this process into its own leaf and enables the
    /// memory controller for the parent's children.
    pub fn prepare(&self) -> io::Result<()> {
        remove_orphans(&self.parent);
        if self.version == Version::V2 {
            let subtree = std::fs::read_to_string(self.parent.join("cgroup.subtree_control"))?;
            if !has_word(&subtree, "memory") {
                let leaf = self
                    .parent
                    .join(format!("bothost-host-{}", std::process::id()));
                create_dir(&leaf)?;
                std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())?;
                std::fs::write(self.parent.join("cgroup.subtree_control"), "+memory").map_err(
                    |e| {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "cannot enable the memory controller for children of {} \
                                 (another process shares the host's group?): {e}",
                                self.parent.display()
                            ),
                        )
                    },
                )?;
            }
        }
        let probe = self
            .parent
            .join(format!("bothost-probe-{}", std::process::id()));
        std::fs::create_dir(&probe)?;
        std::fs::remove_dir(&probe)
    }

    /// A group named `name` whose memory stops at `ceiling` bytes, with
    /// (v2) the kernel pushing back from `budget` bytes on.
    pub fn create(&self, name: &str, budget: u64, ceiling: u64) -> io::Result<Group> {
        let group = Group {
            version: self.version,
            dir: self.parent.join(name),
        };
        create_dir(&group.dir)?;
        group.set_limits(budget, ceiling)?;
        Ok(group)
    }

    /// One line for the log and `bothost status`.
    pub fn describe(&self) -> String {
        match self.version {
            Version::V1 => format!(
                "a cgroup v1 memory limit per worker, under {}",
                self.parent.display()
            ),
            Version::V2 => format!(
                "a cgroup v2 group per worker (memory.high at the budget, memory.max at the \
                 ceiling), under {}",
                self.parent.display()
            ),
        }
    }
}

/// One worker generation's memory cgroup; removed by [`Group::remove`]
/// once its process is gone.
#[derive(Debug)]
pub struct Group {
    version: Version,
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

    /// Sets the limits so that `pid`'s RSS, not only what is charged to the
    /// group, stops at `ceiling`: pages the worker shares with the host (its
    /// binary, libraries) count in its RSS but were charged to whoever read
    /// them first.
    pub fn fit_to_rss(&self, pid: u32, budget: u64, ceiling: u64) -> io::Result<()> {
        let usage = self.read_number(self.version.files().usage)?;
        let rss = crate::process::vm_rss(pid)
            .ok_or_else(|| io::Error::other("no VmRSS for the worker"))?;
        // The worker maps more of its binary as it runs (code paths its first
        // turns take); those pages too may count in RSS uncharged. 3 MiB
        // covers what a debug build maps after a cold start.
        const LATER_MAPPINGS: u64 = 3 << 20;
        let uncharged = rss.saturating_sub(usage) + LATER_MAPPINGS;
        let fit = |bytes: u64| bytes.saturating_sub(uncharged).max(usage);
        self.set_limits(fit(budget), fit(ceiling))
    }

    fn set_limits(&self, budget: u64, ceiling: u64) -> io::Result<()> {
        let write = |file: &str, bytes: u64| std::fs::write(self.dir.join(file), bytes.to_string());
        match self.version {
            Version::V1 => {
                // With swap accounted, the limit must cover swap too, or the
                // worker is pushed into swap instead of being stopped. The
                // swap limit may not go below the memory limit: written last
                // when shrinking, first when growing.
                let memsw = self.dir.join("memory.memsw.limit_in_bytes");
                let old = self.read_number("memory.limit_in_bytes").unwrap_or(0);
                if memsw.exists() && ceiling > old {
                    write("memory.memsw.limit_in_bytes", ceiling)?;
                }
                write("memory.limit_in_bytes", ceiling)?;
                if memsw.exists() && ceiling <= old {
                    write("memory.memsw.limit_in_bytes", ceiling)?;
                }
            }
            Version::V2 => {
                write("memory.max", ceiling)?;
                write("memory.high", budget.min(ceiling))?;
                if self.dir.join("memory.swap.max").exists() {
                    write("memory.swap.max", 0)?;
                }
            }
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
        std::fs::read_to_string(self.dir.join(self.version.files().events))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|n| n > 0)
    }

    /// The most memory the group held (v2: kernels from 5.19 on).
    pub fn peak(&self) -> Option<u64> {
        self.read_number(self.version.files().peak).ok()
    }

    /// The limit the kernel enforces now.
    pub fn limit(&self) -> Option<u64> {
        self.read_number(self.version.files().limit).ok()
    }

    /// Removes the group (it must be empty: call after the worker is reaped).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }

    fn read_number(&self, file: &str) -> io::Result<u64> {
        std::fs::read_to_string(self.dir.join(file))?
            .trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{file}: {e}")))
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

/// The directory of the host's group in `version`'s hierarchy, from the
/// texts of `/proc/self/cgroup` and `/proc/self/mountinfo`.
fn locate(cgroups: &str, mountinfo: &str, version: Version) -> Result<PathBuf, String> {
    let path = cgroups
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let ours = match version {
                Version::V1 => controllers.split(',').any(|c| c == "memory"),
                Version::V2 => id == "0" && controllers.is_empty(),
            };
            ours.then(|| path.to_owned())
        })
        .ok_or(match version {
            Version::V1 => "no memory controller of its own",
            Version::V2 => "not in the unified hierarchy",
        })?;
    let (root, mount) = mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split_whitespace();
            let (fstype, _, options) = (right.next()?, right.next()?, right.next()?);
            let ours = match version {
                Version::V1 => fstype == "cgroup" && options.split(',').any(|o| o == "memory"),
                Version::V2 => fstype == "cgroup2",
            };
            if !ours {
                return None;
            }
            let fields: Vec<&str> = left.split_whitespace().collect();
            Some((fields.get(3)?.to_string(), fields.get(4)?.to_string()))
        })
        .ok_or("not mounted")?;
    let relative = Path::new(&path)
        .strip_prefix(&root)
        .map_err(|_| format!("the host's group {path} is outside the mount's root {root}"))?;
    Ok(Path::new(&mount).join(relative))
}

fn has_word(text: &str, word: &str) -> bool {
    text.split_whitespace().any(|w| w == word)
}

fn create_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Removes the empty groups of hosts that are gone (killed before they
/// could remove their workers' groups, and v2 hosts' own leaves). A group's
/// name carries its host's pid: `bothost-<host pid>-<bot>-<generation>` or
/// `bothost-host-<host pid>`.
fn remove_orphans(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let host = name
            .to_str()
            .and_then(|n| n.strip_prefix("bothost-"))
            .map(|rest| rest.strip_prefix("host-").unwrap_or(rest))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's memory cgroup, when the tests may create groups there.
    fn writable() -> Option<Hierarchy> {
        let found =
            Hierarchy::find().and_then(|h| h.prepare().map(|()| h).map_err(|e| e.to_string()));
        if let Err(why) = &found {
            eprintln!("no writable memory cgroup here: {why}");
        }
        found.ok()
    }

    #[test]
    fn a_group_limits_and_is_removed() {
        let Some(hierarchy) = writable() else { return };
        let group = hierarchy
            .create("bothost-unit-test", 48 << 20, 64 << 20)
            .unwrap();
        assert_eq!(group.limit(), Some(64 << 20));
        assert!(!group.oom_killed());
        group.remove();
        assert!(!hierarchy.parent.join("bothost-unit-test").exists());
    }

    #[test]
    fn groups_of_hosts_that_are_gone_are_removed_at_start() {
        let Some(hierarchy) = writable() else { return };
        let parent = &hierarchy.parent;
        // pid_max is at most 2^22: this host cannot exist.
        let orphan = parent.join("bothost-99999999-bot-1");
        std::fs::create_dir(&orphan).unwrap();
        let ours = parent.join(format!("bothost-{}-bot-1", std::process::id()));
        std::fs::create_dir(&ours).unwrap();
        hierarchy.prepare().unwrap();
        let orphan_left = orphan.exists();
        let ours_left = ours.exists();
        let _ = std::fs::remove_dir(&orphan);
        let _ = std::fs::remove_dir(&ours);
        assert!(!orphan_left, "the dead host's group was removed");
        assert!(ours_left, "a live host's group was kept");
    }

    const HYBRID_CGROUP: &str = "4:memory:/jobs/42\n1:cpu:/\n0::/\n";
    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";
    const V2_CGROUP: &str = "0::/system.slice/bothost.service\n";
    const V2_MOUNTS: &str = "\
24 1 8:1 / / rw - ext4 /dev/sda1 rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn the_hosts_group_is_found_in_either_hierarchy() {
        assert_eq!(
            locate(HYBRID_CGROUP, HYBRID_MOUNTS, Version::V1).unwrap(),
            Path::new("/sys/fs/cgroup/memory/jobs/42")
        );
        assert_eq!(
            locate(HYBRID_CGROUP, HYBRID_MOUNTS, Version::V2).unwrap(),
            Path::new("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            locate(V2_CGROUP, V2_MOUNTS, Version::V2).unwrap(),
            Path::new("/sys/fs/cgroup/system.slice/bothost.service")
        );
        assert_eq!(
            locate(V2_CGROUP, V2_MOUNTS, Version::V1).unwrap_err(),
            "no memory controller of its own"
        );
        // A container whose mount's root is its own group.
        let mounts = "30 24 0:26 /system.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            locate(V2_CGROUP, mounts, Version::V2).unwrap(),
            Path::new("/sys/fs/cgroup/bothost.service")
        );
        let outside = "30 24 0:26 /other /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert!(locate(V2_CGROUP, outside, Version::V2)
            .unwrap_err()
            .contains("outside the mount's root"));
    }

    /// A directory laid out like a delegated cgroup v2 group: the kernel
    /// side (files appearing, limits enforced) is not there, the host's
    /// writes are.
    fn fake_v2() -> (tempfile::TempDir, Hierarchy) {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("bothost.service");
        std::fs::create_dir(&parent).unwrap();
        std::fs::write(parent.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        std::fs::write(parent.join("cgroup.subtree_control"), "\n").unwrap();
        std::fs::write(
            parent.join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        let hierarchy = Hierarchy {
            version: Version::V2,
            parent,
        };
        (dir, hierarchy)
    }

    #[test]
    fn on_cgroup_v2_the_host_moves_to_a_leaf_and_delegates_memory_to_workers() {
        let (_dir, hierarchy) = fake_v2();
        hierarchy.prepare().unwrap();
        let parent = &hierarchy.parent;
        let leaf = parent.join(format!("bothost-host-{}", std::process::id()));
        assert_eq!(
            std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap(),
            std::process::id().to_string(),
            "the host moved itself out of the group its workers' groups go in"
        );
        assert_eq!(
            std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap(),
            "+memory"
        );

        let dir = parent.join("bothost-1-alpha-3");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("memory.swap.max"), "max").unwrap();
        let group = hierarchy
            .create("bothost-1-alpha-3", 100 << 20, 110 << 20)
            .unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (110u64 << 20).to_string());
        assert_eq!(read("memory.high"), (100u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(group.limit(), Some(110 << 20));

        assert!(!group.oom_killed());
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 12\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert!(group.oom_killed(), "memory.events' oom_kill is read");
        std::fs::write(dir.join("memory.peak"), "115343360\n").unwrap();
        assert_eq!(group.peak(), Some(115_343_360));
    }

    #[test]
    fn on_cgroup_v2_a_group_that_already_delegates_memory_is_used_as_it_is() {
        let (_dir, hierarchy) = fake_v2();
        let subtree = hierarchy.parent.join("cgroup.subtree_control");
        std::fs::write(&subtree, "memory pids\n").unwrap();
        hierarchy.prepare().unwrap();
        assert_eq!(std::fs::read_to_string(&subtree).unwrap(), "memory pids\n");
        assert!(!hierarchy
            .parent
            .join(format!("bothost-host-{}", std::process::id()))
            .exists());
    }

    #[test]
    fn leaves_of_v2_hosts_that_are_gone_are_removed() {
        let (_dir, hierarchy) = fake_v2();
        let gone = hierarchy.parent.join("bothost-host-99999999");
        std::fs::create_dir(&gone).unwrap();
        hierarchy.prepare().unwrap();
        assert!(!gone.exists());
    }
}
