//! A host stopped with SIGTERM (a deploy, a restart) as its users see it:
//! turns in flight finish and are stored, a message sent meanwhile is
//! refused as `restarting` (the page keeps it and sends it again), every
//! WebSocket closes with 1012 so the page reconnects at once, and a turn
//! longer than `drain_timeout` is cut and stored `partial` with exactly
//! what was shown.

mod common;

use std::time::{Duration, Instant};

use common::web::{login, register};
use common::*;
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// What a stopping host logs once it refuses new turns.
const REFUSING: &str = "new turns are refused from now on";

fn config(db: &std::path::Path, token_delay: &str) -> String {
    format!(
        "{FAST_SUPERVISOR}\n[database]\nurl = \"sqlite://{}\"\n[backup]\nschedule = \"off\"\n\
         [[bots]]\nname = \"slow\"\n[bots.builtin]\ntoken_delay = \"{token_delay}\"\n",
        db.display()
    )
}

/// Reads frames until the server closes the socket; answers the text
/// frames before it and the close code.
async fn until_close(ws: &mut common::web::Ws) -> (Vec<Value>, Option<CloseCode>) {
    let mut frames = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.stream.next())
            .await
            .expect("the server closes within 10 s");
        match next {
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["type"] != "bot_status" {
                    frames.push(v);
                }
            }
            Some(Ok(Message::Close(frame))) => return (frames, frame.map(|f| f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (frames, None),
        }
    }
}

/// A new host on `db`, alice logged in there, and the reply to her first
/// message in `conv` as that host shows it.
fn stored_reply(db: &std::path::Path, conv: i64) -> (TestHost, common::web::ApiUser, Value) {
    let again = TestHost::start_with_config(&config(db, "0s"));
    let alice = login(&again.url, "alice").unwrap();
    let history = alice.history(conv);
    let reply = history
        .iter()
        .find(|m| m["role"] == "assistant")
        .cloned()
        .unwrap_or_else(|| panic!("a reply row: {history:?}"));
    (again, alice, reply)
}

#[test]
fn sigterm_finishes_the_turns_in_flight_then_closes_websockets_with_1012() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bothost.db");
    let mut host = TestHost::start_with_config(&config(&db, "15ms"));
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("slow");
    let (frames, code, shown) = runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.chat(
            conv,
            "long",
            "tell me about the restart that nobody noticed",
        )
        .await;
        let ack = ws.next().await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let first = ws.next().await;
        assert_eq!(first["type"], "delta", "{first}");
        host.signal(Signal::SIGTERM);
        // Sent once the host refuses new turns: not taken, to be sent
        // again later.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !host.log().contains(REFUSING) {
            assert!(
                Instant::now() < deadline,
                "the host never stopped taking turns:\n{}",
                host.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ws.chat(conv, "late", "one more thing").await;
        let (frames, code) = until_close(&mut ws).await;
        let shown: String = std::iter::once(&first)
            .chain(&frames)
            .filter(|f| f["type"] == "delta")
            .map(|f| f["text"].as_str().unwrap())
            .collect();
        (frames, code, shown)
    });
    let done = frames
        .iter()
        .find(|f| f["type"] == "done")
        .unwrap_or_else(|| panic!("the turn in flight finished: {frames:?}"));
    assert_eq!(done["status"], "complete");
    let late = frames
        .iter()
        .find(|f| f["client_msg_id"] == "late")
        .unwrap_or_else(|| panic!("the late message was answered: {frames:?}"));
    assert_eq!(late["type"], "error");
    assert_eq!(late["code"], "restarting", "{late}");
    assert_eq!(code, Some(CloseCode::Restart), "1012: service restart");
    let status = host
        .wait_exit(Duration::from_secs(10))
        .expect("the host exits");
    assert!(status.success(), "{status:?}");

    // A new host on the same database: the whole reply, nothing from "late".
    let (_again, alice, reply) = stored_reply(&db, conv);
    assert_eq!(alice.history(conv).len(), 2);
    assert_eq!(reply["status"], "complete");
    assert_eq!(reply["content"].as_str().unwrap(), shown);
}

#[test]
fn a_turn_longer_than_the_drain_is_cut_and_stored_partial_with_what_was_shown() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bothost.db");
    // drain_timeout is 2 s in FAST_SUPERVISOR; this reply takes ~10 s.
    let mut host = TestHost::start_with_config(&config(&db, "100ms"));
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("slow");
    let started = Instant::now();
    let (shown, code, last) = runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.chat(conv, "long", "tell me a very long story about a restart")
            .await;
        assert_eq!(ws.next().await["type"], "ack");
        let first = ws.next().await;
        host.signal(Signal::SIGTERM);
        let (frames, code) = until_close(&mut ws).await;
        let shown: String = std::iter::once(&first)
            .chain(&frames)
            .filter(|f| f["type"] == "delta")
            .map(|f| f["text"].as_str().unwrap())
            .collect();
        (shown, code, frames.last().cloned())
    });
    assert_eq!(code, Some(CloseCode::Restart));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "closed at the drain, not at the end of the reply: {:?}",
        started.elapsed()
    );
    assert!(
        last.as_ref().is_none_or(|f| f["type"] == "delta"),
        "cut, not finished: {last:?}"
    );
    host.wait_exit(Duration::from_secs(15))
        .expect("the host exits");
    let (_again, _, reply) = stored_reply(&db, conv);
    assert_eq!(reply["status"], "partial", "{reply}");
    assert_eq!(
        reply["content"].as_str().unwrap(),
        shown,
        "exactly what was shown"
    );
}

#[test]
fn with_an_inherited_socket_a_restart_refuses_no_connection() {
    let dir = tempfile::tempdir().unwrap();
    // This test plays systemd: it holds the socket across the restart.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let mut host = HostProcess::start_on(
        std::path::Path::new(BOTHOST),
        &config(&dir.path().join("bothost.db"), "0s"),
        listener,
    )
    .unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // A fresh connection per request, as a browser after a restart.
            let client = reqwest::blocking::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.get(&url).send() {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(format!("{e:?}")),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    host.restart().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = prober.join().unwrap();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(ok > 20, "{ok} requests answered");
    assert!(host.stop().unwrap().success());
}

/// `kill -9` of the host mid-reply: what the user was shown is stored as it
/// streams (at most [a flush interval] behind), the next host shows it as
/// `partial`, and sending the message again returns that stored reply, not
/// a second answer.
#[test]
fn after_a_host_kill_the_reply_shown_so_far_is_kept_and_a_resend_returns_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bothost.db");
    let host = TestHost::start_with_config(&config(&db, "50ms"));
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("slow");
    let shown = runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.chat(conv, "m1", "tell me a very long story about a crash")
            .await;
        assert_eq!(ws.next().await["type"], "ack");
        let mut shown = String::new();
        // About a second of streaming, then the host is killed outright.
        for _ in 0..20 {
            let f = ws.next().await;
            assert_eq!(f["type"], "delta", "{f}");
            shown.push_str(f["text"].as_str().unwrap());
        }
        host.signal(Signal::SIGKILL);
        shown
    });
    drop(host);
    let (_again, alice, reply) = stored_reply(&db, conv);
    assert_eq!(reply["status"], "partial", "{reply}");
    let kept = reply["content"].as_str().unwrap();
    assert!(
        !kept.is_empty() && shown.starts_with(kept),
        "{kept:?} of {shown:?}"
    );
    // Sent again (the page does after reconnecting): the stored reply.
    let res = alice.post(
        &format!("/api/v1/conversations/{conv}/messages"),
        serde_json::json!({"client_msg_id": "m1", "content": "tell me a very long story about a crash"}),
    );
    assert_eq!(res.status(), 200);
    let body: Value = res.json().unwrap();
    assert_eq!(body["reply"]["id"], reply["id"], "{body}");
    assert_eq!(body["reply"]["content"], reply["content"]);
    assert_eq!(alice.history(conv).len(), 2, "no second answer");
}

/// `kill -9` of the host before the first token: nothing was shown and no
/// reply row was written. The next host marks the message `failed` once no
/// turn anywhere can still be answering it (start + idle deadline + 10 s),
/// and a resend returns that outcome instead of a second answer.
#[test]
fn after_a_host_kill_before_the_first_token_the_message_is_marked_failed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bothost.db");
    let config = config(&db, "0s")
        .replace(
            "stop_grace = \"1s\"",
            "stop_grace = \"1s\"\nturn_idle_timeout = \"2s\"",
        )
        .replace("[bots.builtin]\n", "[bots.builtin]\nhang_on = \"stall\"\n");
    let host = TestHost::start_with_config(&config);
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("slow");
    runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.chat(conv, "m1", "please stall").await;
        assert_eq!(ws.next().await["type"], "ack");
        host.signal(Signal::SIGKILL);
    });
    drop(host);
    let again = TestHost::start_with_config(&config);
    let alice = login(&again.url, "alice").unwrap();
    assert_eq!(alice.history(conv).len(), 1, "not marked at once");
    let reply = again.wait_for(
        "the orphaned message marked failed",
        Duration::from_secs(60),
        || {
            alice
                .history(conv)
                .into_iter()
                .find(|m| m["role"] == "assistant")
        },
    );
    assert_eq!(
        (reply["status"].as_str(), reply["content"].as_str()),
        (Some("failed"), Some(""))
    );
    let res = alice.post(
        &format!("/api/v1/conversations/{conv}/messages"),
        serde_json::json!({"client_msg_id": "m1", "content": "please stall"}),
    );
    let body: Value = res.json().unwrap();
    assert_eq!(body["reply"]["id"], reply["id"], "{body}");
    assert_eq!(alice.history(conv).len(), 2, "no second answer");
}
