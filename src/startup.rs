//! The one startup: [`Host::build`] brings the host up in order,
//! [`Host::run_until_stopped`] serves until a signal and takes it down in
//! reverse. `serve`, the in-process tests and the benches all use it.
//!
//! Order: runtime directory (0700, refusing a second host on it), then
//! database migrations and the store's pool, then the Supervisor and its
//! workers, the inference health checks and the restart schedule (waiting
//! until each bot is ready or has failed, at most `start_timeout` plus the
//! crash backoff), then the control socket, then HTTP, and only then the
//! `listening on` line that scripts and tests wait for. Shutdown
//! (SIGINT/SIGTERM): stop HTTP, drain and stop every worker, remove the
//! control socket.

use secrecy::ExposeSecret;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::{web, App, HttpServer};
use anyhow::{bail, Context as _};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::ceiling::Ceilings;
use crate::chat::Chats;
use crate::config::{Config, TlsConfig};
use crate::control;
use crate::inference;
use crate::memory::Sampler;
use crate::metrics::Metrics;
use crate::store::{self, Store};
use crate::supervisor::{AwaitSettled, Board, GetStatus, Shutdown, Supervisor};
use crate::telemetry::Retrying;
use crate::web::{configure, AppState, Auth};

/// How long a stopping host lets its HTTP workers take up the connections
/// accepted just before it stopped accepting (see `Host::stop`).
const HANDOFF_GRACE: Duration = Duration::from_millis(100);
/// How long a stopping host waits for the store's own tasks to finish the
/// pass they are in (a sweep page, a checkpoint, a ping).
const STORE_TASKS_GRACE: Duration = Duration::from_secs(5);

/// `bothost serve`: builds the host, prints the line scripts wait for, runs
/// until SIGINT or SIGTERM.
pub fn serve(config: Config) -> anyhow::Result<()> {
    return_large_frees_to_the_os();
    actix_rt::System::new().block_on(async {
        let host = Host::build(config).await?;
        // Scripts and tests wait for this exact line on stdout.
        println!("bothost listening on {}", host.url());
        host.run_until_stopped().await
    })
}

/// A running host: workers, control socket and HTTP, all up. Built by
/// `serve`, and by tests and benches that want the real host in-process.
pub struct Host {
    supervisor: Addr<Supervisor>,
    state: web::Data<AppState>,
    http: actix_web::dev::ServerHandle,
    url: String,
    control_path: PathBuf,
    control_task: actix_rt::task::JoinHandle<()>,
    /// Stops the store's own tasks (the database probe, SQLite's timed
    /// checkpoints, the orphan sweep) between two passes, never during one.
    background: tokio_util::sync::CancellationToken,
    /// Those tasks, awaited at shutdown once told to stop.
    background_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Health checks and supervised model servers.
    monitors: inference::Monitors,
    stop_grace: Duration,
    /// `server.drain_delay`.
    drain_delay: Duration,
}

impl Host {
    /// Brings everything up in order (see the module's documentation) and
    /// returns once HTTP listens. Must run inside an actix System, on the
    /// thread that lives as long as the host (workers die with it).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        raise_open_files_limit();
        prepare_runtime_dir(config.runtime_dir())?;
        let control_path = config.control_socket();
        if control::Client::is_listening(&control_path).await {
            bail!(
                "another bothost is already running with runtime_dir {}",
                config.runtime_dir().display()
            );
        }

        let metrics = Metrics::new().context("cannot create the metrics registry")?;
        let store = open_store(&config, metrics.clone()).await?;
        let (supervisor, board, monitors) = start_supervisor(&config, &metrics)?;
        // Validated at load: an invalid expression cannot reach here.
        if let Ok(Some(cron)) = config.restart_schedule() {
            crate::fleet::spawn_restart_schedule(supervisor.clone(), cron, store.clone());
        }
        settle(&config, &supervisor).await?;

        let _ = std::fs::remove_file(&control_path);
        let control_listener = UnixListener::bind(&control_path)
            .with_context(|| format!("cannot listen on {}", control_path.display()))?;
        std::fs::set_permissions(&control_path, std::fs::Permissions::from_mode(0o600))?;
        let control_task = actix_rt::spawn(control::serve(control_listener, supervisor.clone()));

        let background = tokio_util::sync::CancellationToken::new();
        let mut background_tasks = vec![
            store.spawn_probe(Duration::from_secs(5), background.clone()),
            crate::orphans::spawn(
                store.clone(),
                crate::orphans::orphan_age(
                    config.supervisor.start_timeout,
                    config.supervisor.turn_idle_timeout,
                ),
                background.clone(),
            ),
        ];
        background_tasks
            .extend(store.spawn_checkpoints(Duration::from_secs(1), background.clone()));
        crate::backup::spawn_schedule(config.clone(), metrics.clone());
        let auth = Auth::new(&jwt_secret(&config), config.auth.token_ttl);
        let state = web::Data::new(AppState::new(
            &config,
            supervisor.clone(),
            board,
            store,
            metrics,
            auth,
        ));
        spawn_limits_sweeper(state.clone());
        spawn_session_refresh(state.clone());
        actix_rt::spawn(state.watchers.clone().forward(state.board.subscribe()));
        let (http, url) = start_http(&config, state.clone())?;
        log_checks(&config);
        info!(%url, control = %control_path.display(), "serving");
        Ok(Self {
            supervisor,
            state,
            http,
            url,
            control_path,
            control_task,
            background,
            background_tasks,
            monitors,
            stop_grace: config.supervisor.stop_grace,
            drain_delay: config.server.drain_delay,
        })
    }

    /// `http://127.0.0.1:PORT` (or `https://`), with the port really bound.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn supervisor(&self) -> &Addr<Supervisor> {
        &self.supervisor
    }

    /// The chat service the web front end uses.
    pub fn chats(&self) -> &Chats {
        &self.state.chats
    }

    /// Serves until SIGINT or SIGTERM, then stops.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        wait_for_stop_signal().await?;
        self.stop().await
    }

    /// Shuts down without losing a turn: stops accepting connections (with
    /// an inherited socket they wait in the kernel for the next host),
    /// refuses new turns (`restarting`), lets the turns in flight finish
    /// and each WebSocket close with 1012 once its last turn ends (at most
    /// `drain_timeout`; a turn cut then is stored `partial`), waits for
    /// every reply to be stored, stops HTTP, then drains and stops every
    /// worker, then stops supervised model servers (SIGTERM, then SIGKILL
    /// after `stop_grace`), then removes the control socket.
    pub async fn stop(self) -> anyhow::Result<()> {
        if !self.drain_delay.is_zero() {
            // Out of the load balancer's rotation first, while everything
            // still works for the connections it already sent here.
            self.state
                .out_of_rotation
                .store(true, std::sync::atomic::Ordering::Relaxed);
            info!(
                drain_delay_ms = self.drain_delay.as_millis() as u64,
                "out of rotation: /readyz answers 503 until the host stops accepting"
            );
            tokio::time::sleep(self.drain_delay).await;
        }
        let drain = self.state.drain_timeout;
        info!(
            drain_timeout_ms = drain.as_millis() as u64,
            "shutting down: no new turns; those in flight finish, then WebSockets close (1012)"
        );
        self.http.pause().await;
        // Connections accepted just before the pause may still be queued for
        // an HTTP worker, and actix drops (resets) the queued ones when it
        // stops; the drain below can be instant (no WebSocket, no turn), so
        // the workers get this long to take them up first.
        tokio::time::sleep(HANDOFF_GRACE).await;
        self.state.chats.close();
        info!("new turns are refused from now on (restarting)");
        let sockets = &self.state.metrics.ws_connections;
        let deadline = tokio::time::Instant::now() + drain + Duration::from_secs(1);
        while sockets.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unfinished = self.state.chats.wait(Duration::from_secs(5)).await;
        if unfinished > 0 {
            warn!(
                unfinished,
                "turns still running at shutdown; their replies may be lost"
            );
        }
        self.http.stop(true).await;
        self.control_task.abort();
        self.background.cancel();
        let store_tasks = futures_util::future::join_all(self.background_tasks);
        if tokio::time::timeout(STORE_TASKS_GRACE, store_tasks)
            .await
            .is_err()
        {
            warn!("the store's own tasks did not stop within {STORE_TASKS_GRACE:?}");
        }
        self.supervisor.send(Shutdown).await?;
        // Last: the workers no longer call them, and no monitor restarts
        // one mid-shutdown.
        self.monitors.stop(self.stop_grace).await;
        let _ = std::fs::remove_file(&self.control_path);
        info!("stopped");
        Ok(())
    }
}

/// The Supervisor and what feeds it: the inference health checks and the
/// restart schedule. Started on the current thread, the System arbiter's:
/// WorkerHandles live on it, and every worker's parent-death signal is tied
/// to it (see `worker`).
fn start_supervisor(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<(Addr<Supervisor>, Board, inference::Monitors)> {
    let sampler = Sampler::new()
        .context("cannot read process memory (sysinfo)")?
        .with_pss(config.supervisor.memory_measure == crate::config::MemoryMeasure::Pss);
    let rechecks = inference::Rechecks::new(&config.inference);
    let supervisor = Supervisor::new(
        config,
        metrics.clone(),
        sampler,
        Ceilings::detect(config.supervisor.memory_ceiling),
    )
    .with_rechecks(rechecks.clone());
    let board = supervisor.board();
    let supervisor = supervisor.start();
    let monitors = inference::start(
        &config.inference,
        metrics,
        supervisor.clone().recipient(),
        &rechecks,
        config.supervisor.stop_grace,
    );
    Ok((supervisor, board, monitors))
}

/// Waits until every bot is ready or failed (at most `start_timeout` plus
/// the crash backoff), and for the first health checks, so the start-up log
/// can say which models are present; a server that does not answer in time
/// is logged down.
async fn settle(config: &Config, supervisor: &Addr<Supervisor>) -> anyhow::Result<()> {
    let settle_limit = config.supervisor.start_timeout + config.supervisor.backoff_max;
    if tokio::time::timeout(settle_limit, supervisor.send(AwaitSettled))
        .await
        .is_err()
    {
        warn!("not every bot is ready after {settle_limit:?}; serving anyway");
    }
    let checks_limit = config
        .inference
        .iter()
        .map(|e| e.health_timeout)
        .max()
        .unwrap_or_default()
        + Duration::from_millis(500);
    let checks_deadline = tokio::time::Instant::now() + checks_limit;
    let mut status = supervisor.send(GetStatus).await?;
    while status.inference.iter().any(|e| !e.checked)
        && tokio::time::Instant::now() < checks_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = supervisor.send(GetStatus).await?;
    }
    for bot in &status.bots {
        info!(
            bot = %bot.name, state = bot.state.as_str(), pid = bot.pid,
            model_present = bot.model_present, "bot settled"
        );
    }
    Ok(())
}

/// Forgets the rate-limit state of clients idle for a while, every minute;
/// on a shared database, also writes the messages per user and address
/// counted here to the fleet's rows in batches.
fn spawn_limits_sweeper(state: web::Data<AppState>) {
    if state.store.is_shared() {
        let state = state.clone();
        spawn_every(
            crate::web::FLEET_BATCH_EVERY,
            Retrying::new(
                "cannot write the fleet's message counts",
                "the fleet's message counts are written again",
            ),
            move || {
                let state = state.clone();
                async move { state.limits.write_minutes_batch(&state.store).await }
            },
        );
    }
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            state.limits.forget_idle();
            state.limits.forget_fleet_windows(&state.store).await;
        }
    });
}

/// Reads again the accounts of users active lately before this host's
/// views of them go stale, so their requests do not wait for a lookup
/// (`web::sessions`).
fn spawn_session_refresh(state: web::Data<AppState>) {
    spawn_every(
        crate::web::sessions::REFRESH_EVERY,
        Retrying::new(
            "cannot read the accounts of active users again",
            "the accounts of active users are read again",
        ),
        move || {
            let state = state.clone();
            async move { state.sessions.refresh().await.map(|n| n > 0) }
        },
    );
}

/// Runs `job` every `every` for as long as the host runs (a late tick is
/// not made up), telling the log what `log` says of its outcomes.
fn spawn_every<F, Fut, E>(every: Duration, mut log: Retrying, mut job: F)
where
    F: FnMut() -> Fut + 'static,
    Fut: std::future::Future<Output = Result<bool, E>>,
    E: std::fmt::Display,
{
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            log.saw(job().await);
        }
    });
}

/// Binds `server.bind` (port 0 picks a free one) and starts serving.
fn start_http(
    config: &Config,
    state: web::Data<AppState>,
) -> anyhow::Result<(actix_web::dev::ServerHandle, String)> {
    let tls = config.server.tls.is_some();
    let server = HttpServer::new(move || {
        // Under TLS, browsers are told to come back over HTTPS only.
        let hsts = actix_web::middleware::DefaultHeaders::new()
            .add(("Strict-Transport-Security", "max-age=31536000"));
        App::new()
            .wrap(actix_web::middleware::Condition::new(tls, hsts))
            .wrap_fn(crate::web::admit)
            .wrap_fn(crate::web::record)
            .configure(configure(state.clone()))
    })
    .disable_signals()
    // A turn is many small WebSocket frames (ack, deltas, done); with Nagle
    // each waited for the client's delayed ACK, 40 ms a turn.
    .tcp_nodelay(true)
    .client_request_timeout(config.server.request_header_timeout)
    .shutdown_timeout(5);
    let server = match (inherited_listener(), &config.server.tls) {
        (Some(listener), Some(tls)) => server.listen_rustls_0_23(listener, tls_config(tls)?),
        (Some(listener), None) => server.listen(listener),
        (None, Some(tls)) => server.bind_rustls_0_23(config.server.bind, tls_config(tls)?),
        (None, None) => server.bind(config.server.bind),
    }
    .with_context(|| format!("server.bind: cannot listen on {}", config.server.bind))?;
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let addr: SocketAddr = server
        .addrs()
        .first()
        .copied()
        .context("the HTTP server bound no address")?;
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((handle, format!("{scheme}://{addr}")))
}

/// What `check-config` would say about this start, in the log: every
/// warning and failure of the quick checks (the full list: `bothost
/// check-config`).
fn log_checks(config: &Config) {
    use crate::checks::Status;
    for check in crate::checks::at_start(config) {
        match check.status {
            Status::Pass => {}
            Status::Warn => warn!(check = check.name, "check-config: {}", check.detail),
            Status::Fail => error!(check = check.name, "check-config: {}", check.detail),
        }
    }
}

/// The listening socket systemd (or any supervisor speaking its
/// `sd_listen_fds` protocol) passed us as fd 3: `LISTEN_PID` is our pid and
/// `LISTEN_FDS` at least 1. Whoever holds that socket keeps it open across
/// our restarts, so connections made meanwhile wait in its queue for the
/// next host instead of being refused. `server.bind` is then not used.
fn inherited_listener() -> Option<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    const SD_LISTEN_FDS_START: i32 = 3;
    let ours = std::env::var("LISTEN_PID").ok()?.parse::<u32>().ok()? == std::process::id();
    let count: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if !ours || count < 1 {
        return None;
    }
    // SAFETY: the protocol hands fd 3 to this process alone, and nothing
    // else here opens or owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(SD_LISTEN_FDS_START) };
    // Workers must not inherit it: they would hold the port open after us.
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .ok()?;
    listener.set_nonblocking(true).ok()?;
    let addr = listener.local_addr().ok()?;
    info!(%addr, "listening on the inherited socket (socket activation)");
    Some(listener)
}

/// Runs pending migrations, then builds the pool.
pub async fn open_store(config: &Config, metrics: Metrics) -> anyhow::Result<Store> {
    let target = config
        .database_target()
        .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
    let applied = store::migrate(&target)
        .await
        .context("database.url: cannot open and migrate the database")?;
    for version in &applied {
        info!(version = %version, "migration applied");
    }
    let store = Store::connect(&config.database, &target, metrics)
        .context("database.url: cannot open the database")?;
    info!(
        backend = store.backend(),
        migrations_applied = applied.len(),
        "store ready"
    );
    Ok(store)
}

/// The configured signing secret, or a random one for this run only (the
/// start-up checks log that everyone must log in again after a restart).
fn jwt_secret(config: &Config) -> Vec<u8> {
    let configured = config.auth.jwt_secret.expose_secret();
    if !configured.is_empty() {
        return configured.as_bytes().to_vec();
    }
    let mut secret = vec![0u8; 32];
    rand::fill(&mut secret[..]);
    secret
}

/// rustls from the PEM certificate chain and private key in `server.tls`.
fn tls_config(tls: &TlsConfig) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("server.tls.cert: {}: {e}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| anyhow::anyhow!("server.tls.key: {}: {e}", tls.key.display()))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("server.tls: the certificate and key do not form a usable pair")
}

async fn wait_for_stop_signal() -> io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}

/// Creates the runtime directory 0700, or checks that an existing one is
/// ours and tightens it to 0700. Sockets inside rely on it for privacy.
pub fn prepare_runtime_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("supervisor.runtime_dir: cannot create {}", dir.display()))?;
    let meta = std::fs::metadata(dir)?;
    let me = nix::unistd::getuid().as_raw();
    if meta.uid() != me {
        bail!(
            "supervisor.runtime_dir: {} belongs to uid {}, not to this user (uid {me}); refusing to put sockets there",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Every WebSocket and worker socket is a file descriptor; the default soft
/// limit (often 1024) is far below what a busy host needs.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!("cannot raise the open-files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => warn!("cannot read the open-files limit: {e}"),
    }
}

/// glibc raises its mmap threshold after a large block is freed, so from
/// then on blocks of that size (a 19 MiB password hash, a 1 MiB frame) come
/// from per-thread arenas and stay in RSS after they are freed: a burst of
/// 100 logins left the host at 600-850 MiB. A fixed threshold keeps every
/// block of 1 MiB or more in its own mapping, returned on free.
fn return_large_frees_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter and takes glibc's own
    // locks; it is called once, before the runtime starts.
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024) } != 1 {
        warn!("cannot set the allocator's mmap threshold; freed memory may stay in RSS");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_dir_is_created_private_and_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        prepare_runtime_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_runtime_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }
}
