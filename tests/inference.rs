//! Real inference: real `bot-worker`s calling `fake-ollama` (the one
//! stand-in) over HTTP, in Ollama's NDJSON format and the OpenAI-compatible
//! SSE format: streaming, every error mapping, mid-stream errors, streams
//! cut short, timeouts, failover and the return to the primary, a
//! supervised model server killed and restarted, and a bot degraded while
//! every server is down and back without a restart of bothost.

mod common;

use std::time::{Duration, Instant};

use bothost::control::ControlResponse;
use bothost::status::BotState;
use common::fake::{fake_binary, free_port, FakeServer};
use common::web::register;
use common::*;
use serde_json::{json, Value};

/// Health checks and timeouts fast enough for tests; a cooldown long
/// enough that only a health check can bring an endpoint back.
fn endpoint(name: &str, kind: &str, url: &str, extra: &str) -> String {
    format!(
        "[[inference]]\nname = \"{name}\"\nkind = \"{kind}\"\nurl = \"{url}\"\n\
         health_interval = \"300ms\"\nhealth_interval_down = \"100ms\"\nhealth_timeout = \"500ms\"\n\
         connect_timeout = \"500ms\"\nfirst_token_timeout = \"1s\"\ntoken_gap_timeout = \"500ms\"\n\
         cooldown = \"60s\"\n{extra}\n"
    )
}

fn host(endpoints: &str, bots: &str) -> TestHost {
    TestHost::start_with_config(&format!("{FAST_SUPERVISOR}\n{endpoints}\n{bots}"))
}

const LLAMA: &str = "[[bots]]\nname = \"llama\"\nengine = \"ollama\"\nmodel = \"llama3.2\"\n";

/// `bothost chat BOT TEXT` that fails: its error line.
fn chat_error(host: &TestHost, bot: &str, text: &str) -> String {
    let (ok, out, err) = host.chat(bot, text);
    assert!(!ok, "expected a failure, got {out}");
    err
}

fn answered_by(host: &TestHost, bot: &str, text: &str) -> String {
    let (ok, out, err) = host.chat(bot, text);
    assert!(ok, "chat failed: {err}\nhost log:\n{}", host.log());
    assert!(out.contains(&format!("You said: {text}.")), "{out}");
    out.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_owned()
}

#[test]
fn an_ollama_bot_streams_its_reply_with_its_prompt_options_and_history() {
    let fake = FakeServer::start("primary", &["--token-delay-ms", "5"]);
    let bots = format!(
        "{LLAMA}system_prompt = \"Answer briefly.\"\ntemperature = 0.3\nnum_ctx = 4096\nkeep_alive = \"10m\"\n"
    );
    let host = host(&endpoint("primary", "ollama", &fake.url, ""), &bots);

    let deltas = runtime().block_on(async {
        let mut client = host.control_chat("llama", "how are you").await;
        let mut deltas = Vec::new();
        loop {
            match client.next().await.expect("frame") {
                ControlResponse::Delta { text } => deltas.push(text),
                ControlResponse::Done { usage } => {
                    assert_eq!(usage.completion_tokens as usize, deltas.len());
                    assert_eq!(usage.endpoint.as_deref(), Some("primary"));
                    break deltas;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    assert_eq!(
        deltas.concat(),
        "Hello from primary. You said: how are you."
    );
    assert!(deltas.len() > 3, "streamed token by token: {deltas:?}");
    let sent = fake.last_request();
    assert_eq!(sent["model"], "llama3.2");
    assert_eq!(sent["stream"], true);
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Answer briefly."})
    );
    assert_eq!(
        sent["messages"][1],
        json!({"role": "user", "content": "how are you"})
    );
    assert_eq!(
        sent["options"],
        json!({"temperature": 0.3, "num_ctx": 4096})
    );
    assert_eq!(sent["keep_alive"], "10m");

    // Through the web API the bot sees the conversation so far.
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("llama");
    for (i, text) in ["first question", "second question"].iter().enumerate() {
        let res = alice.post(
            &format!("/api/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": format!("m{i}"), "content": text}),
        );
        assert_eq!(res.status(), 200);
    }
    let sent = fake.last_request();
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(
        sent["messages"][2]["content"],
        "Hello from primary. You said: first question."
    );

    let primary = host.wait_for("the first health check", Duration::from_secs(3), || {
        let e = host.status().inference.remove(0);
        e.checked.then_some(e)
    });
    assert!(
        primary.up && primary.models.contains(&"llama3.2:latest".to_owned()),
        "{primary:?}"
    );
    assert_eq!(host.bot("llama").model_present, Some(true));
    assert_eq!(
        host.metric("bothost_inference_up{endpoint=\"primary\"}"),
        Some(1.0)
    );
}

#[test]
fn http_errors_from_the_model_server_each_get_a_specific_error() {
    let fake = FakeServer::start("primary", &[]);
    let bots =
        format!("{LLAMA}[[bots]]\nname = \"missing\"\nengine = \"ollama\"\nmodel = \"nope\"\n");
    let host = host(&endpoint("primary", "ollama", &fake.url, ""), &bots);

    // The start-up log already says which models are missing.
    let settled = |bot: &str| {
        host.log()
            .lines()
            .find(|l| l.contains("bot settled") && l.contains(&format!("\"bot\":\"{bot}\"")))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(
        settled("missing").contains("\"model_present\":false"),
        "{}",
        host.log()
    );
    assert!(
        settled("llama").contains("\"model_present\":true"),
        "{}",
        host.log()
    );

    let err = chat_error(&host, "missing", "hi");
    assert!(
        err.contains("model_not_found")
            && err.contains("nope")
            && err.contains("try pulling it first"),
        "{err}"
    );
    host.wait_for("the missing model reported", Duration::from_secs(5), || {
        (host.bot("missing").model_present == Some(false)).then_some(())
    });

    for (status, code, words) in [
        (400, "engine_failed", "refused the request"),
        (500, "engine_failed", "HTTP 500"),
        (503, "overloaded", "busy"),
    ] {
        fake.fault(json!({"mode": "status", "status": status, "message": "injected"}));
        let err = chat_error(&host, "llama", "hi");
        assert!(
            err.contains(code) && err.contains(words),
            "HTTP {status}: {err}"
        );
    }
    fake.fault(json!({"mode": "none"}));
    assert_eq!(answered_by(&host, "llama", "better now"), "primary");
}

#[test]
fn a_failure_mid_reply_ends_the_turn_and_keeps_what_was_shown() {
    let fake = FakeServer::start("primary", &[]);
    let host = host(&endpoint("primary", "ollama", &fake.url, ""), LLAMA);
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("llama");
    let cases = [
        (
            json!({"mode": "error_after", "tokens": 2, "message": "llama runner process has terminated"}),
            "llama runner process has terminated",
        ),
        (
            json!({"mode": "cut_after", "tokens": 2}),
            "before it was complete",
        ),
        (
            json!({"mode": "hang_after", "tokens": 2}),
            "no next token within 500 ms",
        ),
    ];
    for (i, (fault, words)) in cases.into_iter().enumerate() {
        fake.fault(fault);
        let res = alice.post(
            &format!("/api/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": format!("c{i}"), "content": "tell me"}),
        );
        let status = res.status().as_u16();
        let body: Value = res.json().unwrap();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(status >= 500 && message.contains(words), "{status} {body}");
        let history = alice.history(conv);
        let reply = &history[0];
        assert_eq!(
            (reply["status"].as_str(), reply["content"].as_str()),
            (Some("partial"), Some("Hello from ")),
            "the two tokens shown are stored, once: {history:?}"
        );
    }
}

#[test]
fn a_server_that_never_answers_times_out() {
    let fake = FakeServer::start("primary", &[]);
    let host = host(&endpoint("primary", "ollama", &fake.url, ""), LLAMA);
    fake.fault(json!({"mode": "hang"}));
    let started = Instant::now();
    let err = chat_error(&host, "llama", "hello?");
    assert!(
        err.contains("engine_timeout") && err.contains("no answer within 1000 ms"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Two fake servers, a host whose bot uses them in that order, and a first
/// turn answered by the primary.
fn primary_and_secondary() -> (FakeServer, FakeServer, TestHost) {
    let primary = FakeServer::start("primary", &[]);
    let secondary = FakeServer::start("secondary", &[]);
    let endpoints = format!(
        "{}{}",
        endpoint("primary", "ollama", &primary.url, ""),
        endpoint("secondary", "ollama", &secondary.url, "")
    );
    let host = host(&endpoints, LLAMA);
    assert_eq!(answered_by(&host, "llama", "one"), "primary");
    (primary, secondary, host)
}

#[test]
fn a_dead_primary_fails_over_to_the_secondary_at_once() {
    let (mut primary, _secondary, host) = primary_and_secondary();

    primary.kill();
    let started = Instant::now();
    assert_eq!(answered_by(&host, "llama", "two"), "secondary");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        host.metric("bothost_inference_failovers_total{from=\"primary\",to=\"secondary\"}"),
        Some(1.0)
    );
    // The failed turn asked for a health check: the host knows at once,
    // long before the 300 ms interval would matter to a user.
    host.wait_for("primary reported down", Duration::from_secs(3), || {
        (!host.status().inference[0].up).then_some(())
    });
    assert_eq!(
        host.bot("llama").state,
        BotState::Ready,
        "one server left: not degraded"
    );
    assert_eq!(answered_by(&host, "llama", "three"), "secondary");
}

#[test]
fn a_failed_primary_cools_down_and_returns_when_its_health_check_passes() {
    let (primary, _secondary, host) = primary_and_secondary();

    primary.fault(json!({"mode": "unavailable"}));
    assert_eq!(answered_by(&host, "llama", "two"), "secondary");
    host.wait_for("primary down", Duration::from_secs(3), || {
        (!host.status().inference[0].up).then_some(())
    });
    let asked = primary.chat_requests();
    assert_eq!(answered_by(&host, "llama", "three"), "secondary");
    assert_eq!(
        primary.chat_requests(),
        asked,
        "a server known to be down is not asked"
    );

    primary.fault(json!({"mode": "none"}));
    host.wait_for("primary up again", Duration::from_secs(3), || {
        host.status().inference[0].up.then_some(())
    });
    // The cooldown is a minute; only the passing health check brings it back.
    host.wait_for("turns back on the primary", Duration::from_secs(3), || {
        (answered_by(&host, "llama", "four") == "primary").then_some(())
    });
}

#[test]
fn with_every_server_down_the_bot_is_degraded_and_recovers_without_a_restart() {
    let mut primary = FakeServer::start("primary", &[]);
    let host = host(&endpoint("primary", "ollama", &primary.url, ""), LLAMA);
    let pid = host.bot("llama").pid;
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("llama");
    let rt = runtime();
    let mut page = rt.block_on(alice.ws()); // what the web page listens on

    primary.kill();
    let started = Instant::now();
    let res = alice.post(
        &format!("/api/v1/conversations/{conv}/messages"),
        json!({"client_msg_id": "u1", "content": "are you there?"}),
    );
    assert!(started.elapsed() < Duration::from_secs(2), "told at once");
    let status = res.status().as_u16();
    let body: Value = res.json().unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("inference_unavailable")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("temporarily unavailable") && message.contains("Your message is saved"),
        "{message}"
    );
    assert!(
        !message.contains("http://"),
        "no server addresses for users: {message}"
    );
    // Nor in the log: a URL may carry a password.
    host.wait_for("the failure logged", Duration::from_secs(3), || {
        host.log()
            .contains("cannot connect to primary")
            .then_some(())
    });
    assert!(!host.log().contains(&primary.url), "{}", host.log());
    assert_eq!(
        alice.history(conv)[1]["content"],
        "are you there?",
        "the question is stored"
    );

    host.wait_for("llama degraded", Duration::from_secs(3), || {
        (host.bot("llama").state == BotState::Degraded).then_some(())
    });
    rt.block_on(page.bot_status("llama", "degraded"));
    assert_eq!(
        host.metric("bothost_worker_state{bot=\"llama\",state=\"degraded\"}"),
        Some(1.0)
    );
    assert_eq!(
        host.metric("bothost_inference_up{endpoint=\"primary\"}"),
        Some(0.0)
    );
    let (code, readyz) = host.http_get("/readyz");
    assert_eq!(code, 503, "{readyz}");
    let bots: Value = alice.get("/api/v1/bots").json().unwrap();
    assert_eq!(bots[0]["status"], "degraded", "{bots}");
    let err = chat_error(&host, "llama", "still there?");
    assert!(err.contains("inference_unavailable"), "{err}");

    primary.restart();
    host.wait_for("llama ready again", Duration::from_secs(3), || {
        (host.bot("llama").state == BotState::Ready).then_some(())
    });
    rt.block_on(page.bot_status("llama", "ready"));
    assert_eq!(answered_by(&host, "llama", "back"), "primary");
    assert_eq!(host.bot("llama").pid, pid, "the worker was never restarted");
    assert_eq!(host.http_get("/readyz").0, 200);
}

#[test]
fn a_supervised_model_server_is_restarted_when_it_dies() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let command = format!(
        "command = [\"{}\", \"--port\", \"{port}\", \"--name\", \"supervised\"]\nstart_timeout = \"5s\"\nrestart_after_failed_checks = 2\n",
        fake_binary().display()
    );
    let host = host(&endpoint("local", "ollama", &url, &command), LLAMA);
    let first = host.wait_for("the supervised server up", Duration::from_secs(10), || {
        let e = host.status().inference.remove(0);
        (e.up && e.checked).then_some(e.pid?)
    });
    assert_eq!(answered_by(&host, "llama", "hello"), "supervised");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the model server");
    let second = host.wait_for("a new server up", Duration::from_secs(10), || {
        let e = host.status().inference.remove(0);
        (e.up && e.pid != Some(first)).then_some((e.pid?, e.restarts))
    });
    assert!(second.1 >= 1, "{second:?}");
    assert_eq!(answered_by(&host, "llama", "again"), "supervised");

    // A server that stops answering (frozen, not dead) is replaced too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.0 as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("freeze the model server");
    let third = host.wait_for("a frozen server replaced", Duration::from_secs(10), || {
        let e = host.status().inference.remove(0);
        (e.up && e.pid != Some(second.0)).then_some(e.pid?)
    });
    assert!(process_gone(second.0), "the frozen server was killed");
    assert_ne!(third, first);
    assert_eq!(answered_by(&host, "llama", "once more"), "supervised");
}

/// At shutdown a supervised model server is asked to stop (SIGTERM) after
/// the workers have drained, before the host exits, and is not restarted
/// meanwhile; it used to get only the parent-death SIGKILL.
#[test]
fn a_supervised_model_server_is_stopped_with_sigterm_at_shutdown() {
    let port = free_port();
    let command = format!(
        "command = [\"{}\", \"--port\", \"{port}\", \"--name\", \"supervised\"]\nstart_timeout = \"5s\"\n",
        fake_binary().display()
    );
    let mut host = host(
        &endpoint(
            "local",
            "ollama",
            &format!("http://127.0.0.1:{port}"),
            &command,
        ),
        LLAMA,
    );
    let pid = host.wait_for("the supervised server up", Duration::from_secs(10), || {
        let e = host.status().inference.remove(0);
        (e.up && e.checked).then_some(e.pid?)
    });
    host.signal(nix::sys::signal::Signal::SIGTERM);
    let status = host
        .wait_exit(Duration::from_secs(15))
        .expect("the host exits");
    assert!(status.success(), "{status:?}");
    let log = host.log();
    let stopped_server = log
        .find("the supervised model server stopped: exit status: 0")
        .unwrap_or_else(|| panic!("stopped by SIGTERM, exiting cleanly: {log}"));
    let host_stopped = log
        .rfind("\"message\":\"stopped\"")
        .expect("the host's last line");
    assert!(stopped_server < host_stopped, "before the host exits");
    assert!(
        !log.contains("restarting the supervised model server"),
        "{log}"
    );
    assert!(process_gone(pid));
}

#[test]
fn an_openai_compatible_server_streams_and_reports_its_errors() {
    let fake = FakeServer::start("vllm", &["--models", "qwen2.5-7b"]);
    let endpoints = endpoint(
        "vllm",
        "openai",
        &format!("{}/v1", fake.url),
        "api_key_env = \"BOTHOST_TEST_OPENAI_KEY\"\n",
    );
    let bots = "[[bots]]\nname = \"qwen\"\nengine = \"openai\"\nmodel = \"qwen2.5-7b\"\ntemperature = 0.5\n\
                [[bots]]\nname = \"ghost\"\nengine = \"openai\"\nmodel = \"ghost-1\"\n";
    // The key reaches the workers through the environment, never the socket.
    std::env::set_var("BOTHOST_TEST_OPENAI_KEY", "sk-test-123");
    let host = host(&endpoints, bots);
    assert_eq!(answered_by(&host, "qwen", "hi there"), "vllm");
    let sent = fake.last_request();
    assert_eq!(sent["_authorization"], "Bearer sk-test-123");
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["stream"], true);
    assert!(
        !host.log().contains("sk-test-123"),
        "the key is never logged"
    );

    let err = chat_error(&host, "ghost", "hi");
    assert!(
        err.contains("model_not_found") && err.contains("does not exist"),
        "{err}"
    );
    fake.fault(json!({"mode": "error_after", "tokens": 1, "message": "context length exceeded"}));
    let err = chat_error(&host, "qwen", "hi");
    assert!(
        err.contains("engine_failed") && err.contains("context length exceeded"),
        "{err}"
    );
    fake.fault(json!({"mode": "status", "status": 429, "message": "rate limited"}));
    let err = chat_error(&host, "qwen", "hi");
    assert!(
        err.contains("overloaded") && err.contains("rate limited"),
        "{err}"
    );
}
