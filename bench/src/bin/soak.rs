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

use anyhow::{bail, Context};
use bothost::control::{Client, ControlRequest, ControlResponse};
use bothost::supervisor::StatusReport;
use bothost_bench::mib;

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
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("bench binary has no directory")?
        .to_owned();
    let bothost = bin_dir.join("bothost");
    if !bothost.exists() || !bin_dir.join("bot-worker").exists() {
        bail!("run `cargo build --release --workspace` first");
    }

    let dir = tempfile::tempdir()?;
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
    let config = dir.path().join("supervisor.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[supervisor]\nruntime_dir = \"run\"\n\
             sample_interval = \"500ms\"\nleak_window = \"20s\"\nleak_warmup = \"5s\"\n\
             leak_horizon = \"1h\"\nleak_min_growth = \"4MB\"\nrestart_schedule = \"off\"\n\
             [logging]\nlevel = \"warn\"\nformat = \"json\"\n{bots_toml}"
        ),
    )?;
    let mut host = std::process::Command::new(&bothost)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut line = String::new();
    let stdout = host.stdout.take().context("no stdout")?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let url = line
        .trim()
        .strip_prefix("bothost listening on http://")
        .context("bothost did not start")?
        .to_owned();
    let socket = dir.path().join("run/control.sock");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(soak(&socket, &names, Duration::from_secs(seconds), &leak));
    let metrics = http_get(&url, "/metrics").unwrap_or_default();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    host.wait()?;
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
        let report = status(&mut status_client).await?;
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

async fn status(client: &mut Client) -> anyhow::Result<StatusReport> {
    client.send(ControlRequest::Status).await?;
    match client.next().await? {
        ControlResponse::Status(report) => Ok(report),
        other => bail!("unexpected {other:?}"),
    }
}

fn http_get(base: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(base)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {base}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}
