//! Inference endpoints as the host sees them: is each model server up,
//! which models does it have, and the local servers bothost runs itself.
//!
//! One task per `[[inference]]` endpoint checks it with a cheap call
//! (`GET /api/tags` for Ollama, `GET /v1/models` for OpenAI-compatible
//! servers) every `health_interval` while it is up and every
//! `health_interval_down` while it is down (every 200 ms while a server it
//! started comes up), and reports each result to the
//! Supervisor, which tells the workers and marks bots `degraded`. Workers
//! make the per-turn decisions (failover, cooldown); this module only
//! observes.
//!
//! An endpoint with a `command` is supervised like a worker: started in its
//! own process group, dying with the host, restarted with backoff when it
//! exits, when it has passed no check within `start_timeout` of its start,
//! or when it fails `restart_after_failed_checks` checks in a row.
//!
//! It never decides anything about bots and never logs a URL's password.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Message, Recipient};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::{InferenceConfig, InferenceKind};
use crate::metrics::Metrics;
use crate::process::{bind_to_host, signal_group};
use crate::status::EndpointStatus;

/// The result of one health check of an inference endpoint, for whoever
/// decides about bots (the Supervisor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EndpointChecked(pub EndpointStatus);

/// One wake-up per endpoint: a turn that failed there asks for its health
/// check now rather than at the next interval (up to a minute away).
#[derive(Clone, Default)]
pub struct Rechecks(Arc<HashMap<String, Arc<Notify>>>);

impl Rechecks {
    pub fn new(endpoints: &[InferenceConfig]) -> Self {
        Self(Arc::new(
            endpoints
                .iter()
                .map(|e| (e.name.clone(), Arc::new(Notify::new())))
                .collect(),
        ))
    }

    pub fn poke(&self, endpoint: &str) {
        if let Some(n) = self.0.get(endpoint) {
            n.notify_one();
        }
    }

    fn of(&self, endpoint: &str) -> Arc<Notify> {
        self.0.get(endpoint).cloned().unwrap_or_default()
    }
}

/// Starts one monitoring task per endpoint (on the current thread: a
/// supervised server's parent-death signal follows the thread that forked
/// it, and this is the host's main thread).
/// The monitoring tasks [`start`] started; [`Monitors::stop`] ends them.
pub struct Monitors {
    stop: tokio_util::sync::CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl Monitors {
    /// Ends every monitor: none restarts its server any more, and each
    /// supervised server gets SIGTERM, then SIGKILL after `grace`. Returns
    /// once they are all gone.
    pub async fn stop(self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        // Each waits `grace` at most, then kills.
        let _ = tokio::time::timeout(grace * 2, self.tasks.wait()).await;
    }
}

pub fn start(
    endpoints: &[InferenceConfig],
    metrics: &Metrics,
    supervisor: Recipient<EndpointChecked>,
    rechecks: &Rechecks,
    grace: Duration,
) -> Monitors {
    let monitors = Monitors {
        stop: tokio_util::sync::CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
    };
    let keys: Vec<&String> = endpoints
        .iter()
        .filter_map(|e| e.api_key_env.as_ref())
        .collect();
    for config in endpoints {
        metrics
            .inference_up
            .with_label_values(&[&config.name])
            .set(0);
        let recheck = rechecks.of(&config.name);
        // A supervised server sees neither the host's settings nor the
        // other servers' keys.
        let hidden = keys
            .iter()
            .filter(|k| config.api_key_env.as_ref() != Some(**k))
            .map(|k| (*k).clone())
            .collect();
        actix_rt::spawn(monitors.tasks.track_future(monitor(
            config.clone(),
            hidden,
            metrics.clone(),
            supervisor.clone(),
            recheck,
            (monitors.stop.clone(), grace),
        )));
    }
    monitors
}

/// Checks one endpoint (and runs its server, when supervised) until
/// `stop` is cancelled, then stops that server.
async fn monitor(
    config: InferenceConfig,
    hidden: Vec<String>,
    metrics: Metrics,
    supervisor: Recipient<EndpointChecked>,
    recheck: Arc<Notify>,
    (stop, grace): (tokio_util::sync::CancellationToken, Duration),
) {
    let client = match reqwest::Client::builder()
        .timeout(config.health_timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            error!(endpoint = %config.name, "cannot build an HTTP client: {e}");
            return;
        }
    };
    let mut server = Server::new(&config, hidden);
    tokio::select! {
        () = watch(&config, &client, &mut server, &metrics, &supervisor, &recheck) => {}
        () = stop.cancelled() => {}
    }
    server.stop(grace).await;
}

async fn watch(
    config: &InferenceConfig,
    client: &reqwest::Client,
    server: &mut Server,
    metrics: &Metrics,
    supervisor: &Recipient<EndpointChecked>,
    recheck: &Notify,
) {
    let mut status = EndpointStatus::unchecked(&config.name, config.kind);
    server.start(&mut status).await;
    let mut failed_in_a_row = 0u32;
    let mut last_check: Option<Instant> = None;
    loop {
        // However often failed turns ask, check at most this often.
        if let Some(t) = last_check {
            tokio::time::sleep(MIN_CHECK_GAP.saturating_sub(t.elapsed())).await;
        }
        last_check = Some(Instant::now());
        let was = (status.checked, status.up);
        match check(client, config).await {
            Ok(models) => {
                failed_in_a_row = 0;
                server.passed();
                status.up = true;
                status.models = models;
                status.error = None;
            }
            Err(why) => {
                failed_in_a_row += 1;
                status.up = false;
                status.error = Some(why);
            }
        }
        status.checked = true;
        if was != (true, status.up) {
            log_change(config, &status);
        }
        report(metrics, supervisor, &status);

        if let Some(why) = server.needs_restart(config, failed_in_a_row) {
            warn!(endpoint = %config.name, "restarting the supervised model server: {why}");
            server.restart(&mut status).await;
            failed_in_a_row = 0;
            report(metrics, supervisor, &status);
        }
        let wait = if status.up {
            config.health_interval
        } else if server.starting(config) {
            // A server we just started is polled closely, so it serves as
            // soon as it answers, not up to `health_interval_down` later.
            MIN_CHECK_GAP
        } else {
            config.health_interval_down
        };
        // A supervised server that exits is noticed at once, not at the
        // next check.
        if server.wait_exit(wait, recheck).await {
            status.up = false;
            status.error = Some("the supervised server exited".into());
            report(metrics, supervisor, &status);
            server.restart(&mut status).await;
            report(metrics, supervisor, &status);
        }
    }
}

/// The endpoint's state to `bothost_inference_up` and to the Supervisor.
fn report(metrics: &Metrics, supervisor: &Recipient<EndpointChecked>, status: &EndpointStatus) {
    metrics
        .inference_up
        .with_label_values(&[&status.name])
        .set(i64::from(status.up));
    supervisor.do_send(EndpointChecked(status.clone()));
}

fn log_change(config: &InferenceConfig, status: &EndpointStatus) {
    if status.up {
        info!(
            endpoint = %config.name, kind = config.kind.as_str(), models = status.models.len(),
            "inference endpoint up: {}", status.models.join(", ")
        );
    } else {
        warn!(
            endpoint = %config.name, kind = config.kind.as_str(),
            "inference endpoint down: {}", status.error.as_deref().unwrap_or("")
        );
    }
}

/// The health check: the models the server lists, or why it failed.
pub async fn check(
    client: &reqwest::Client,
    config: &InferenceConfig,
) -> Result<Vec<String>, String> {
    let base = config.url.trim_end_matches('/');
    let (url, list, field) = match config.kind {
        InferenceKind::Ollama => (format!("{base}/api/tags"), "models", "name"),
        InferenceKind::Openai if base.ends_with("/v1") => (format!("{base}/models"), "data", "id"),
        InferenceKind::Openai => (format!("{base}/v1/models"), "data", "id"),
    };
    let mut request = client.get(&url);
    if let Some(key) = config
        .api_key_env
        .as_deref()
        .and_then(|var| std::env::var(var).ok())
    {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|e| {
        // reqwest's error names the URL; ours may carry a password.
        let e = e.without_url();
        if e.is_timeout() {
            format!("no answer within {:?}", config.health_timeout)
        } else {
            format!("cannot reach the server: {e}")
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("health check answered HTTP {}", status.as_u16()));
    }
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("health check answer is not JSON: {}", e.without_url()))?;
    Ok(body[list]
        .as_array()
        .map(|models| {
            models
                .iter()
                .filter_map(|m| m[field].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// The model server process bothost runs for an endpoint with a `command`.
struct Server {
    command: Vec<String>,
    /// Variables of the host's environment it must not see.
    hidden: Vec<String>,
    name: String,
    child: Option<tokio::process::Child>,
    started: Instant,
    passed_since_start: bool,
    backoff: Backoff,
}

const MIN_CHECK_GAP: Duration = Duration::from_millis(200);
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Server {
    fn new(config: &InferenceConfig, hidden: Vec<String>) -> Self {
        Self {
            command: config.command.clone(),
            hidden,
            name: config.name.clone(),
            child: None,
            started: Instant::now(),
            passed_since_start: false,
            backoff: Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX),
        }
    }

    fn passed(&mut self) {
        self.passed_since_start = true;
        self.backoff.reset();
    }

    async fn start(&mut self, status: &mut EndpointStatus) {
        let Some((program, args)) = self.command.split_first() else {
            return;
        };
        let mut cmd = tokio::process::Command::new(program);
        // A model server has settings of its own (OLLAMA_*, CUDA_*) to
        // keep, so it loses only what is known secret: the host's BOTHOST_*
        // settings and the other servers' keys.
        for (name, _) in std::env::vars_os() {
            let name_str = name.to_string_lossy();
            if name_str.starts_with("BOTHOST_") || self.hidden.iter().any(|h| *h == name_str) {
                cmd.env_remove(&name);
            }
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        bind_to_host(&mut cmd);
        self.started = Instant::now();
        self.passed_since_start = false;
        match cmd.spawn() {
            Ok(mut child) => {
                status.pid = child.id();
                info!(endpoint = %self.name, pid = status.pid, "started the model server: {}", self.command.join(" "));
                if let Some(stderr) = child.stderr.take() {
                    actix_rt::spawn(relay(stderr, self.name.clone()));
                }
                self.child = Some(child);
            }
            Err(e) => {
                status.pid = None;
                error!(endpoint = %self.name, "cannot start the model server `{program}`: {e}");
            }
        }
    }

    /// Started by us and not yet answering, within its start timeout.
    fn starting(&self, config: &InferenceConfig) -> bool {
        self.child.is_some()
            && !self.passed_since_start
            && self.started.elapsed() < config.start_timeout
    }

    /// Why the supervised server must be replaced, if it must.
    fn needs_restart(&self, config: &InferenceConfig, failed_in_a_row: u32) -> Option<String> {
        self.command.first()?;
        if self.child.is_none() {
            return Some("it is not running".into());
        }
        if !self.passed_since_start && self.started.elapsed() >= config.start_timeout {
            return Some(format!(
                "no passing health check within {:?} of its start",
                config.start_timeout
            ));
        }
        (self.passed_since_start && failed_in_a_row >= config.restart_after_failed_checks)
            .then(|| format!("{failed_in_a_row} failed health checks in a row"))
    }

    /// At shutdown: SIGTERM to the server's group, SIGKILL after `grace`.
    async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Some(pid) = child.id() else {
            return;
        };
        signal_group(pid, Signal::SIGTERM);
        let exit = match tokio::time::timeout(grace, child.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                warn!(endpoint = %self.name, "the model server ignored SIGTERM; killing it");
                signal_group(pid, Signal::SIGKILL);
                child.wait().await
            }
        };
        let how = exit.map_or_else(|e| e.to_string(), |s| s.to_string());
        info!(endpoint = %self.name, "the supervised model server stopped: {how}");
    }

    /// Stops what runs (SIGKILL to its group), waits the backoff, starts
    /// again.
    async fn restart(&mut self, status: &mut EndpointStatus) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                signal_group(pid, Signal::SIGKILL);
            }
            let _ = child.wait().await;
        }
        tokio::time::sleep(self.backoff.next_delay()).await;
        status.restarts += 1;
        self.start(status).await;
    }

    /// Sleeps `wait`, or until `recheck` is poked; returns early with `true`
    /// if the supervised server exits meanwhile.
    async fn wait_exit(&mut self, wait: Duration, recheck: &Notify) -> bool {
        let Some(child) = self.child.as_mut() else {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = recheck.notified() => {}
            }
            return false;
        };
        tokio::select! {
            () = recheck.notified() => false,
            exit = child.wait() => {
                let how = match exit {
                    Ok(status) => status.to_string(),
                    Err(e) => e.to_string(),
                };
                warn!(endpoint = %self.name, "the supervised model server exited: {how}");
                self.child = None;
                true
            }
            () = tokio::time::sleep(wait) => false,
        }
    }
}

/// The supervised server's own log, at debug level under its endpoint.
async fn relay(stderr: tokio::process::ChildStderr, endpoint: String) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        debug!(%endpoint, "{line}");
    }
}
