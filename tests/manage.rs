//! Managing what one has, through the REST API on both backends:
//! conversations renamed, paged, exported and deleted for real; an account
//! deleted with everything it owns; admins listing, disabling and enabling
//! users. Another user's ids are "not found" on every route.

mod common;

use common::web::{client, error_code, login, register, ApiUser};
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "tests-sign-with-this-32-byte-key!";

fn config(db_url: &str) -> String {
    format!(
        "{FAST_SUPERVISOR}\n[database]\nurl = \"{db_url}\"\n[backup]\nschedule = \"off\"\n\
         [auth]\njwt_secret = \"{SECRET}\"\n[limits]\nconversations_per_minute_per_user = 1000\n{}",
        bots(&["fast"])
    )
}

fn send(
    user: &ApiUser,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::blocking::Response {
    let mut req = user
        .client
        .request(method, format!("{}{path}", user.base))
        .bearer_auth(&user.token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().expect("request")
}

fn chat(user: &ApiUser, conv: i64, id: &str, text: &str) {
    let res = user.post(
        &format!("/api/v1/conversations/{conv}/messages"),
        json!({"client_msg_id": id, "content": text}),
    );
    assert_eq!(res.status(), 200);
}

fn everything(host: &TestHost) {
    let alice = register(&host.url, "alice");
    let bob = register(&host.url, "bob");
    let convs: Vec<i64> = (0..5).map(|_| alice.conversation("fast")).collect();
    chat(&alice, convs[0], "m1", "first question");
    chat(&alice, convs[0], "m2", "second **question**");
    let listed: Vec<Value> = alice.get("/api/v1/conversations").json().unwrap();
    assert_eq!(
        listed[0]["title"], "first question",
        "named after its first message"
    );

    // Paging: newest activity first, each conversation once.
    let page = |before: Option<i64>| -> Vec<i64> {
        let path = match before {
            Some(b) => format!("/api/v1/conversations?limit=2&before={b}"),
            None => "/api/v1/conversations?limit=2".to_owned(),
        };
        let list: Vec<Value> = alice.get(&path).json().unwrap();
        list.iter().map(|c| c["id"].as_i64().unwrap()).collect()
    };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let ids = page(before);
        if ids.is_empty() {
            break;
        }
        before = ids.last().copied();
        seen.extend(ids);
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen[0], convs[0], "the one with messages is newest");
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "each once: {seen:?}");

    // Search: one's own messages, every word, any case; what a user types
    // is never query syntax.
    chat(
        &bob,
        bob.conversation("fast"),
        "b1",
        "a question about Rust lifetimes",
    );
    let found = |user: &ApiUser, q: &str| -> Vec<String> {
        let res = user
            .client
            .get(format!("{}/api/v1/search", user.base))
            .query(&[("q", q)])
            .bearer_auth(&user.token)
            .send()
            .unwrap();
        assert_eq!(res.status(), 200, "{q}");
        let hits: Vec<Value> = res.json().unwrap();
        hits.iter()
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect()
    };
    // The builtin bot quotes each question, so its reply matches too.
    let first = found(&alice, "FIRST question");
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(
        first[1], "first question",
        "newest first: the reply, then the question"
    );
    assert_eq!(
        found(&alice, "question").len(),
        4,
        "both questions and both replies"
    );
    assert!(found(&alice, "lifetimes").is_empty(), "not bob's");
    assert_eq!(found(&bob, "lifetimes").len(), 2);
    for odd in [
        "\"unbalanced",
        "*",
        "a:b",
        "NEAR(x y)",
        "question AND",
        "-question",
        "   ",
    ] {
        found(&alice, odd);
    }
    assert_eq!(
        error_code(alice.get("/api/v1/search?q=a%00b")),
        (400, "invalid_text".into())
    );
    assert_eq!(
        error_code(alice.get(&format!("/api/v1/search?q={}", "x".repeat(201)))),
        (400, "invalid_query".into())
    );

    // Regenerate the last reply (replaced), edit a message (what followed
    // it goes), over REST and over the WebSocket.
    let conv = alice.conversation("fast");
    chat(&alice, conv, "q1", "what is a lifetime");
    chat(&alice, conv, "q2", "and a borrow");
    let base = format!("/api/v1/conversations/{conv}/messages");
    assert_eq!(
        error_code(alice.post(&format!("{base}/q1/regenerate"), json!({}))),
        (409, "not_last".into())
    );
    assert_eq!(
        error_code(bob.post(&format!("{base}/q2/regenerate"), json!({}))),
        (404, "not_found".into())
    );
    assert_eq!(
        error_code(alice.post(&format!("{base}/nope/regenerate"), json!({}))),
        (404, "not_found".into())
    );
    let before = alice.history(conv);
    let again: Value = alice
        .post(&format!("{base}/q2/regenerate"), json!({}))
        .json()
        .unwrap();
    assert_eq!(again["message"]["client_msg_id"], "q2");
    assert_eq!(again["reply"]["status"], "complete");
    assert_ne!(again["reply"]["id"], before[0]["id"], "a new reply row");
    let after = alice.history(conv);
    assert_eq!(after.len(), 4, "the old reply replaced, not kept");
    assert_eq!(after[0]["id"], again["reply"]["id"]);
    let edited: Value = alice
        .post(
            &format!("{base}/q1/edit"),
            json!({"client_msg_id": "q1b", "content": "what is a lifetime, really"}),
        )
        .json()
        .unwrap();
    assert_eq!(edited["reply"]["status"], "complete");
    let after: Vec<String> = alice
        .history(conv)
        .iter()
        .rev()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], "what is a lifetime, really");
    runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.send_json(
            json!({"type": "regenerate", "conversation_id": conv, "client_msg_id": "q1b"}),
        )
        .await;
        let (ack, text, done) = ws.turn().await;
        assert_eq!(
            (ack["client_msg_id"].as_str(), ack["replay"].as_bool()),
            (Some("q1b"), Some(false))
        );
        assert!(text.contains("lifetime, really"), "{text}");
        assert_eq!(done["status"], "complete");
        ws.send_json(
            json!({"type": "edit", "conversation_id": conv, "client_msg_id": "q1b",
                            "new_client_msg_id": "q1c", "content": "start over"}),
        )
        .await;
        let (ack, text, _) = ws.turn().await;
        assert_eq!(ack["client_msg_id"], "q1c");
        assert!(text.contains("start over"), "{text}");
        ws.send_json(
            json!({"type": "regenerate", "conversation_id": conv, "client_msg_id": "q1b"}),
        )
        .await;
        let f = ws.next().await;
        assert_eq!(
            (f["code"].as_str(), f["client_msg_id"].as_str()),
            (Some("not_found"), Some("q1b")),
            "{f}"
        );
    });
    assert_eq!(alice.history(conv).len(), 2);

    // Rename.
    let path = format!("/api/v1/conversations/{}", convs[0]);
    let renamed: Value = send(
        &alice,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"title": "  Trip plans  "})),
    )
    .json()
    .unwrap();
    assert_eq!(renamed["title"], "Trip plans");
    assert_eq!(
        error_code(send(
            &alice,
            reqwest::Method::PATCH,
            &path,
            Some(json!({"title": " \t"}))
        )),
        (400, "invalid_title".into())
    );
    assert_eq!(
        error_code(send(
            &bob,
            reqwest::Method::PATCH,
            &path,
            Some(json!({"title": "mine now"}))
        )),
        (404, "not_found".into())
    );

    // Export, as JSON and as Markdown.
    let json_export: Value = alice
        .get(&format!("/api/v1/conversations/{}/export", convs[0]))
        .json()
        .unwrap();
    assert_eq!(json_export["conversation"]["title"], "Trip plans");
    let contents: Vec<&str> = json_export["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents.len(), 4);
    assert_eq!(contents[0], "first question", "oldest first");
    let md = alice.get(&format!(
        "/api/v1/conversations/{}/export?format=markdown",
        convs[0]
    ));
    assert!(md.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/markdown"));
    assert!(md.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("attachment"));
    let md = md.text().unwrap();
    assert!(md.starts_with("# Trip plans\n"), "{md}");
    assert!(md.contains("## You\n\nsecond **question**\n"), "{md}");
    assert!(md.contains("## fast\n"), "{md}");
    assert_eq!(
        bob.get(&format!("/api/v1/conversations/{}/export", convs[0]))
            .status(),
        404
    );

    // Delete: for real, messages included; not someone else's.
    assert_eq!(
        send(&bob, reqwest::Method::DELETE, &path, None).status(),
        404
    );
    assert_eq!(
        send(&alice, reqwest::Method::DELETE, &path, None).status(),
        204
    );
    assert_eq!(alice.get(&format!("{path}/messages")).status(), 404);
    assert!(
        found(&alice, "question").is_empty(),
        "deleted messages are not found"
    );
    assert_eq!(
        send(&alice, reqwest::Method::DELETE, &path, None).status(),
        404
    );

    // Admins: list, disable (ends sessions, refuses log-in), enable.
    host.add_user("root", true);
    let root = login(&host.url, "root").expect("root");
    assert_eq!(
        error_code(alice.get("/api/v1/admin/users")),
        (403, "forbidden".into())
    );
    let users: Vec<Value> = root.get("/api/v1/admin/users").json().unwrap();
    let bob_id = users
        .iter()
        .find(|u| u["username"] == "bob")
        .and_then(|u| u["id"].as_i64())
        .unwrap();
    assert!(users.iter().all(|u| u.get("password_hash").is_none()));
    let res: Value = root
        .post(&format!("/api/v1/admin/users/{bob_id}/disable"), json!({}))
        .json()
        .unwrap();
    assert!(res["disabled_at"].is_i64(), "{res}");
    assert_eq!(
        error_code(bob.get("/api/v1/bots")),
        (403, "account_disabled".into())
    );
    assert!(login(&host.url, "bob").is_none());
    let root_id = users.iter().find(|u| u["username"] == "root").unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        error_code(root.post(&format!("/api/v1/admin/users/{root_id}/disable"), json!({}))),
        (409, "cannot_disable_self".into())
    );
    root.post(&format!("/api/v1/admin/users/{bob_id}/enable"), json!({}));
    assert!(login(&host.url, "bob").is_some());

    // Account deletion: the password again, then everything goes.
    assert_eq!(
        error_code(send(
            &alice,
            reqwest::Method::DELETE,
            "/api/v1/account",
            Some(json!({"password": "nope nope"}))
        )),
        (403, "invalid_credentials".into())
    );
    assert_eq!(
        send(
            &alice,
            reqwest::Method::DELETE,
            "/api/v1/account",
            Some(json!({"password": PASSWORD}))
        )
        .status(),
        204
    );
    assert_eq!(
        error_code(alice.get("/api/v1/conversations")),
        (401, "session_ended".into())
    );
    assert!(login(&host.url, "alice").is_none());
    let users: Vec<Value> = root.get("/api/v1/admin/users").json().unwrap();
    assert!(users.iter().all(|u| u["username"] != "alice"));
    // The name is free again.
    let again = client()
        .post(format!("{}/api/v1/auth/register", host.url))
        .json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .unwrap();
    assert_eq!(again.status(), 201);
    let alice = login(&host.url, "alice").unwrap();
    let list: Vec<Value> = alice.get("/api/v1/conversations").json().unwrap();
    assert!(list.is_empty(), "nothing of the old account: {list:?}");
}

#[test]
fn management_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start_with_config(&config(&format!(
        "sqlite://{}",
        dir.path().join("m.db").display()
    )));
    everything(&host);
}

#[test]
fn management_on_postgres() {
    let Some(base) = bothost_testkit::test_database_url() else {
        return;
    };
    let rt = runtime();
    let schema = rt
        .block_on(bothost_testkit::PgSchema::create(&base, "manage"))
        .unwrap();
    let host = TestHost::start_with_config(&config(&schema.url));
    everything(&host);
    drop(host);
    rt.block_on(schema.drop_schema()).unwrap();
}
