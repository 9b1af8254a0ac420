//! How fast memory governance reacts, measured from outside: the PM2
//! experiment. One builtin bot leaks `LEAK` per turn and is sent ten turns
//! a second (5 MB/s with the default 512 KB) against a 100 MB budget. The
//! bench reads the worker's RSS from `/proc/PID/status` every 50 ms itself
//! (not through bothost) and, for each generation, prints when it crossed
//! the budget, how far above it went, and how long after the crossing its
//! process was gone.
//!
//! `cargo run --release -p bothost-bench --bin memreact -- [CYCLES] [SUPERVISOR KEYS]`,
//! e.g. `-- 5 'sample_interval = "1s"'`.
//!
//! `-- idle N [SUPERVISOR KEYS]`: the cost of watching N idle bots instead: the host's CPU
//! time (utime + stime from `/proc/PID/stat`) over 30 s, as a share of one
//! core. It includes everything the idle host does (heartbeats too), so the
//! sampling alone costs at most that.

use std::time::{Duration, Instant};

use bothost::process::vm_rss as rss;
use bothost_bench::{cpu_time, host_status, mib, start_host};

const BUDGET: u64 = 100_000_000;
const LEAK: &str = "512KB";
const TURNS_PER_SECOND: u64 = 10;

#[derive(Debug)]
struct Cycle {
    max_rss: u64,
    /// From the budget crossing to the process being gone.
    gone_after_crossing: Option<Duration>,
    /// From the first reading to the process being gone.
    lifetime: Duration,
}

fn idle(bots: usize, keys: &str) -> anyhow::Result<()> {
    let tables: String = (0..bots)
        .map(|i| format!("[[bots]]\nname = \"b{i}\"\n"))
        .collect();
    let host = start_host(&format!("restart_schedule = \"off\"\n{keys}"), &tables)?;
    std::thread::sleep(Duration::from_secs(5)); // start-up settles
    let (before, t0) = (cpu_time(host.pid()).unwrap_or_default(), Instant::now());
    std::thread::sleep(Duration::from_secs(30));
    let used = (cpu_time(host.pid()).unwrap_or_default() - before).as_secs_f64();
    println!(
        "{bots} idle bots ({keys:?}): the host used {:.3} s of CPU in {:.0} s: {:.2} % of one core",
        used,
        t0.elapsed().as_secs_f64(),
        100.0 * used / t0.elapsed().as_secs_f64()
    );
    host.stop()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "idle") {
        let bots = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(50);
        return idle(bots, args.get(3).map_or("", String::as_str));
    }
    let cycles: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let keys = args.get(2).cloned().unwrap_or_default();
    let host = start_host(
        &format!("restart_schedule = \"off\"\n{keys}"),
        &format!(
            "[[bots]]\nname = \"leaky\"\nmemory_budget = \"{BUDGET}B\"\n\
             [bots.builtin]\ntoken_delay = \"0s\"\nleak_per_message = \"{LEAK}\"\n"
        ),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The load: ten turns a second, whichever generation serves them.
    let driver = {
        let socket = host.control_socket();
        let stop = stop.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / TURNS_PER_SECOND));
            let mut client = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                if client.is_none() {
                    client = bothost::control::Client::connect(&socket).await.ok();
                }
                if let Some(c) = client.as_mut() {
                    if c.chat("leaky", "leak").await.is_err() {
                        client = None;
                    }
                }
            }
        })
    };

    println!("# memreact: {LEAK} per turn at {TURNS_PER_SECOND} turns/s, budget {}, supervisor keys: {keys:?}", mib(BUDGET));
    println!("| cycle | max RSS | over budget | gone after crossing |");
    println!("|---|---|---|---|");
    let mut results = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60 * cycles as u64);
    while results.len() < cycles && Instant::now() < deadline {
        let report = rt.block_on(host_status(&host))?;
        let Some(pid) = report.bots.first().and_then(|b| b.pid) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let born = Instant::now();
        let mut max_rss = 0;
        let mut crossed: Option<Instant> = None;
        while let Some(r) = rss(pid) {
            max_rss = max_rss.max(r);
            if r > BUDGET && crossed.is_none() {
                crossed = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let cycle = Cycle {
            max_rss,
            gone_after_crossing: crossed.map(|t| t.elapsed()),
            lifetime: born.elapsed(),
        };
        println!(
            "| {} | {} | {} | {} |",
            results.len() + 1,
            mib(cycle.max_rss),
            mib(cycle.max_rss.saturating_sub(BUDGET)),
            cycle.gone_after_crossing.map_or_else(
                || format!(
                    "never crossed (lived {:.1} s)",
                    cycle.lifetime.as_secs_f64()
                ),
                |d| format!("{:.2} s", d.as_secs_f64())
            ),
        );
        results.push(cycle);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(driver)?;
    let mut over: Vec<u64> = results
        .iter()
        .map(|c| c.max_rss.saturating_sub(BUDGET))
        .collect();
    over.sort_unstable();
    let mut delays: Vec<f64> = results
        .iter()
        .map(|c| c.gone_after_crossing.map_or(0.0, |d| d.as_secs_f64()))
        .collect();
    delays.sort_by(f64::total_cmp);
    if let (Some(&lo), Some(&hi)) = (over.first(), over.last()) {
        println!(
            "\nover budget: min {} median {} max {}; gone after crossing: min {:.2} s median {:.2} s max {:.2} s ({} of {} generations crossed)",
            mib(lo),
            mib(over[over.len() / 2]),
            mib(hi),
            delays[0],
            delays[delays.len() / 2],
            delays[delays.len() - 1],
            results.iter().filter(|c| c.gone_after_crossing.is_some()).count(),
            results.len()
        );
    }
    host.stop()?;
    Ok(())
}
