//! Inference benchmark: what bothost adds on top of the model server, what
//! a failover costs, and how fast a supervised model server is back.
//! Prints figures; asserts nothing.
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p bothost-bench --bin inference -- [TURNS] [TOKEN_DELAY_MS]
//! ```
//!
//! Defaults: 200 turns, the fake streaming a token every 10 ms. The same
//! turns go to `fake-ollama` directly (reqwest, `POST /api/chat`) and
//! through the real `bothost serve` (control socket → Supervisor → worker →
//! fake), one at a time, in the same run.

use std::time::{Duration, Instant};

use anyhow::bail;
use bothost::control::{Client, ControlRequest, ControlResponse};
use bothost_bench::fake::{direct_chat, FakeOllama};
use bothost_bench::{host_status, ms, release_binaries, start_host, Percentiles};

fn endpoint(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[inference]]\nname = \"{name}\"\nurl = \"{url}\"\nhealth_interval = \"1s\"\n\
         health_interval_down = \"100ms\"\n{extra}\n"
    )
}

const BOT: &str = "[[bots]]\nname = \"llama\"\nengine = \"ollama\"\nmodel = \"llama3.2\"\n";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let turns: usize = args.first().map_or(Ok(200), |s| s.parse())?;
    let delay: u64 = args.get(1).map_or(Ok(10), |s| s.parse())?;
    println!(
        "# bothost inference benchmark ({} cores, fake-ollama at one token per {delay} ms)",
        std::thread::available_parallelism()?.get()
    );
    added_latency(turns, delay).await?;
    failover(delay).await?;
    supervised_restart().await
}

/// (time to first token, time to done) of one turn through bothost.
async fn hosted_turn(client: &mut Client, n: usize) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    client
        .send(ControlRequest::Chat {
            bot: "llama".into(),
            text: format!("turn {n}"),
        })
        .await?;
    let mut first = None;
    loop {
        match client.next().await? {
            ControlResponse::Delta { .. } => {
                first.get_or_insert_with(|| started.elapsed());
            }
            ControlResponse::Done { .. } => {
                let done = started.elapsed();
                return Ok((first.unwrap_or(done), done));
            }
            other => bail!("turn {n}: {other:?}"),
        }
    }
}

async fn added_latency(turns: usize, delay: u64) -> anyhow::Result<()> {
    let fake = FakeOllama::start(0, "primary", delay)?;
    let host = start_host("", &format!("{}{BOT}", endpoint("primary", &fake.url, "")))?;
    let http = reqwest::Client::new();
    let mut client = Client::connect(&host.control_socket()).await?;
    // Warm both paths (connections, the worker's HTTP pool).
    for n in 0..10 {
        direct_chat(&http, &fake.url, &format!("turn {n}")).await?;
        hosted_turn(&mut client, n).await?;
    }
    let (mut d_first, mut d_done, mut h_first, mut h_done) = (vec![], vec![], vec![], vec![]);
    // Interleaved, so both see the same machine noise.
    for n in 0..turns {
        let (f, d) = direct_chat(&http, &fake.url, &format!("turn {n}")).await?;
        d_first.push(f);
        d_done.push(d);
        let (f, d) = hosted_turn(&mut client, n).await?;
        h_first.push(f);
        h_done.push(d);
    }
    println!("\n## Added latency, {turns} turns one at a time (P50 / P95)");
    println!("| | direct to fake-ollama | through bothost | added | ratio (P50) |");
    println!("|---|---|---|---|---|");
    for (what, direct, hosted) in [
        ("first token", &mut d_first, &mut h_first),
        ("done", &mut d_done, &mut h_done),
    ] {
        let (d, h) = (Percentiles::of(direct), Percentiles::of(hosted));
        println!(
            "| {what} | {} / {} | {} / {} | {} / {} | {:.3} |",
            ms(d.p50),
            ms(d.p95),
            ms(h.p50),
            ms(h.p95),
            ms(h.p50.saturating_sub(d.p50)),
            ms(h.p95.saturating_sub(d.p95)),
            h.p50.as_secs_f64() / d.p50.as_secs_f64()
        );
    }
    host.stop().map(drop)
}

async fn failover(delay: u64) -> anyhow::Result<()> {
    let primary = FakeOllama::start(0, "primary", delay)?;
    let secondary = FakeOllama::start(0, "secondary", delay)?;
    let endpoints = format!(
        "{}{}",
        endpoint("primary", &primary.url, ""),
        endpoint("secondary", &secondary.url, "")
    );
    let host = start_host("", &format!("{endpoints}{BOT}"))?;
    let mut client = Client::connect(&host.control_socket()).await?;
    let mut normal = Vec::new();
    for n in 0..20 {
        normal.push(hosted_turn(&mut client, n).await?.0);
    }
    let normal = Percentiles::of(&mut normal).p50;
    let mut primary = primary;
    primary.kill();
    let (first, done) = hosted_turn(&mut client, 100).await?;
    let (after, _) = hosted_turn(&mut client, 101).await?;
    println!("\n## Failover, primary killed (connection refused)");
    println!(
        "first token normally: {}; first turn after the kill: first token {} (+{}), answered by the secondary; \
         the next turn: {} (the primary is known down and skipped)",
        ms(normal),
        ms(first),
        ms(first.saturating_sub(normal)),
        ms(after)
    );
    println!("that turn, whole reply from the secondary: {}", ms(done));
    host.stop().map(drop)
}

async fn supervised_restart() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let fake = release_binaries()?.join("fake-ollama");
    let command = format!(
        "command = [\"{}\", \"--port\", \"{port}\", \"--name\", \"local\"]",
        fake.display()
    );
    let url = format!("http://127.0.0.1:{port}");
    // Default health intervals here: what an operator gets.
    let local = format!("[[inference]]\nname = \"local\"\nurl = \"{url}\"\n{command}\n");
    let host = start_host("", &format!("{local}{BOT}"))?;
    let pid = loop {
        let status = host_status(&host).await?;
        if let Some(pid) = status.inference[0].pid.filter(|_| status.inference[0].up) {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut client = Client::connect(&host.control_socket()).await?;
    hosted_turn(&mut client, 0).await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let killed = Instant::now();
    let mut failed = 0;
    loop {
        match hosted_turn(&mut client, 1).await {
            Ok(_) => break,
            Err(_) => {
                failed += 1;
                client = Client::connect(&host.control_socket()).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    println!("\n## Supervised model server killed (SIGKILL)");
    println!(
        "kill to answering again: {} ({failed} turns refused meanwhile, each at once)",
        ms(killed.elapsed())
    );
    host.stop().map(drop)
}
