//! What a hostile probe tried and found sound, kept sound: forged tokens,
//! chunked and non-UTF-8 bodies, paths out of the static directory, cross-
//! origin preflights, binary and fragmented WebSocket frames, a client
//! that never reads, and another user of the machine on the control socket.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::web::{client, error_code, register};
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "tests-sign-with-this-32-byte-key!";

fn host(extra: &str) -> TestHost {
    TestHost::start_with_config(&format!(
        "{FAST_SUPERVISOR}\n[auth]\njwt_secret = \"{SECRET}\"\n{extra}\n\
         [[bots]]\nname = \"fast\"\n[bots.builtin]\ntoken_delay = \"0s\"\n\
         [[bots]]\nname = \"chatty\"\n[bots.builtin]\ntoken_delay = \"0s\"\nmax_tokens = 0\n"
    ))
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn unsigned_tampered_and_other_algorithm_tokens_are_refused() {
    let host = host("");
    let alice = register(&host.url, "alice");
    let get = |token: &str| {
        error_code(
            client()
                .get(format!("{}/api/v1/bots", host.url))
                .bearer_auth(token)
                .send()
                .unwrap(),
        )
    };
    assert_eq!(get(&alice.token), (200, String::new()));

    let parts: Vec<&str> = alice.token.split('.').collect();
    let claims: Value = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    // alg "none", no signature.
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    assert_eq!(get(&none), (401, "unauthorized".into()));
    // Another user's id under alice's signature.
    let mut forged = claims.clone();
    forged["sub"] = json!(claims["sub"].as_i64().unwrap() + 1);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(get(&tampered), (401, "unauthorized".into()));
    // The right secret, another algorithm.
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(get(&hs512), (401, "unauthorized".into()));
}

#[test]
fn chunked_and_non_utf8_bodies_are_read_within_the_limit() {
    let host = host("[limits]\nmax_body = \"4KB\"\n");
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("fast");
    let path = format!("/api/v1/conversations/{conv}/messages");
    let post = |body: reqwest::blocking::Body| alice.post_raw(&path, body);
    // No Content-Length: reqwest sends a reader's body chunked.
    let chunked = |bytes: Vec<u8>| reqwest::blocking::Body::new(std::io::Cursor::new(bytes));
    let res = post(chunked(
        br#"{"client_msg_id":"c1","content":"sent in chunks"}"#.to_vec(),
    ));
    assert_eq!(res.status(), 200);
    let big = format!(
        "{{\"client_msg_id\":\"c2\",\"content\":\"{}\"}}",
        "x".repeat(64 * 1024)
    );
    assert_eq!(
        error_code(post(chunked(big.into_bytes()))),
        (413, "too_large".into())
    );
    let bad = b"{\"client_msg_id\":\"c3\",\"content\":\"\xff\xfe\"}".to_vec();
    assert_eq!(error_code(post(chunked(bad))), (400, "invalid_json".into()));
    let history = alice.history(conv);
    assert_eq!(history.len(), 2, "only the valid message and its reply");
}

#[test]
fn paths_out_of_the_static_directory_find_nothing() {
    let host = host("");
    // Raw requests: an HTTP client would normalise the dots away.
    let addr = host.url.trim_start_matches("http://").to_owned();
    for path in [
        "/static/../Cargo.toml",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
        "/static/....//....//etc/passwd",
        "/static//etc/passwd",
        "/static/%00app.js",
    ] {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let status = answer.split_whitespace().nth(1).unwrap_or("");
        assert!(
            status == "404" || status == "400",
            "{path}: {}",
            answer.lines().next().unwrap_or("")
        );
        assert!(
            !answer.contains("root:") && !answer.contains("[package]"),
            "{path} leaked a file"
        );
    }
}

#[test]
fn a_cross_origin_preflight_is_not_granted() {
    let host = host("");
    let res = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/conversations", host.url),
        )
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .unwrap();
    assert!(!res.status().is_success(), "{}", res.status());
    for header in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-headers",
    ] {
        assert!(res.headers().get(header).is_none(), "{header} granted");
    }
}

#[test]
fn binary_and_fragmented_websocket_messages() {
    let host = host("[limits]\nmax_ws_frame = \"8KB\"\n");
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("fast");
    runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.stream
            .send(Message::binary(vec![1u8, 2, 3]))
            .await
            .unwrap();
        let f = ws.next().await;
        assert_eq!((f["type"].as_str(), f["code"].as_str()), (Some("error"), Some("invalid_json")), "{f}");

        // One chat message in three fragments is one message.
        let text = json!({"type": "send", "conversation_id": conv, "client_msg_id": "frag", "content": "in pieces"}).to_string();
        let (a, rest) = text.split_at(10);
        let (b, c) = rest.split_at(10);
        for (part, opcode, last) in [
            (a, OpCode::Data(Data::Text), false),
            (b, OpCode::Data(Data::Continue), false),
            (c, OpCode::Data(Data::Continue), true),
        ] {
            let frame = Frame::message(part.as_bytes().to_vec(), opcode, last);
            ws.stream.send(Message::Frame(frame)).await.unwrap();
        }
        let (ack, reply, done) = ws.turn().await;
        assert_eq!(ack["client_msg_id"], "frag", "{ack}");
        assert!(reply.contains("in pieces"), "{reply}");
        assert_eq!(done["status"], "complete");

        // Fragments adding up to more than the limit are refused whole.
        let piece = "x".repeat(6 * 1024);
        for (opcode, last) in [(OpCode::Data(Data::Text), false), (OpCode::Data(Data::Continue), true)] {
            let frame = Frame::message(piece.clone().into_bytes(), opcode, last);
            ws.stream.send(Message::Frame(frame)).await.unwrap();
        }
        assert_eq!(ws.next().await["code"], "too_large");
        ws.chat(conv, "after", "still there?").await;
        let (_, _, done) = ws.turn().await;
        assert_eq!(done["status"], "complete", "the connection carries on");
    });
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A client that keeps sending and never reads what it is sent (so never
/// answers a ping) is dropped after `ws_timeout`: what it was sent cannot
/// pile up in the host, and nobody else waits on it meanwhile.
#[test]
fn a_websocket_client_that_never_reads_is_dropped_and_slows_nobody() {
    let host = TestHost::start_with_config(
        &format!(
            "{FAST_SUPERVISOR}\n[server]\nws_heartbeat = \"200ms\"\nws_timeout = \"1s\"\n\
         [auth]\njwt_secret = \"{SECRET}\"\n\
         [limits]\nmax_in_flight_per_user = 64\nmessages_per_minute_per_user = 100000\n\
         [[bots]]\nname = \"fast\"\n[bots.builtin]\ntoken_delay = \"0s\"\n"
        )
        .replace("[server]\nbind = \"127.0.0.1:0\"\n", "")
        .replace(
            "[server]\nws_heartbeat",
            "[server]\nbind = \"127.0.0.1:0\"\nws_heartbeat",
        ),
    );
    let mallory = register(&host.url, "mallory");
    let alice = register(&host.url, "alice");
    let conv = mallory.conversation("fast");
    let alice_conv = alice.conversation("fast");
    let open = || host.metric("bothost_ws_connections").unwrap_or(-1.0) as i64;
    let before = rss_kb(host.pid());
    runtime().block_on(async {
        let mut ws = mallory.ws().await;
        let mut other = alice.ws().await;
        // Mallory sends for three times the timeout and reads nothing.
        let started = std::time::Instant::now();
        let (mut i, mut cut) = (0, false);
        while started.elapsed() < Duration::from_secs(3) {
            if ws.stream.send(Message::text(json!({"type": "send", "conversation_id": conv, "client_msg_id": format!("m{i}"), "content": "give me everything"}).to_string())).await.is_err() {
                cut = true;
                break;
            }
            i += 1;
            // Alice, who reads, is answered all along.
            if i % 50 == 0 {
                other.chat(alice_conv, &format!("a{i}"), "hello").await;
                let (_, _, done) = tokio::time::timeout(Duration::from_secs(10), other.turn())
                    .await
                    .expect("alice answered while mallory does not read");
                assert_eq!(done["status"], "complete");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(i > 20, "{i} messages sent");
        assert!(cut, "still connected after 3 s of sending without reading");
        host.wait_for("mallory's connection dropped", Duration::from_secs(10), || {
            (open() == 1).then_some(())
        });
        other.chat(alice_conv, "last", "still there?").await;
        let (_, _, done) = other.turn().await;
        assert_eq!(done["status"], "complete", "alice's connection stays");
    });
    let grown_mb = rss_kb(host.pid()).saturating_sub(before) / 1024;
    assert!(grown_mb < 64, "the host grew {grown_mb} MB");
}

/// The control socket (restart, status, chat as anyone) is the host's
/// owner's alone: 0600 in a 0700 directory, and another user of the
/// machine cannot connect.
#[test]
fn another_user_of_the_machine_cannot_use_the_control_socket() {
    let host = host("");
    let socket = host.control_socket();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    if !nix::unistd::Uid::effective().is_root() {
        return; // Only root can act as another user here.
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1])\nexcept PermissionError:\n sys.exit(3)\nsys.exit(0)",
        ])
        .arg(&socket)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("python3 as nobody");
    assert_eq!(
        out.status.code(),
        Some(3),
        "nobody connected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
