//! The command line. Names and flags are an interface operators script
//! against (DESIGN.md); add commands, rename none.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::control::{Client, ControlRequest, ControlResponse};
use crate::store::{Store, UserChange, UserRole};
use crate::view;

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
    Migrate {
        /// Instead, revert every migration newer than VERSION (with its
        /// down.sql), for a rollback to the build that had VERSION last.
        /// Back up first: a down migration may drop what the newer build
        /// stored.
        #[arg(long, value_name = "VERSION")]
        down_to: Option<String>,
    },
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
    /// A live view of every bot (memory against budget, leak, restarts,
    /// turns in flight) and model server, refreshed every second; `q`
    /// quits. Not on a terminal: one frame, then exit.
    Top,
    /// One chat turn through the running host; the reply streams to stdout.
    Chat { bot: String, text: String },
    /// The production checklist: every check PASS, WARN or FAIL with why
    /// and how to fix; exit 1 on any FAIL. Run it before every deploy.
    CheckConfig {
        /// Machine-readable output: {"checks": [{"name", "status", "detail"}]}.
        #[arg(long)]
        json: bool,
        /// Prometheus and Alertmanager files (default: monitoring/ beside
        /// the configuration).
        #[arg(long)]
        monitoring: Option<PathBuf>,
        /// The playbooks alerts point at (default: playbooks/ beside the
        /// configuration).
        #[arg(long)]
        playbooks: Option<PathBuf>,
    },
    /// Back the database up (SQLite: a consistent copy while the host
    /// serves; PostgreSQL: pg_dump) with a manifest; prints the backup's
    /// path on the last line.
    Backup {
        /// Where to write it (default: backup.dir).
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Restore a backup into the configured database: checks its SHA-256,
    /// refuses while a host serves or over existing data (unless --force),
    /// then applies pending migrations.
    Restore {
        file: PathBuf,
        /// Restore even over existing data or while a host serves.
        #[arg(long)]
        force: bool,
    },
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

/// `bothost migrate [--down-to VERSION]`.
pub async fn migrate(config: &Config, down_to: Option<&str>) -> anyhow::Result<()> {
    let target = config
        .database_target()
        .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
    if let Some(version) = down_to {
        let reverted = crate::store::revert_to(&target, version).await?;
        if reverted.is_empty() {
            println!("nothing newer than {version} is applied");
        }
        for version in reverted {
            println!("reverted {version}");
        }
        return Ok(());
    }
    let applied = crate::store::migrate(&target).await?;
    if applied.is_empty() {
        println!("the database schema is current");
    }
    for version in applied {
        println!("applied {version}");
    }
    Ok(())
}

/// `bothost check-config`: true when nothing failed.
pub async fn check_config(
    path: &std::path::Path,
    json: bool,
    monitoring: Option<PathBuf>,
    playbooks: Option<PathBuf>,
) -> anyhow::Result<bool> {
    let mut paths = crate::checks::Paths::beside(path);
    if let Some(dir) = monitoring {
        paths.monitoring = dir;
    }
    if let Some(dir) = playbooks {
        paths.playbooks = dir;
    }
    let report = crate::checks::run(path, &paths).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(!report.failed())
}

/// `bothost backup`.
pub async fn backup(config: &Config, to: Option<&std::path::Path>) -> anyhow::Result<()> {
    let backup = crate::backup::create(config, to).await?;
    let m = &backup.manifest;
    println!(
        "backed up {} users, {} conversations, {} messages ({}, schema {}) in {} ms",
        m.rows.users,
        m.rows.conversations,
        m.rows.messages,
        bytesize::ByteSize::b(m.bytes).display().si(),
        m.schema_version,
        backup.took.as_millis()
    );
    println!("{}", backup.path.display());
    Ok(())
}

/// `bothost restore`.
pub async fn restore(config: &Config, file: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let restored = crate::backup::restore(config, file, force).await?;
    let (want, got) = (&restored.manifest.rows, &restored.rows);
    for version in &restored.migrated {
        println!("applied migration {version}");
    }
    println!(
        "restored {} users, {} conversations, {} messages from {} ({}) in {} ms",
        got.users,
        got.conversations,
        got.messages,
        file.display(),
        restored.manifest.created_at,
        restored.took.as_millis()
    );
    anyhow::ensure!(
        want == got,
        "the restored database holds {got:?}, the backup's manifest says {want:?}"
    );
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
    /// Every account: id, name, role, created, disabled.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Set a new password, read from the first line of stdin; the user's
    /// sessions end.
    Passwd { name: String },
    /// Make the user an admin or a plain user; the user's sessions end.
    Role {
        name: String,
        #[arg(value_parser = ["user", "admin"])]
        role: String,
    },
    /// Refuse the user's log-ins and end their sessions (data is kept).
    Disable { name: String },
    /// Let a disabled user log in again.
    Enable { name: String },
    /// End every session of the user (they log in again).
    Logout { name: String },
    /// Delete the user with every conversation and message they own.
    Delete {
        name: String,
        /// Required: this cannot be undone (but by restoring a backup).
        #[arg(long)]
        yes: bool,
    },
}

/// `bothost user …`. Changes reach a running host's sessions within
/// `web::sessions::RECHECK` (it checks accounts in the database).
pub async fn user(config: &Config, action: UserAction) -> anyhow::Result<()> {
    let metrics = crate::metrics::Metrics::new()?;
    let store = crate::startup::open_store(config, metrics).await?;
    let change = match action {
        UserAction::Add { name, admin } => return user_add(&store, &name, admin).await,
        UserAction::List { json } => return user_list(&store, json).await,
        UserAction::Delete { name, yes } => {
            let user = find_user(&store, &name).await?;
            anyhow::ensure!(
                yes,
                "deleting '{}' deletes every conversation and message they own; \
                 run again with --yes to do it",
                user.username
            );
            store.delete_user(user.id).await?;
            println!(
                "deleted '{}' (id {}) and all their data",
                user.username, user.id
            );
            return Ok(());
        }
        UserAction::Passwd { name } => {
            let password = read_password()?;
            crate::web::check_credentials(&name, &password)
                .map_err(|e| anyhow::anyhow!(e.message))?;
            let hash = crate::web::auth::hash_password(&password)
                .map_err(|e| anyhow::anyhow!(e.message))?;
            (
                name,
                "password changed",
                UserChange {
                    password_hash: Some(hash),
                    ..UserChange::default()
                },
            )
        }
        UserAction::Role { name, role } => {
            let role = role.parse::<UserRole>().map_err(anyhow::Error::msg)?;
            (
                name,
                "role set",
                UserChange {
                    role: Some(role.as_str()),
                    ..UserChange::default()
                },
            )
        }
        UserAction::Disable { name } => (
            name,
            "disabled",
            UserChange {
                disabled_at: Some(Some(crate::store::now_ms())),
                ..UserChange::default()
            },
        ),
        UserAction::Enable { name } => (
            name,
            "enabled",
            UserChange {
                disabled_at: Some(None),
                ..UserChange::default()
            },
        ),
        UserAction::Logout { name } => (name, "logged out", UserChange::default()),
    };
    let (name, done, change) = change;
    let user = find_user(&store, &name).await?;
    let user = store
        .update_user(user.id, change)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no user '{name}'"))?;
    println!(
        "{}: {done}; their sessions have ended (role {}, {})",
        user.username,
        user.role,
        if user.disabled_at.is_some() {
            "disabled"
        } else {
            "enabled"
        }
    );
    Ok(())
}

async fn find_user(store: &Store, name: &str) -> anyhow::Result<crate::store::User> {
    store
        .user_by_name(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no user '{name}' (see `bothost user list`)"))
}

/// The first line of stdin, without its line ending.
fn read_password() -> anyhow::Result<String> {
    let mut password = String::new();
    std::io::stdin().read_line(&mut password)?;
    Ok(password.trim_end_matches(['\n', '\r']).to_owned())
}

async fn user_add(store: &Store, name: &str, admin: bool) -> anyhow::Result<()> {
    let password = read_password()?;
    crate::web::check_credentials(name, &password).map_err(|e| anyhow::anyhow!(e.message))?;
    let hash =
        crate::web::auth::hash_password(&password).map_err(|e| anyhow::anyhow!(e.message))?;
    let role = if admin {
        UserRole::Admin
    } else {
        UserRole::User
    };
    let user = store.create_user(name, &hash, role).await?;
    println!("created {role} '{}' (id {})", user.username, user.id);
    Ok(())
}

/// A time stored as ms since the epoch, to the minute, in UTC.
fn utc_minute(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

async fn user_list(store: &Store, json: bool) -> anyhow::Result<()> {
    let users = store.users().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&users)?);
        return Ok(());
    }
    println!(
        "{:>6}  {:<32}  {:<5}  {:<24}  STATE",
        "ID", "NAME", "ROLE", "CREATED"
    );
    for u in &users {
        let created = utc_minute(u.created_at);
        let state = match u.disabled_at {
            Some(at) => format!("disabled {}", utc_minute(at)),
            None => "enabled".to_owned(),
        };
        println!(
            "{:>6}  {:<32}  {:<5}  {:<24}  {state}",
            u.id,
            u.username,
            u.role.as_str(),
            created
        );
    }
    Ok(())
}

/// `bothost status`.
pub async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let mut client = Client::connect(&config.control_socket()).await?;
    let report = client.status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", view::status_table(&report));
    }
    Ok(())
}

/// `bothost top`: redraws every second until `q`, Esc or Ctrl-C; prints one
/// frame when stdout is not a terminal.
pub async fn top(config: &Config) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let warn = config.supervisor.memory_warn_ratio;
    let socket = config.control_socket();
    let mut client = Client::connect(&socket).await?;
    let clock = || chrono::Local::now().format("%H:%M:%S").to_string();
    if !std::io::stdout().is_terminal() {
        let report = client.status().await?;
        print!("{}", view::top_frame(&report, warn, &clock()));
        return Ok(());
    }
    let _screen = FullScreen::enter()?;
    let mut client = Some(client);
    loop {
        let frame = match client.as_mut() {
            Some(c) => c
                .status()
                .await
                .map(|r| view::top_frame(&r, warn, &clock()))
                .map_err(anyhow::Error::from),
            None => Err(anyhow::anyhow!("not connected")),
        };
        let frame = frame.unwrap_or_else(|e| {
            client = None;
            format!(
                "bothost top · {} · the host does not answer: {e:#}\nq quits\n",
                clock()
            )
        });
        FullScreen::draw(&frame)?;
        if quit_within(std::time::Duration::from_secs(1))? {
            return Ok(());
        }
        if client.is_none() {
            client = Client::connect(&socket).await.ok();
        }
    }
}

/// Whether `q`, Esc or Ctrl-C is pressed within `wait`. Blocks the thread:
/// `top` has nothing else to do meanwhile.
fn quit_within(wait: std::time::Duration) -> std::io::Result<bool> {
    use crossterm::event::{self, Event, KeyCode, KeyModifiers};
    let deadline = std::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || !event::poll(left)? {
            return Ok(false);
        }
        if let Event::Key(key) = event::read()? {
            let ctrl_c =
                key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
            if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                return Ok(true);
            }
        }
    }
}

/// The terminal in raw mode on the alternate screen, restored however
/// `top` ends.
struct FullScreen;

impl FullScreen {
    fn enter() -> std::io::Result<Self> {
        crossterm::terminal::enable_raw_mode()?;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(Self)
    }

    fn draw(frame: &str) -> std::io::Result<()> {
        let mut out = std::io::stdout();
        crossterm::execute!(
            out,
            crossterm::cursor::MoveTo(0, 0),
            crossterm::terminal::Clear(crossterm::terminal::ClearType::All)
        )?;
        // Raw mode: a line feed does not return the carriage.
        out.write_all(frame.replace('\n', "\r\n").as_bytes())?;
        out.flush()
    }
}

impl Drop for FullScreen {
    fn drop(&mut self) {
        let _ = crossterm::execute!(
            std::io::stdout(),
            crossterm::cursor::Show,
            crossterm::terminal::LeaveAlternateScreen
        );
        let _ = crossterm::terminal::disable_raw_mode();
    }
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
