//! Memory sampling: the resident set size of the workers and of the host.
//!
//! Owns the `sysinfo` handle. It refreshes only the pids it is asked about
//! and only their memory, so a sample costs a few `/proc` reads however busy
//! the machine is. It measures; deciding what a figure means is the
//! Supervisor's job.

use std::collections::HashMap;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

pub struct Sampler {
    system: System,
    host: Pid,
}

/// One reading: RSS in bytes per worker pid, and the host's.
#[derive(Debug, Default)]
pub struct Sample {
    pub workers: HashMap<u32, u64>,
    pub host: Option<u64>,
}

impl Sampler {
    pub fn new() -> Result<Self, sysinfo::Error> {
        Ok(Self {
            system: System::new()?,
            host: Pid::from_u32(std::process::id()),
        })
    }

    pub fn sample(&mut self, worker_pids: &[u32]) -> Sample {
        let mut pids: Vec<Pid> = worker_pids.iter().copied().map(Pid::from_u32).collect();
        pids.push(self.host);
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        let rss = |pid: Pid| self.system.process(pid).map(sysinfo::Process::memory);
        Sample {
            workers: worker_pids
                .iter()
                .filter_map(|&pid| Some((pid, rss(Pid::from_u32(pid))?)))
                .collect(),
            host: rss(self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_real_process_and_skips_a_missing_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id();
        let sample = Sampler::new().unwrap().sample(&[pid, u32::MAX - 1]);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(sample.workers[&pid] > 0);
        assert!(!sample.workers.contains_key(&(u32::MAX - 1)));
        assert!(sample.host.unwrap() > 1024 * 1024, "{:?}", sample.host);
    }
}
