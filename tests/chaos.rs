//! The chaos suite: each scenario breaks something for real while several
//! users chat over WebSockets, behaving as the page does (reconnect, send
//! again what was not answered, wait on `in_progress`, retry what is
//! "kept for a retry"). Afterwards the database is read back and every
//! scenario must keep the same invariant:
//!
//! - every acknowledged message is stored exactly once, under the id its
//!   `ack` gave, and nothing else is stored;
//! - it has exactly one reply row: `complete` with exactly the text the
//!   user was shown, or `partial` with the text shown (a prefix of it when
//!   the host itself was killed: what streamed after the last write is
//!   gone with the process), or `failed`;
//! - the reply the user's `done` named is that row (nothing answered
//!   twice);
//! - no user waited past [`TURN_DEADLINE`] for a turn to end.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bothost_testkit::{HostProcess, ThrowawayPg};
use common::web::{register, ApiUser};
use common::*;
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Longest a user may wait for one turn to end, reconnections included.
const TURN_DEADLINE: Duration = Duration::from_secs(30);

/// Errors the page treats as "not now": the message is kept and sent again.
const RETRYABLE: &[&str] = &[
    "restarting",
    "in_progress",
    "bot_unavailable",
    "store_unavailable",
    "inference_unavailable",
    "overloaded",
];

#[derive(Debug, Clone, PartialEq)]
enum End {
    Done { status: String, reply_id: i64 },
    Failed { code: String },
    TimedOut,
}

/// One message as its user lived it.
#[derive(Debug, Clone)]
struct Turn {
    id: String,
    acked: Option<i64>,
    /// The reply text on screen when the turn ended (since its last ack).
    shown: String,
    end: End,
    took: Duration,
    /// Times it was sent again (after a reconnection or a "not now").
    resent: u32,
}

struct UserLog {
    user: ApiUser,
    conv: i64,
    turns: Vec<Turn>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Users chatting with `bot` until told to stop, each on its own thread.
struct Chaos {
    stop: Arc<AtomicBool>,
    ended: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<UserLog>>,
}

impl Chaos {
    fn start(base: &str, users: usize, bot: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicU64::new(0));
        let threads = (0..users)
            .map(|u| {
                let user = register(base, &format!("user{u}"));
                let conv = user.conversation(bot);
                let (stop, ended) = (stop.clone(), ended.clone());
                std::thread::spawn(move || {
                    let turns = runtime().block_on(chat_until(&user, conv, u, &stop, &ended));
                    UserLog { user, conv, turns }
                })
            })
            .collect();
        Self {
            stop,
            ended,
            threads,
        }
    }

    /// Waits until `n` more turns have ended (30 s at most).
    fn wait_turns(&self, n: u64) {
        let target = self.ended.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ended.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(self) -> Vec<UserLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a chatting user"))
            .collect()
    }
}

async fn chat_until(
    user: &ApiUser,
    conv: i64,
    u: usize,
    stop: &AtomicBool,
    ended: &AtomicU64,
) -> Vec<Turn> {
    let mut socket = None;
    let mut turns = Vec::new();
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let id = format!("u{u}m{k}");
        let content = format!("message {k} from user {u}, please answer at length");
        turns.push(one_turn(user, conv, &id, &content, &mut socket).await);
        ended.fetch_add(1, Ordering::Relaxed);
    }
    turns
}

async fn connect(user: &ApiUser) -> Option<Socket> {
    let url = format!(
        "{}/api/v1/ws?token={}",
        user.base.replacen("http", "ws", 1),
        user.token
    );
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .ok()?
    .ok()
    .map(|(s, _)| s)
}

/// Sends one message and follows it to its end, as the page would.
async fn one_turn(
    user: &ApiUser,
    conv: i64,
    id: &str,
    content: &str,
    socket: &mut Option<Socket>,
) -> Turn {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + TURN_DEADLINE;
    let mut turn = Turn {
        id: id.to_owned(),
        acked: None,
        shown: String::new(),
        end: End::TimedOut,
        took: Duration::ZERO,
        resent: 0,
    };
    let mut first = true;
    let frame =
        json!({"type": "send", "conversation_id": conv, "client_msg_id": id, "content": content})
            .to_string();
    'send: while tokio::time::Instant::now() < deadline {
        if !std::mem::take(&mut first) {
            turn.resent += 1;
        }
        let ws = match socket {
            Some(ws) => ws,
            None => match connect(user).await {
                Some(ws) => socket.insert(ws),
                None => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if ws.send(Message::text(frame.clone())).await.is_err() {
            *socket = None;
            continue;
        }
        loop {
            let next = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => break 'send,
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(_))) => continue,
                // The connection is gone: reconnect and send it again.
                Ok(Some(Err(_)) | None) => {
                    *socket = None;
                    continue 'send;
                }
            };
            let f: Value = serde_json::from_str(&next).expect("a JSON frame");
            if f["client_msg_id"] != id {
                continue;
            }
            match f["type"].as_str() {
                Some("ack") => {
                    turn.acked = f["message_id"].as_i64();
                    turn.shown.clear();
                }
                Some("delta") => turn.shown.push_str(f["text"].as_str().unwrap_or("")),
                Some("done") => {
                    turn.end = End::Done {
                        status: f["status"].as_str().unwrap_or("").to_owned(),
                        reply_id: f["message_id"].as_i64().unwrap_or(-1),
                    };
                    break 'send;
                }
                Some("error") => {
                    let code = f["code"].as_str().unwrap_or("").to_owned();
                    if RETRYABLE.contains(&code.as_str()) {
                        let pause = if code == "in_progress" { 1000 } else { 200 };
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        continue 'send;
                    }
                    turn.end = End::Failed { code };
                    break 'send;
                }
                _ => {}
            }
        }
    }
    turn.took = started.elapsed();
    turn
}

/// The whole history of a conversation, oldest first.
fn history(user: &ApiUser, conv: i64) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/api/v1/conversations/{conv}/messages?limit=100&before={b}"),
            None => format!("/api/v1/conversations/{conv}/messages?limit=100"),
        };
        let res = user.get(&path);
        assert_eq!(res.status(), 200, "history");
        let page: Vec<Value> = res.json().expect("history JSON");
        let Some(last) = page.last() else { break };
        before = last["id"].as_i64();
        all.extend(page);
    }
    all.reverse();
    all
}

/// Checks the invariant (see the module's doc) against what the database
/// holds now; `writes_lost`: the host was killed or its disk was full, so a
/// partial reply may end before what was shown.
/// Returns the number of turns checked.
fn check(host: &HostProcess, logs: &[UserLog], writes_lost: bool) -> usize {
    let mut problems = Vec::new();
    if let Some(line) = host.log().lines().find(|l| l.contains("panicked")) {
        problems.push(format!("the host panicked: {line}"));
    }
    let mut checked = 0;
    for log in logs {
        let rows = history(&log.user, log.conv);
        let asked: Vec<&Value> = rows.iter().filter(|m| m["role"] == "user").collect();
        let replies = |to: i64| -> Vec<&Value> {
            rows.iter()
                .filter(|m| m["reply_to"].as_i64() == Some(to))
                .collect()
        };
        let acked: Vec<&Turn> = log.turns.iter().filter(|t| t.acked.is_some()).collect();
        if asked.len() != acked.len() {
            problems.push(format!(
                "{}: {} messages stored, {} acknowledged",
                log.conv,
                asked.len(),
                acked.len()
            ));
        }
        for turn in &log.turns {
            checked += 1;
            let who = format!("{} (took {:?}, ended {:?})", turn.id, turn.took, turn.end);
            if turn.end == End::TimedOut || turn.took > TURN_DEADLINE {
                problems.push(format!("{who}: waited past the deadline"));
                continue;
            }
            let Some(mid) = turn.acked else {
                problems.push(format!("{who}: never acknowledged"));
                continue;
            };
            let stored: Vec<_> = asked
                .iter()
                .filter(|m| m["client_msg_id"] == turn.id.as_str())
                .collect();
            if stored.len() != 1 || stored[0]["id"].as_i64() != Some(mid) {
                problems.push(format!(
                    "{who}: stored as {stored:?}, acknowledged as {mid}"
                ));
                continue;
            }
            let reply = replies(mid);
            let [reply] = reply.as_slice() else {
                problems.push(format!("{who}: {} reply rows", reply.len()));
                continue;
            };
            let (status, content) = (
                reply["status"].as_str().unwrap_or(""),
                reply["content"].as_str().unwrap_or(""),
            );
            let shown_ok = match status {
                "complete" => content == turn.shown,
                "partial" if writes_lost => turn.shown.starts_with(content) && !content.is_empty(),
                "partial" => content == turn.shown,
                "failed" => content.is_empty(),
                _ => false,
            };
            if !shown_ok {
                problems.push(format!(
                    "{who}: stored {status} {content:?}, shown {:?}",
                    turn.shown
                ));
            }
            match &turn.end {
                End::Done {
                    status: s,
                    reply_id,
                } if reply["id"].as_i64() != Some(*reply_id) || s != status => {
                    problems.push(format!("{who}: done named {reply_id} {s}, stored {reply}"));
                }
                End::Failed { .. } if status == "complete" => {
                    problems.push(format!(
                        "{who}: failed for the user, complete in the database"
                    ));
                }
                _ => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {checked} turns broke the invariant:\n{}",
        problems.len(),
        problems.join("\n")
    );
    checked
}

fn config(db_url: &str, bots: &str) -> String {
    format!(
        "{FAST_SUPERVISOR}\n[database]\nurl = \"{db_url}\"\n[backup]\nschedule = \"off\"\n\
         [auth]\njwt_secret = \"chaos-tests-sign-with-32-bytes!!\"\n\
         [limits]\nmessages_per_minute_per_user = 100000\nlogins_per_minute_per_ip = 100000\n\
         {bots}"
    )
}

/// One builtin bot streaming at 10 ms a token (a turn is about 0.7 s).
const CHATTY: &str = "[[bots]]\nname = \"chatty\"\n[bots.builtin]\ntoken_delay = \"10ms\"\n";

/// How many turns had to be sent again: proof the scenario bit.
fn resent(logs: &[UserLog]) -> usize {
    logs.iter()
        .flat_map(|l| &l.turns)
        .filter(|t| t.resent > 0)
        .count()
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("chaos.db").display())
}

fn signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(i32::try_from(pid).expect("pid")), signal).expect("signal");
}

#[test]
fn workers_killed_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start_with_config(&config(&sqlite_url(dir.path()), CHATTY));
    let load = Chaos::start(&host.url, 6, "chatty");
    // Twice: a third crash within 30 s would mark the bot failed (the
    // tests' crash_limit), which is another test's subject.
    for _ in 0..2 {
        load.wait_turns(6);
        let pid = host.wait_for("a worker", Duration::from_secs(10), || {
            host.bot("chatty").pid
        });
        signal(pid, Signal::SIGKILL);
    }
    load.wait_turns(12);
    let checked = check(&host, &load.finish(), false);
    assert!(checked >= 24, "{checked} turns");
}

#[test]
fn a_worker_hung_with_sigstop_then_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start_with_config(&config(&sqlite_url(dir.path()), CHATTY));
    let load = Chaos::start(&host.url, 6, "chatty");
    load.wait_turns(6);
    let pid = host.wait_for("a worker", Duration::from_secs(10), || {
        host.bot("chatty").pid
    });
    signal(pid, Signal::SIGSTOP);
    // Past the heartbeat timeout (3 s): it is replaced, and users move on.
    host.wait_for("a replacement", Duration::from_secs(15), || {
        (host.bot("chatty").pid != Some(pid)).then_some(())
    });
    load.wait_turns(6);
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
    load.wait_turns(6);
    check(&host, &load.finish(), false);
}

#[test]
fn the_host_killed_mid_stream_and_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut host = HostProcess::start_on(
        Path::new(BOTHOST),
        &config(&sqlite_url(dir.path()), CHATTY),
        listener,
    )
    .unwrap();
    let load = Chaos::start(&host.url, 6, "chatty");
    for _ in 0..2 {
        load.wait_turns(8);
        host.crash_and_restart().unwrap();
    }
    load.wait_turns(12);
    let logs = load.finish();
    check(&host, &logs, true);
    assert!(resent(&logs) > 0, "no turn was cut by the kills");
}

#[test]
fn a_rolling_restart_every_second_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start_with_config(&config(
        &sqlite_url(dir.path()),
        &format!("{CHATTY}[[bots]]\nname = \"other\"\n[bots.builtin]\ntoken_delay = \"5ms\"\n"),
    ));
    let load = Chaos::start(&host.url, 6, "chatty");
    for _ in 0..4 {
        load.wait_turns(4);
        let out = host.cli(&["restart", "--all", "--rolling"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    load.wait_turns(6);
    check(&host, &load.finish(), false);
}

/// An Ollama endpoint that goes away and comes back every second, with a
/// steady one behind it: users never see it.
#[test]
fn the_inference_primary_flapping_every_second() {
    let dir = tempfile::tempdir().unwrap();
    let mut flappy = common::fake::FakeServer::start("flappy", &["--token-delay-ms", "10"]);
    let steady = common::fake::FakeServer::start("steady", &["--token-delay-ms", "10"]);
    let bots = format!(
        "[[inference]]\nname = \"flappy\"\nurl = \"{}\"\nhealth_interval = \"1s\"\nhealth_interval_down = \"200ms\"\n\
         connect_timeout = \"300ms\"\ncooldown = \"2s\"\n\
         [[inference]]\nname = \"steady\"\nurl = \"{}\"\n\
         [[bots]]\nname = \"llama\"\nengine = \"ollama\"\nmodel = \"llama3.2\"\n",
        flappy.url, steady.url
    );
    let host = TestHost::start_with_config(&config(&sqlite_url(dir.path()), &bots));
    let load = Chaos::start(&host.url, 6, "llama");
    for _ in 0..4 {
        load.wait_turns(3);
        flappy.kill();
        std::thread::sleep(Duration::from_secs(1));
        flappy.restart();
        std::thread::sleep(Duration::from_secs(1));
    }
    load.wait_turns(6);
    let logs = load.finish();
    check(&host, &logs, false);
    // Only a turn cut mid-stream by a kill fails (it had shown tokens, so
    // it cannot move): at most one per user per kill. The rest moved to the
    // steady server or waited for the primary's return.
    let failed: Vec<_> = logs
        .iter()
        .flat_map(|l| &l.turns)
        .filter(|t| !matches!(&t.end, End::Done { status, .. } if status == "complete"))
        .collect();
    assert!(
        failed.len() <= 6 * 4
            && failed.iter().all(|t| t.end
                == End::Failed {
                    code: "engine_failed".into()
                }
                && !t.shown.is_empty()),
        "{failed:?}"
    );
}

/// The database's disk fills up under SQLite (a 3 MB tmpfs): messages that
/// cannot be stored are refused and kept nowhere, users are told; once
/// space is back, everything flows again and the invariant holds.
#[test]
fn the_sqlite_disk_full() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("db");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a small tmpfs here (needs root): skipping");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _unmount = Unmount(&mount);
    let host = TestHost::start_with_config(&config(&sqlite_url(&mount), CHATTY));
    let load = Chaos::start(&host.url, 4, "chatty");
    load.wait_turns(4);
    // Fill the disk to the last byte.
    let filler = mount.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output();
    // Held full until a message is refused for it: the host checkpoints
    // SQLite's WAL every second, and a reset WAL is written again from its
    // start, in space it already has, so writes go on until a checkpoint
    // cannot grow the database file and the WAL has to grow.
    host.wait_for(
        "a message refused for the full disk",
        Duration::from_secs(30),
        || {
            let refused = host.metric("bothost_chat_messages_total{outcome=\"unavailable\"}")?;
            (refused >= 1.0).then_some(())
        },
    );
    std::fs::remove_file(&filler).unwrap();
    load.wait_turns(8);
    let logs = load.finish();
    check(&host, &logs, true);
    assert!(resent(&logs) > 0, "the disk never filled");
}

/// PostgreSQL restarted under load (a throwaway cluster of its own, so no
/// other test notices): turns in flight may fail, nothing is lost or
/// doubled, and the host recovers by itself.
#[test]
fn postgres_restarted_under_load() {
    let Some(pg) = ThrowawayPg::start() else {
        return;
    };
    let host = TestHost::start_with_config(&config(&pg.url(), CHATTY));
    let load = Chaos::start(&host.url, 6, "chatty");
    for _ in 0..2 {
        load.wait_turns(6);
        let before = pg.server_pid();
        pg.restart();
        assert_ne!(pg.server_pid(), before, "a new server process");
    }
    // Connections broken by the restarts are replaced as they are found.
    load.wait_turns(12);
    check(&host, &load.finish(), false);
}

/// Three hosts behind the real HAProxy (the shipped `deploy/haproxy/`
/// configuration with a third server line), on `db_url`.
struct Fleet {
    hosts: Vec<TestHost>,
    proxy: std::process::Child,
    front: String,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// `None` (the test skips) without haproxy, except under CI.
    fn start(db_url: &str) -> Option<Self> {
        if std::process::Command::new("haproxy")
            .arg("-v")
            .output()
            .is_err()
        {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "CI=true but haproxy is missing"
            );
            return None;
        }
        let config = config(db_url, CHATTY).replace(
            "bind = \"127.0.0.1:0\"",
            "bind = \"127.0.0.1:0\"\ndrain_delay = \"2s\"",
        );
        let hosts: Vec<TestHost> = (0..3)
            .map(|_| TestHost::start_with_config(&config))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg"),
        )
        .unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!("{shipped}    server host3 \"${{BOTHOST_3}}\"\n"),
        )
        .unwrap();
        let port = common::fake::free_port();
        let proxy = std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .env("HAPROXY_BIND", format!("127.0.0.1:{port}"))
            .env("BOTHOST_1", hosts[0].addr())
            .env("BOTHOST_2", hosts[1].addr())
            .env("BOTHOST_3", hosts[2].addr())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy");
        let front = format!("http://127.0.0.1:{port}");
        hosts[1].wait_for("HAProxy serving", Duration::from_secs(15), || {
            let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            (up && http_get(&front, "/readyz").0 == 200).then_some(())
        });
        Some(Self {
            hosts,
            proxy,
            front,
            _dir: dir,
        })
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
    }
}

/// The fleet on a PostgreSQL primary with a streaming standby: six users
/// chat through HAProxy while one host is killed mid-stream, the others
/// restart their workers one after the other, and the database fails over
/// to the promoted standby; every user's history must hold what they saw,
/// once.
#[test]
fn the_fleet_behind_haproxy_through_a_host_kill_rolling_restarts_and_a_failover() {
    let Some(primary) = ThrowawayPg::start() else {
        return;
    };
    let standby = ThrowawayPg::standby_of(&primary);
    let Some(fleet) = Fleet::start(&primary.url_with_standby(&standby)) else {
        return;
    };
    let load = Chaos::start(&fleet.front, 6, "chatty");
    load.wait_turns(6);
    fleet.hosts[0].signal(Signal::SIGKILL);
    load.wait_turns(6);
    for host in &fleet.hosts[1..] {
        let out = host.cli(&["restart", "--all", "--rolling"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        load.wait_turns(3);
    }
    primary.stop();
    standby.promote();
    load.wait_turns(12);
    let logs = load.finish();
    check(&fleet.hosts[1], &logs, true);
    assert!(resent(&logs) > 0, "no turn was cut");
}

/// Rolling restarts on every host of the fleet, one after the other, under
/// load through HAProxy: not one turn fails.
#[test]
fn rolling_restarts_across_the_fleet_fail_no_turn() {
    let Some(base) = bothost_testkit::test_database_url() else {
        return;
    };
    let rt = runtime();
    let schema = rt
        .block_on(bothost_testkit::PgSchema::create(&base, "fleet_rolling"))
        .unwrap();
    let Some(fleet) = Fleet::start(&schema.url) else {
        return;
    };
    let load = Chaos::start(&fleet.front, 6, "chatty");
    load.wait_turns(6);
    for host in &fleet.hosts {
        let out = host.cli(&["restart", "--all", "--rolling"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        load.wait_turns(3);
    }
    load.wait_turns(6);
    let logs = load.finish();
    check(&fleet.hosts[0], &logs, false);
    let failed: Vec<&Turn> = logs
        .iter()
        .flat_map(|l| &l.turns)
        .filter(|t| !matches!(&t.end, End::Done { status, .. } if status == "complete"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    drop(fleet);
    rt.block_on(schema.drop_schema()).unwrap();
}
