//! WebSocket load: the real `bothost serve` and thousands of real WebSocket
//! users. Prints figures; asserts nothing.
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p bothost-bench --bin wsload -- [HELD] [CHATTERS] [SECONDS]
//! BOTHOST_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run ...
//! ```
//!
//! Defaults: hold 1,000 then 10,000 idle connections (`HELD` is a comma
//! list), then, with those still open, 200 more connections chat back to
//! back for 30 s with five builtin bots at zero token delay (throughput),
//! then 10 connections for 15 s (latency, the host not saturated). The store is
//! SQLite in a temp dir, or PostgreSQL (in a schema of its own) when the
//! variable above is set.
//!
//! Printed: connections held and the host's RSS at each level; turns per
//! minute and errors; time to the first token and to `done`, measured from
//! the `send` frame; and a check that every counted turn is in the store.
//! The builtin engine at zero delay spends microseconds per reply, so the
//! time to `done` is the host's added latency (an upper bound on it: it also
//! holds the load tool's own time on the same two cores).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bothost_bench::ws::{connect, turn, WsStream, CONNECTION_CLOSED};
use bothost_bench::{
    bench_database_url, mib, ms, start_host, CpuSnapshot, HostProcess, Percentiles, PgSchema,
    Statements, NO_LIMITS,
};
use futures_util::StreamExt;
use serde_json::{json, Value};

mod storm;

/// The tool shares the host's two cores, so its own CPU is taken from the
/// host's: with glibc's allocator, a fifth of the tool's samples in a storm
/// were malloc and free (10,000 clients' buffers allocated and freed across
/// two threads). The host keeps glibc's (ARCHITECTURE.md says why). See
/// also [`no_huge_pages`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BOTS: usize = 5;
/// Connections in the latency phase: enough to keep every bot busy, few
/// enough that turns do not queue behind each other.
const LATENCY_CHATTERS: usize = 10;
const USERS: usize = 100;
const PASSWORD: &str = "correct horse battery staple";
/// Connections opened at once while building up the held set: well under
/// the listen backlog.
const CONNECT_PARALLELISM: usize = 200;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    no_huge_pages()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--storm") {
        let clients: usize = args.get(1).map_or(Ok(10_000), |s| s.parse())?;
        raise_fd_limit()?;
        let schema = bench_schema().await?;
        let result = storm::run(clients, schema.as_ref()).await;
        return drop_schema(schema, result).await;
    }
    let held: Vec<usize> = args
        .first()
        .map_or("1000,10000", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("HELD: a comma list of connection counts")?;
    let chatters: usize = args.get(1).map_or(Ok(200), |s| s.parse())?;
    let seconds: u64 = args.get(2).map_or(Ok(30), |s| s.parse())?;
    raise_fd_limit()?;

    let schema = bench_schema().await?;
    let result = run(
        &held,
        chatters,
        Duration::from_secs(seconds),
        schema.as_ref(),
    )
    .await;
    drop_schema(schema, result).await
}

/// A PostgreSQL schema of the bench's own when the bench database variable
/// is set; else the bench runs on SQLite.
async fn bench_schema() -> anyhow::Result<Option<PgSchema>> {
    match bench_database_url() {
        Some(base) => Ok(Some(PgSchema::create(&base, "bench").await?)),
        None => Ok(None),
    }
}

async fn drop_schema(schema: Option<PgSchema>, result: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Some(schema) = schema {
        schema.drop_schema().await?;
    }
    result
}

/// Five builtin bots at zero delay, limits far above the load (so the
/// figures measure the host, not the rate limiter, which has its own
/// tests), the store `schema` or SQLite.
fn bench_tables(schema: Option<&PgSchema>) -> String {
    let database = match schema {
        Some(s) => format!("[database]\nurl = \"{}\"\n", s.url),
        None => String::new(),
    };
    format!(
        "{database}{NO_LIMITS}{}",
        (0..BOTS)
            .map(|i| format!(
                "[[bots]]\nname = \"bench-{i}\"\n[bots.builtin]\ntoken_delay = \"0s\"\n"
            ))
            .collect::<String>()
    )
}

async fn run(
    held: &[usize],
    chatters: usize,
    duration: Duration,
    schema: Option<&PgSchema>,
) -> anyhow::Result<()> {
    let host = start_host("restart_schedule = \"off\"", &bench_tables(schema))?;
    let backend = if schema.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!(
        "# bothost WebSocket load ({} cores, store: {backend}, {BOTS} builtin bots at zero token delay)",
        std::thread::available_parallelism()?.get()
    );
    let base = format!("http://{}", host.addr());
    let http = reqwest::Client::new();
    println!(
        "host RSS before registering: {}",
        mib(host_rss(host.pid())?)
    );
    let tokens = register_users(&host, &http, &base).await?;
    println!("host RSS at start: {}", mib(host_rss(host.pid())?));

    println!("\n## Idle connections held");
    println!("| target | open | bothost_ws_connections | host RSS | time to open |");
    println!("|---|---|---|---|---|");
    let alive = Arc::new(AtomicU64::new(0));
    let mut holders = Vec::new();
    for &target in held {
        let started = Instant::now();
        let mut next = holders.len();
        while next < target {
            let batch = CONNECT_PARALLELISM.min(target - next);
            let opened = futures_util::future::join_all(
                (next..next + batch).map(|i| connect(host.addr(), &tokens[i % tokens.len()])),
            )
            .await;
            for ws in opened {
                holders.push(tokio::spawn(hold(ws?, alive.clone())));
            }
            next += batch;
        }
        let took = started.elapsed();
        // Let the server finish registering the last sessions.
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "| {target} | {} | {} | {} | {:.1} s |",
            alive.load(Ordering::Relaxed),
            metric(&host, "bothost_ws_connections").unwrap_or(f64::NAN),
            mib(host_rss(host.pid())?),
            took.as_secs_f64()
        );
    }

    // Throughput: many connections, the host saturated (latency there is
    // mostly queueing). Latency: a few connections, the host not saturated.
    for (phase, n, run) in [
        ("throughput", chatters, duration),
        ("latency", LATENCY_CHATTERS, duration / 2),
    ] {
        let chat = chat_load(&host, &http, &base, &tokens, n, run).await?;
        println!(
            "\n## Chat ({phase}): {n} connections back to back for {} s, {} idle connections held",
            run.as_secs(),
            alive.load(Ordering::Relaxed)
        );
        chat.print(run);
    }
    println!(
        "host RSS after: {}; idle connections still open: {}",
        mib(host_rss(host.pid())?),
        alive.load(Ordering::Relaxed)
    );
    for h in holders {
        h.abort();
    }
    host.stop().map(drop)
}

/// Registers [`USERS`] users (argon2id makes this the slow part) and
/// returns their tokens; connections are spread over them.
async fn register_users(
    host: &HostProcess,
    http: &reqwest::Client,
    base: &str,
) -> anyhow::Result<Vec<String>> {
    let tag = std::process::id();
    let mut tokens = Vec::with_capacity(USERS);
    for chunk in (0..USERS).collect::<Vec<_>>().chunks(4) {
        let replies = futures_util::future::join_all(chunk.iter().map(|i| {
            http.post(format!("{base}/api/v1/auth/register"))
                .json(&json!({"username": format!("load{tag}x{i}"), "password": PASSWORD}))
                .send()
        }))
        .await;
        for reply in replies {
            let reply = reply?;
            let status = reply.status();
            let body: Value = reply.json().await?;
            if !status.is_success() {
                let log =
                    std::fs::read_to_string(host.dir.path().join("host.log")).unwrap_or_default();
                anyhow::bail!("register: {status} {body}\nhost log:\n{log}");
            }
            tokens.push(body["token"].as_str().context("no token")?.to_owned());
        }
    }
    Ok(tokens)
}

/// A page of messages (or any JSON list) `url` gives `token`'s user.
async fn get_page(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Vec<Value>> {
    Ok(http
        .get(url)
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// A new conversation of `token`'s user with bot `bench-{i % BOTS}`.
async fn create_conversation(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    i: usize,
) -> anyhow::Result<i64> {
    let created: Value = http
        .post(format!("{base}/api/v1/conversations"))
        .bearer_auth(token)
        .json(&json!({"bot": format!("bench-{}", i % BOTS)}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    created["id"].as_i64().context("no conversation id")
}

/// Keeps one idle connection open: reading answers the server's pings.
async fn hold(mut ws: WsStream, alive: Arc<AtomicU64>) {
    alive.fetch_add(1, Ordering::Relaxed);
    while let Some(Ok(_)) = ws.next().await {}
    alive.fetch_sub(1, Ordering::Relaxed);
}

#[derive(Default)]
struct ChatFigures {
    turns: u64,
    errors: u64,
    first_token: Vec<Duration>,
    done: Vec<Duration>,
    /// Turns completed, including those that ended after the clock stopped.
    completed: u64,
    /// Of those, found complete in the store.
    persisted: u64,
    /// CPU per completed turn of the host, its workers and PostgreSQL.
    cpu: String,
    /// Store operations per completed turn.
    statements: String,
}

impl ChatFigures {
    fn print(mut self, run: Duration) {
        println!(
            "turns: {} ({:.0}/min), errors: {}; every completed turn stored: {} of {} found complete",
            self.turns,
            self.turns as f64 / (run.as_secs_f64() / 60.0),
            self.errors,
            self.persisted,
            self.completed
        );
        println!("{}", self.cpu);
        println!("{}", self.statements);
        println!("| from `send` to | P50 | P95 | P99 | max |");
        println!("|---|---|---|---|---|");
        for (what, samples) in [
            ("first token", &mut self.first_token),
            ("done (host-added)", &mut self.done),
        ] {
            let p = Percentiles::of(samples);
            println!(
                "| {what} | {} | {} | {} | {} |",
                ms(p.p50),
                ms(p.p95),
                ms(p.p99),
                ms(p.max)
            );
        }
    }
}

async fn chat_load(
    host: &HostProcess,
    http: &reqwest::Client,
    base: &str,
    tokens: &[String],
    chatters: usize,
    duration: Duration,
) -> anyhow::Result<ChatFigures> {
    let stop = Arc::new(AtomicBool::new(false));
    let figures = Arc::new(Mutex::new(ChatFigures::default()));
    // Every connection and conversation first, then all chat at once: the
    // clock starts when they do.
    let mut sockets = Vec::new();
    let mut conversations = Vec::new();
    for i in 0..chatters {
        let token = tokens[i % tokens.len()].clone();
        let conversation = create_conversation(http, base, &token, i).await?;
        conversations.push((token.clone(), conversation));
        sockets.push(connect(host.addr(), &token).await?);
    }
    let tasks: Vec<_> = sockets
        .into_iter()
        .zip(&conversations)
        .map(|(ws, (_, conversation))| {
            let (stop, figures) = (stop.clone(), figures.clone());
            tokio::spawn(chatter(ws, *conversation, stop, figures))
        })
        .collect();
    let cpu_before = CpuSnapshot::take(host.pid());
    let statements_before = Statements::take(host);
    // A line every 5 s: a slowdown or a growing host shows as a trend.
    let started = tokio::time::Instant::now();
    let mut last = 0;
    while started.elapsed() < duration {
        let step = (duration - started.elapsed()).min(Duration::from_secs(5));
        tokio::time::sleep(step).await;
        let turns = figures.lock().expect("figures").turns;
        eprintln!(
            "  t={:>3.0}s  turns/s {:>6.0}  host RSS {}",
            started.elapsed().as_secs_f64(),
            (turns - last) as f64 / step.as_secs_f64(),
            host_rss(host.pid()).map_or_else(|_| "-".into(), mib)
        );
        last = turns;
    }
    stop.store(true, Ordering::Relaxed);
    let mut counted = std::collections::HashMap::new();
    for (task, (_, conversation)) in tasks.into_iter().zip(&conversations) {
        counted.insert(*conversation, task.await?);
    }
    let turns = counted.values().sum();
    let cpu = CpuSnapshot::take(host.pid()).per_turn_since(&cpu_before, turns);
    let statements = Statements::take(host).per_turn_since(&statements_before, turns);
    let mut persisted = 0;
    for (token, conversation) in &conversations {
        let stored = complete_turns(http, base, token, *conversation).await?;
        persisted += stored.min(counted[conversation]);
    }
    let mut figures = std::mem::take(&mut *figures.lock().expect("figures"));
    figures.persisted = persisted;
    figures.completed = counted.values().sum();
    figures.cpu = cpu;
    figures.statements = statements;
    Ok(figures)
}

/// Chats on one connection until `stop`; returns the turns it completed.
async fn chatter(
    mut ws: WsStream,
    conversation: i64,
    stop: Arc<AtomicBool>,
    figures: Arc<Mutex<ChatFigures>>,
) -> u64 {
    let mut completed = 0;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("c{conversation}-{n}");
        let outcome = turn(&mut ws, conversation, &id, &format!("load turn {n}")).await;
        // Turns that end after the clock stopped are stored (and checked)
        // but not counted in the rate.
        let counted = !stop.load(Ordering::Relaxed);
        let mut f = figures.lock().expect("figures");
        match outcome {
            Ok((first, done)) => {
                completed += 1;
                if !counted {
                    break;
                }
                f.turns += 1;
                f.first_token.push(first);
                f.done.push(done);
            }
            Err(e) => {
                if f.errors < 5 {
                    eprintln!("turn error: {e}");
                }
                f.errors += 1;
                if e == CONNECTION_CLOSED {
                    break;
                }
            }
        }
    }
    completed
}

/// Turns of a conversation whose user message and complete reply are
/// both in the store, paging through its history.
async fn complete_turns(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    conversation: i64,
) -> anyhow::Result<u64> {
    let mut replies = 0;
    let mut before: Option<i64> = None;
    loop {
        let mut url = format!("{base}/api/v1/conversations/{conversation}/messages?limit=100");
        if let Some(b) = before {
            url.push_str(&format!("&before={b}"));
        }
        let page = get_page(http, &url, token).await?;
        replies += page
            .iter()
            .filter(|m| {
                m["role"] == "assistant" && m["status"] == "complete" && !m["reply_to"].is_null()
            })
            .count() as u64;
        match page.last().and_then(|m| m["id"].as_i64()) {
            Some(oldest) if page.len() == 100 => before = Some(oldest),
            _ => return Ok(replies),
        }
    }
}

fn metric(host: &HostProcess, series: &str) -> Option<f64> {
    let (_, body) = host.http_get("/metrics");
    body.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

fn host_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// mimalloc asks for transparent huge pages for its arenas, and the kernel
/// then zeroes 2 MiB at each first touch: in a storm that was 4–5 % of all
/// the machine's samples, in the tool (`clear_page_erms` under
/// `do_huge_pmd_anonymous_page`), and the tool's CPU a comeback fell by
/// about a fifth without them (interleaved storms, host CPU as the yardstick).
fn no_huge_pages() -> anyhow::Result<()> {
    nix::sys::prctl::set_thp_disable(true).context("prctl(PR_SET_THP_DISABLE)")
}

/// Each held connection is a file descriptor here and one in the host.
fn raise_fd_limit() -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    if hard < 12_000 {
        eprintln!("warning: RLIMIT_NOFILE is {hard}: too low to hold 10,000 connections");
    }
    Ok(())
}
