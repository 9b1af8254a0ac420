//! The web front end against the real host and workers: REST, auth, the
//! WebSocket protocol, limits, admin, TLS and metrics.

mod common;

use std::time::Duration;

use common::web::{client, error_code, register, ApiUser};
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "tests-sign-with-this-32-byte-key!";

fn web_host(extra: &str) -> TestHost {
    let bots = "[[bots]]\nname = \"fast\"\n[bots.builtin]\ntoken_delay = \"0s\"\n\
                [[bots]]\nname = \"slow\"\n[bots.builtin]\ntoken_delay = \"100ms\"\n";
    TestHost::start_with_config(&format!(
        "{FAST_SUPERVISOR}\n[auth]\njwt_secret = \"{SECRET}\"\n{extra}\n{bots}"
    ))
}

/// Runs blocking HTTP calls from inside an async test.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("blocking call"))
}

#[test]
fn register_login_and_chat_over_rest_with_idempotent_resends() {
    let host = web_host("");
    let alice = register(&host.url, "alice");
    let dup = client()
        .post(format!("{}/api/v1/auth/register", host.url))
        .json(&json!({"username": "alice", "password": "another password"}))
        .send()
        .unwrap();
    assert_eq!(error_code(dup), (409, "username_taken".into()));
    let wrong = client()
        .post(format!("{}/api/v1/auth/login", host.url))
        .json(&json!({"username": "alice", "password": "not the password"}))
        .send()
        .unwrap();
    assert_eq!(error_code(wrong), (401, "invalid_credentials".into()));
    let login = client()
        .post(format!("{}/api/v1/auth/login", host.url))
        .json(&json!({"username": "alice", "password": "correct horse battery"}))
        .send()
        .unwrap();
    assert_eq!(login.status(), 200);

    let bots: Vec<Value> = alice.get("/api/v1/bots").json().unwrap();
    assert_eq!(
        bots[0],
        json!({"name": "fast", "model": "builtin", "status": "ready"})
    );
    assert_eq!(
        error_code(alice.post("/api/v1/conversations", json!({"bot": "nobody"}))),
        (404, "unknown_bot".into())
    );

    let conv = alice.conversation("fast");
    let send = json!({"client_msg_id": "r1", "content": "hello over rest"});
    let first: Value = alice
        .post(
            &format!("/api/v1/conversations/{conv}/messages"),
            send.clone(),
        )
        .json()
        .unwrap();
    assert_eq!(first["message"]["content"], "hello over rest");
    assert_eq!(first["reply"]["status"], "complete");
    assert!(first["reply"]["content"]
        .as_str()
        .unwrap()
        .contains("\"hello over rest\""));
    let again: Value = alice
        .post(&format!("/api/v1/conversations/{conv}/messages"), send)
        .json()
        .unwrap();
    assert_eq!(again["message"]["id"], first["message"]["id"]);
    assert_eq!(
        again["reply"]["id"], first["reply"]["id"],
        "not asked twice"
    );
    let history = alice.history(conv);
    assert_eq!(history.len(), 2);
    let listed: Vec<Value> = alice.get("/api/v1/conversations").json().unwrap();
    assert_eq!(listed[0]["id"], conv);
}

#[test]
fn another_users_conversation_is_not_found_by_any_route() {
    let host = web_host("");
    let alice = register(&host.url, "alice");
    let bob = register(&host.url, "bob");
    let conv = alice.conversation("fast");
    let path = format!("/api/v1/conversations/{conv}/messages");
    assert_eq!(error_code(bob.get(&path)), (404, "not_found".into()));
    assert_eq!(
        error_code(bob.post(&path, json!({"client_msg_id": "x", "content": "hi"}))),
        (404, "not_found".into())
    );
    let frame = runtime().block_on(async {
        let mut ws = bob.ws().await;
        ws.chat(conv, "x", "let me in").await;
        ws.next().await
    });
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("not_found"))
    );
    assert!(
        alice.history(conv).is_empty(),
        "nothing was stored in alice's conversation"
    );
}

#[test]
fn a_conversation_deleted_while_its_websocket_chats_in_it_is_not_found() {
    let host = web_host("");
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("fast");
    runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.chat(conv, "d1", "first").await;
        let (_, _, done) = ws.turn().await;
        assert_eq!(done["status"], "complete", "{done}");
        // Deleted in another tab: the open connection's next message there
        // is refused, and nothing is stored for a conversation that is gone.
        let deleted = off_runtime(|| {
            client()
                .delete(format!("{}/api/v1/conversations/{conv}", host.url))
                .bearer_auth(&alice.token)
                .send()
                .expect("DELETE")
                .status()
        });
        assert!(deleted.is_success(), "{deleted}");
        ws.chat(conv, "d2", "second").await;
        let frame = ws.next().await;
        assert_eq!(
            (frame["type"].as_str(), frame["code"].as_str()),
            (Some("error"), Some("not_found")),
            "{frame}"
        );
        // The connection carries on with the user's other conversations.
        let other = off_runtime(|| alice.conversation("fast"));
        ws.chat(other, "d3", "elsewhere").await;
        let (_, _, done) = ws.turn().await;
        assert_eq!(done["status"], "complete", "{done}");
    });
}

/// A page that comes back lists its conversations, then opens a WebSocket:
/// the first message there finds the listed conversation on the host and
/// reads nothing (`web::known`). Listed or not, another user's conversation
/// is still not found, and nothing is stored in it.
#[test]
fn a_new_websockets_first_message_to_a_listed_conversation_reads_nothing() {
    let host = web_host("");
    let alice = register(&host.url, "alice");
    let mallory = register(&host.url, "mallory");
    let conv = alice.conversation("fast");
    let listed: Vec<Value> = alice.get("/api/v1/conversations").json().expect("json");
    assert_eq!(listed.len(), 1);
    let reads = || {
        host.metric("bothost_db_query_duration_seconds_count{query=\"conversation\"}")
            .unwrap_or(0.0)
    };
    let before = reads();
    runtime().block_on(async {
        let mut ws = mallory.ws().await;
        ws.chat(conv, "m1", "let me in").await;
        let refused = ws.next().await;
        assert_eq!(
            (refused["type"].as_str(), refused["code"].as_str()),
            (Some("error"), Some("not_found")),
            "{refused}"
        );
        let mut ws = alice.ws().await;
        ws.chat(conv, "a1", "hello").await;
        let (_, text, done) = ws.turn().await;
        assert_eq!(done["status"], "complete", "{done}");
        assert!(!text.is_empty());
    });
    assert_eq!(
        reads() - before,
        1.0,
        "mallory's message read, alice's did not"
    );
    let history = alice.history(conv);
    let users: Vec<_> = history.iter().filter(|m| m["role"] == "user").collect();
    assert_eq!(users.len(), 1, "{history:?}");
    assert_eq!(users[0]["content"], "hello");
}

#[test]
fn missing_bad_and_expired_tokens_are_refused_with_their_own_codes() {
    let host = web_host("");
    let c = client();
    let get = |token: Option<&str>| {
        let mut req = c.get(format!("{}/api/v1/conversations", host.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        error_code(req.send().unwrap())
    };
    assert_eq!(get(None), (401, "unauthorized".into()));
    assert_eq!(get(Some("not-a-token")), (401, "unauthorized".into()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": 1, "name": "alice", "role": "user", "iat": now - 7200, "exp": now - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(get(Some(&expired)), (401, "token_expired".into()));
    let ws = c
        .get(format!("{}/api/v1/ws?token=nope", host.url))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .unwrap();
    assert_eq!(error_code(ws), (401, "unauthorized".into()));
    assert!(
        !host.log().contains("not-a-token") && !host.log().contains(&expired),
        "tokens never logged"
    );
}

#[test]
fn malformed_and_oversized_requests_get_clear_errors() {
    let host = web_host("[limits]\nmax_body = \"4KB\"\nmax_message_chars = 100\n");
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("fast");
    let path = format!("/api/v1/conversations/{conv}/messages");
    let raw = |body: String| error_code(alice.post_raw(&path, body));
    assert_eq!(raw("{not json".into()), (400, "invalid_json".into()));
    assert_eq!(
        raw(format!(
            "{{\"client_msg_id\":\"a\",\"content\":\"{}\"}}",
            "x".repeat(8000)
        )),
        (413, "too_large".into())
    );
    assert_eq!(
        raw(format!(
            "{{\"client_msg_id\":\"a\",\"content\":\"{}\"}}",
            "x".repeat(200)
        )),
        (413, "message_too_long".into())
    );
    assert_eq!(
        raw("{\"client_msg_id\":\"a\",\"content\":\"hi\",\"extra\":1}".into()),
        (400, "invalid_json".into())
    );
    assert_eq!(
        raw("{\"client_msg_id\":\"\",\"content\":\"hi\"}".into()),
        (400, "invalid_client_msg_id".into())
    );
    assert!(
        alice.history(conv).is_empty(),
        "nothing stored from bad input"
    );
    assert_eq!(
        alice.get("/api/v1/conversations/abc/messages").status(),
        404
    );
}

#[test]
fn the_websocket_streams_replays_and_cancels() {
    let host = web_host("");
    let alice = register(&host.url, "alice");
    let fast = alice.conversation("fast");
    let slow = alice.conversation("slow");
    runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.chat(fast, "w1", "stream this please").await;
        let (ack, text, done) = ws.turn().await;
        assert_eq!(ack["replay"], false);
        assert_eq!(done["type"], "done", "{done}");
        assert_eq!(done["status"], "complete");
        let stored = off_runtime(|| alice.history(fast));
        assert_eq!(
            stored[0]["content"].as_str().unwrap(),
            text,
            "what streamed is what was stored"
        );
        assert_eq!(stored[0]["id"], done["message_id"]);
        assert_eq!(stored[1]["id"], ack["message_id"]);

        // A resend after reconnecting replays; the bot is not asked again.
        drop(ws);
        let mut ws = alice.ws().await;
        ws.chat(fast, "w1", "stream this please").await;
        let (ack2, text2, done2) = ws.turn().await;
        assert_eq!(ack2["replay"], true);
        assert_eq!((text2, &done2["message_id"]), (text, &done["message_id"]));
        assert_eq!(off_runtime(|| alice.history(fast)).len(), 2);

        // Cancel: an error frame at once, and the partial reply is kept.
        ws.chat(slow, "c1", "a long one").await;
        assert_eq!(ws.next().await["type"], "ack");
        assert_eq!(ws.next().await["type"], "delta");
        ws.send_json(json!({"type": "cancel", "client_msg_id": "c1"}))
            .await;
        let mut f = ws.next().await;
        while f["type"] == "delta" {
            f = ws.next().await;
        }
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("cancelled")),
            "{f}"
        );
        let h = eventually_async(
            "the partial reply stored",
            Duration::from_secs(5),
            || async { Some(off_runtime(|| alice.history(slow))).filter(|h| h.len() == 2) },
        )
        .await
        .unwrap();
        assert_eq!(h[0]["status"], "partial");
    });
}

#[test]
fn bad_websocket_frames_get_error_frames_and_the_connection_carries_on() {
    let host = web_host("[limits]\nmax_ws_frame = \"8KB\"\n");
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("fast");
    runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.send_text("this is not json".into()).await;
        let f = ws.next().await;
        assert_eq!((f["type"].as_str(), f["code"].as_str()), (Some("error"), Some("invalid_json")));
        ws.send_json(json!({"type": "launch"})).await;
        assert_eq!(ws.next().await["code"], "invalid_json");
        ws.send_text(format!("{{\"type\":\"send\",\"conversation_id\":{conv},\"client_msg_id\":\"big\",\"content\":\"{}\"}}", "x".repeat(20_000)))
            .await;
        assert_eq!(ws.next().await["code"], "too_large");
        ws.chat(conv, "ok1", "still there?").await;
        let (_, _, done) = ws.turn().await;
        assert_eq!(done["type"], "done", "the same connection still works");
    });
    assert_eq!(host.http_get("/healthz").0, 200);
}

#[test]
fn a_worker_killed_mid_reply_gives_an_error_frame_and_a_stored_partial_reply() {
    let host = web_host("");
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("slow");
    let pid = host.bot("slow").pid.unwrap();
    runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.chat(conv, "k1", "tell me a story").await;
        assert_eq!(ws.next().await["type"], "ack");
        let mut shown = String::new();
        let first = ws.next().await;
        shown.push_str(first["text"].as_str().unwrap());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let mut f = ws.next().await;
        while f["type"] == "delta" {
            shown.push_str(f["text"].as_str().unwrap());
            f = ws.next().await;
        }
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("worker_died")),
            "{f}"
        );
        let history = off_runtime(|| alice.history(conv));
        assert_eq!(history[0]["status"], "partial");
        assert_eq!(history[0]["content"].as_str().unwrap(), shown);
        assert_eq!(f["reply_id"], history[0]["id"]);
    });
}

#[test]
fn when_no_bot_can_answer_the_user_is_told_at_once_and_the_message_is_kept() {
    let mut toml = String::from("[[bots]]\nname = \"broken\"\nworker_binary = \"/bin/false\"\n");
    toml.push_str(&bots(&["fast"]));
    let host = TestHost::start_with_config(&format!("{FAST_SUPERVISOR}\n{toml}"));
    host.wait_for("broken failed", Duration::from_secs(10), || {
        (host.bot("broken").state == bothost::status::BotState::Failed).then_some(())
    });
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("broken");
    let started = std::time::Instant::now();
    let res = alice.post(
        &format!("/api/v1/conversations/{conv}/messages"),
        json!({"client_msg_id": "u1", "content": "hello?"}),
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "at once, not a spinner"
    );
    let status = res.status().as_u16();
    let body: Value = res.json().unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("bot_unavailable")),
        "{body}"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unavailable"));
    assert_eq!(
        body["message"]["content"], "hello?",
        "the stored message comes back"
    );
    assert_eq!(alice.history(conv).len(), 1);
}

#[test]
fn rate_limits_and_the_in_flight_cap_answer_429_with_retry_after() {
    let host = web_host(
        "[limits]\nmessages_per_minute_per_user = 3\nlogins_per_minute_per_ip = 4\nmax_in_flight_per_user = 1\n",
    );
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("fast");
    let path = format!("/api/v1/conversations/{conv}/messages");
    for i in 0..3 {
        let res = alice.post(
            &path,
            json!({"client_msg_id": format!("m{i}"), "content": "hi"}),
        );
        assert_eq!(res.status(), 200);
    }
    let res = alice.post(&path, json!({"client_msg_id": "m4", "content": "hi"}));
    assert!(res.headers().get("retry-after").is_some());
    assert_eq!(error_code(res), (429, "rate_limited".into()));
    let frame = runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.chat(conv, "m5", "hi").await;
        ws.next().await
    });
    assert_eq!(frame["code"], "rate_limited");
    assert!(frame["retry_after"].as_u64().unwrap() >= 1);

    // The in-flight cap: a second turn while the first streams.
    let bob = register(&host.url, "bob");
    let slow = bob.conversation("slow");
    runtime().block_on(async {
        let mut ws = bob.ws().await;
        ws.chat(slow, "s1", "slow one").await;
        assert_eq!(ws.next().await["type"], "ack");
        ws.chat(slow, "s2", "another").await;
        let mut f = ws.next().await;
        while f["type"] == "delta" {
            f = ws.next().await;
        }
        assert_eq!(
            (f["client_msg_id"].as_str(), f["code"].as_str()),
            (Some("s2"), Some("rate_limited")),
            "{f}"
        );
    });

    // Login attempts per address (two registrations above used two).
    let c = client();
    let codes: Vec<u16> = (0..3)
        .map(|_| {
            c.post(format!("{}/api/v1/auth/login", host.url))
                .json(&json!({"username": "alice", "password": "wrong password!"}))
                .send()
                .unwrap()
                .status()
                .as_u16()
        })
        .collect();
    assert_eq!(codes, vec![401, 401, 429]);
}

/// A connection that does not deliver its request's headers in
/// `server.request_header_timeout` gets 408 and is closed; the key is the
/// host's, not actix's 5 s default.
#[test]
fn a_connection_silent_past_the_header_timeout_gets_408() {
    use std::io::Read;
    let supervisor =
        FAST_SUPERVISOR.replace("[server]\n", "[server]\nrequest_header_timeout = \"1s\"\n");
    let host = TestHost::start_with_config(&format!(
        "{supervisor}\n[[bots]]\nname = \"echo\"\n[bots.builtin]\n"
    ));
    let addr = host.url.trim_start_matches("http://");
    let mut silent = std::net::TcpStream::connect(addr).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let opened = std::time::Instant::now();
    let mut answer = String::new();
    silent.read_to_string(&mut answer).expect("read to the end");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "closed after {:?}: not the configured 1 s",
        opened.elapsed()
    );
    // A client that speaks in time is served as ever.
    assert_eq!(host.http_get("/healthz").0, 200);
}

/// A host with `places` for requests and a bot `slow` that never answers a
/// message saying "stall" (its turn ends at the idle deadline, `idle`) and
/// streams others at `token_delay`; alice and wendy each with a
/// conversation with it: (host, alice, hers, wendy, hers).
fn busy_host(
    places: usize,
    idle: &str,
    token_delay: &str,
) -> (TestHost, ApiUser, i64, ApiUser, i64) {
    let supervisor = FAST_SUPERVISOR
        .replace(
            "[server]\n",
            &format!("[server]\nmax_requests_in_flight = {places}\n"),
        )
        .replace(
            "stop_grace = \"1s\"",
            &format!("stop_grace = \"1s\"\nturn_idle_timeout = \"{idle}\""),
        );
    let bots = format!(
        "[[bots]]\nname = \"slow\"\n[bots.builtin]\ntoken_delay = \"{token_delay}\"\n\
         hang_on = \"stall\"\n"
    );
    let host = TestHost::start_with_config(&format!(
        "{supervisor}\n[auth]\njwt_secret = \"{SECRET}\"\n{bots}"
    ));
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("slow");
    let wendy = register(&host.url, "wendy");
    let ws_conv = wendy.conversation("slow");
    (host, alice, conv, wendy, ws_conv)
}

#[test]
fn a_busy_host_answers_503_with_retry_after_at_once_and_keeps_serving_health() {
    let (host, alice, conv, wendy, ws_conv) = busy_host(1, "5s", "100ms");
    let rt = runtime();
    let mut ws = rt.block_on(wendy.ws());
    // A turn in the worker: it has passed admission. Asked before, a
    // request of ours could take the one place and refuse the turn.
    let in_the_worker = || {
        host.wait_for("the turn in the worker", Duration::from_secs(10), || {
            (host.bot("slow").in_flight > 0).then_some(())
        })
    };
    let post = |client_msg_id: &str, content: &str| {
        alice.post(
            &format!("/api/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": client_msg_id, "content": content}),
        )
    };
    std::thread::scope(|s| {
        // A turn whose reply has not started holds its place (until the
        // idle deadline ends it).
        let stalled = s.spawn(|| post("stalled", "please stall"));
        in_the_worker();
        let refused = host.wait_for(
            "a refusal while the turn waits for its reply",
            Duration::from_secs(10),
            || {
                let res = alice.get("/api/v1/bots");
                (res.status() == 503).then_some(res)
            },
        );
        assert!(
            !stalled.is_finished(),
            "refused while the host was busy, not after"
        );
        assert_eq!(
            refused
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        assert_eq!(error_code(refused), (503, "overloaded".into()));
        // A WebSocket opened before: its turn waits its turn too.
        let frame = rt.block_on(async {
            ws.chat(ws_conv, "w1", "hi").await;
            ws.next().await
        });
        assert_eq!(
            (frame["code"].as_str(), frame["retry_after"].as_u64()),
            (Some("overloaded"), Some(1)),
            "{frame}"
        );
        // What an operator and a load balancer need is never refused.
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(host.http_get(path).0, 200, "{path}");
        }
        let stalled = stalled.join().expect("stalled turn");
        assert_eq!(error_code(stalled), (504, "engine_timeout".into()));
    });
    std::thread::scope(|s| {
        // A reply that has started leaves admission while it streams (some
        // thirty tokens 100 ms apart): the host takes other work meanwhile.
        let streaming = s.spawn(|| post("long", "tell me a long story"));
        in_the_worker();
        host.wait_for(
            "a request served while the reply streams",
            Duration::from_secs(10),
            || (alice.get("/api/v1/bots").status() == 200).then_some(()),
        );
        assert!(
            !streaming.is_finished(),
            "served while the reply streamed, not after"
        );
        let res = streaming.join().expect("streaming turn");
        assert_eq!(res.status(), 200, "the admitted turn was served");
    });
    // A refused request did nothing: sent again, it is served.
    assert_eq!(alice.get("/api/v1/bots").status(), 200);
    assert!(
        host.metric(r#"bothost_http_requests_total{route="/api/v1/bots",status="503"}"#)
            .is_some_and(|n| n >= 1.0),
        "refusals are counted"
    );
}

/// While it refuses, a busy host lets in first the requests tried most
/// often: the page counts its tries in `Bothost-Attempt`, and a WebSocket
/// starts at its upgrade's try and counts the turns it had refused in a
/// row. With four places, three held: a first try finds half of them
/// (refused), a second three quarters (refused), a third all four
/// (served).
#[test]
fn a_busy_host_lets_in_first_the_requests_tried_most_often() {
    let (host, alice, conv, wendy, ws_conv) = busy_host(4, "10s", "0s");
    let rt = runtime();
    let mut ws = rt.block_on(wendy.ws());
    let turns_in_the_worker = |n: i64| {
        host.wait_for("the turns in the worker", Duration::from_secs(10), || {
            (host.bot("slow").in_flight >= n).then_some(())
        })
    };
    let bots_on_try = |attempt: u32| {
        alice
            .client
            .get(format!("{}/api/v1/bots", host.url))
            .bearer_auth(&alice.token)
            .header("Bothost-Attempt", attempt)
            .send()
            .expect("GET")
            .status()
            .as_u16()
    };
    std::thread::scope(|s| {
        // Three places held by turns that wait for a reply (until the idle
        // deadline ends them), a fourth by one of the WebSocket's.
        let stalled: Vec<_> = (0..3)
            .map(|i| {
                let alice = &alice;
                s.spawn(move || {
                    alice.post(
                        &format!("/api/v1/conversations/{conv}/messages"),
                        json!({"client_msg_id": format!("stalled-{i}"), "content": "please stall"}),
                    )
                })
            })
            .collect();
        turns_in_the_worker(3);
        rt.block_on(ws.chat(ws_conv, "w-stall", "please stall too"));
        turns_in_the_worker(4);
        assert_eq!(alice.get("/api/v1/bots").status(), 503, "all four taken");
        // The WebSocket's turn stopped: one place free, and the host still
        // refusing (each refusal here keeps it so).
        rt.block_on(ws.send_json(json!({"type": "cancel", "client_msg_id": "w-stall"})));
        host.wait_for(
            "a third try served with a place free",
            Duration::from_secs(10),
            || (bots_on_try(3) == 200).then_some(()),
        );
        assert_eq!(
            error_code(alice.get("/api/v1/bots")),
            (503, "overloaded".into()),
            "a first try (no header): half the places"
        );
        assert_eq!(bots_on_try(2), 503, "a second: three of four");
        assert_eq!(bots_on_try(3), 200, "a third: all four");
        // A socket that took three tries to open: its first message goes
        // in with them (as the client's last step, after its wait).
        let mut patient = rt.block_on(wendy.ws_on_try(3));
        let first = rt.block_on(async {
            patient.chat(ws_conv, "p1", "after a wait").await;
            patient.next().await
        });
        assert_eq!(first["type"], "ack", "{first}");
        // Its reply streams at once, and gives its place back as it starts;
        // read to its end, so the place is surely free for what follows.
        rt.block_on(async { while patient.next().await["type"] != "done" {} });
        // The WebSocket counts for itself: a message refused twice gets in
        // when sent the third time, while a first try is still refused.
        let mut sent = Vec::new();
        for _ in 0..3 {
            let frame = rt.block_on(async {
                ws.chat(ws_conv, "w2", "hello again").await;
                loop {
                    let f = ws.next().await;
                    if f["client_msg_id"] == "w2" {
                        break f;
                    }
                }
            });
            sent.push(
                frame["code"]
                    .as_str()
                    .unwrap_or(frame["type"].as_str().unwrap_or(""))
                    .to_owned(),
            );
        }
        assert_eq!(sent, ["overloaded", "overloaded", "ack"]);
        assert_eq!(alice.get("/api/v1/bots").status(), 503);
        for turn in stalled {
            let res = turn.join().expect("stalled turn");
            assert_eq!(error_code(res), (504, "engine_timeout".into()));
        }
    });
}

#[test]
fn closed_registration_admin_users_and_the_admin_api() {
    let host = TestHost::start_with_config(&format!(
        "{FAST_SUPERVISOR}\n[auth]\njwt_secret = \"{SECRET}\"\nopen_registration = false\n{}",
        bots(&["fast"])
    ));
    let res = client()
        .post(format!("{}/api/v1/auth/register", host.url))
        .json(&json!({"username": "mallory", "password": "whatever123"}))
        .send()
        .unwrap();
    assert_eq!(error_code(res), (403, "registration_closed".into()));

    host.add_user("root", true);
    host.add_user("carol", false);
    let login = |name: &str| -> String {
        let v: Value = client()
            .post(format!("{}/api/v1/auth/login", host.url))
            .json(&json!({"username": name, "password": "correct horse battery"}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["token"].as_str().expect("token").to_owned()
    };
    let admin = ApiUser {
        base: host.url.clone(),
        token: login("root"),
        client: client(),
    };
    let carol = ApiUser {
        base: host.url.clone(),
        token: login("carol"),
        client: client(),
    };
    assert_eq!(
        error_code(carol.get("/api/v1/admin/bots")),
        (403, "forbidden".into())
    );

    let report: Value = admin.get("/api/v1/admin/bots").json().unwrap();
    let bot = &report["bots"][0];
    for field in [
        "pid",
        "rss_bytes",
        "budget_bytes",
        "uptime_seconds",
        "restarts",
        "in_flight",
    ] {
        assert!(bot.get(field).is_some(), "{field} in {bot}");
    }
    let res: Value = admin
        .post("/api/v1/admin/bots/fast/restart", json!({}))
        .json()
        .unwrap();
    assert_eq!(res["restarted"]["to"], 2, "{res}");
    assert_eq!(
        error_code(admin.post("/api/v1/admin/bots/nobody/restart", json!({}))),
        (404, "unknown_bot".into())
    );
    let res: Value = admin
        .post("/api/v1/admin/restart?rolling=true", json!({}))
        .json()
        .unwrap();
    assert_eq!(
        (res["failed"].as_u64(), res["results"][0]["bot"].as_str()),
        (Some(0), Some("fast"))
    );
    assert_eq!(host.bot("fast").generation, 3);
}

#[test]
fn metrics_count_requests_websockets_and_chat_outcomes() {
    let host = web_host("");
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("fast");
    runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.chat(conv, "m1", "count me").await;
        ws.turn().await;
        assert_eq!(host.metric("bothost_ws_connections"), Some(1.0));
    });
    host.wait_for(
        "the closed socket to be counted out",
        Duration::from_secs(5),
        || (host.metric("bothost_ws_connections") == Some(0.0)).then_some(()),
    );
    assert_eq!(
        host.metric("bothost_chat_messages_total{outcome=\"complete\"}"),
        Some(1.0)
    );
    assert_eq!(
        host.metric("bothost_chat_first_token_seconds_count"),
        Some(1.0)
    );
    assert_eq!(host.metric("bothost_chat_reply_seconds_count"), Some(1.0));
    assert_eq!(
        host.metric("bothost_http_requests_total{route=\"/api/v1/auth/register\",status=\"201\"}"),
        Some(1.0)
    );
    assert!(host
        .metric("bothost_http_request_duration_seconds_count{route=\"/api/v1/conversations\"}")
        .is_some());
}

#[test]
fn the_page_and_its_assets_are_served_from_the_binary() {
    let host = web_host("");
    let c = client();
    let page = c.get(format!("{}/", host.url)).send().unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        csp.contains("connect-src 'self';"),
        "connections to this host only: {csp}"
    );
    assert!(
        page.headers().get("strict-transport-security").is_none(),
        "no HSTS over plain HTTP"
    );
    assert!(page.text().unwrap().contains("/static/app.js"));
    let js = c.get(format!("{}/static/app.js", host.url)).send().unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript");
    let body = js.text().unwrap();
    assert!(
        body.contains("textContent") && !body.contains("innerHTML"),
        "text only, never HTML"
    );
    let doc: Value = c
        .get(format!("{}/api/v1/openapi.json", host.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
}

#[test]
fn https_with_a_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let host = TestHost::start_with_config(&format!(
        "{}\n{}",
        FAST_SUPERVISOR.replace(
            "bind = \"127.0.0.1:0\"",
            &format!(
                "bind = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}",
                cert_path.display(),
                key_path.display()
            )
        ),
        bots(&["fast"])
    ));
    assert!(host.url.starts_with("https://"), "{}", host.url);
    let port = host.url.rsplit(':').next().unwrap();
    let c = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let res = c
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000",
        "browsers come back over HTTPS only"
    );
    assert!(
        client()
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .is_err(),
        "no plain HTTP"
    );
}

/// What the OpenAPI document promises about edges: a known path with a
/// method it does not serve is 405 with `Allow`; a page size out of range
/// is 400; unknown fields are refused; a plain GET of the WebSocket is told
/// to upgrade. (Schemathesis checks the whole document in
/// tests/openapi_contract.rs.)
#[test]
fn the_edges_the_openapi_document_promises() {
    let host = web_host("");
    let alice = register(&host.url, "alice");
    let c = client();
    let trace = c
        .request(
            reqwest::Method::TRACE,
            format!("{}/api/v1/conversations", host.url),
        )
        .bearer_auth(&alice.token)
        .send()
        .unwrap();
    assert_eq!(trace.status(), 405);
    assert_eq!(trace.headers()["allow"], "POST, GET");
    let body: Value = trace.json().unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");

    for limit in ["0", "101"] {
        let res = alice.get(&format!("/api/v1/conversations?limit={limit}"));
        assert_eq!(res.status(), 400, "limit={limit}");
    }
    assert_eq!(alice.get("/api/v1/conversations?limit=100").status(), 200);

    let extra = alice.post(
        "/api/v1/conversations",
        serde_json::json!({"bot": "fast", "colour": "blue"}),
    );
    assert_eq!(extra.status(), 400);

    let plain = alice.get("/api/v1/ws");
    assert_eq!(plain.status(), 426);
    assert_eq!(plain.headers()["upgrade"], "websocket");
    let body: Value = plain.json().unwrap();
    assert_eq!(body["error"]["code"], "not_websocket");

    // The served document names this host's bots.
    let doc: Value = alice.get("/api/v1/openapi.json").json().unwrap();
    assert_eq!(
        doc["paths"]["/api/v1/conversations"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["properties"]["bot"]["enum"],
        serde_json::json!(["fast", "slow"])
    );
}

/// A rolling restart started through the admin API runs to the end even
/// when the client that asked goes away half-way.
#[test]
fn a_rolling_restart_outlives_the_request_that_started_it() {
    // Workers that take a second to start: the rolling restart of three
    // bots takes three.
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("slow-worker");
    let real = std::path::Path::new(BOTHOST).with_file_name("bot-worker");
    std::fs::write(
        &slow,
        format!("#!/bin/sh\nsleep 1\nexec {} \"$@\"\n", real.display()),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let names = ["one", "two", "three"];
    let toml: String = names
        .iter()
        .map(|n| {
            format!(
                "[[bots]]\nname = \"{n}\"\nworker_binary = \"{}\"\n",
                slow.display()
            )
        })
        .collect();
    let host = TestHost::start_with_config(&format!(
        "{FAST_SUPERVISOR}\n[auth]\njwt_secret = \"{SECRET}\"\n{toml}"
    ));
    host.add_user("root", true);
    let token: Value = client()
        .post(format!("{}/api/v1/auth/login", host.url))
        .json(&json!({"username": "root", "password": "correct horse battery"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("{}/api/v1/admin/restart?rolling=true", host.url))
        .bearer_auth(token["token"].as_str().unwrap())
        .send();
    assert!(gave_up.is_err(), "the client gives up before the end");
    host.wait_for("every bot handed over", Duration::from_secs(20), || {
        let status = host.status();
        status
            .bots
            .iter()
            .all(|b| b.generation == 2 && b.state == bothost::status::BotState::Ready)
            .then_some(())
    });
}

/// NUL characters (which PostgreSQL cannot store) are refused with the same
/// 400 on both backends, a login with one is a plain 401, and nothing of a
/// database's own error text reaches the user or the log as an error.
#[test]
fn nul_characters_are_refused_alike_on_both_backends() {
    let mut urls = vec![None];
    let pg = bothost_testkit::test_database_url().map(|base| {
        runtime()
            .block_on(bothost_testkit::PgSchema::create(&base, "nul"))
            .unwrap()
    });
    urls.extend(pg.as_ref().map(|s| Some(s.url.clone())));
    for url in urls {
        let extra = url.map_or(String::new(), |u| format!("[database]\nurl = \"{u}\"\n"));
        let host = web_host(&extra);
        let alice = register(&host.url, "alice");
        let conv = alice.conversation("fast");
        for body in [
            json!({"client_msg_id": "a", "content": "hi\u{0}there"}),
            json!({"client_msg_id": "a\u{0}b", "content": "hi"}),
        ] {
            let res = alice.post(&format!("/api/v1/conversations/{conv}/messages"), body);
            assert_eq!(error_code(res), (400, "invalid_text".into()));
        }
        let res = alice.post(
            "/api/v1/conversations",
            json!({"bot": "fast", "title": "a\u{0}"}),
        );
        assert_eq!(error_code(res), (400, "invalid_text".into()));
        let res = common::web::client()
            .post(format!("{}/api/v1/auth/login", host.url))
            .json(&json!({"username": "al\u{0}ice", "password": "correct horse battery"}))
            .send()
            .unwrap();
        assert_eq!(error_code(res), (401, "invalid_credentials".into()));
        assert_eq!(alice.history(conv).len(), 0, "nothing stored");
        let log = host.log();
        assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
    }
    if let Some(schema) = pg {
        runtime().block_on(schema.drop_schema()).unwrap();
    }
}

/// A token in a URL ends up in logs and browser histories: `?token=` is
/// taken on the WebSocket only, where a browser cannot set a header.
#[test]
fn a_token_in_the_query_is_taken_on_the_websocket_only() {
    let host = web_host("");
    let alice = register(&host.url, "alice");
    let res = client()
        .get(format!("{}/api/v1/bots?token={}", host.url, alice.token))
        .send()
        .unwrap();
    assert_eq!(error_code(res), (401, "unauthorized".into()));
    runtime().block_on(async {
        let mut ws = alice.ws().await;
        let conv = off_runtime(|| alice.conversation("fast"));
        ws.chat(conv, "q1", "hello over the query token").await;
        assert_eq!(ws.next().await["type"], "ack");
    });
}

#[test]
fn an_engine_panic_fails_only_its_turn_and_a_silent_turn_ends_at_the_idle_deadline() {
    let supervisor = FAST_SUPERVISOR.replace(
        "stop_grace = \"1s\"",
        "stop_grace = \"1s\"\nturn_idle_timeout = \"2s\"",
    );
    let host = TestHost::start_with_config(&format!(
        "{supervisor}\n[auth]\njwt_secret = \"{SECRET}\"\n\
         [[bots]]\nname = \"buggy\"\n[bots.builtin]\ntoken_delay = \"0s\"\n\
         panic_on = \"boom\"\nhang_on = \"stall\"\n"
    ));
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("buggy");
    let pid = host.bot("buggy").pid;
    runtime().block_on(async {
        let mut ws = alice.ws().await;
        // The worker reports the panic as its turn's failure, at once
        // (the host's 2 s idle deadline would say engine_timeout).
        ws.chat(conv, "p1", "boom goes the engine").await;
        assert_eq!(ws.next().await["type"], "ack");
        let f = ws.next().await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("engine_failed")),
            "{f}"
        );
        // The same worker answers the next message.
        ws.chat(conv, "p2", "hello again").await;
        let (_, text, done) = ws.turn().await;
        assert_eq!(done["status"], "complete", "{done}");
        assert!(text.contains("hello again"), "{text}");

        // A turn that never says anything is ended by the host.
        let asked = std::time::Instant::now();
        ws.chat(conv, "h1", "please stall for ever").await;
        assert_eq!(ws.next().await["type"], "ack");
        let f = ws.next().await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("engine_timeout")),
            "{f}"
        );
        assert!(
            asked.elapsed() >= Duration::from_secs(2),
            "not before the deadline"
        );
    });
    // The worker was told to stop the hung turn: nothing is left in flight,
    // and it was neither restarted nor killed for it.
    host.wait_for("the hung turn cancelled", Duration::from_secs(10), || {
        (host.bot("buggy").in_flight == 0).then_some(())
    });
    assert_eq!(host.bot("buggy").pid, pid, "{}", host.log());
    let history = alice.history(conv);
    let statuses: Vec<_> = history
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("assistant", "failed"),
            ("user", "complete"),
            ("assistant", "complete"),
            ("user", "complete"),
            ("assistant", "failed"),
            ("user", "complete"),
        ]
    );
    // A resend of either answers with what was stored, not a new turn.
    let res = alice.post(
        &format!("/api/v1/conversations/{conv}/messages"),
        json!({"client_msg_id": "p1", "content": "boom goes the engine"}),
    );
    let body: Value = res.json().unwrap();
    assert_eq!(body["reply"]["status"], "failed", "{body}");
}

#[test]
fn websockets_per_user_and_conversations_per_user_are_limited() {
    let host = web_host(
        "[limits]\nwebsockets_per_user = 2\nconversations_per_minute_per_user = 3\n\
         max_conversations_per_user = 2\n",
    );
    let alice = register(&host.url, "alice");
    let bob = register(&host.url, "bob");
    alice.conversation("fast");
    alice.conversation("fast");
    assert_eq!(
        error_code(alice.post("/api/v1/conversations", json!({"bot": "fast"}))),
        (409, "too_many_conversations".into())
    );
    bob.conversation("fast");

    runtime().block_on(async {
        let first = alice.ws().await;
        let _second = alice.ws().await;
        let url = format!(
            "{}/api/v1/ws?token={}",
            host.url.replacen("http", "ws", 1),
            alice.token
        );
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status().as_u16(), 429);
                assert!(res.headers().contains_key("retry-after"));
            }
            other => panic!("a third WebSocket was not refused: {:?}", other.map(|_| ())),
        }
        // Another user is not affected.
        let _bob = bob.ws().await;
        // Closing one gives its place back.
        drop(first);
        eventually_async(
            "a freed WebSocket place",
            Duration::from_secs(10),
            || async { tokio_tungstenite::connect_async(&url).await.ok().map(drop) },
        )
        .await
        .unwrap();
    });
}
