//! The checks of the machine the host will run on: logging, the HTTP
//! address, the runtime directory, the worker binary, memory for every
//! budget, the model servers and their keys, and the restart schedule.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chrono::{Datelike, Offset, TimeZone, Timelike};

use super::report::{can_write, nearest_existing, Check};
use crate::config::{Config, InferenceKind};

/// The level and format are validated when the file loads; what is left
/// is whether the environment overrides them.
pub fn logging(config: &Config) -> Check {
    let level = &config.logging.level;
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => Check::warn(
            "logging",
            format!("RUST_LOG='{env}' is set and overrides logging.level '{level}'"),
        ),
        _ => Check::pass(
            "logging",
            format!("level '{level}', format {:?}", config.logging.format).to_lowercase(),
        ),
    }
}

pub async fn bind_address(config: &Config) -> Check {
    let addr = config.server.bind;
    if addr.port() == 0 {
        return Check::pass(
            "bind_address",
            "port 0: a free port is picked at each start",
        );
    }
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Check::pass("bind_address", format!("{addr} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if crate::control::Client::is_listening(&config.control_socket()).await {
                Check::warn(
                    "bind_address",
                    format!(
                        "{addr} is in use by a bothost already running with this configuration: \
                         stop it before starting another"
                    ),
                )
            } else {
                Check::fail(
                    "bind_address",
                    format!(
                        "{addr} is in use by another program (`ss -ltnp 'sport = :{}'` names it)",
                        addr.port()
                    ),
                )
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check::fail(
            "bind_address",
            format!(
                "{addr}: {e}: ports below 1024 need CAP_NET_BIND_SERVICE, or use a higher port"
            ),
        ),
        Err(e) => Check::fail("bind_address", format!("{addr}: {e}")),
    }
}

pub fn runtime_dir(config: &Config) -> Check {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = config.runtime_dir();
    match std::fs::metadata(dir) {
        Ok(m) => {
            let me = nix::unistd::geteuid().as_raw();
            if m.uid() != me {
                Check::fail(
                    "runtime_dir",
                    format!(
                        "{} belongs to uid {}, not to this user ({me}): `chown` it",
                        dir.display(),
                        m.uid()
                    ),
                )
            } else if m.permissions().mode() & 0o077 != 0 {
                Check::fail(
                    "runtime_dir",
                    format!(
                        "{} is mode {:o}: others could reach the worker and control sockets; \
                         `chmod 700 {}`",
                        dir.display(),
                        m.permissions().mode() & 0o777,
                        dir.display()
                    ),
                )
            } else {
                Check::pass("runtime_dir", format!("{} is ours, 0700", dir.display()))
            }
        }
        Err(_) => {
            let parent = nearest_existing(dir);
            if can_write(parent) {
                Check::pass(
                    "runtime_dir",
                    format!("{} will be created 0700 at start", dir.display()),
                )
            } else {
                Check::fail(
                    "runtime_dir",
                    format!(
                        "{} does not exist and {} is not writable by this user",
                        dir.display(),
                        parent.display()
                    ),
                )
            }
        }
    }
}

pub async fn worker_binary(config: &Config) -> Check {
    let binaries: BTreeSet<_> = config
        .bots
        .iter()
        .map(|b| config.worker_binary_of(b))
        .collect();
    let mut lines = Vec::new();
    for binary in &binaries {
        match protocol_of(binary).await {
            Ok(v) if v == bot_worker::PROTOCOL_VERSION => {}
            Ok(v) => {
                return Check::fail(
                    "worker_binary",
                    format!(
                    "{} speaks protocol {v}, this bothost speaks {}: deploy both from one build",
                    binary.display(),
                    bot_worker::PROTOCOL_VERSION
                ),
                )
            }
            Err(why) => {
                return Check::fail("worker_binary", format!("{}: {why}", binary.display()))
            }
        }
        lines.push(binary.display().to_string());
    }
    Check::pass(
        "worker_binary",
        format!(
            "{} speaks protocol {}",
            lines.join(", "),
            bot_worker::PROTOCOL_VERSION
        ),
    )
}

async fn protocol_of(binary: &Path) -> Result<u32, String> {
    if !binary.is_file() {
        return Err("not found (supervisor.worker_binary or bots[].worker_binary)".into());
    }
    if nix::unistd::access(binary, nix::unistd::AccessFlags::X_OK).is_err() {
        return Err("not executable: `chmod +x` it".into());
    }
    let run = tokio::process::Command::new(binary)
        .arg("--protocol-version")
        .env_clear()
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .map_err(|_| "did not answer --protocol-version within 5 s".to_owned())?
        .map_err(|e| format!("cannot run it: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| "is not a bot-worker (no protocol version from --protocol-version)".into())
}

/// The memory the machine has available now, as the kernel counts it.
pub fn available_memory() -> Option<u64> {
    let mut system = sysinfo::System::new().ok()?;
    system.refresh_memory();
    Some(system.available_memory()).filter(|&m| m > 0)
}

/// Every bot's budget, plus the largest once more (a handover runs two
/// generations of one bot), must fit in what the machine has available.
pub fn memory_headroom(config: &Config, available: Option<u64>) -> Check {
    let budgets: Vec<u64> = config
        .bots
        .iter()
        .map(|b| config.budget_of(b).as_u64())
        .collect();
    let largest = budgets.iter().copied().max().unwrap_or(0);
    let need = budgets.iter().sum::<u64>() + largest;
    let mb = |b: u64| bytesize::ByteSize::b(b).display().si().to_string();
    let Some(available) = available else {
        return Check::warn(
            "memory_headroom",
            "cannot read the machine's available memory",
        );
    };
    let summary = format!(
        "{} bots' budgets + one handover = {}; {} available",
        budgets.len(),
        mb(need),
        mb(available)
    );
    if need > available {
        Check::fail(
            "memory_headroom",
            format!("{summary}: lower memory budgets or run fewer bots per host"),
        )
    } else if need as f64 > available as f64 * 0.8 {
        Check::warn("memory_headroom", format!("{summary}: under 20% to spare"))
    } else {
        Check::pass("memory_headroom", summary)
    }
}

/// Who stops a worker at its memory ceiling here: the kernel (a cgroup per
/// worker), a data-segment limit per worker, or only the Supervisor's
/// sampling.
pub fn memory_ceiling(ceilings: &crate::ceiling::Ceilings) -> Check {
    let hint = "run bothost where it may create memory cgroups, e.g. systemd's Delegate=memory";
    match ceilings.enforcer() {
        "kernel" => Check::pass("memory_ceiling", ceilings.describe()),
        "rlimit" => Check::warn(
            "memory_ceiling",
            format!(
                "{}; it bounds each worker process on its own, not a bot's helpers together ({hint})",
                ceilings.describe()
            ),
        ),
        _ => Check::warn(
            "memory_ceiling",
            format!(
                "{}; a runaway can pass its budget between two samples ({hint})",
                ceilings.describe()
            ),
        ),
    }
}

pub async fn inference(config: &Config) -> Check {
    let remote: Vec<_> = config
        .bots
        .iter()
        .filter(|b| !config.endpoints_of(b).is_empty())
        .collect();
    if remote.is_empty() {
        return Check::pass("inference", "no model server used: every bot is built-in");
    }
    let used: BTreeSet<&str> = remote
        .iter()
        .flat_map(|b| config.endpoints_of(b))
        .map(|e| e.name.as_str())
        .collect();
    let mut found = std::collections::HashMap::new();
    for endpoint in config
        .inference
        .iter()
        .filter(|e| used.contains(e.name.as_str()))
    {
        let client = reqwest::Client::builder()
            .timeout(endpoint.health_timeout)
            .build();
        let result = match client {
            Ok(c) => crate::inference::check(&c, endpoint).await,
            Err(e) => Err(e.to_string()),
        };
        found.insert(
            endpoint.name.as_str(),
            (result, !endpoint.command.is_empty()),
        );
    }
    let mut problems = Vec::new();
    let mut down = Vec::new();
    for (name, (result, supervised)) in &found {
        if let Err(why) = result {
            let note = if *supervised {
                " (bothost starts it at serve)"
            } else {
                ""
            };
            down.push(format!("{name}: {why}{note}"));
        }
    }
    for bot in &remote {
        let endpoints = config.endpoints_of(bot);
        let up: Vec<_> = endpoints
            .iter()
            .filter_map(|e| {
                found
                    .get(e.name.as_str())
                    .and_then(|(r, _)| r.as_ref().ok())
            })
            .collect();
        if up.is_empty() {
            problems.push(format!("bot '{}' has no model server up", bot.name));
        } else if !up
            .iter()
            .any(|models| crate::status::has_model(models, &bot.model))
        {
            problems.push(format!(
                "bot '{}': model '{}' is on none of its servers that are up (`ollama pull {}`)",
                bot.name, bot.model, bot.model
            ));
        }
    }
    if !problems.is_empty() {
        let mut all = problems;
        all.extend(down);
        return Check::fail("inference", all.join("; "));
    }
    if !down.is_empty() {
        return Check::warn(
            "inference",
            format!(
                "every bot has its model on a server that is up, but down: {}",
                down.join("; ")
            ),
        );
    }
    Check::pass(
        "inference",
        format!("{} server(s) up, every bot's model present", found.len()),
    )
}

pub fn api_keys(config: &Config, env: impl Fn(&str) -> Option<String>) -> Check {
    let named: Vec<(&str, &str)> = config
        .inference
        .iter()
        .filter(|e| e.kind == InferenceKind::Openai || e.api_key_env.is_some())
        .filter_map(|e| e.api_key_env.as_deref().map(|k| (e.name.as_str(), k)))
        .collect();
    if named.is_empty() {
        return Check::pass("api_keys", "no model server needs an API key");
    }
    let missing: Vec<String> = named
        .iter()
        .filter(|(_, var)| env(var).is_none_or(|v| v.is_empty()))
        .map(|(name, var)| format!("{var} (for {name})"))
        .collect();
    if missing.is_empty() {
        Check::pass(
            "api_keys",
            format!("{} API key variable(s) set", named.len()),
        )
    } else {
        Check::fail(
            "api_keys",
            format!("not set in this environment: {}", missing.join(", ")),
        )
    }
}

pub fn restart_schedule(config: &Config) -> Check {
    let cron = match config.restart_schedule() {
        Ok(Some(cron)) => cron,
        Ok(None) => {
            return Check::pass(
                "restart_schedule",
                "off: workers are replaced only when they leak, grow or fail",
            )
        }
        Err(e) => {
            return Check::fail(
                "restart_schedule",
                format!("supervisor.restart_schedule: {e}"),
            )
        }
    };
    let runs = crate::schedule::next_times(&cron, 3);
    let shown: Vec<String> = runs
        .iter()
        .map(|t| t.format("%a %Y-%m-%d %H:%M %Z").to_string())
        .collect();
    let mut detail = format!("next runs (local time): {}", shown.join(", "));
    if let Some(note) = dst_note(&runs) {
        detail.push_str("; ");
        detail.push_str(&note);
    }
    Check::pass("restart_schedule", detail)
}

/// Whether daylight saving time can move or skip runs at these times.
fn dst_note(runs: &[chrono::DateTime<chrono::Local>]) -> Option<String> {
    let first = runs.first()?;
    let year = first.year();
    let offset_on = |month| {
        chrono::Local
            .with_ymd_and_hms(year, month, 1, 12, 0, 0)
            .single()
            .map(|t| t.offset().fix())
    };
    if offset_on(1) == offset_on(7) {
        return None;
    }
    let changes_between = runs
        .windows(2)
        .any(|w| w[0].offset().fix() != w[1].offset().fix());
    let in_changeover_hours = runs.iter().any(|t| (1..=3).contains(&t.hour()));
    (changes_between || in_changeover_hours).then(|| {
        "this time zone has daylight saving: a run between 01:00 and 03:59 can be skipped \
         or repeated on the night clocks change"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::report::Status;

    fn config(text: &str) -> Config {
        Config::parse(
            text,
            std::path::Path::new("/tmp/bothost/supervisor.toml"),
            [],
        )
        .expect("valid")
    }

    #[test]
    fn budgets_and_one_handover_must_fit_in_available_memory() {
        let c = config("[[bots]]\nname = \"a\"\n[[bots]]\nname = \"b\"\n");
        // 2 × 125 MB + one handover of 125 MB = 375 MB.
        assert_eq!(memory_headroom(&c, Some(374_000_000)).status, Status::Fail);
        assert_eq!(memory_headroom(&c, Some(400_000_000)).status, Status::Warn);
        assert_eq!(
            memory_headroom(&c, Some(4_000_000_000)).status,
            Status::Pass
        );
    }

    #[test]
    fn api_key_variables_must_be_set() {
        let c = config(
            "[[inference]]\nname = \"cloud\"\nkind = \"openai\"\nurl = \"http://x\"\napi_key_env = \"CLOUD_KEY\"\n\
             [[bots]]\nname = \"a\"\nengine = \"openai\"\nmodel = \"m\"\n",
        );
        assert_eq!(api_keys(&c, |_| None).status, Status::Fail);
        assert_eq!(api_keys(&c, |_| Some(String::new())).status, Status::Fail);
        assert_eq!(api_keys(&c, |_| Some("k".into())).status, Status::Pass);
    }
}
