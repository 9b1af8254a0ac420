//! `wsload --storm N`: what N browsers do when their host comes back after
//! a restart, all within two seconds.
//!
//! Each client has a token and a conversation already, and a message it
//! sent before the restart that was never acknowledged. Starting at a
//! random moment in the first two seconds, it lists the bots, lists its
//! conversations, opens its WebSocket and sends that message again (same
//! `client_msg_id`), then waits for the reply, as the page does. A refusal
//! (503 or 429, on a request or the WebSocket upgrade, or a connection
//! that fails) is retried after `Retry-After` (or 1 s), doubling up to
//! 2 s, each wait between half and one and a half times that: the page's
//! policy, which gives up on one request, or one message, after 15 s and
//! shows the error. A client that gives up so, or is not back within 30 s,
//! counts as a user-visible error, as does any other answer.
//!
//! Clients connect from 64 loopback addresses (127.0.1.1 ...), as
//! browsers come from many: from one, the kernel's search for a free port
//! took half of this tool's CPU (`bothost_bench::ws::open_from`).
//!
//! Printed: how many came back and when (from the storm's start), what the
//! host answered on the way (503s, 429s, 408s, failed connections), the
//! host's CPU, and a check of the store: every conversation holds the
//! message exactly once and one complete reply to it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bothost_bench::{ms, start_host, CpuSnapshot, Percentiles, PgSchema, Statements};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::{self, Message};

use bothost::web::ATTEMPT_HEADER;
use bothost_bench::ws::{loopback_sources, open_from, WsStream};

use super::{bench_tables, create_conversation, get_page, register_users};

/// Clients start at a random moment within this.
const SPREAD: Duration = Duration::from_secs(2);
/// A client not back by then has seen an error.
const GIVE_UP: Duration = Duration::from_secs(30);
/// How long the page retries one request, or one message on its WebSocket
/// (`API_RETRY_FOR_MS` in `web/app.js`), before it shows the error.
const PAGE_RETRIES_FOR: Duration = Duration::from_secs(15);
/// Loopback addresses the clients connect from, spread evenly.
const SOURCES: usize = 64;
/// Conversations created at once while preparing.
const PREPARE_PARALLELISM: usize = 50;

#[derive(Default)]
struct Tally {
    back: Vec<Duration>,
    errors: Vec<String>,
    refused_503: u64,
    refused_429: u64,
    timeouts_408: u64,
    connect_failures: u64,
    /// The WebSocket's error frames that asked for a resend, by code.
    resend_codes: std::collections::BTreeMap<String, u64>,
}

/// Why a step did not succeed this time.
enum Refusal {
    /// Worth trying again after the wait.
    Retry { status: Option<u16>, wait: Duration },
    /// An answer no retry will change.
    Fatal(String),
}

pub async fn run(clients: usize, schema: Option<&PgSchema>) -> anyhow::Result<()> {
    let host = start_host("restart_schedule = \"off\"", &bench_tables(schema))?;
    let backend = if schema.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let base = format!("http://{}", host.addr());
    let http = reqwest::Client::builder()
        .timeout(GIVE_UP)
        .build()
        .context("HTTP client")?;
    let tokens = register_users(&host, &http, &base).await?;
    let prepared = Instant::now();
    let conversations = prepare(&http, &base, &tokens, clients).await?;
    eprintln!(
        "prepared {clients} conversations in {:.1} s",
        prepared.elapsed().as_secs_f64()
    );

    // Browsers come from many addresses: see `ws::open_from`.
    let sources: Vec<(IpAddr, reqwest::Client)> = loopback_sources(SOURCES)
        .into_iter()
        .map(|ip| {
            let client = reqwest::Client::builder()
                .timeout(GIVE_UP)
                .local_address(ip)
                .build()
                .context("HTTP client")?;
            anyhow::Ok((ip, client))
        })
        .collect::<Result<_, _>>()?;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let cpu_before = CpuSnapshot::take(host.pid());
    let statements_before = Statements::take(&host);
    let started = Instant::now();
    let tasks: Vec<_> = conversations
        .iter()
        .enumerate()
        .map(|(i, (token, conversation))| {
            let delay = SPREAD.mul_f64(fastrand::f64());
            let (source, http) = &sources[i % sources.len()];
            let client = Client {
                http: http.clone(),
                source: *source,
                base: base.clone(),
                addr: host.addr().to_owned(),
                token: token.clone(),
                conversation: *conversation,
                message_id: format!("storm-{i}"),
                tally: tally.clone(),
            };
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let outcome = client.come_back(started).await;
                let mut t = client.tally.lock().await;
                match outcome {
                    Ok((back, ws)) => {
                        t.back.push(back);
                        Some(ws)
                    }
                    Err(e) => {
                        t.errors.push(e);
                        None
                    }
                }
            })
        })
        .collect();
    // The WebSockets stay open until every client is back, as browsers'
    // would.
    let mut open = Vec::new();
    for task in tasks {
        open.push(task.await?);
    }
    let cpu = CpuSnapshot::take(host.pid());
    let statements = Statements::take(&host);
    let total = started.elapsed();
    drop(open);

    let mut t = std::mem::take(&mut *tally.lock().await);
    println!(
        "# Reconnect storm: {clients} clients within {} s ({} cores, store: {backend})",
        SPREAD.as_secs(),
        std::thread::available_parallelism()?.get()
    );
    println!(
        "back: {} of {clients}; user-visible errors: {}; all done after {:.1} s",
        t.back.len(),
        t.errors.len(),
        total.as_secs_f64()
    );
    for e in t.errors.iter().take(5) {
        println!("  error: {e}");
    }
    let p = Percentiles::of(&mut t.back);
    println!(
        "back after (from the storm's start): P50 {}, P95 {}, P99 {}, max {}",
        ms(p.p50),
        ms(p.p95),
        ms(p.p99),
        ms(p.max)
    );
    println!(
        "answers on the way, each retried: 503 {}, 429 {}, 408 {}, failed connections {}",
        t.refused_503, t.refused_429, t.timeouts_408, t.connect_failures
    );
    if !t.resend_codes.is_empty() {
        let codes: Vec<String> = t
            .resend_codes
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        println!(
            "  the 429s are messages the WebSocket refused: {}",
            codes.join(", ")
        );
    }
    println!("{}", cpu.per_turn_since(&cpu_before, t.back.len() as u64));
    println!(
        "{}",
        statements.per_turn_since(&statements_before, t.back.len() as u64)
    );
    let (exact, wrong) = check_store(&http, &base, &conversations).await?;
    println!(
        "store: {exact} of {clients} conversations hold the message once and one complete reply; \
         {} do not",
        wrong.len()
    );
    for w in wrong.iter().take(5) {
        println!("  {w}");
    }
    host.stop().map(drop)
}

/// `clients` conversations spread over the users and the bots.
async fn prepare(
    http: &reqwest::Client,
    base: &str,
    tokens: &[String],
    clients: usize,
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut out = Vec::with_capacity(clients);
    for chunk in (0..clients).collect::<Vec<_>>().chunks(PREPARE_PARALLELISM) {
        let made = futures_util::future::join_all(chunk.iter().map(|&i| async move {
            let token = &tokens[i % tokens.len()];
            let id = create_conversation(http, base, token, i).await?;
            anyhow::Ok((token.clone(), id))
        }))
        .await;
        for m in made {
            out.push(m?);
        }
    }
    Ok(out)
}

struct Client {
    http: reqwest::Client,
    /// The loopback address it connects from.
    source: IpAddr,
    base: String,
    addr: String,
    token: String,
    conversation: i64,
    message_id: String,
    tally: Arc<Mutex<Tally>>,
}

impl Client {
    /// The four steps, each retried; when it is back, and its WebSocket.
    async fn come_back(&self, started: Instant) -> Result<(Duration, WsStream), String> {
        let deadline = Instant::now() + GIVE_UP;
        // The page's budget for one request or one message; its WebSocket
        // reconnects for as long as it takes.
        let page_budget = || deadline.min(Instant::now() + PAGE_RETRIES_FOR);
        self.retrying(page_budget(), |n| self.get("/api/v1/bots", n))
            .await?;
        self.retrying(page_budget(), |n| self.get("/api/v1/conversations", n))
            .await?;
        let mut ws = self.retrying(deadline, |n| self.open_ws(n)).await?;
        let until = page_budget();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.resend(&mut ws).await {
                Ok(()) => return Ok((started.elapsed(), ws)),
                Err(Refusal::Retry { status, wait }) => {
                    self.count(status).await;
                    let wait = jittered(wait, attempt);
                    if Instant::now() + wait > until {
                        return Err(format!("resend: still refused ({status:?}), given up"));
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(Refusal::Fatal(e)) => return Err(format!("resend: {e}")),
            }
        }
    }

    /// `step` (told which try it is) until it succeeds, waiting out each
    /// refusal, unless the wait would end after `until` (the page then
    /// shows the error).
    async fn retrying<T, F, Fut>(&self, until: Instant, step: F) -> Result<T, String>
    where
        F: Fn(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, Refusal>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match step(attempt).await {
                Ok(v) => return Ok(v),
                Err(Refusal::Retry { status, wait }) => {
                    self.count(status).await;
                    let wait = jittered(wait, attempt);
                    if Instant::now() + wait > until {
                        return Err(format!("still refused ({status:?}), given up"));
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(Refusal::Fatal(e)) => return Err(e),
            }
        }
    }

    async fn count(&self, status: Option<u16>) {
        let mut t = self.tally.lock().await;
        match status {
            Some(503) => t.refused_503 += 1,
            Some(429) => t.refused_429 += 1,
            Some(408) => t.timeouts_408 += 1,
            _ => t.connect_failures += 1,
        }
    }

    async fn get(&self, path: &str, attempt: u32) -> Result<(), Refusal> {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header(ATTEMPT_HEADER, attempt)
            .send()
            .await
            .map_err(|_| Refusal::Retry {
                status: None,
                wait: Duration::from_secs(1),
            })?;
        let status = res.status().as_u16();
        let wait = retry_after(res.headers());
        match status {
            // Read to the end, as the page does: only then can the
            // connection carry the next request instead of a new one being
            // opened for it.
            200 => res.bytes().await.map(drop).map_err(|_| Refusal::Retry {
                status: None,
                wait: Duration::from_secs(1),
            }),
            // Read too: a response dropped unread closes its connection
            // (a reset, and a new connection for the retry), where a
            // browser reads it and keeps the connection.
            503 | 429 | 408 => {
                let _ = res.bytes().await;
                Err(Refusal::Retry {
                    status: Some(status),
                    wait,
                })
            }
            _ => Err(Refusal::Fatal(format!(
                "GET {path}: {status} {}",
                res.text().await.unwrap_or_default()
            ))),
        }
    }

    async fn open_ws(&self, attempt: u32) -> Result<WsStream, Refusal> {
        let url = format!(
            "ws://{}/api/v1/ws?token={}&attempt={attempt}",
            self.addr, self.token
        );
        match open_from(self.source, &url).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(res)) => {
                let status = res.status().as_u16();
                if matches!(status, 503 | 429 | 408) {
                    Err(Refusal::Retry {
                        status: Some(status),
                        wait: retry_after(res.headers()),
                    })
                } else {
                    Err(Refusal::Fatal(format!("WebSocket upgrade: {status}")))
                }
            }
            Err(_) => Err(Refusal::Retry {
                status: None,
                wait: Duration::from_secs(1),
            }),
        }
    }

    /// Sends the unacknowledged message again and reads until its reply is
    /// done.
    async fn resend(&self, ws: &mut WsStream) -> Result<(), Refusal> {
        let frame = json!({"type": "send", "conversation_id": self.conversation,
                           "client_msg_id": self.message_id,
                           "content": format!("sent before the restart: {}", self.message_id)});
        ws.send(Message::text(frame.to_string()))
            .await
            .map_err(|e| Refusal::Fatal(format!("send: {e}")))?;
        loop {
            let Some(msg) = ws.next().await else {
                return Err(Refusal::Fatal("the WebSocket closed".into()));
            };
            let text = match msg.map_err(|e| Refusal::Fatal(e.to_string()))? {
                Message::Text(t) => t,
                _ => continue,
            };
            let f: Value =
                serde_json::from_str(&text).map_err(|e| Refusal::Fatal(e.to_string()))?;
            if f["client_msg_id"] != self.message_id.as_str() {
                continue;
            }
            match (f["type"].as_str(), f["code"].as_str()) {
                (Some("ack" | "delta"), _) => {}
                (Some("done"), _) if f["status"] == "complete" => return Ok(()),
                // Busy or answered elsewhere just now: the page waits and
                // sends the same message again.
                (
                    Some("error"),
                    Some("rate_limited" | "in_progress" | "overloaded" | "store_unavailable"),
                ) => {
                    let code = f["code"].as_str().unwrap_or_default().to_owned();
                    *self
                        .tally
                        .lock()
                        .await
                        .resend_codes
                        .entry(code)
                        .or_default() += 1;
                    let secs = f["retry_after"].as_u64().unwrap_or(1);
                    return Err(Refusal::Retry {
                        status: Some(429),
                        wait: Duration::from_secs(secs),
                    });
                }
                _ => return Err(Refusal::Fatal(text.to_string())),
            }
        }
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    let secs = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(secs)
}

/// The page's policy (`retryDelay` in `web/app.js`): the wait doubles with
/// each attempt up to 2 s, never below what the host asked, then anywhere
/// from half to one and a half times that.
fn jittered(wait: Duration, attempt: u32) -> Duration {
    let doubled = wait
        .saturating_mul(1 << attempt.saturating_sub(1).min(3))
        .min(Duration::from_secs(2))
        .max(wait);
    doubled.mul_f64(0.5 + fastrand::f64())
}

/// Conversations holding their message exactly once with one complete
/// reply, and a line for each that does not.
async fn check_store(
    http: &reqwest::Client,
    base: &str,
    conversations: &[(String, i64)],
) -> anyhow::Result<(usize, Vec<String>)> {
    let mut exact = 0;
    let mut wrong = Vec::new();
    for chunk in conversations.chunks(PREPARE_PARALLELISM) {
        let pages = futures_util::future::join_all(chunk.iter().map(|(token, id)| async move {
            let url = format!("{base}/api/v1/conversations/{id}/messages?limit=10");
            anyhow::Ok((*id, get_page(http, &url, token).await?))
        }))
        .await;
        for page in pages {
            let (id, page) = page?;
            let users = page.iter().filter(|m| m["role"] == "user").count();
            let replies = page
                .iter()
                .filter(|m| m["role"] == "assistant" && m["status"] == "complete")
                .count();
            if (users, replies) == (1, 1) {
                exact += 1;
            } else {
                wrong.push(format!(
                    "conversation {id}: {users} user messages, {replies} complete replies"
                ));
            }
        }
    }
    Ok((exact, wrong))
}
