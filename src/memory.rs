//! Memory: reading workers' resident set size, and the rules that say what
//! a series of readings means.
//!
//! [`Sampler`] owns the `sysinfo` handle. It refreshes only the pids it is
//! asked about and only their memory, so a sample costs a few `/proc` reads
//! however busy the machine is.
//!
//! [`MemoryWatch`] judges one worker generation's readings against its
//! [`MemoryPolicy`]: the warning line, the budget, and the leak trend. These
//! are plain functions over numbers, so unit tests feed them synthetic
//! series. This module never acts: the Supervisor restarts workers.
//!
//! # How a leak is told from growth
//!
//! A leak is memory that is never given back, so it shows in the *floor* of
//! the series, not its peaks. The window (after a warm-up, which ignores the
//! allocator settling after start) is cut into [`BUCKETS`] equal slices; the
//! minimum of each slice is the floor there. The worker is leaking when the
//! floors never go down, rise by at least `leak_min_growth` across the
//! window, and their fitted slope would reach the budget within
//! `leak_horizon`. A saw-tooth (allocate, then free) has flat floors; a high
//! but stable worker has no rise; both are left alone.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

pub struct Sampler {
    system: System,
    host: Pid,
    /// Count proportional set size (`/proc/PID/smaps_rollup`) instead of RSS.
    pss: bool,
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
            pss: false,
        })
    }

    /// Counts each process's proportional set size (shared pages split
    /// between their users) rather than its RSS.
    pub fn with_pss(mut self, pss: bool) -> Self {
        self.pss = pss;
        self
    }

    /// Whether the machine has `bytes` available for one more generation
    /// (unknown counts as yes: refusing handovers on a guess is worse).
    pub fn has_room_for(&mut self, bytes: u64) -> bool {
        self.system.refresh_memory();
        let available = self.system.available_memory();
        available == 0 || available >= bytes
    }

    /// Reads each of `worker_pids` with every process it started (a
    /// bot's engine may run helpers): the RSS of the whole tree. And the
    /// host too when `host` is set.
    pub fn sample(&mut self, worker_pids: &[u32], host: bool) -> Sample {
        let trees: Vec<(u32, Vec<u32>)> = worker_pids
            .iter()
            .map(|&pid| (pid, descendants(pid)))
            .collect();
        let mut pids: Vec<Pid> = trees
            .iter()
            .flat_map(|(pid, children)| std::iter::once(pid).chain(children))
            .map(|&p| Pid::from_u32(p))
            .collect();
        if host {
            pids.push(self.host);
        }
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        let pss = self.pss;
        let rss = |pid: Pid| {
            if pss {
                crate::process::pss(pid.as_u32())
            } else {
                self.system.process(pid).map(sysinfo::Process::memory)
            }
        };
        Sample {
            workers: trees
                .iter()
                .filter_map(|(pid, children)| {
                    let own = rss(Pid::from_u32(*pid))?;
                    let rest: u64 = children.iter().filter_map(|&c| rss(Pid::from_u32(c))).sum();
                    Some((*pid, own + rest))
                })
                .collect(),
            host: if host { rss(self.host) } else { None },
        }
    }
}

/// Every process `pid` started, and theirs (from each thread's
/// `/proc/PID/task/TID/children`): a few small reads for a worker with no
/// helpers.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !found.contains(&child) {
                    found.push(child);
                    stack.push(child);
                }
            }
        }
    }
    found
}

/// Slices of the leak window whose minimums make the floor series.
pub const BUCKETS: usize = 5;

/// How often a worker above its warning line is read.
pub const NEAR_INTERVAL: Duration = Duration::from_millis(250);
/// How often a worker above [`CLOSE_RATIO`] of its budget is read.
pub const CLOSE_INTERVAL: Duration = Duration::from_millis(50);
pub const CLOSE_RATIO: f64 = 0.95;
/// A worker at this multiple of its budget is killed at once: the user-space
/// ceiling, for a runaway that a handover (which lets the old generation
/// finish its turns) would not stop.
pub const CEILING_RATIO: f64 = 1.05;
/// Where the kernel stops a worker (its cgroup's limit), when it can: the
/// bound no sampling interval can miss.
pub const KERNEL_CEILING_RATIO: f64 = 1.10;
/// Readings this recent make the short-term slope a prediction is made from.
const RECENT: Duration = Duration::from_secs(1);
/// Until a generation's own start-up time is known.
const DEFAULT_LEAD: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPolicy {
    pub budget: u64,
    /// Fraction of the budget at which a warning is raised.
    pub warn_ratio: f64,
    /// Readings in a row over budget before a restart.
    pub over_budget_samples: u32,
    pub leak_window: Duration,
    pub leak_warmup: Duration,
    pub leak_horizon: Duration,
    pub leak_min_growth: u64,
}

impl MemoryPolicy {
    /// The user-space ceiling: [`CEILING_RATIO`] of the budget.
    pub fn ceiling(&self) -> u64 {
        (self.budget as f64 * CEILING_RATIO) as u64
    }

    /// The kernel's limit, where it can enforce one: [`KERNEL_CEILING_RATIO`]
    /// of the budget.
    pub fn kernel_ceiling(&self) -> u64 {
        (self.budget as f64 * KERNEL_CEILING_RATIO) as u64
    }
}

/// What a reading calls for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// At [`CEILING_RATIO`] of the budget: kill now, whatever it is doing.
    Ceiling { rss: u64 },
    /// Rising fast enough to cross the budget within the time a handover
    /// takes: start the next generation now, so it serves before the
    /// crossing.
    Approaching { rss: u64, slope: f64, eta: Duration },
    /// Over budget for `over_budget_samples` readings in a row.
    OverBudget { rss: u64 },
    /// The floor is rising steadily and would reach the budget within the
    /// horizon.
    Leak {
        rss: u64,
        slope: f64,
        time_to_budget: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// This reading crossed the warning line upward (once per crossing).
    pub warning_crossed: bool,
    pub action: Option<Action>,
}

/// One worker generation's memory history.
#[derive(Debug, Default)]
pub struct MemoryWatch {
    /// (age of the generation, RSS) inside the leak window, after warm-up.
    samples: VecDeque<(Duration, u64)>,
    /// The readings of the last [`RECENT`], for the short-term slope.
    recent: VecDeque<(Duration, u64)>,
    over_budget_run: u32,
    above_warning: bool,
    slope: f64,
    last: Option<u64>,
    /// How long a handover takes for this bot: the time to predict over.
    lead: Option<Duration>,
}

impl MemoryWatch {
    /// How long until this worker should be read again: `normal` below its
    /// warning line, more often as it nears its budget.
    pub fn next_interval(&self, policy: &MemoryPolicy, normal: Duration) -> Duration {
        let Some(rss) = self.last else {
            return normal;
        };
        let share = rss as f64 / policy.budget.max(1) as f64;
        if share >= CLOSE_RATIO {
            CLOSE_INTERVAL.min(normal)
        } else if share >= policy.warn_ratio {
            NEAR_INTERVAL.min(normal)
        } else {
            normal
        }
    }

    /// Sets the time a prediction looks ahead from the generation's start-up
    /// time: twice that (a handover starts a generation and switches to
    /// it), plus two close readings and a margin.
    pub fn set_startup(&mut self, startup: Duration) {
        self.lead = Some(startup * 2 + CLOSE_INTERVAL * 2 + Duration::from_millis(200));
    }

    /// Records one reading taken `age` after the generation became ready.
    pub fn observe(&mut self, policy: &MemoryPolicy, age: Duration, rss: u64) -> Reading {
        self.last = Some(rss);
        self.recent.push_back((age, rss));
        while self
            .recent
            .front()
            .is_some_and(|&(t, _)| age.saturating_sub(t) > RECENT)
        {
            self.recent.pop_front();
        }
        if rss >= policy.ceiling() {
            return Reading {
                warning_crossed: !self.above_warning,
                action: Some(Action::Ceiling { rss }),
            };
        }
        let warn_line = (policy.budget as f64 * policy.warn_ratio) as u64;
        let was_above = self.above_warning;
        self.above_warning = rss >= warn_line;
        self.over_budget_run = if rss > policy.budget {
            self.over_budget_run + 1
        } else {
            0
        };
        if age >= policy.leak_warmup {
            self.samples.push_back((age, rss));
            while self
                .samples
                .front()
                .is_some_and(|&(t, _)| age.saturating_sub(t) > policy.leak_window)
            {
                self.samples.pop_front();
            }
        }
        let trend = floor_trend(&self.samples, policy.leak_window);
        self.slope = trend.map_or(0.0, |t| t.slope);

        let action = if self.over_budget_run >= policy.over_budget_samples {
            Some(Action::OverBudget { rss })
        } else if let Some(approaching) = self.approaching(policy, rss) {
            Some(approaching)
        } else {
            trend.and_then(|t| leak(policy, &t, rss))
        };
        Reading {
            warning_crossed: self.above_warning && !was_above,
            action,
        }
    }

    /// Above the warning line and, at the slope of the last second, over
    /// the budget within the lead time.
    fn approaching(&self, policy: &MemoryPolicy, rss: u64) -> Option<Action> {
        if !self.above_warning || rss > policy.budget {
            return None;
        }
        let (first, last) = (self.recent.front()?.0, self.recent.back()?.0);
        if self.recent.len() < 3 || last.saturating_sub(first) < CLOSE_INTERVAL * 3 {
            return None;
        }
        let points: Vec<(f64, f64)> = self
            .recent
            .iter()
            .map(|&(t, r)| (t.as_secs_f64(), r as f64))
            .collect();
        let slope = least_squares_slope(&points);
        if slope <= 0.0 {
            return None;
        }
        let eta = Duration::from_secs_f64((policy.budget - rss) as f64 / slope);
        (eta <= self.lead.unwrap_or(DEFAULT_LEAD)).then_some(Action::Approaching {
            rss,
            slope,
            eta,
        })
    }

    /// Fitted slope of the floor in bytes per second (0 until known).
    pub fn slope(&self) -> f64 {
        self.slope
    }

    pub fn above_warning(&self) -> bool {
        self.above_warning
    }
}

#[derive(Debug, Clone, Copy)]
struct Trend {
    slope: f64,
    rise: i64,
    never_falls: bool,
}

fn leak(policy: &MemoryPolicy, trend: &Trend, rss: u64) -> Option<Action> {
    let growth = u64::try_from(trend.rise).unwrap_or(0);
    if !trend.never_falls || growth < policy.leak_min_growth || trend.slope <= 0.0 {
        return None;
    }
    let headroom = policy.budget.checked_sub(rss)?;
    let time_to_budget = Duration::from_secs_f64(headroom as f64 / trend.slope);
    (time_to_budget < policy.leak_horizon).then_some(Action::Leak {
        rss,
        slope: trend.slope,
        time_to_budget,
    })
}

/// The floor trend of `samples`, once they span most of the window.
fn floor_trend(samples: &VecDeque<(Duration, u64)>, window: Duration) -> Option<Trend> {
    let (first, last) = (samples.front()?.0, samples.back()?.0);
    let span = last.saturating_sub(first);
    if span < window.mul_f64(0.75) || samples.len() < 2 * BUCKETS {
        return None;
    }
    let width = span.as_secs_f64() / BUCKETS as f64;
    let mut floors = [u64::MAX; BUCKETS];
    for &(t, rss) in samples {
        let i = (((t - first).as_secs_f64() / width) as usize).min(BUCKETS - 1);
        floors[i] = floors[i].min(rss);
    }
    if floors.contains(&u64::MAX) {
        return None; // a gap in the readings: not enough to judge
    }
    let points: Vec<(f64, f64)> = floors
        .iter()
        .enumerate()
        .map(|(i, &f)| ((i as f64 + 0.5) * width, f as f64))
        .collect();
    Some(Trend {
        slope: least_squares_slope(&points),
        rise: floors[BUCKETS - 1] as i64 - floors[0] as i64,
        never_falls: floors.windows(2).all(|w| w[1] >= w[0]),
    })
}

fn least_squares_slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), &(x, y)| {
        (
            num + (x - mean_x) * (y - mean_y),
            den + (x - mean_x).powi(2),
        )
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn policy() -> MemoryPolicy {
        MemoryPolicy {
            budget: 100 * MB,
            warn_ratio: 0.8,
            over_budget_samples: 3,
            leak_window: Duration::from_secs(60),
            leak_warmup: Duration::from_secs(30),
            leak_horizon: Duration::from_secs(3600),
            leak_min_growth: 2 * MB,
        }
    }

    /// Feeds one reading a second for `secs` seconds; returns the first
    /// action and when it came.
    fn run(secs: u64, rss_at: impl Fn(u64) -> u64) -> (Option<(u64, Action)>, MemoryWatch) {
        let p = policy();
        let mut w = MemoryWatch::default();
        for t in 0..secs {
            if let Some(a) = w.observe(&p, Duration::from_secs(t), rss_at(t)).action {
                return (Some((t, a)), w);
            }
        }
        (None, w)
    }

    #[test]
    fn a_steady_leak_is_caught_long_before_the_budget() {
        // 10 MB baseline, +50 kB/s: the budget is 30 minutes away.
        let (hit, _) = run(600, |t| 10 * MB + t * 50_000);
        let (t, action) = hit.expect("leak detected");
        let Action::Leak {
            slope,
            time_to_budget,
            rss,
        } = action
        else {
            panic!("{action:?}")
        };
        assert!(t <= 30 + 60 + 2, "after warm-up plus one window, at {t}s");
        assert!((slope - 50_000.0).abs() < 2_000.0, "{slope}");
        assert!(rss < 100 * MB / 2, "caught at {rss}, far under budget");
        assert!(
            time_to_budget > Duration::from_secs(1000),
            "{time_to_budget:?}"
        );
    }

    #[test]
    fn a_leak_with_noise_on_top_is_still_a_leak() {
        let (hit, _) = run(600, |t| 10 * MB + t * 50_000 + (t * 7919 % 13) * 100_000);
        assert!(matches!(hit, Some((_, Action::Leak { .. }))), "{hit:?}");
    }

    #[test]
    fn high_but_stable_memory_is_not_a_leak() {
        // 90% of budget, jittering by a megabyte.
        let (hit, w) = run(600, |t| 90 * MB + (t * 7919 % 10) * 100_000);
        assert_eq!(hit, None);
        assert!(w.above_warning());
        assert!(w.slope().abs() < 5_000.0, "{}", w.slope());
    }

    #[test]
    fn a_saw_tooth_is_not_a_leak() {
        // Allocate 20 MB over 10 s, free it all, again and again.
        let (hit, _) = run(600, |t| 20 * MB + (t % 10) * 2 * MB);
        assert_eq!(hit, None);
    }

    #[test]
    fn warm_up_growth_after_start_is_not_a_leak() {
        // Climbs fast for 25 s after start, then holds.
        let (hit, _) = run(600, |t| 5 * MB + t.min(25) * MB);
        assert_eq!(hit, None);
    }

    #[test]
    fn a_slow_leak_beyond_the_horizon_is_reported_but_not_acted_on() {
        // +5 kB/s from 10 MB: the budget is 5 hours away, beyond 1 hour.
        let (hit, w) = run(600, |t| 10 * MB + t * 5_000);
        assert_eq!(hit, None);
        assert!((w.slope() - 5_000.0).abs() < 500.0, "{}", w.slope());
    }

    #[test]
    fn over_budget_needs_consecutive_readings() {
        let p = policy();
        let mut w = MemoryWatch::default();
        let at = |s| Duration::from_secs(s);
        assert_eq!(w.observe(&p, at(0), 101 * MB).action, None);
        assert_eq!(w.observe(&p, at(1), 101 * MB).action, None);
        assert_eq!(w.observe(&p, at(2), 99 * MB).action, None); // run broken
        assert_eq!(w.observe(&p, at(3), 101 * MB).action, None);
        assert_eq!(w.observe(&p, at(4), 101 * MB).action, None);
        assert_eq!(
            w.observe(&p, at(5), 102 * MB).action,
            Some(Action::OverBudget { rss: 102 * MB })
        );
    }

    /// 5 MB/s read as the Supervisor reads it: every `normal` below the
    /// warning line, faster above it. Returns (time, action).
    fn adaptive(mb_per_sec: u64, normal: Duration) -> (Duration, Action) {
        let p = policy();
        let mut w = MemoryWatch::default();
        w.set_startup(Duration::from_millis(10));
        let mut t = Duration::ZERO;
        loop {
            let rss = 10 * MB + (t.as_secs_f64() * (mb_per_sec * MB) as f64) as u64;
            if let Some(a) = w.observe(&p, t, rss).action {
                return (t, a);
            }
            t += w.next_interval(&p, normal);
            assert!(t < Duration::from_secs(600), "never acted");
        }
    }

    #[test]
    fn a_fast_leak_is_handed_over_before_it_crosses_the_budget() {
        let (t, action) = adaptive(5, Duration::from_secs(5));
        let Action::Approaching { rss, eta, .. } = action else {
            panic!("{action:?} at {t:?}")
        };
        assert!(rss < 100 * MB, "{rss}");
        assert!(eta < Duration::from_secs(1), "{eta:?}");
        assert!(t > Duration::from_secs(16), "not before it is close: {t:?}");
    }

    #[test]
    fn sampling_speeds_up_near_the_budget() {
        let p = policy();
        let mut w = MemoryWatch::default();
        let normal = Duration::from_secs(5);
        assert_eq!(w.next_interval(&p, normal), normal);
        w.observe(&p, Duration::ZERO, 50 * MB);
        assert_eq!(w.next_interval(&p, normal), normal);
        w.observe(&p, Duration::from_secs(5), 85 * MB);
        assert_eq!(w.next_interval(&p, normal), NEAR_INTERVAL);
        w.observe(&p, Duration::from_secs(6), 96 * MB);
        assert_eq!(w.next_interval(&p, normal), CLOSE_INTERVAL);
    }

    #[test]
    fn a_runaway_past_the_ceiling_is_killed_at_once() {
        let p = policy();
        let mut w = MemoryWatch::default();
        w.observe(&p, Duration::ZERO, 50 * MB);
        let r = w.observe(&p, Duration::from_millis(50), 106 * MB);
        assert_eq!(r.action, Some(Action::Ceiling { rss: 106 * MB }));
    }

    #[test]
    fn a_high_but_flat_worker_is_not_predicted_over() {
        let p = policy();
        let mut w = MemoryWatch::default();
        for i in 0..40u64 {
            let r = w.observe(
                &p,
                Duration::from_millis(50 * i),
                97 * MB + (i % 3) * 10_000,
            );
            assert_eq!(r.action, None, "at {i}");
        }
    }

    #[test]
    fn the_warning_is_raised_once_per_crossing() {
        let p = policy();
        let mut w = MemoryWatch::default();
        let crossed: Vec<bool> = [70, 81, 85, 79, 82, 90]
            .iter()
            .enumerate()
            .map(|(i, &mb)| {
                w.observe(&p, Duration::from_secs(i as u64), mb * MB)
                    .warning_crossed
            })
            .collect();
        assert_eq!(crossed, vec![false, true, false, false, true, false]);
    }

    #[test]
    fn a_process_is_read_with_its_children() {
        let mut parent = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & sleep 5 & wait"])
            .spawn()
            .unwrap();
        let pid = parent.id();
        let found = (0..100)
            .find_map(|_| {
                let d = descendants(pid);
                std::thread::sleep(Duration::from_millis(10));
                (d.len() >= 2).then_some(d)
            })
            .expect("two children");
        let mut sampler = Sampler::new().unwrap();
        let tree = sampler.sample(&[pid], false).workers[&pid];
        let alone = {
            let mut s = System::new().unwrap();
            s.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[Pid::from_u32(pid)]),
                true,
                ProcessRefreshKind::nothing().with_memory(),
            );
            s.process(Pid::from_u32(pid))
                .map(sysinfo::Process::memory)
                .unwrap()
        };
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        );
        for child in found {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child).unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = parent.kill();
        let _ = parent.wait();
        assert!(
            tree > alone,
            "the tree ({tree}) counts more than the shell ({alone})"
        );
    }

    #[test]
    fn pss_splits_what_rss_counts_in_full() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut sampler = Sampler::new().unwrap();
        // Until it has exec'd, it is a copy of this test's tiny fork.
        let mut rss = 0;
        for _ in 0..200 {
            rss = sampler.sample(&[pid], false).workers[&pid];
            if rss > 256 * 1024 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let pss = Sampler::new()
            .unwrap()
            .with_pss(true)
            .sample(&[pid], false)
            .workers[&pid];
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(pss > 0 && pss < rss, "pss {pss}, rss {rss}");
    }

    #[test]
    fn reads_a_real_process_and_skips_a_missing_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut sampler = Sampler::new().unwrap();
        let sample = sampler.sample(&[pid, u32::MAX - 1], true);
        let workers_only = sampler.sample(&[pid], false);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(sample.workers[&pid] > 0);
        assert!(!sample.workers.contains_key(&(u32::MAX - 1)));
        assert!(sample.host.unwrap() > 1024 * 1024, "{:?}", sample.host);
        assert_eq!(workers_only.host, None);
    }
}
