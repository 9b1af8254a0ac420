//! The real `bot-worker` binary, with this test playing the host: handshake,
//! multiplexing, cancel, drain, version refusal, and the worker's own
//! detection of a silent host.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bot_worker::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;

type HostFramed = Framed<UnixStream, FrameCodec<WorkerMessage, HostMessage>>;

struct Worker {
    child: Child,
    conn: HostFramed,
    _dir: tempfile::TempDir,
}

fn spec(token_delay_ms: u64) -> BotSpec {
    BotSpec {
        name: "t".into(),
        model: "builtin".into(),
        system_prompt: String::new(),
        engine: EngineSpec::Builtin(BuiltinSpec {
            token_delay_ms,
            fail_rate: 0.0,
            leak_per_message: 0,
            leak_per_token: 0,
            max_tokens: 0,
            panic_on: None,
            hang_on: None,
        }),
    }
}

const HEARTBEAT: Heartbeat = Heartbeat {
    interval_ms: 100,
    timeout_ms: 500,
};

/// Spawns the worker and accepts its connection, without a handshake.
async fn spawn() -> Worker {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("w.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_bot-worker"))
        .arg("--socket")
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (stream, _) = timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    Worker {
        child,
        conn: Framed::new(stream, FrameCodec::new()),
        _dir: dir,
    }
}

async fn ready_worker(token_delay_ms: u64) -> Worker {
    let mut w = spawn().await;
    w.conn
        .send(HostMessage::Hello {
            version: PROTOCOL_VERSION,
            spec: spec(token_delay_ms),
            heartbeat: HEARTBEAT,
        })
        .await
        .unwrap();
    match w.next().await {
        WorkerMessage::Ready { version, pid } => {
            assert_eq!(version, PROTOCOL_VERSION);
            assert_eq!(pid, w.child.id());
        }
        other => panic!("expected Ready, got {other:?}"),
    }
    w
}

impl Worker {
    /// The next message that is not a heartbeat, answering pings on the way.
    async fn next(&mut self) -> WorkerMessage {
        loop {
            let msg = timeout(Duration::from_secs(5), self.conn.next())
                .await
                .expect("worker answered in time")
                .expect("connection open")
                .expect("valid frame");
            match msg {
                WorkerMessage::Ping { seq } => {
                    // A worker that has just finished a drain may be gone
                    // before the answer reaches it; the next read tells
                    // the test what it needs to know.
                    let _ = self.conn.send(HostMessage::Pong { seq }).await;
                }
                WorkerMessage::Pong { .. } => {}
                other => return other,
            }
        }
    }

    async fn chat(&mut self, id: u64, text: &str) {
        self.conn
            .send(HostMessage::Chat {
                id,
                messages: vec![ChatMessage {
                    role: Role::User,
                    content: text.into(),
                }],
            })
            .await
            .unwrap();
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, limit)
    }
}

/// Waits for `child` to exit; kills it and returns `None` past `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    None
}

#[tokio::test]
async fn two_chats_are_multiplexed_on_one_connection() {
    let mut w = ready_worker(5).await;
    w.chat(1, "first question").await;
    w.chat(2, "second question").await;
    let mut text = [String::new(), String::new()];
    let mut done = [false, false];
    let mut interleaved = false;
    let mut last_id = 0;
    while !(done[0] && done[1]) {
        match w.next().await {
            WorkerMessage::Delta { id, text: t } => {
                interleaved |= last_id != 0 && last_id != id;
                last_id = id;
                text[id as usize - 1].push_str(&t);
            }
            WorkerMessage::Done { id, .. } => done[id as usize - 1] = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(text[0].contains("\"first question\""), "{}", text[0]);
    assert!(text[1].contains("\"second question\""), "{}", text[1]);
    assert!(interleaved, "both replies streamed at the same time");
}

#[tokio::test]
async fn cancel_stops_the_turn_at_once() {
    let mut w = ready_worker(200).await; // ~25 tokens: about 5 s if not cancelled
    w.chat(7, "a long answer please").await;
    assert!(matches!(w.next().await, WorkerMessage::Delta { id: 7, .. }));
    let cancelled = Instant::now();
    w.conn.send(HostMessage::Cancel { id: 7 }).await.unwrap();
    loop {
        match w.next().await {
            WorkerMessage::Delta { id: 7, .. } => continue, // already in flight
            WorkerMessage::Failed { id: 7, code, .. } => {
                assert_eq!(code, FailCode::Cancelled);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(cancelled.elapsed() < Duration::from_secs(1));
    // And the worker is still serving.
    w.chat(8, "still there?").await;
    assert!(matches!(w.next().await, WorkerMessage::Delta { id: 8, .. }));
}

#[tokio::test]
async fn drain_finishes_running_turns_refuses_new_ones_then_exits_cleanly() {
    let mut w = ready_worker(20).await;
    w.chat(1, "finish me").await;
    w.conn.send(HostMessage::Drain).await.unwrap();
    w.chat(2, "too late").await;
    let mut finished = false;
    let mut refused = false;
    while !(finished && refused) {
        match w.next().await {
            WorkerMessage::Delta { id: 1, .. } => {}
            WorkerMessage::Done { id: 1, .. } => finished = true,
            WorkerMessage::Failed { id: 2, code, .. } => {
                assert_eq!(code, FailCode::Draining);
                refused = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let status = w
        .wait_exit(Duration::from_secs(5))
        .expect("worker exits after drain");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_protocol_version_mismatch_is_refused_with_a_reason() {
    let mut w = spawn().await;
    w.conn
        .send(HostMessage::Hello {
            version: PROTOCOL_VERSION + 1,
            spec: spec(0),
            heartbeat: HEARTBEAT,
        })
        .await
        .unwrap();
    match w.next().await {
        WorkerMessage::Refused { reason } => {
            assert!(reason.contains("protocol version"), "{reason}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let status = w.wait_exit(Duration::from_secs(5)).expect("worker exits");
    assert!(!status.success());
}

#[tokio::test]
async fn the_worker_leaves_when_the_host_stops_answering() {
    let mut w = ready_worker(0).await;
    // Say nothing more, answer no pings: after heartbeat.timeout_ms the
    // worker must give up on us and exit.
    let status = w
        .wait_exit(Duration::from_secs(5))
        .expect("worker exits when the host is silent");
    assert!(!status.success());
}

#[tokio::test]
async fn the_worker_leaves_when_the_host_closes_the_socket() {
    let Worker {
        mut child,
        conn,
        _dir,
    } = ready_worker(0).await;
    drop(conn);
    let exited = wait_exit(&mut child, Duration::from_secs(2));
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}

#[tokio::test]
async fn garbage_from_the_host_makes_the_worker_exit_not_hang() {
    use tokio::io::AsyncWriteExt;
    let Worker {
        mut child,
        conn,
        _dir,
    } = ready_worker(0).await;
    let mut stream = conn.into_inner();
    stream.write_all(b"\x00\x00\x00\x03abc").await.unwrap();
    let exited = wait_exit(&mut child, Duration::from_secs(2));
    assert!(exited.is_some_and(|s| !s.success()), "{exited:?}");
}
