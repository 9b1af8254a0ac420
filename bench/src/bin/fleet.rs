//! Several hosts behind HAProxy on one PostgreSQL, as users see them.
//! Prints figures; asserts nothing.
//!
//! ```text
//! cargo build --release --workspace
//! BOTHOST_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release -p bothost-bench --bin fleet -- [USERS] [SECONDS]
//! ```
//!
//! 1. Throughput and latency through HAProxy (`deploy/haproxy/haproxy.cfg`)
//!    for 1, 2 and 3 hosts: USERS users (default 60), each chatting back to
//!    back over its own WebSocket with a builtin bot at 5 ms a token, for
//!    SECONDS (default 10). All hosts share this machine's cores, so more
//!    hosts do not mean more speed here; the figures show what the fleet's
//!    bookkeeping (a lease per turn, rate windows) and the proxy cost.
//! 2. The failover gap: one host on a PostgreSQL primary and its streaming
//!    standby (both of the bench's own); the primary stops, the standby is
//!    promoted, and a user sending a message every 50 ms across it reports
//!    how many were refused and the slowest answer.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bothost_bench::{
    bench_database_url, ms, release_binaries, user_with_conversation, HostProcess, Percentiles,
    PgSchema,
};
use bothost_testkit::ThrowawayPg;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "correct horse battery staple";

fn config(db_url: &str) -> String {
    format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{db_url}\"\n\
         [auth]\njwt_secret = \"Zp4v9QmX2rT7kLw0Ns8bYc3Hd6Jf1GaE\"\n\
         [limits]\nlogins_per_minute_per_ip = 100000\nmessages_per_minute_per_user = 100000\n\
         messages_per_minute_per_ip = 10000000\nwebsockets_per_ip = 1000000\n\
         [supervisor]\nruntime_dir = \"run\"\n[backup]\nschedule = \"off\"\n\
         [logging]\nlevel = \"warn\"\nformat = \"json\"\n\
         [[bots]]\nname = \"echo\"\n[bots.builtin]\ntoken_delay = \"5ms\"\n"
    )
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy with the shipped configuration, one `server` line per host.
fn haproxy(hosts: &[HostProcess], dir: &std::path::Path) -> anyhow::Result<(Proxy, String)> {
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg"),
    )?;
    let mut cfg: String = shipped
        .lines()
        .filter(|l| !l.trim_start().starts_with("server "))
        .map(|l| format!("{l}\n"))
        .collect();
    for (i, host) in hosts.iter().enumerate() {
        cfg.push_str(&format!("    server host{i} {}\n", host.addr()));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .env("HAPROXY_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let front = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && bothost_testkit::http_get(&front, "/readyz").0 == 200;
        if up {
            return Ok((Proxy(child), front));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("haproxy did not come up")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let users: usize = std::env::args().nth(1).map_or(Ok(60), |s| s.parse())?;
    let seconds: u64 = std::env::args().nth(2).map_or(Ok(10), |s| s.parse())?;
    let Some(base) = bench_database_url() else {
        anyhow::bail!("set BOTHOST_BENCH_DATABASE_URL (or BOTHOST_TEST_DATABASE_URL)");
    };
    println!(
        "fleet: {users} WebSocket users through HAProxy, {seconds} s per run, builtin bot at 5 ms a token"
    );
    println!("(all hosts share this machine's cores: the point is correctness and overhead)\n");
    println!(
        "{:<8} {:>10} {:>10} {:>14} {:>14} {:>8}",
        "hosts", "turns", "turns/min", "P50", "P95", "errors"
    );
    for n in 1..=3 {
        let schema = PgSchema::create(&base, "fleet_bench").await?;
        let bothost = release_binaries()?.join("bothost");
        let hosts = (0..n)
            .map(|_| HostProcess::start(&bothost, &config(&schema.url)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let dir = tempfile::tempdir()?;
        let (proxy, front) = tokio::task::block_in_place(|| haproxy(&hosts, dir.path()))?;
        let (turns, mut latencies, errors) =
            load(&front, users, Duration::from_secs(seconds)).await?;
        let p = Percentiles::of(&mut latencies);
        println!(
            "{:<8} {:>10} {:>10.0} {:>14} {:>14} {:>8}",
            n,
            turns,
            turns as f64 * 60.0 / seconds as f64,
            ms(p.p50),
            ms(p.p95),
            errors
        );
        drop(proxy);
        drop(hosts);
        schema.drop_schema().await?;
    }
    failover().await
}

/// Registers `users` through `front`, then chats back to back for `span`:
/// (turns completed, their send-to-done latencies, error frames).
async fn load(
    front: &str,
    users: usize,
    span: Duration,
) -> anyhow::Result<(u64, Vec<Duration>, u64)> {
    let http = reqwest::Client::new();
    let mut accounts = Vec::new();
    for i in 0..users {
        accounts.push(
            user_with_conversation(&http, front, &format!("user{i}"), PASSWORD, "echo").await?,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<(Vec<Duration>, u64)>> = Arc::default();
    let ws = format!("{}/api/v1/ws", front.replacen("http", "ws", 1));
    let tasks: Vec<_> = accounts
        .into_iter()
        .enumerate()
        .map(|(i, (token, conv))| {
            let (stop, samples) = (stop.clone(), samples.clone());
            let url = format!("{ws}?token={token}");
            tokio::spawn(async move {
                let Ok((mut socket, _)) = bothost_bench::ws::open(&url).await else {
                    return;
                };
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let frame = json!({"type": "send", "conversation_id": conv,
                                       "client_msg_id": format!("u{i}m{k}"), "content": "hello fleet"});
                    let sent = Instant::now();
                    if socket.send(Message::text(frame.to_string())).await.is_err() {
                        return;
                    }
                    while let Some(Ok(msg)) = socket.next().await {
                        let Message::Text(text) = msg else { continue };
                        let f: Value = serde_json::from_str(&text).unwrap_or_default();
                        let mut s = samples.lock().unwrap_or_else(|e| e.into_inner());
                        match f["type"].as_str() {
                            Some("done") => {
                                s.0.push(sent.elapsed());
                                break;
                            }
                            Some("error") => {
                                s.1 += 1;
                                break;
                            }
                            _ => {}
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(span).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let (latencies, errors) =
        std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    Ok((latencies.len() as u64, latencies, errors))
}

/// The failover as a user sees it: refusals and the slowest answer while
/// the primary stops and the standby is promoted.
async fn failover() -> anyhow::Result<()> {
    let (primary, standby) = tokio::task::block_in_place(|| {
        let primary =
            ThrowawayPg::start().ok_or_else(|| anyhow::anyhow!("no PostgreSQL server binaries"))?;
        let standby = ThrowawayPg::standby_of(&primary);
        anyhow::Ok((primary, standby))
    })?;
    let url = primary.url_with_standby(&standby);
    let host = HostProcess::start(&release_binaries()?.join("bothost"), &config(&url))?;
    let http = reqwest::Client::new();
    let base = host.url.clone();
    let (token, conv) = user_with_conversation(&http, &base, "alice", PASSWORD, "echo").await?;
    // A user sending every 50 ms from before the stop until 3 s after it:
    // how many sends were refused, and the slowest answer.
    let sender = {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        tokio::spawn(async move {
            let (mut refused, mut slowest, mut k) = (0u32, Duration::ZERO, 0u32);
            let until = Instant::now() + Duration::from_millis(3200);
            while Instant::now() < until {
                k += 1;
                let sent = Instant::now();
                let ok = http
                    .post(format!("{base}/api/v1/conversations/{conv}/messages"))
                    .bearer_auth(&token)
                    .json(&json!({"client_msg_id": format!("f{k}"), "content": "still there?"}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                slowest = slowest.max(sent.elapsed());
                if !ok {
                    refused += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (refused, slowest, k)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = Instant::now();
    tokio::task::block_in_place(|| {
        primary.stop();
        standby.promote();
    });
    let promoted = stopping.elapsed();
    let (refused, slowest, sent) = sender.await?;
    println!(
        "\nfailover: stop + promote took {}; a user sending every 50 ms across it: \
         {refused} of {sent} refused (503), slowest answer {}",
        ms(promoted),
        ms(slowest)
    );
    Ok(())
}
