//! A host restart under WebSocket load, as its users live it. Prints
//! figures; asserts nothing.
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p bothost-bench --bin restart -- [CLIENTS]
//! ```
//!
//! Two runs of CLIENTS users (default 200), each chatting back to back over
//! its own WebSocket with a builtin bot (10 ms per token), while the host is
//! restarted (SIGTERM, drain, start again on the same SQLite database). Every
//! client behaves like the page: after a close with 1012 it reconnects
//! within about a second, with jitter; a `restarting` refusal keeps the
//! message, which goes out again once reconnected; a failed connection is
//! tried again with backoff.
//!
//! 1. *own port*: the host binds its port itself (a plain `systemctl restart`);
//! 2. *socket activation*: the bench holds the listening socket across the
//!    restart, as systemd's `bothost.socket` does.
//!
//! Printed per run: connection attempts refused; turns failed as users see
//! them (an `error` other than `restarting`); messages sent again after
//! `restarting`; the restart (SIGTERM to the new host listening); and the
//! window until every client is back (SIGTERM to the last client's first
//! completed turn after it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bothost_bench::{ms, release_binaries, user_with_conversation, HostProcess, Percentiles};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "correct horse battery staple";

#[derive(Default)]
struct Tally {
    refused: AtomicU64,
    failed: AtomicU64,
    resent: AtomicU64,
    completed: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let clients: usize = std::env::args().nth(1).map_or(Ok(200), |s| s.parse())?;
    println!("restart under load: {clients} WebSocket users chatting back to back\n");
    println!(
        "{:<18} {:>8} {:>8} {:>8} {:>10} {:>12} {:>14} {:>10}",
        "run", "refused", "failed", "resent", "turns", "restart ms", "all back ms", "back P50"
    );
    for activated in [false, true] {
        run(clients, activated).await?;
    }
    Ok(())
}

fn config(port: u16) -> String {
    format!(
        "[server]\nbind = \"127.0.0.1:{port}\"\n[auth]\njwt_secret = \"Zp4v9QmX2rT7kLw0Ns8bYc3Hd6Jf1GaE\"\n\
         [limits]\nlogins_per_minute_per_ip = 100000\nmessages_per_minute_per_user = 100000\n\
         messages_per_minute_per_ip = 1000000\nwebsockets_per_ip = 1000000\n\
         [supervisor]\nruntime_dir = \"run\"\n[backup]\nschedule = \"off\"\n\
         [logging]\nlevel = \"warn\"\nformat = \"json\"\n\
         [[bots]]\nname = \"echo\"\n[bots.builtin]\ntoken_delay = \"10ms\"\n"
    )
}

async fn run(clients: usize, activated: bool) -> anyhow::Result<()> {
    let bothost = release_binaries()?.join("bothost");
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mut host = if activated {
        HostProcess::start_on(&bothost, &config(port), listener)?
    } else {
        drop(listener);
        HostProcess::start(&bothost, &config(port))?
    };
    let base = host.url.clone();
    let http = reqwest::Client::new();
    let mut users = Vec::new();
    for i in 0..clients {
        users.push(
            user_with_conversation(&http, &base, &format!("user{i}"), PASSWORD, "echo").await?,
        );
    }

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sigterm: Arc<Mutex<Option<Instant>>> = Arc::default();
    let ws_url = format!("{}/api/v1/ws", base.replacen("http", "ws", 1));
    let tasks: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(i, (token, conv))| {
            let (tally, stop, sigterm) = (tally.clone(), stop.clone(), sigterm.clone());
            let url = format!("{ws_url}?token={token}");
            tokio::spawn(client(i, url, conv, tally, stop, sigterm))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(3)).await;
    *sigterm.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    let restart = tokio::task::block_in_place(|| host.restart())?;
    // Every client back, or 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut backs = Vec::new();
    let mut waiting = tasks;
    while !waiting.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (done, rest): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|t| t.is_finished());
        for t in done {
            if let Ok(Some(back)) = t.await {
                backs.push(back);
            }
        }
        waiting = rest;
    }
    stop.store(true, Ordering::Relaxed);
    for t in waiting {
        t.abort();
    }
    let all_back = backs.iter().max().copied();
    let back_count = backs.len();
    let p = Percentiles::of(&mut backs);
    println!(
        "{:<18} {:>8} {:>8} {:>8} {:>10} {:>12} {:>14} {:>10}",
        if activated {
            "socket activation"
        } else {
            "own port"
        },
        tally.refused.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.resent.load(Ordering::Relaxed),
        tally.completed.load(Ordering::Relaxed),
        ms(restart),
        if back_count == clients {
            all_back.map_or("-".into(), ms)
        } else {
            format!("{back_count}/{clients} back")
        },
        ms(p.p50),
    );
    drop(host);
    Ok(())
}

/// One user, like the page: chats until a turn completes on a connection
/// opened after the SIGTERM (the new host), then answers how long after the
/// SIGTERM that was.
async fn client(
    i: usize,
    url: String,
    conv: i64,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    sigterm: Arc<Mutex<Option<Instant>>>,
) -> Option<Duration> {
    let mut sent = 0u64;
    let mut retry = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let connected_at = Instant::now();
        let mut ws = match bothost_bench::ws::open(&url).await {
            Ok((ws, _)) => {
                retry = 0;
                ws
            }
            Err(e) => {
                let refused = matches!(&e, tokio_tungstenite::tungstenite::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::ConnectionRefused);
                if refused {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                }
                retry += 1;
                tokio::time::sleep(backoff(retry, i)).await;
                continue;
            }
        };
        // One message at a time; a refused one goes out again here.
        'turns: loop {
            let id = format!("c{i}-{sent}");
            let frame = json!({"type": "send", "conversation_id": conv, "client_msg_id": id,
                               "content": "how does a restart look from here?"});
            if ws.send(Message::text(frame.to_string())).await.is_err() {
                break 'turns;
            }
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let f: Value = serde_json::from_str(&text).unwrap_or_default();
                        match f["type"].as_str() {
                            Some("done") => {
                                tally.completed.fetch_add(1, Ordering::Relaxed);
                                sent += 1;
                                let since = *sigterm.lock().unwrap_or_else(|e| e.into_inner());
                                if let Some(t) = since.filter(|&t| connected_at > t) {
                                    return Some(t.elapsed());
                                }
                                continue 'turns;
                            }
                            Some("error") if f["code"] == "restarting" => {
                                tally.resent.fetch_add(1, Ordering::Relaxed);
                            }
                            Some("error") => {
                                tally.failed.fetch_add(1, Ordering::Relaxed);
                                sent += 1;
                                continue 'turns;
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break 'turns,
                    Some(Ok(_)) => {}
                }
            }
        }
        retry += 1;
        tokio::time::sleep(backoff(retry, i)).await;
    }
    None
}

/// The page's schedule after a restart: about 250 ms doubling to 5 s,
/// plus up to a second of jitter (spread by client, no RNG needed).
fn backoff(retry: u32, i: usize) -> Duration {
    let base = (250u64 << retry.min(5)).min(5000);
    let jitter = (i as u64 * 7919) % 1000;
    Duration::from_millis(base + jitter)
}
