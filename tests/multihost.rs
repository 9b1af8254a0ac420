//! Several hosts on one PostgreSQL database: a message is answered once,
//! whichever host a resend reaches. While one host streams a reply, a
//! resend of the same message to another host is `in_progress`; once the
//! reply is stored it is replayed there; and when the answering host dies
//! mid-reply, its lease expires and the other host replays the partial
//! reply it left, instead of asking a bot a second time.

mod common;

use std::time::Duration;

use bothost_testkit::{test_database_url, PgSchema};
use common::web::{error_code, login, register, ApiUser};
use common::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

fn config(db_url: &str) -> String {
    format!(
        "{FAST_SUPERVISOR}\n[database]\nurl = \"{db_url}\"\n[backup]\nschedule = \"off\"\n\
         [limits]\nmessages_per_minute_per_user = 100000\nmessages_per_minute_per_ip = 100000\n\
         [auth]\njwt_secret = \"two-hosts-share-this-32-byte-key\"\n\
         [[bots]]\nname = \"slow\"\n[bots.builtin]\ntoken_delay = \"60ms\"\n"
    )
}

/// A schema of its own in the test database and a runtime to drive it, or
/// `None` where no PostgreSQL is configured (the test is skipped).
fn shared_schema(name: &str) -> Option<(tokio::runtime::Runtime, PgSchema)> {
    let base = test_database_url()?;
    let rt = runtime();
    let schema = rt.block_on(PgSchema::create(&base, name)).unwrap();
    Some((rt, schema))
}

/// A blocking HTTP call from inside an async block.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("blocking call"))
}

fn resend(user: &ApiUser, conv: i64, id: &str, text: &str) -> reqwest::blocking::Response {
    user.post(
        &format!("/api/v1/conversations/{conv}/messages"),
        json!({"client_msg_id": id, "content": text}),
    )
}

#[test]
fn a_message_is_answered_once_whichever_host_a_resend_reaches() {
    let Some((rt, schema)) = shared_schema("multihost") else {
        return;
    };
    let a = TestHost::start_with_config(&config(&schema.url));
    let b = TestHost::start_with_config(&config(&schema.url));
    let on_a = register(&a.url, "alice");
    let on_b = login(&b.url, "alice").expect("the same account on the other host");
    let conv = on_a.conversation("slow");

    // A streams; the resend to B waits, then gets A's stored reply.
    let text = "tell me something long enough to take a while";
    let (ack, done) = rt.block_on(async {
        let mut ws = on_a.ws().await;
        ws.chat(conv, "m1", text).await;
        let ack = ws.next().await;
        assert_eq!(ws.next().await["type"], "delta");
        assert_eq!(
            off_runtime(|| error_code(resend(&on_b, conv, "m1", text))),
            (409, "in_progress".into()),
            "B must not answer what A is answering"
        );
        let mut f = ws.next().await;
        while f["type"] == "delta" {
            f = ws.next().await;
        }
        (ack, f)
    });
    assert_eq!(done["status"], "complete", "{done}");
    let replay: Value = b.wait_for("B to replay A's reply", Duration::from_secs(10), || {
        let res = resend(&on_b, conv, "m1", text);
        (res.status() == 200).then(|| res.json().unwrap())
    });
    assert_eq!(replay["message"]["id"], ack["message_id"]);
    assert_eq!(
        replay["reply"]["id"], done["message_id"],
        "the same reply, not a second one"
    );

    // A dies mid-reply: after its lease expires, B replays what A stored.
    rt.block_on(async {
        let mut ws = on_a.ws().await;
        ws.chat(conv, "m2", text).await;
        assert_eq!(ws.next().await["type"], "ack");
        // Long enough for the first write of the partial reply (250 ms
        // after the first token).
        for _ in 0..10 {
            assert_eq!(ws.next().await["type"], "delta");
        }
        a.signal(Signal::SIGKILL);
    });
    assert_eq!(
        error_code(resend(&on_b, conv, "m2", text)),
        (409, "in_progress".into()),
        "A's lease still holds"
    );
    let partial: Value = b.wait_for("A's lease to expire", Duration::from_secs(30), || {
        let res = resend(&on_b, conv, "m2", text);
        (res.status() == 200).then(|| res.json().unwrap())
    });
    assert_eq!(partial["reply"]["status"], "partial", "{partial}");
    assert!(!partial["reply"]["content"].as_str().unwrap().is_empty());
    assert_eq!(on_b.history(conv).len(), 4, "two messages, one reply each");
    drop(b);
    rt.block_on(schema.drop_schema()).unwrap();
}

/// The scheduled rolling restart, from each host's log: (start, end)
/// timestamps, in order.
fn scheduled_restarts(host: &TestHost) -> Vec<(String, String)> {
    let mut runs = Vec::new();
    let mut started = None;
    for line in host.log().lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] != "schedule" {
            continue;
        }
        let at = v["timestamp"].as_str().unwrap_or_default().to_owned();
        match v["message"].as_str() {
            Some("rolling restart started") => started = Some(at),
            Some("rolling restart finished") => {
                if let Some(start) = started.take() {
                    runs.push((start, at));
                }
            }
            _ => {}
        }
    }
    runs
}

#[test]
fn the_scheduled_rolling_restart_runs_on_one_host_at_a_time() {
    let Some((rt, schema)) = shared_schema("fleet") else {
        return;
    };
    let config = format!(
        "{}\n{}",
        config(&schema.url).replace(
            "stop_grace = \"1s\"",
            "stop_grace = \"1s\"\nrestart_schedule = \"*/3 * * * * *\""
        ),
        bots(&["one", "two", "three"])
    );
    let a = TestHost::start_with_config(&config);
    let b = TestHost::start_with_config(&config);
    // Both wake at the same second, three times over.
    b.wait_for(
        "three scheduled restarts on each host",
        Duration::from_secs(30),
        || (scheduled_restarts(&a).len() >= 3 && scheduled_restarts(&b).len() >= 3).then_some(()),
    );
    let (on_a, on_b) = (scheduled_restarts(&a), scheduled_restarts(&b));
    // RFC 3339 timestamps in UTC sort as text.
    for (a_start, a_end) in &on_a {
        for (b_start, b_end) in &on_b {
            assert!(
                a_end <= b_start || b_end <= a_start,
                "A restarted {a_start}..{a_end} while B restarted {b_start}..{b_end}"
            );
        }
    }
    drop((a, b));
    rt.block_on(schema.drop_schema()).unwrap();
}

/// Messages per user are counted like messages per address (below): each
/// host counts its own and writes them in batches, asking the database
/// with its first message of the minute. Turns in flight are counted
/// exactly, with each message's own statement.
#[test]
fn limits_per_user_hold_across_hosts() {
    let Some((rt, schema)) = shared_schema("limits") else {
        return;
    };
    let config = config(&schema.url).replace(
        "messages_per_minute_per_user = 100000",
        "messages_per_minute_per_user = 4\nmax_in_flight_per_user = 1",
    );
    let a = TestHost::start_with_config(&config);
    let b = TestHost::start_with_config(&config);
    start_well_inside_a_minute(20);
    // The first account in a fresh database.
    let alice_b = register(&b.url, "alice");
    let alice_a = login(&a.url, "alice").unwrap();
    const ALICE: &str = "u:1";
    let conv = alice_a.conversation("slow");
    let sent = |user: &ApiUser, id: &str| resend(user, conv, id, "hi").status().as_u16();
    for i in 0..2 {
        assert_eq!(sent(&alice_b, &format!("b{i}")), 200, "message {i} on B");
    }
    b.wait_for("B to write its count", Duration::from_secs(10), || {
        (rt.block_on(counted_in_database(&schema.url, ALICE)) >= 2).then_some(())
    });
    // A asks the database with its first message: two fit, no third.
    for i in 0..2 {
        assert_eq!(sent(&alice_a, &format!("a{i}")), 200, "message {i} on A");
    }
    assert_eq!(
        error_code(resend(&alice_a, conv, "a2", "hi")),
        (429, "rate_limited".into())
    );
    a.wait_for("A to write its count", Duration::from_secs(10), || {
        (rt.block_on(counted_in_database(&schema.url, ALICE)) >= 4).then_some(())
    });
    // B has not written since: it lets one more through, learns the
    // fleet's count when it writes it, and refuses from then on.
    let written = minute_batches(&b);
    assert_eq!(sent(&alice_b, "b2"), 200);
    b.wait_for(
        "B to write its count again",
        Duration::from_secs(10),
        || (minute_batches(&b) > written).then_some(()),
    );
    assert_eq!(
        error_code(resend(&alice_b, conv, "b3", "hi")),
        (429, "rate_limited".into())
    );

    // One turn in flight per user, whichever host it runs on.
    let bob_a = register(&a.url, "bob");
    let bob_b = login(&b.url, "bob").unwrap();
    let bob_conv = bob_a.conversation("slow");
    rt.block_on(async {
        let mut ws = bob_a.ws().await;
        ws.chat(bob_conv, "long", "a long answer please").await;
        assert_eq!(ws.next().await["type"], "ack");
        assert_eq!(ws.next().await["type"], "delta");
        let (retry_after, refused) = off_runtime(|| {
            let res = resend(&bob_b, bob_conv, "second", "and this");
            let retry_after = res.headers().get("retry-after").cloned();
            (retry_after, error_code(res))
        });
        assert_eq!(
            refused,
            (429, "rate_limited".into()),
            "bob's one turn runs on A"
        );
        assert_eq!(
            retry_after.as_ref().and_then(|v| v.to_str().ok()),
            Some("1")
        );
        // A limit, not a failed turn: the chat error ratio stays clean.
        let outcome = |name: &str| {
            off_runtime(|| {
                b.metric(&format!(
                    "bothost_chat_messages_total{{outcome=\"{name}\"}}"
                ))
            })
        };
        assert_eq!(
            (outcome("unavailable"), outcome("refused")),
            (Some(0.0), Some(1.0))
        );
        let mut f = ws.next().await;
        while f["type"] == "delta" {
            f = ws.next().await;
        }
        assert_eq!(f["type"], "done");
    });
    b.wait_for("bob's turn on A to end", Duration::from_secs(10), || {
        (resend(&bob_b, bob_conv, "second", "and this").status() == 200).then_some(())
    });
    drop((a, b));
    rt.block_on(schema.drop_schema()).unwrap();
}

/// Where hosts share the database, a WebSocket's first message to a
/// conversation reads the conversation in the fleet's statement, not in
/// one of its own; someone else's conversation is still not found.
#[test]
fn a_websockets_first_message_reads_its_conversation_with_the_fleets_counts() {
    let Some((rt, schema)) = shared_schema("first") else {
        return;
    };
    let host = TestHost::start_with_config(&config(&schema.url));
    let alice = register(&host.url, "alice");
    let mallory = register(&host.url, "mallory");
    let conv = alice.conversation("slow");
    rt.block_on(async {
        let mut ws = mallory.ws().await;
        ws.chat(conv, "m1", "let me in").await;
        let (_, _, refused) = ws.turn().await;
        assert_eq!(
            (refused["type"].as_str(), refused["code"].as_str()),
            (Some("error"), Some("not_found")),
            "{refused}"
        );
        let mut ws = alice.ws().await;
        ws.chat(conv, "a1", "hello").await;
        let (_, text, done) = ws.turn().await;
        assert_eq!(done["type"], "done", "{done}");
        assert!(!text.is_empty());
    });
    let statements = |query: &str| {
        host.metric(&format!(
            "bothost_db_query_duration_seconds_count{{query=\"{query}\"}}"
        ))
        .unwrap_or(0.0)
    };
    assert_eq!(statements("fleet_hits"), 2.0);
    assert_eq!(statements("conversation"), 0.0, "a statement of its own");
    drop(host);
    rt.block_on(schema.drop_schema()).unwrap();
}

/// A host knows the conversations it listed (`web::known`), but never
/// trusts that they still exist: one deleted on another host meanwhile is
/// refused by the message's own insert, `not_found`, with no read of it.
#[test]
fn a_conversation_listed_on_one_host_and_deleted_on_another_is_not_found() {
    let Some((rt, schema)) = shared_schema("known") else {
        return;
    };
    let a = TestHost::start_with_config(&config(&schema.url));
    let b = TestHost::start_with_config(&config(&schema.url));
    let on_a = register(&a.url, "alice");
    let on_b = login(&b.url, "alice").expect("the same account on the other host");
    let conv = on_a.conversation("slow");
    let other = on_a.conversation("slow");
    assert_eq!(on_a.get("/api/v1/conversations").status(), 200);
    let deleted = on_b
        .client
        .delete(format!("{}/api/v1/conversations/{conv}", b.url))
        .bearer_auth(&on_b.token)
        .send()
        .expect("DELETE");
    assert_eq!(deleted.status(), 204);
    rt.block_on(async {
        let mut ws = on_a.ws().await;
        ws.chat(conv, "k1", "still there?").await;
        let refused = ws.next().await;
        assert_eq!(
            (refused["type"].as_str(), refused["code"].as_str()),
            (Some("error"), Some("not_found")),
            "{refused}"
        );
        ws.chat(other, "k2", "and here?").await;
        let (_, _, done) = ws.turn().await;
        assert_eq!(done["status"], "complete", "{done}");
    });
    // Both messages went as far as their insert: the refusal was the
    // store's, not a read's.
    let inserts = a
        .metric("bothost_db_query_duration_seconds_count{query=\"begin_user_turn\"}")
        .unwrap_or(0.0);
    assert_eq!(inserts, 2.0);
    drop((a, b));
    rt.block_on(schema.drop_schema()).unwrap();
}

/// The fleet counts per wall-clock minute: waits, if need be, until the
/// current minute has `seconds` left, so that a test's messages fall into
/// one.
fn start_well_inside_a_minute(seconds: u64) {
    let second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 60
    };
    if second() > 60 - seconds {
        std::thread::sleep(Duration::from_secs(61 - second()));
    }
}

/// [`config`] with six messages per minute per address, and replies at
/// once.
fn six_per_address(db_url: &str) -> String {
    config(db_url)
        .replace(
            "messages_per_minute_per_ip = 100000",
            "messages_per_minute_per_ip = 6",
        )
        .replace("token_delay = \"60ms\"", "token_delay = \"0ms\"")
}

/// How many store operations named `query` `host` has run (its
/// `bothost_db_query_duration_seconds` count): `add_window_hits` is a batch
/// of messages per user and address written, `fleet_hits` a message's
/// statement for the fleet's counts.
fn operations(host: &TestHost, query: &str) -> f64 {
    host.metric(&format!(
        "bothost_db_query_duration_seconds_count{{query=\"{query}\"}}"
    ))
    .unwrap_or(0.0)
}

/// How many batches of messages per user and address `host` has written.
fn minute_batches(host: &TestHost) -> f64 {
    operations(host, "add_window_hits")
}

/// The tests' one client address, as the fleet's table names it.
const ADDRESS: &str = "ip:127.0.0.1";

/// The messages from `subject` the fleet's table holds (all minutes).
async fn counted_in_database(url: &str, subject: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    diesel::sql_query(
        "SELECT COALESCE(sum(hits), 0)::bigint AS n FROM rate_windows WHERE subject = $1",
    )
    .bind::<diesel::sql_types::Text, _>(subject)
    .get_result::<Count>(&mut conn)
    .await
    .expect("count")
    .n
}

/// Messages that start a minute together from one user and one address
/// (several tabs): one request asks the database for the minute's counts,
/// the others wait for its answer and count here. One statement, where each
/// used to send its own, all updating the same rows one after another; and
/// every message is counted once.
#[test]
fn messages_that_start_a_minute_together_ask_the_database_once() {
    let Some((rt, schema)) = shared_schema("together") else {
        return;
    };
    let config = config(&schema.url)
        .replace("token_delay = \"60ms\"", "token_delay = \"0ms\"")
        .replace("[auth]", "max_in_flight_per_user = 100\n[auth]");
    let host = TestHost::start_with_config(&config);
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("slow");
    start_well_inside_a_minute(20);
    let before = operations(&host, "fleet_hits");
    // Each sender with a connection of its own open, then all at once.
    let ready = std::sync::Barrier::new(20);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let sends: Vec<_> = (0..20)
            .map(|i| {
                let (alice, ready) = (&alice, &ready);
                s.spawn(move || {
                    assert_eq!(alice.get("/api/v1/bots").status().as_u16(), 200);
                    ready.wait();
                    resend(alice, conv, &format!("m{i}"), "hi")
                        .status()
                        .as_u16()
                })
            })
            .collect();
        sends
            .into_iter()
            .map(|send| send.join().expect("send"))
            .collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        operations(&host, "fleet_hits") - before,
        1.0,
        "one statement for the minute's counts"
    );
    host.wait_for(
        "the minute's count written",
        Duration::from_secs(10),
        || (rt.block_on(counted_in_database(&schema.url, ADDRESS)) >= 20).then_some(()),
    );
    assert_eq!(rt.block_on(counted_in_database(&schema.url, ADDRESS)), 20);
    drop(host);
    rt.block_on(schema.drop_schema()).unwrap();
}

/// Messages per address are counted by each host and written in batches:
/// a host asks the database for an address's count with its first message
/// of the minute, and learns the other hosts' messages when it next writes
/// its own.
#[test]
fn limits_per_address_hold_across_hosts() {
    let Some((rt, schema)) = shared_schema("addresses") else {
        return;
    };
    let config = six_per_address(&schema.url);
    let a = TestHost::start_with_config(&config);
    let b = TestHost::start_with_config(&config);
    // Two users, one address (127.0.0.1).
    let alice = register(&a.url, "alice");
    let bob = register(&b.url, "bob");
    let on_a = alice.conversation("slow");
    let on_b = bob.conversation("slow");
    start_well_inside_a_minute(20);
    let sent = |user: &ApiUser, conv: i64, id: &str| resend(user, conv, id, "hi").status().as_u16();

    for i in 0..3 {
        assert_eq!(sent(&bob, on_b, &format!("b{i}")), 200, "bob's message {i}");
    }
    // All three written: a batch may have gone out between two of them.
    b.wait_for("B to write its count", Duration::from_secs(10), || {
        (rt.block_on(counted_in_database(&schema.url, ADDRESS)) >= 3).then_some(())
    });
    // A's first message of the minute from this address asks the database:
    // B's three are there, so three more fit, and no fourth.
    for i in 0..3 {
        assert_eq!(
            sent(&alice, on_a, &format!("a{i}")),
            200,
            "alice's message {i}"
        );
    }
    assert_eq!(
        error_code(resend(&alice, on_a, "a3", "hi")),
        (429, "rate_limited".into())
    );
    a.wait_for("A to write its count", Duration::from_secs(10), || {
        (rt.block_on(counted_in_database(&schema.url, ADDRESS)) >= 6).then_some(())
    });
    // B has not written since A's: it lets one more through, writes it,
    // learns the fleet's count in the answer, and refuses from then on.
    let written = minute_batches(&b);
    assert_eq!(sent(&bob, on_b, "b3"), 200);
    b.wait_for(
        "B to write its count again",
        Duration::from_secs(10),
        || (minute_batches(&b) > written).then_some(()),
    );
    assert_eq!(
        error_code(resend(&bob, on_b, "b4", "hi")),
        (429, "rate_limited".into())
    );
    drop((a, b));
    rt.block_on(schema.drop_schema()).unwrap();
}

/// Messages refused because the database was away are not counted against
/// their address by the fleet: host A meets the outage, and host B, which
/// learns the address's count from the database, sees only what was let
/// through. (Each host's own limiter, in memory, counts every attempt.)
#[test]
fn an_outage_does_not_count_against_an_address_in_the_fleet() {
    use bothost_testkit::ThrowawayPg;
    let Some(pg) = ThrowawayPg::start() else {
        return;
    };
    let config = six_per_address(&pg.url());
    let a = TestHost::start_with_config(&config);
    let alice = register(&a.url, "alice");
    let conv = alice.conversation("slow");
    // The outage and the database's restart take a few seconds.
    start_well_inside_a_minute(40);
    let rt = runtime();
    // Over a WebSocket, which knows its conversation already, A counts the
    // address here after its first message: the message's own statement
    // is the first thing to meet the outage.
    let mut ws = rt.block_on(alice.ws());
    // The turn's last frame: `done`, or its error's code.
    let mut turn = |id: &str| {
        rt.block_on(async {
            ws.chat(conv, id, "hi").await;
            let (_, _, last) = ws.turn().await;
            match last["type"].as_str() {
                Some("error") => last["code"].as_str().unwrap_or("").to_owned(),
                other => other.unwrap_or("").to_owned(),
            }
        })
    };
    assert_eq!(turn("m0"), "done");

    pg.stop();
    for i in 0..4 {
        assert_eq!(
            turn(&format!("down{i}")),
            "store_unavailable",
            "message {i}"
        );
    }
    pg.start_again();
    a.wait_for("the database to be back", Duration::from_secs(30), || {
        (a.http_get("/readyz").0 == 200).then_some(())
    });
    let written = minute_batches(&a);
    assert_eq!(turn("m1"), "done");
    a.wait_for("A to write its count", Duration::from_secs(10), || {
        (minute_batches(&a) > written).then_some(())
    });

    // Two let through on A: four more fit on B, and no fifth.
    let b = TestHost::start_with_config(&config);
    let bob = register(&b.url, "bob");
    let on_b = bob.conversation("slow");
    for i in 0..4 {
        assert_eq!(
            resend(&bob, on_b, &format!("b{i}"), "hi").status(),
            200,
            "bob's message {i}"
        );
    }
    assert_eq!(
        error_code(resend(&bob, on_b, "b4", "hi")),
        (429, "rate_limited".into())
    );
}

/// PostgreSQL fails over to a promoted streaming standby: with both in
/// `database.url` and `target_session_attrs=read-write`, the host follows
/// the new primary by itself. While no primary exists, messages are
/// refused cleanly (503, "unavailable"); then they flow again, and what was
/// stored before is there.
#[test]
fn the_database_fails_over_to_a_promoted_standby() {
    use bothost_testkit::ThrowawayPg;
    let Some(primary) = ThrowawayPg::start() else {
        return;
    };
    let standby = ThrowawayPg::standby_of(&primary);
    let url = primary.url_with_standby(&standby);
    let host = TestHost::start_with_config(&config(&url));
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("slow");
    assert_eq!(resend(&alice, conv, "before", "hello").status(), 200);

    primary.stop();
    let refused = resend(&alice, conv, "during", "anyone there?");
    assert_eq!(
        (refused.status().as_u16(), error_code(refused).1.as_str()),
        (503, "store_unavailable"),
        "refused cleanly while no primary exists"
    );
    standby.promote();
    host.wait_for(
        "the host to follow the new primary",
        Duration::from_secs(30),
        || (resend(&alice, conv, "after", "and now?").status() == 200).then_some(()),
    );
    let contents: Vec<String> = alice
        .history(conv)
        .iter()
        .rev()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(contents[0], "hello", "what was stored before the failover");
    assert_eq!(contents.len(), 4, "{contents:?}");
}

#[test]
fn a_resend_raced_to_two_hosts_at_once_gets_one_answer() {
    let Some((rt, schema)) = shared_schema("race") else {
        return;
    };
    let a = TestHost::start_with_config(&config(&schema.url));
    let b = TestHost::start_with_config(&config(&schema.url));
    let on_a = register(&a.url, "alice");
    let on_b = login(&b.url, "alice").unwrap();
    let conv = on_a.conversation("slow");
    for round in 0..5 {
        let id = format!("race{round}");
        let (ra, rb) = std::thread::scope(|s| {
            let ta = s.spawn(|| resend(&on_a, conv, &id, "both at once"));
            let tb = s.spawn(|| resend(&on_b, conv, &id, "both at once"));
            (ta.join().unwrap(), tb.join().unwrap())
        });
        // A reply takes seconds, so the two overlap: one host answers, the
        // other is told in_progress (a bot asked twice would answer twice).
        let mut codes: Vec<u16> = [ra.status().as_u16(), rb.status().as_u16()].to_vec();
        codes.sort_unstable();
        assert_eq!(codes, [200, 409], "round {round}");
    }
    let history = on_a.history(conv);
    assert_eq!(history.len(), 10, "five messages, one reply each");
    drop((a, b));
    rt.block_on(schema.drop_schema()).unwrap();
}
