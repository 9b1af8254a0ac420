//! Foundation benchmark: worker start-up, idle memory, IPC latency and
//! throughput. Prints figures; asserts nothing.
//!
//! Build everything in release first, then run:
//!
//! ```text
//! cargo build --release --workspace && cargo run --release -p bothost-bench --bin foundation
//! ```
//!
//! Part 1 starts the real `bothost serve` (five bots) and reads spawn-to-Ready
//! and idle RSS through the control socket. Parts 2 and 3 drive the real
//! Supervisor → WorkerHandle → `bot-worker` path in this process, the path
//! every chat turn takes, with the builtin engine at zero token delay.

use std::time::{Duration, Instant};

use anyhow::bail;
use bot_worker::{ChatMessage, Role};
use bothost::config::Config;
use bothost::startup::Host;
use bothost::supervisor::{start_turn, Supervisor};
use bothost::turn::TurnEvent;
use bothost_bench::{
    host_status, mib, ms, release_binaries, start_host, write_config, Percentiles,
};

fn main() -> anyhow::Result<()> {
    release_binaries()?;
    println!(
        "# bothost foundation benchmark ({} cores)",
        std::thread::available_parallelism()?.get()
    );
    startup_and_idle_memory()?;
    actix_rt::System::new().block_on(ipc())
}

/// Every worker sampled often, so idle RSS is read soon after start.
const SAMPLE_FAST: &str = "sample_interval = \"100ms\"";

fn startup_and_idle_memory() -> anyhow::Result<()> {
    let bots: String = ["helper", "support", "coder", "writer", "tutor"]
        .iter()
        .map(|n| format!("[[bots]]\nname = \"{n}\"\n"))
        .collect();
    let host = start_host(SAMPLE_FAST, &bots)?;
    // Idle for a moment so every worker has settled and been sampled.
    std::thread::sleep(Duration::from_secs(2));
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(host_status(&host))?;
    host.stop()?;

    println!("\n## Start-up and idle memory (real `bothost serve`, 5 builtin bots, release)");
    println!("| bot | spawn to Ready | idle RSS |");
    println!("|---|---|---|");
    for b in &report.bots {
        println!(
            "| {} | {:.1} ms | {} |",
            b.name,
            b.startup_ms.unwrap_or(f64::NAN),
            b.rss_bytes.map_or("-".into(), mib)
        );
    }
    println!(
        "| host (bothost) | - | {} |",
        report.host_rss_bytes.map_or("-".into(), mib)
    );
    Ok(())
}

async fn ipc() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_config(
        dir.path(),
        SAMPLE_FAST,
        "[[bots]]\nname = \"one\"\n[bots.builtin]\ntoken_delay = \"0s\"\nmax_tokens = 1\n\
         [[bots]]\nname = \"full\"\n[bots.builtin]\ntoken_delay = \"0s\"\n",
    )?;
    let host = Host::build(Config::load(&config)?).await?;
    let supervisor = host.supervisor().clone();

    println!("\n## IPC round trip, one-token reply, one worker (in-process host path)");
    println!("| concurrent | turns | P50 | P95 | P99 | max | turns/s |");
    println!("|---|---|---|---|---|---|---|");
    run_load(&supervisor, "one", 10, 500).await?; // warm-up, not printed
    for (concurrency, per_task) in [(1, 5000), (10, 1000), (100, 200)] {
        let (mut lat, elapsed) = run_load(&supervisor, "one", concurrency, per_task).await?;
        let p = Percentiles::of(&mut lat);
        println!(
            "| {concurrency} | {} | {} | {} | {} | {} | {:.0} |",
            lat.len(),
            ms(p.p50),
            ms(p.p95),
            ms(p.p99),
            ms(p.max),
            lat.len() as f64 / elapsed.as_secs_f64()
        );
    }

    println!("\n## Throughput, full builtin replies (~25 tokens), one worker, 100 concurrent");
    let (mut lat, elapsed) = run_load(&supervisor, "full", 100, 100).await?;
    let p = Percentiles::of(&mut lat);
    println!(
        "{} turns in {:.2} s: {:.0} turns/s, P50 {} P99 {}",
        lat.len(),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        ms(p.p50),
        ms(p.p99)
    );
    host.stop().await?;
    Ok(())
}

/// `concurrency` tasks each run `per_task` turns back to back; returns every
/// turn's start-to-Done latency and the wall time.
async fn run_load(
    supervisor: &actix::Addr<Supervisor>,
    bot: &str,
    concurrency: usize,
    per_task: usize,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let supervisor = supervisor.clone();
            let bot = bot.to_owned();
            actix_rt::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let t = Instant::now();
                    let messages = vec![ChatMessage {
                        role: Role::User,
                        content: format!("ping {i}"),
                    }];
                    let mut turn = start_turn(&supervisor, &bot, messages).await?;
                    loop {
                        match turn.next().await {
                            Some(TurnEvent::Delta(_)) => continue,
                            Some(TurnEvent::Done(_)) => break,
                            Some(TurnEvent::Failed(e)) => bail!("turn failed: {e}"),
                            None => bail!("turn ended without Done"),
                        }
                    }
                    latencies.push(t.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all, started.elapsed()))
}
