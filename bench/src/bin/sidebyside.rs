//! Side by side: the same chats straight to a model server, through
//! bothost, and (when one is given) through LiteLLM's proxy. What a user
//! pays for the host: throughput kept and time to the first token added.
//! Prints figures; asserts nothing.
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p bothost-bench --bin sidebyside -- [SECONDS] [ROUNDS] [TOKEN_DELAY_MS]
//! BOTHOST_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run ...
//! ```
//!
//! Defaults: rounds of 3 s, 5 of them, the fake streaming a token every
//! 10 ms (a reply is about 100 ms). One `fake-ollama` serves every path:
//!
//! - **direct**: `POST /api/chat` from reqwest, NDJSON read to `done`, as
//!   a program calling Ollama itself would;
//! - **bothost (SQLite)**, and **bothost (PostgreSQL)** when the bench
//!   database variable is set: the real `bothost serve` with one Ollama
//!   bot, each chat a WebSocket of its own, every turn stored;
//! - **LiteLLM**, when `LITELLM_URL` is set: its OpenAI-compatible
//!   `/chat/completions`, streamed. Installed by hand, never by the tests:
//!
//! ```text
//! python3 -m venv /tmp/litellm && /tmp/litellm/bin/pip install 'litellm[proxy]'
//! LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY=true \
//!     /tmp/litellm/bin/litellm --model ollama_chat/llama3.2 --api_base http://127.0.0.1:11500 --port 4000 &
//! FAKE_OLLAMA_PORT=11500 LITELLM_URL=http://127.0.0.1:4000 cargo run --release -p bothost-bench --bin sidebyside
//! ```
//!
//! (The variable lets the proxy start without a master key, on this
//! machine only. `LITELLM_MODEL` names the model LiteLLM is asked for,
//! `llama3.2` by default.) At 1 and then 20 concurrent chats, each round runs every path
//! in turn for the same time, so all see the same machine noise; a turn
//! counts when it ends within its round. Printed per path: turns a second
//! and their ratio to direct, time to the first token (P50, P99) and what
//! the path adds to direct's P99, that again without each chat's first
//! turn of a round ("steady": those turns all start at the same instant,
//! and on two cores the processes of a path share the CPU out among them
//! until they finish together, after about `concurrent` times the CPU a
//! turn takes to its first token; started 5 ms apart after the same idle
//! wait, they take what later turns do), and for bothost the host's CPU
//! per turn.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bothost_bench::fake::{direct_chat, FakeOllama};
use bothost_bench::ws::{connect, turn, WsStream};
use bothost_bench::{
    bench_database_url, ms, start_host, user_with_conversation, CpuSnapshot, HostProcess,
    Percentiles, PgSchema, NO_LIMITS,
};
use serde_json::json;

const CONCURRENCY: [usize; 2] = [1, 20];

/// Turns started so far, on every path.
static TURNS: AtomicU64 = AtomicU64::new(0);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = args.first().map_or(Ok(3), |s| s.parse())?;
    let rounds: usize = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let delay: u64 = args.get(2).map_or(Ok(10), |s| s.parse())?;
    let port: u16 = std::env::var("FAKE_OLLAMA_PORT").map_or(Ok(0), |p| p.parse())?;
    let fake = FakeOllama::start(port, "side", delay)?;
    println!(
        "# Side by side ({} cores, fake-ollama at one token per {delay} ms, {rounds} rounds of {seconds} s)",
        std::thread::available_parallelism()?.get()
    );
    let schema = match bench_database_url() {
        Some(base) => Some(PgSchema::create(&base, "sidebyside").await?),
        None => None,
    };
    let result = run(&fake, schema.as_ref(), Duration::from_secs(seconds), rounds).await;
    if let Some(schema) = schema {
        schema.drop_schema().await?;
    }
    result
}

async fn run(
    fake: &FakeOllama,
    schema: Option<&PgSchema>,
    round: Duration,
    rounds: usize,
) -> anyhow::Result<()> {
    let mut paths = vec![Path::direct(fake)];
    paths.push(Path::bothost(fake, "SQLite", None).await?);
    if let Some(schema) = schema {
        paths.push(Path::bothost(fake, "PostgreSQL", Some(schema)).await?);
    }
    if let Ok(url) = std::env::var("LITELLM_URL") {
        paths.push(Path::litellm(url));
    }
    for concurrent in CONCURRENCY {
        let mut figures: Vec<Figures> = paths.iter().map(|_| Figures::default()).collect();
        // A warm-up round, not counted: connections, pools, statements.
        for path in &mut paths {
            path.round(concurrent, Duration::from_secs(1)).await?;
        }
        for _ in 0..rounds {
            for (path, figures) in paths.iter_mut().zip(&mut figures) {
                figures.add(path.round(concurrent, round).await?);
            }
        }
        print_table(&paths, figures, concurrent, round * rounds as u32);
    }
    for path in paths {
        if let Target::Bothost { host, .. } = path.target {
            host.stop()?;
        }
    }
    Ok(())
}

/// One way to the model server, with a client per concurrent chat.
struct Path {
    name: String,
    target: Target,
    clients: Vec<Client>,
}

enum Target {
    Direct { url: String },
    Bothost { host: HostProcess, base: String },
    Litellm { url: String, model: String },
}

enum Client {
    Http(reqwest::Client),
    Ws {
        ws: Box<WsStream>,
        conversation: i64,
    },
}

impl Path {
    fn direct(fake: &FakeOllama) -> Self {
        Self {
            name: "direct".into(),
            target: Target::Direct {
                url: fake.url.clone(),
            },
            clients: Vec::new(),
        }
    }

    /// A host with one Ollama bot on `fake`, its store `schema` or SQLite.
    async fn bothost(
        fake: &FakeOllama,
        store: &str,
        schema: Option<&PgSchema>,
    ) -> anyhow::Result<Self> {
        let database = schema.map_or(String::new(), |s| {
            format!("[database]\nurl = \"{}\"\n", s.url)
        });
        let host = start_host(
            "restart_schedule = \"off\"",
            &format!(
                "{database}{NO_LIMITS}[[inference]]\nname = \"side\"\nurl = \"{}\"\n\
                 [[bots]]\nname = \"llama\"\nengine = \"ollama\"\nmodel = \"llama3.2\"\n",
                fake.url
            ),
        )?;
        let base = format!("http://{}", host.addr());
        Ok(Self {
            name: format!("bothost ({store})"),
            target: Target::Bothost { host, base },
            clients: Vec::new(),
        })
    }

    fn litellm(url: String) -> Self {
        let model = std::env::var("LITELLM_MODEL").unwrap_or_else(|_| "llama3.2".into());
        Self {
            name: "LiteLLM".into(),
            target: Target::Litellm { url, model },
            clients: Vec::new(),
        }
    }

    /// Opens clients up to `n`: an HTTP client each, or for bothost a user
    /// with a conversation and its WebSocket.
    async fn clients(&mut self, n: usize) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        while self.clients.len() < n {
            let client = match &self.target {
                Target::Bothost { host, base } => {
                    let name = format!("side{}x{}", std::process::id(), self.clients.len());
                    let (token, conversation) =
                        user_with_conversation(&http, base, &name, "side by side pass", "llama")
                            .await?;
                    let ws = connect(host.addr(), &token).await?;
                    Client::Ws {
                        ws: Box::new(ws),
                        conversation,
                    }
                }
                _ => Client::Http(http.clone()),
            };
            self.clients.push(client);
        }
        Ok(())
    }

    /// `concurrent` chats back to back for `length`.
    async fn round(&mut self, concurrent: usize, length: Duration) -> anyhow::Result<Figures> {
        self.clients(concurrent).await?;
        let cpu = match &self.target {
            Target::Bothost { host, .. } => Some((host.pid(), CpuSnapshot::take(host.pid()))),
            _ => None,
        };
        let deadline = Instant::now() + length;
        let mut tasks = Vec::new();
        for (i, client) in self.clients.drain(..concurrent).enumerate() {
            let target = self.target.address();
            tasks.push(tokio::spawn(chat_until(client, target, i, deadline)));
        }
        let mut round = Figures {
            seconds: length.as_secs_f64(),
            ..Figures::default()
        };
        let mut back = Vec::new();
        for task in tasks {
            let (client, first, errors) = task.await?;
            back.push(client);
            round.steady.extend(first.iter().skip(1));
            round.first_token.extend(first);
            round.errors += errors;
        }
        back.append(&mut self.clients);
        self.clients = back;
        if let Some((pid, before)) = cpu {
            round.host_cpu = Some(CpuSnapshot::take(pid).host.saturating_sub(before.host));
        }
        Ok(round)
    }
}

/// What a chat task needs to reach its path, owned.
enum Address {
    Ndjson(String),
    Ws,
    Openai { url: String, model: String },
}

impl Target {
    fn address(&self) -> Address {
        match self {
            Target::Direct { url } => Address::Ndjson(url.clone()),
            Target::Bothost { .. } => Address::Ws,
            Target::Litellm { url, model } => Address::Openai {
                url: url.clone(),
                model: model.clone(),
            },
        }
    }
}

/// Chats on `client` until `deadline`: (the client, first-token times of
/// the turns that ended in time, errors). A turn running at the deadline
/// is finished (the WebSocket stays clean for the next round) but not
/// counted.
async fn chat_until(
    mut client: Client,
    address: Address,
    chat: usize,
    deadline: Instant,
) -> (Client, Vec<Duration>, u64) {
    let (mut first, mut errors) = (Vec::new(), 0);
    while Instant::now() < deadline {
        // Unique over the run: a client id seen before is a resend, which
        // bothost answers from the store.
        let n = TURNS.fetch_add(1, Ordering::Relaxed);
        let text = format!("chat {chat} turn {n}");
        let outcome = match (&mut client, &address) {
            (Client::Http(http), Address::Ndjson(url)) => direct_chat(http, url, &text)
                .await
                .map_err(|e| e.to_string()),
            (Client::Http(http), Address::Openai { url, model }) => {
                openai_chat(http, url, model, &text).await
            }
            (Client::Ws { ws, conversation }, Address::Ws) => {
                let id = format!("{}-{n}", std::process::id());
                turn(ws, *conversation, &id, &text).await
            }
            _ => Err("a client of another path".into()),
        };
        match outcome {
            Ok((f, _)) if Instant::now() <= deadline => first.push(f),
            Ok(_) => {}
            Err(e) => {
                if errors == 0 {
                    eprintln!("chat {chat}: {e}");
                }
                errors += 1;
            }
        }
    }
    (client, first, errors)
}

/// One chat through an OpenAI-compatible server (server-sent events):
/// (time to the first content, time to `[DONE]`).
async fn openai_chat(
    http: &reqwest::Client,
    url: &str,
    model: &str,
    text: &str,
) -> Result<(Duration, Duration), String> {
    let started = Instant::now();
    let mut response = http
        .post(format!("{url}/chat/completions"))
        .json(&json!({"model": model, "stream": true,
                      "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?;
    let mut first = None;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if first.is_none() && body.windows(11).any(|w| w == b"\"content\":\"") {
            first = Some(started.elapsed());
        }
        if body.windows(12).any(|w| w == b"data: [DONE]") {
            let done = started.elapsed();
            return Ok((first.unwrap_or(done), done));
        }
    }
    Err("the stream ended without [DONE]".into())
}

/// A path's turns over one round or several.
#[derive(Default)]
struct Figures {
    seconds: f64,
    first_token: Vec<Duration>,
    /// The same without each chat's first turn of a round: those start
    /// together, a burst a steady stream of chats does not make.
    steady: Vec<Duration>,
    errors: u64,
    host_cpu: Option<Duration>,
}

impl Figures {
    fn add(&mut self, round: Figures) {
        self.seconds += round.seconds;
        self.first_token.extend(round.first_token);
        self.steady.extend(round.steady);
        self.errors += round.errors;
        if let Some(cpu) = round.host_cpu {
            *self.host_cpu.get_or_insert(Duration::ZERO) += cpu;
        }
    }

    fn turns_per_second(&self) -> f64 {
        self.first_token.len() as f64 / self.seconds.max(f64::EPSILON)
    }
}

fn print_table(paths: &[Path], mut figures: Vec<Figures>, concurrent: usize, total: Duration) {
    println!(
        "\n## {concurrent} concurrent chat{} ({} s per path)",
        if concurrent == 1 { "" } else { "s" },
        total.as_secs()
    );
    println!(
        "| path | turns/s | of direct | first token P50 | P99 | P99 added | \
         P99 added, steady | host CPU/turn | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let direct_rate = figures[0].turns_per_second();
    let direct_p99 = Percentiles::of(&mut figures[0].first_token).p99;
    let direct_steady = Percentiles::of(&mut figures[0].steady).p99;
    for (path, f) in paths.iter().zip(&mut figures) {
        let rate = f.turns_per_second();
        let p = Percentiles::of(&mut f.first_token);
        let steady = Percentiles::of(&mut f.steady).p99;
        let steady_added = steady.as_secs_f64() - direct_steady.as_secs_f64();
        let cpu = f.host_cpu.map_or("—".into(), |cpu| {
            format!(
                "{:.3} ms",
                cpu.as_secs_f64() * 1000.0 / f.first_token.len().max(1) as f64
            )
        });
        let added = p.p99.as_secs_f64() - direct_p99.as_secs_f64();
        println!(
            "| {} | {rate:.1} | {:.1} % | {} | {} | {:+.1} ms | {:+.1} ms | {cpu} | {} |",
            path.name,
            100.0 * rate / direct_rate.max(f64::EPSILON),
            ms(p.p50),
            ms(p.p99),
            added * 1000.0,
            steady_added * 1000.0,
            f.errors
        );
    }
}
