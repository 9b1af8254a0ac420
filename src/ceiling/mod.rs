//! Memory ceilings the kernel enforces, so the Supervisor's sampling is not
//! the only guard against a runaway.
//!
//! At start the host picks the strongest the machine allows
//! (`supervisor.memory_ceiling = "auto"`):
//!
//! 1. a memory cgroup per worker generation ([`cgroup`]: v1's memory
//!    controller, or a v2 group delegated to the host), the worker joining
//!    it between fork and exec so the whole worker is counted; the kernel
//!    kills it at the ceiling and the group's events say so;
//! 2. failing that, a data-segment limit per worker ([`rlimit`]), refitted
//!    at every reading; a refused allocation ends the worker with
//!    [`bot_worker::EXIT_OUT_OF_MEMORY`];
//! 3. with `"off"`, the Supervisor's sampling alone (its user-space ceiling
//!    at 105 % of the budget).
//!
//! Either kernel death is reported as reason `memory`. Which one is active
//! is said once at start, in `bothost status`, in `check-config` and in
//! `bothost_memory_enforcement_info{ceiling}`. This module never decides
//! anything about workers: it sets limits and reads them back.

pub mod cgroup;
pub mod rlimit;

use std::ffi::CString;
use std::io;
use std::process::ExitStatus;

use self::cgroup::{Group, Hierarchy};
use crate::config::MemoryCeiling as Mode;

/// How this host's workers are stopped at their ceiling.
#[derive(Debug, Clone)]
pub enum Ceilings {
    Cgroup(Hierarchy),
    DataLimit { no_cgroup: String },
    Unavailable { why: String },
}

impl Ceilings {
    /// Finds and prepares the strongest ceiling `mode` allows (creates a
    /// probe group, removes dead hosts' groups, on v2 moves the host into a
    /// leaf of its own).
    pub fn detect(mode: Mode) -> Self {
        Self::choose(mode, |h| h.prepare())
    }

    /// What [`Ceilings::detect`] would find, changing nothing: for
    /// `check-config`.
    pub fn inspect(mode: Mode) -> Self {
        Self::choose(mode, |h| {
            nix::unistd::access(&h.parent, nix::unistd::AccessFlags::W_OK).map_err(io::Error::from)
        })
    }

    fn choose(mode: Mode, usable: impl Fn(&Hierarchy) -> io::Result<()>) -> Self {
        let no_cgroup = match mode {
            Mode::Off => {
                return Ceilings::Unavailable {
                    why: "supervisor.memory_ceiling is \"off\"".into(),
                }
            }
            Mode::Rlimit => "supervisor.memory_ceiling is \"rlimit\"".to_owned(),
            Mode::Auto => match Hierarchy::find() {
                Ok(hierarchy) => match usable(&hierarchy) {
                    Ok(()) => return Ceilings::Cgroup(hierarchy),
                    Err(e) => format!(
                        "cannot create a memory cgroup in {}: {e}",
                        hierarchy.parent.display()
                    ),
                },
                Err(why) => why,
            },
        };
        Ceilings::DataLimit { no_cgroup }
    }

    /// The `ceiling` label of `bothost_memory_enforcement_info`: `kernel`
    /// (a cgroup), `rlimit` or `supervisor`.
    pub fn enforcer(&self) -> &'static str {
        match self {
            Ceilings::Cgroup(_) => "kernel",
            Ceilings::DataLimit { .. } => "rlimit",
            Ceilings::Unavailable { .. } => "supervisor",
        }
    }

    /// One line for the log, `bothost status` and `check-config`.
    pub fn describe(&self) -> String {
        match self {
            Ceilings::Cgroup(hierarchy) => format!("kernel: {}", hierarchy.describe()),
            Ceilings::DataLimit { no_cgroup } => format!(
                "rlimit: each worker's data segment limited to what it has left to its \
                 ceiling, refitted at every reading ({no_cgroup})"
            ),
            Ceilings::Unavailable { why } => {
                format!("user space only (the Supervisor kills a worker at its ceiling): {why}")
            }
        }
    }

    /// The ceiling for one worker generation: its group (named `name`)
    /// made, or its data limit chosen. `budget` and `ceiling` in bytes.
    pub fn for_worker(&self, name: &str, budget: u64, ceiling: u64) -> io::Result<Ceiling> {
        Ok(match self {
            Ceilings::Cgroup(hierarchy) => Ceiling::Group(hierarchy.create(name, budget, ceiling)?),
            Ceilings::DataLimit { .. } => Ceiling::DataLimit,
            Ceilings::Unavailable { .. } => Ceiling::None,
        })
    }
}

/// One worker generation's kernel ceiling.
#[derive(Debug)]
pub enum Ceiling {
    None,
    Group(Group),
    DataLimit,
}

/// What a forked child does before exec to put itself under its ceiling.
#[derive(Debug, Default)]
pub struct AtExec {
    join: Option<CString>,
    data_limit: Option<u64>,
}

impl AtExec {
    /// Only async-signal-safe calls, no allocation.
    pub fn apply(&self) {
        if let Some(procs) = &self.join {
            cgroup::join_self(procs);
        }
        if let Some(bytes) = self.data_limit {
            rlimit::limit_self(bytes);
        }
    }
}

impl Ceiling {
    pub fn at_exec(&self, ceiling: u64) -> AtExec {
        match self {
            Ceiling::None => AtExec::default(),
            Ceiling::Group(group) => AtExec {
                join: group.procs_path(),
                data_limit: None,
            },
            Ceiling::DataLimit => AtExec {
                join: None,
                data_limit: Some(ceiling + rlimit::AT_EXEC_MARGIN),
            },
        }
    }

    /// After spawn: the worker is in its group (it joined before exec; if
    /// that failed it is moved now, missing its start-up pages). `Err` when
    /// the ceiling could not be applied: the caller drops it.
    pub fn check_spawned(&self, pid: u32) -> io::Result<()> {
        match self {
            Ceiling::Group(group) if !group.contains(pid) => group.add(pid),
            _ => Ok(()),
        }
    }

    /// Once the worker is ready, and (data limit) at every reading: fits
    /// the limit to what the worker holds now, so that its RSS stops at
    /// `ceiling`.
    pub fn fit(&self, pid: u32, budget: u64, ceiling: u64) -> io::Result<()> {
        match self {
            Ceiling::None => Ok(()),
            Ceiling::Group(group) => group.fit_to_rss(pid, budget, ceiling),
            Ceiling::DataLimit => rlimit::fit(pid, ceiling).map(drop),
        }
    }

    /// Whether the kernel stopped the worker at this ceiling, from the
    /// group's events or the worker's exit status.
    pub fn stopped_it(&self, exit: Option<ExitStatus>) -> bool {
        match self {
            Ceiling::None => false,
            Ceiling::Group(group) => group.oom_killed(),
            Ceiling::DataLimit => {
                exit.and_then(|s| s.code()) == Some(bot_worker::EXIT_OUT_OF_MEMORY)
            }
        }
    }

    /// The most the worker held, where the kernel kept count.
    pub fn peak(&self) -> Option<u64> {
        match self {
            Ceiling::Group(group) => group.peak(),
            _ => None,
        }
    }

    /// Removes the group, if any (after the worker is reaped).
    pub fn remove(&self) {
        if let Ceiling::Group(group) = self {
            group.remove();
        }
    }
}
