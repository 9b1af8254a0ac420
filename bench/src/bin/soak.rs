//! Accelerated soak: the real `bothost serve` under continuous chat, one bot
//! injected with a leak. Prints a CSV time series, then a summary. Asserts
//! nothing; the figures go in the README and the closing note.
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p bothost-bench --bin soak -- [SECONDS] [BOTS] [LEAK_PER_MESSAGE]
//! ```
//!
//! Defaults: 180 s, 5 bots, `1KB` leaked per message by the bot `leaky`.
//! Every bot has two connections chatting back to back through the control
//! socket, with the builtin engine at zero token delay.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bothost::control::Client;
use bothost_bench::{mib, start_host};

const CONNECTIONS_PER_BOT: usize = 2;

#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = args.first().map_or(Ok(180), |s| s.parse())?;
    let bots: usize = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let leak = args.get(2).cloned().unwrap_or_else(|| "1KB".into());
    if bots < 1 {
        bail!("at least one bot");
    }
    let mut names = vec!["leaky".to_owned()];
    names.extend((1..bots).map(|i| format!("steady-{i}")));
    let bots_toml: String = names
        .iter()
        .map(|n| {
            let leak = if n == "leaky" { leak.as_str() } else { "0B" };
            format!(
                "[[bots]]\nname = \"{n}\"\n[bots.builtin]\ntoken_delay = \"0s\"\nleak_per_message = \"{leak}\"\n"
            )
        })
        .collect();
    let host = start_host(
        "sample_interval = \"500ms\"\nleak_window = \"20s\"\nleak_warmup = \"5s\"\n\
         leak_horizon = \"1h\"\nleak_min_growth = \"4MB\"\nrestart_schedule = \"off\"",
        &bots_toml,
    )?;
    let socket = host.control_socket();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(soak(&socket, &names, Duration::from_secs(seconds), &leak));
    let metrics = host.http_get("/metrics").1;
    host.stop()?;
    let summary = result?;

    println!("\n## Restarts by reason");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("bothost_worker_restarts_total{") && !l.ends_with(" 0"))
    {
        println!("{line}");
    }
    println!("{summary}");
    Ok(())
}

async fn soak(
    socket: &Path,
    names: &[String],
    duration: Duration,
    leak: &str,
) -> anyhow::Result<String> {
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for bot in names {
        for conn in 0..CONNECTIONS_PER_BOT {
            let (socket, bot) = (socket.to_owned(), bot.clone());
            let (counters, stop) = (counters.clone(), stop.clone());
            let mut client = Client::connect(&socket).await?;
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match client.chat(&bot, &format!("soak {conn} {n}")).await {
                        Ok(Ok(_)) => counters.completed.fetch_add(1, Ordering::Relaxed),
                        _ => counters.failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    let started = Instant::now();
    print!("t_s,host_rss_bytes");
    for name in names {
        print!(",{name}_rss_bytes,{name}_generation");
    }
    println!(",turns_completed,turns_failed");

    let mut status_client = Client::connect(socket).await?;
    let mut leaky_generation = 1;
    let mut generation_since = Duration::ZERO;
    let mut replacements = Vec::new();
    let mut baseline: Option<(u64, u64)> = None; // (turns, host rss)
    let mut last: Option<(u64, u64)> = None;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = started.elapsed();
        let report = status_client.status().await?;
        let done = counters.completed.load(Ordering::Relaxed);
        let host_rss = report.host_rss_bytes.unwrap_or(0);
        print!("{:.0},{host_rss}", t.as_secs_f64());
        for bot in &report.bots {
            print!(",{},{}", bot.rss_bytes.unwrap_or(0), bot.generation);
        }
        println!(",{done},{}", counters.failed.load(Ordering::Relaxed));
        if let Some(leaky) = report.bots.iter().find(|b| b.name == "leaky") {
            if leaky.generation != leaky_generation {
                replacements.push(t - generation_since);
                leaky_generation = leaky.generation;
                generation_since = t;
            }
        }
        // The host's own growth is measured after a warm-up tenth.
        if baseline.is_none() && t >= duration / 10 {
            baseline = Some((done, host_rss));
        }
        last = Some((done, host_rss));
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let completed = counters.completed.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    let mut out = format!(
        "\n## Summary ({} bots, {} s, leak {leak}/message on `leaky`)\n\
                 turns completed: {completed} ({:.0}/s), failed: {failed}\n",
        names.len(),
        duration.as_secs(),
        completed as f64 / duration.as_secs_f64()
    );
    if let (Some((t0, r0)), Some((t1, r1))) = (baseline, last) {
        let turns = t1.saturating_sub(t0).max(1);
        let growth = r1 as f64 - r0 as f64;
        out.push_str(&format!(
            "host RSS: {} -> {} over {turns} turns: {:+.3} MiB per 100k turns\n",
            mib(r0),
            mib(r1),
            growth / 1048576.0 * 100_000.0 / turns as f64
        ));
    }
    let shown: Vec<String> = replacements
        .iter()
        .map(|d| format!("{:.0} s", d.as_secs_f64()))
        .collect();
    out.push_str(&format!(
        "leak start to replacement (each generation of `leaky`): [{}]\n",
        shown.join(", ")
    ));
    Ok(out)
}
