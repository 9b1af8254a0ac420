//! The command line. Names and flags are an interface operators script
//! against (DESIGN.md); add commands, rename none.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::control::{Client, ControlRequest, ControlResponse};
use crate::status::StatusReport;

#[derive(Debug, Parser)]
#[command(
    name = "bothost",
    version,
    about = "Host chat bots, one supervised process per bot"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, env = "BOTHOST_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: workers, control socket and HTTP.
    Serve,
    /// Apply pending database migrations and exit (`serve` also does).
    Migrate,
    /// Manage user accounts in the database.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Show every bot of the running host.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One chat turn through the running host; the reply streams to stdout.
    Chat { bot: String, text: String },
    /// Hand bots over to new worker generations without dropping a turn.
    /// Returns when done; exits 1 if any bot failed (fit for cron).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["bot", "all"])))]
    Restart {
        /// The bot to restart.
        bot: Option<String>,
        /// Every bot.
        #[arg(long)]
        all: bool,
        /// With --all: one bot at a time, each waiting for the last.
        #[arg(long, requires = "all")]
        rolling: bool,
    },
}

/// `bothost migrate`.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let target = config
        .database_target()
        .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
    let applied = crate::store::migrate(&target).await?;
    if applied.is_empty() {
        println!("the database schema is current");
    }
    for version in applied {
        println!("applied {version}");
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a user; the password is read from the first line of stdin.
    Add {
        name: String,
        /// Give the user the admin role.
        #[arg(long)]
        admin: bool,
    },
}

/// `bothost user add`.
pub async fn user_add(config: &Config, name: &str, admin: bool) -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin().read_line(&mut password)?;
    let password = password.trim_end_matches(['\n', '\r']);
    crate::web::check_credentials(name, password).map_err(|e| anyhow::anyhow!(e.message))?;
    let metrics = crate::metrics::Metrics::new()?;
    let store = crate::startup::open_store(config, metrics).await?;
    let hash = crate::web::auth::hash_password(password).map_err(|e| anyhow::anyhow!(e.message))?;
    let role = if admin {
        crate::store::UserRole::Admin
    } else {
        crate::store::UserRole::User
    };
    let user = store.create_user(name, &hash, role).await?;
    println!("created {role} '{}' (id {})", user.username, user.id);
    Ok(())
}

/// `bothost status`.
pub async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let mut client = Client::connect(&config.control_socket()).await?;
    client.send(ControlRequest::Status).await?;
    match client.next().await? {
        ControlResponse::Status(report) if json => {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        ControlResponse::Status(report) => print!("{}", status_table(&report)),
        other => anyhow::bail!("unexpected answer from the host: {other:?}"),
    }
    Ok(())
}

/// `bothost chat`: returns whether the turn completed.
pub async fn chat(config: &Config, bot: String, text: String) -> anyhow::Result<bool> {
    let mut client = Client::connect(&config.control_socket()).await?;
    client.send(ControlRequest::Chat { bot, text }).await?;
    let mut stdout = std::io::stdout();
    let mut streamed = false;
    loop {
        match client.next().await? {
            ControlResponse::Delta { text } => {
                stdout.write_all(text.as_bytes())?;
                stdout.flush()?;
                streamed = true;
            }
            ControlResponse::Done { .. } => {
                println!();
                return Ok(true);
            }
            ControlResponse::Error { code, message } => {
                if streamed {
                    println!();
                }
                let code = serde_json::to_value(code)?;
                eprintln!("error ({}): {message}", code.as_str().unwrap_or("unknown"));
                return Ok(false);
            }
            other => anyhow::bail!("unexpected answer from the host: {other:?}"),
        }
    }
}

/// `bothost restart`: returns whether every bot was restarted.
pub async fn restart(config: &Config, bot: Option<String>, rolling: bool) -> anyhow::Result<bool> {
    let mut client = Client::connect(&config.control_socket()).await?;
    client
        .send(ControlRequest::Restart { bot, rolling })
        .await?;
    loop {
        match client.next().await? {
            ControlResponse::Restarted(outcome) => match outcome.result {
                Ok(r) => println!(
                    "{}: restarted, generation {} -> {} in {} ms",
                    outcome.bot,
                    r.from.map_or_else(|| "-".to_owned(), |g| g.to_string()),
                    r.to,
                    r.millis
                ),
                Err(why) => println!("{}: FAILED: {why}", outcome.bot),
            },
            ControlResponse::RestartsDone { failed } => {
                if failed > 0 {
                    eprintln!("error: {failed} bot(s) could not be restarted");
                }
                return Ok(failed == 0);
            }
            ControlResponse::Refused { message } => {
                eprintln!("error: {message}");
                return Ok(false);
            }
            other => anyhow::bail!("unexpected answer from the host: {other:?}"),
        }
    }
}

fn status_table(report: &StatusReport) -> String {
    let dash = || "-".to_owned();
    let size = |b: u64| bytesize::ByteSize::b(b).display().si().to_string();
    let row = |cells: [String; 10]| {
        format!(
            "{:<20} {:<10} {:>8} {:>4} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9}\n",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
            cells[9]
        )
    };
    let mut out = row([
        "BOT",
        "STATE",
        "PID",
        "GEN",
        "RSS",
        "BUDGET",
        "LEAK/S",
        "UPTIME",
        "RESTARTS",
        "IN-FLIGHT",
    ]
    .map(str::to_owned));
    for b in &report.bots {
        let warn = if b.memory_warning { " !" } else { "" };
        out.push_str(&row([
            b.name.clone(),
            b.state.as_str().to_owned(),
            b.pid.map_or_else(dash, |p| p.to_string()),
            b.generation.to_string(),
            b.rss_bytes
                .map_or_else(dash, |r| format!("{}{warn}", size(r))),
            size(b.budget_bytes),
            size(b.leak_slope_bytes_per_second.max(0.0) as u64),
            b.uptime_seconds.map_or_else(dash, |s| {
                humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
            }),
            b.restarts.to_string(),
            b.in_flight.to_string(),
        ]));
        if let Some(g) = b.pending_generation {
            out.push_str(&format!("{:<20} handing over to generation {g}\n", ""));
        }
        if let Some(why) = &b.last_failure {
            out.push_str(&format!("{:<20} last failure: {why}\n", ""));
        }
        if b.model_present == Some(false) {
            out.push_str(&format!(
                "{:<20} model {} is on none of its model servers that are up\n",
                "", b.model
            ));
        }
    }
    if let Some(rss) = report.host_rss_bytes {
        out.push_str(&format!("host RSS {}\n", size(rss)));
    }
    for e in &report.inference {
        let state = match (e.checked, e.up) {
            (false, _) => "unchecked".to_owned(),
            (true, true) => format!("up ({} models)", e.models.len()),
            (true, false) => format!("down: {}", e.error.as_deref().unwrap_or("")),
        };
        let supervised = e
            .pid
            .map(|pid| format!(", supervised pid {pid}, {} restarts", e.restarts))
            .unwrap_or_default();
        out.push_str(&format!(
            "inference {} ({}): {state}{supervised}\n",
            e.name,
            e.kind.as_str()
        ));
    }
    out
}
