//! The rules the types cannot express: unique bot names, ranges, path
//! lengths, endpoints that exist. Each broken rule is reported as (key,
//! reason).

use std::collections::HashSet;
use std::time::Duration;

use bytesize::ByteSize;

use super::derived::worker_socket_stem;
use super::schema::{default_model, BotConfig, Config};

/// The most bots one host runs: each is a child process with a socket pair,
/// a log pipe and a memory budget, and a handover briefly doubles that.
pub const MAX_BOTS: usize = 256;

/// Longest path a Unix socket address can hold, less the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

impl Config {
    /// Rules the types cannot express. Returns the first broken one as
    /// (key, reason).
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let s = &self.supervisor;
        let bad = |key: &str, reason: String| Err((key.to_owned(), reason));
        let db = &self.database;
        if let Err(reason) = self.database_target() {
            return bad("database.url", reason);
        }
        if let Some(reason) = self.jwt_secret_problem() {
            return bad("auth.jwt_secret", reason);
        }
        let l = &self.limits;
        for (key, value) in [
            (
                "limits.messages_per_minute_per_user",
                l.messages_per_minute_per_user,
            ),
            (
                "limits.messages_per_minute_per_ip",
                l.messages_per_minute_per_ip,
            ),
            (
                "limits.logins_per_minute_per_ip",
                l.logins_per_minute_per_ip,
            ),
            ("limits.max_in_flight_per_user", l.max_in_flight_per_user),
            ("limits.websockets_per_user", l.websockets_per_user),
            ("limits.websockets_per_ip", l.websockets_per_ip),
            (
                "limits.conversations_per_minute_per_user",
                l.conversations_per_minute_per_user,
            ),
            (
                "limits.max_conversations_per_user",
                l.max_conversations_per_user,
            ),
        ] {
            if value == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        for (key, size) in [
            ("limits.max_body", l.max_body),
            ("limits.max_ws_frame", l.max_ws_frame),
        ] {
            if size.as_u64() == 0 {
                return bad(key, "must be greater than 0".into());
            }
        }
        if l.max_message_chars == 0 {
            return bad("limits.max_message_chars", "must be at least 1".into());
        }
        if self.server.max_requests_in_flight == 0 {
            return bad("server.max_requests_in_flight", "must be at least 1".into());
        }
        if self.server.request_header_timeout.is_zero() {
            return bad(
                "server.request_header_timeout",
                "must be greater than 0".into(),
            );
        }
        if self.server.ws_heartbeat.is_zero() {
            return bad("server.ws_heartbeat", "must be greater than 0".into());
        }
        if self.server.ws_timeout <= self.server.ws_heartbeat {
            return bad(
                "server.ws_timeout",
                "must be longer than server.ws_heartbeat".into(),
            );
        }
        if let Some(tls) = &self.server.tls {
            for (key, path) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
                if !path.is_file() {
                    return bad(key, format!("{} is not a readable file", path.display()));
                }
            }
        }
        if db.pool_size == 0 {
            return bad("database.pool_size", "must be at least 1".into());
        }
        if db.pool_max < db.pool_size {
            return bad(
                "database.pool_max",
                format!(
                    "{} is below database.pool_size ({})",
                    db.pool_max, db.pool_size
                ),
            );
        }
        if self.bots.is_empty() {
            return bad("bots", "at least one [[bots]] entry is required".into());
        }
        if self.bots.len() > MAX_BOTS {
            return bad(
                "bots",
                format!(
                    "{} bots; one host runs at most {MAX_BOTS} (each is a process with its \
                     sockets and memory budget): spread them over more hosts",
                    self.bots.len()
                ),
            );
        }
        if s.sample_interval < Duration::from_millis(100) {
            return bad(
                "supervisor.sample_interval",
                "must be at least 100ms".into(),
            );
        }
        if s.heartbeat_interval.is_zero() {
            return bad(
                "supervisor.heartbeat_interval",
                "must be greater than 0".into(),
            );
        }
        if s.heartbeat_timeout <= s.heartbeat_interval {
            return bad(
                "supervisor.heartbeat_timeout",
                format!(
                    "must be longer than supervisor.heartbeat_interval ({})",
                    humantime::format_duration(s.heartbeat_interval)
                ),
            );
        }
        if s.backoff_initial.is_zero() || s.backoff_initial > s.backoff_max {
            return bad(
                "supervisor.backoff_initial",
                "must be greater than 0 and at most supervisor.backoff_max".into(),
            );
        }
        if s.crash_limit == 0 {
            return bad("supervisor.crash_limit", "must be at least 1".into());
        }
        if s.quarantine_initial.is_zero() || s.quarantine_initial > s.quarantine_max {
            return bad(
                "supervisor.quarantine_initial",
                "must be greater than 0 and at most supervisor.quarantine_max".into(),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return bad(
                "logging.level",
                format!(
                    "'{}' is not a log filter (try \"info\" or \"bothost=debug,info\")",
                    self.logging.level
                ),
            );
        }
        if s.start_timeout.is_zero() {
            return bad("supervisor.start_timeout", "must be greater than 0".into());
        }
        if s.turn_idle_timeout.is_zero() {
            return bad(
                "supervisor.turn_idle_timeout",
                "must be greater than 0".into(),
            );
        }
        check_budget("supervisor.memory_budget", s.memory_budget)?;
        if !(s.memory_warn_ratio > 0.0 && s.memory_warn_ratio < 1.0) {
            return bad(
                "supervisor.memory_warn_ratio",
                format!("{} is not between 0 and 1", s.memory_warn_ratio),
            );
        }
        if s.over_budget_samples == 0 {
            return bad(
                "supervisor.over_budget_samples",
                "must be at least 1".into(),
            );
        }
        let min_window = s.sample_interval * (2 * crate::memory::BUCKETS as u32);
        if s.leak_window < min_window {
            return bad(
                "supervisor.leak_window",
                format!(
                    "must hold at least {} readings: {} or more with sample_interval {}",
                    2 * crate::memory::BUCKETS,
                    humantime::format_duration(min_window),
                    humantime::format_duration(s.sample_interval)
                ),
            );
        }
        if let Err(e) = self.restart_schedule() {
            return bad("supervisor.restart_schedule", e);
        }
        if let Err(e) = self.backup_schedule() {
            return bad("backup.schedule", e);
        }
        if self.backup.keep == 0 {
            return bad("backup.keep", "must keep at least 1 backup".into());
        }
        let longest_socket = self.runtime_dir().join(format!(
            "{}.sock",
            worker_socket_stem(&"x".repeat(MAX_BOT_NAME), u64::MAX)
        ));
        if longest_socket.as_os_str().len() > MAX_SOCKET_PATH {
            return bad(
                "supervisor.runtime_dir",
                format!(
                    "{} is too long for Unix socket paths (at most {} bytes with the socket name); choose a shorter directory",
                    self.runtime_dir().display(),
                    MAX_SOCKET_PATH
                ),
            );
        }
        let mut endpoints = HashSet::new();
        for (i, e) in self.inference.iter().enumerate() {
            let key = |field: &str| format!("inference[{i}].{field}");
            if let Err(reason) = check_bot_name(&e.name) {
                return Err((key("name"), reason));
            }
            if !endpoints.insert(e.name.as_str()) {
                return Err((key("name"), format!("duplicate endpoint name '{}'", e.name)));
            }
            if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
                return Err((
                    key("url"),
                    format!("'{}' is not an http:// or https:// URL", e.url),
                ));
            }
            if e.command.first().is_some_and(|c| c.trim().is_empty()) {
                return Err((key("command"), "the program name is empty".into()));
            }
            for (field, d) in [
                ("health_interval", e.health_interval),
                ("health_interval_down", e.health_interval_down),
                ("health_timeout", e.health_timeout),
                ("connect_timeout", e.connect_timeout),
                ("first_token_timeout", e.first_token_timeout),
                ("token_gap_timeout", e.token_gap_timeout),
            ] {
                if d.is_zero() {
                    return Err((key(field), "must be greater than 0".into()));
                }
            }
            if e.restart_after_failed_checks == 0 {
                return Err((
                    key("restart_after_failed_checks"),
                    "must be at least 1".into(),
                ));
            }
            // The worker's own timeouts must fire first: they fail over to
            // the next endpoint, the host's backstop ends the turn.
            let silence = (e.connect_timeout + e.first_token_timeout).max(e.token_gap_timeout);
            if s.turn_idle_timeout <= silence {
                return bad(
                    "supervisor.turn_idle_timeout",
                    format!(
                        "must be longer than the silence inference[{i}] ('{}') allows a turn \
                         ({}: connect_timeout + first_token_timeout, or token_gap_timeout)",
                        e.name,
                        humantime::format_duration(silence)
                    ),
                );
            }
        }
        let mut seen = HashSet::new();
        for (i, bot) in self.bots.iter().enumerate() {
            let key = |field: &str| format!("bots[{i}].{field}");
            if let Err(reason) = check_bot_name(&bot.name) {
                return Err((key("name"), reason));
            }
            if !seen.insert(bot.name.as_str()) {
                return Err((key("name"), format!("duplicate bot name '{}'", bot.name)));
            }
            if let Some(budget) = bot.memory_budget {
                check_budget(&key("memory_budget"), budget)?;
            }
            self.check_bot_inference(bot)
                .map_err(|(field, reason)| (key(field), reason))?;
            let rate = bot.builtin.fail_rate;
            if !(0.0..=1.0).contains(&rate) {
                return Err((
                    key("builtin.fail_rate"),
                    format!("{rate} is outside 0.0 to 1.0"),
                ));
            }
        }
        Ok(())
    }

    /// A remote bot names a model and at least one endpoint of its kind.
    fn check_bot_inference(&self, bot: &BotConfig) -> Result<(), (&'static str, String)> {
        let Some(kind) = bot.inference_kind() else {
            return Ok(());
        };
        if bot.model == default_model() {
            return Err((
                "model",
                format!(
                    "an {} bot needs the model its server should run (for example \"llama3.2\")",
                    kind.as_str()
                ),
            ));
        }
        for name in &bot.inference {
            match self.inference.iter().find(|e| &e.name == name) {
                None => {
                    return Err((
                        "inference",
                        format!("no [[inference]] endpoint is named '{name}'"),
                    ))
                }
                Some(e) if e.kind != kind => {
                    return Err((
                        "inference",
                        format!(
                            "endpoint '{name}' speaks {}, the bot's engine is {}",
                            e.kind.as_str(),
                            kind.as_str()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if self.endpoints_of(bot).is_empty() {
            return Err((
                "engine",
                format!(
                    "no [[inference]] endpoint of kind \"{}\" is configured",
                    kind.as_str()
                ),
            ));
        }
        if let Some(t) = bot.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
            return Err(("temperature", format!("{t} is outside 0.0 to 2.0")));
        }
        Ok(())
    }
}

const MAX_BOT_NAME: usize = 32;

/// Bot names appear in socket paths, metric labels and URLs.
/// The shortest signing secret accepted: HS256's own key size.
pub const MIN_SECRET_BYTES: usize = 32;

/// Secrets copied from examples and tutorials are no secret.
const EXAMPLE_SECRETS: [&str; 6] = [
    "change-me",
    "changeme",
    "secret",
    "example",
    "your-secret",
    "replace-me",
];

impl Config {
    /// Why the signing secret (or its absence) is refused, if it is. Unset
    /// is allowed on loopback only: a random secret per start logs
    /// everyone out at each restart, and hosts behind one balancer would
    /// reject each other's tokens.
    fn jwt_secret_problem(&self) -> Option<String> {
        use secrecy::ExposeSecret;
        let secret = self.auth.jwt_secret.expose_secret();
        const FIX: &str = "set BOTHOST_JWT_SECRET to 32+ random bytes (`openssl rand -base64 48`)";
        if secret.is_empty() {
            return self.public_bind().then(|| {
                format!(
                    "not set, and server.bind {} is reachable from other machines; {FIX}",
                    self.server.bind
                )
            });
        }
        let lower = secret.to_ascii_lowercase();
        let why = if EXAMPLE_SECRETS.iter().any(|e| lower.contains(e)) {
            "it is an example value, known to everyone who read the example".to_owned()
        } else if secret.len() < MIN_SECRET_BYTES {
            format!(
                "it is {} bytes; at least {MIN_SECRET_BYTES} are needed",
                secret.len()
            )
        } else if secret.chars().all(|c| secret.starts_with(c)) {
            "it is one character repeated".to_owned()
        } else {
            return None;
        };
        Some(format!("{why}; {FIX}"))
    }
}

fn check_bot_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let starts_alnum = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > MAX_BOT_NAME || !ok_chars || !starts_alnum {
        return Err(format!(
            "'{name}' is not a valid bot name: use 1 to {MAX_BOT_NAME} of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ));
    }
    Ok(())
}

fn check_budget(key: &str, budget: ByteSize) -> Result<(), (String, String)> {
    if budget < ByteSize::mb(1) {
        return Err((
            key.to_owned(),
            format!("{budget} is too small for any worker (at least 1MB)"),
        ));
    }
    Ok(())
}
