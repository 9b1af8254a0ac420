//! Sessions end when they should, not when their token expires: log out
//! everywhere, a password change, a role change, disabling and deleting an
//! account (from the API or `bothost user …`) end every older token, on
//! REST and on an open WebSocket, and the role is always the account's
//! current one. A burst of one user's requests waits for a single lookup
//! of the account, and an active user's account is read again before
//! their view goes stale.

mod common;

use std::time::Duration;

use common::web::{client, error_code, login, register, ApiUser};
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "tests-sign-with-this-32-byte-key!";

/// How long a change made by `bothost user …` (another process) may take
/// to reach the host: its session view is rechecked every 5 s.
const RECHECK_LIMIT: Duration = Duration::from_secs(15);

fn host() -> TestHost {
    TestHost::start_with_config(&format!(
        "{FAST_SUPERVISOR}\n[auth]\njwt_secret = \"{SECRET}\"\n{}",
        bots(&["fast"])
    ))
}

/// Waits until `user`'s `GET path` answers `want` (status, error code).
fn wait_for_answer(host: &TestHost, user: &ApiUser, path: &str, want: (u16, &str)) {
    host.wait_for(
        &format!("GET {path} to answer {want:?}"),
        RECHECK_LIMIT,
        || {
            let (status, c) = error_code(user.get(path));
            (status == want.0 && c == want.1).then_some(())
        },
    );
}

fn cli_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn logging_out_everywhere_ends_rest_and_websocket_sessions_at_once() {
    let host = host();
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("fast");
    let phone = login(&host.url, "alice").expect("a second session");
    runtime().block_on(async {
        let mut ws = phone.ws().await;
        ws.chat(conv, "before", "hello").await;
        let (_, _, done) = ws.turn().await;
        assert_eq!(done["status"], "complete");

        let res = std::thread::scope(|s| {
            s.spawn(|| alice.post("/api/v1/auth/logout-all", json!({})))
                .join()
                .unwrap()
        });
        assert_eq!(res.status(), 204);
        // At once on this host, for both tokens.
        let (a, p) = std::thread::scope(|s| {
            let a = s.spawn(|| error_code(alice.get("/api/v1/bots")));
            let p = s.spawn(|| error_code(phone.get("/api/v1/conversations")));
            (a.join().unwrap(), p.join().unwrap())
        });
        assert_eq!(a, (401, "session_ended".into()));
        assert_eq!(p, (401, "session_ended".into()));

        // The open WebSocket takes no more turns and closes with 4401.
        ws.chat(conv, "after", "still there?").await;
        let f = ws.next().await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("session_ended")),
            "{f}"
        );
        let close = ws.closed().await;
        assert_eq!(close, Some(4401));
    });
    // Nothing was stored for the refused turn; logging in again works.
    let again = login(&host.url, "alice").expect("log in again");
    assert_eq!(again.history(conv).len(), 2);
}

/// The host reads an active user's account again by itself, with no
/// request waiting for it: the next message after a pause finds the view
/// fresh.
#[test]
fn the_host_reads_an_active_users_account_again_by_itself() {
    let host = host();
    let alice = register(&host.url, "alice");
    assert_eq!(alice.get("/api/v1/bots").status(), 200);
    let lookups = || {
        host.metric("bothost_db_query_duration_seconds_count{query=\"users_and_revoked_tokens\"}")
            .unwrap_or(0.0)
    };
    let before = lookups();
    // No request from here on: only the host's own refresh reads it.
    host.wait_for("the account read again", RECHECK_LIMIT, || {
        (lookups() > before).then_some(())
    });
}

#[test]
fn logging_out_ends_this_session_only_and_survives_a_restart() {
    let mut host = host();
    let alice = register(&host.url, "alice");
    let phone = login(&host.url, "alice").expect("a second session");
    let res = alice.post("/api/v1/auth/logout", json!({}));
    assert_eq!(res.status(), 204);
    assert_eq!(
        error_code(alice.get("/api/v1/bots")),
        (401, "session_ended".into())
    );
    assert_eq!(
        phone.get("/api/v1/bots").status(),
        200,
        "the other session goes on"
    );
    host.restart().unwrap();
    let alice = ApiUser {
        base: host.url.clone(),
        ..alice
    };
    let phone = ApiUser {
        base: host.url.clone(),
        ..phone
    };
    assert_eq!(
        error_code(alice.get("/api/v1/bots")),
        (401, "session_ended".into())
    );
    assert_eq!(phone.get("/api/v1/bots").status(), 200);
}

#[test]
fn a_password_change_needs_the_old_one_and_ends_other_sessions() {
    let host = host();
    let alice = register(&host.url, "alice");
    let other = login(&host.url, "alice").expect("a second session");
    let res = alice.post(
        "/api/v1/auth/password",
        json!({"current_password": "not it at all", "new_password": "a brand new secret"}),
    );
    assert_eq!(error_code(res), (403, "invalid_credentials".into()));
    let res = alice.post(
        "/api/v1/auth/password",
        json!({"current_password": PASSWORD, "new_password": "short"}),
    );
    assert_eq!(error_code(res), (400, "invalid_password".into()));
    assert_eq!(
        alice.get("/api/v1/bots").status(),
        200,
        "nothing changed yet"
    );

    let res = alice.post(
        "/api/v1/auth/password",
        json!({"current_password": PASSWORD, "new_password": "a brand new secret"}),
    );
    assert_eq!(res.status(), 200);
    let session: Value = res.json().unwrap();
    let fresh = ApiUser {
        base: host.url.clone(),
        token: session["token"].as_str().expect("a new token").to_owned(),
        client: client(),
    };
    assert_eq!(fresh.get("/api/v1/bots").status(), 200);
    assert_eq!(
        error_code(alice.get("/api/v1/bots")),
        (401, "session_ended".into())
    );
    assert_eq!(
        error_code(other.get("/api/v1/bots")),
        (401, "session_ended".into())
    );
    assert!(login(&host.url, "alice").is_none(), "the old password");
    let res = client()
        .post(format!("{}/api/v1/auth/login", host.url))
        .json(&json!({"username": "alice", "password": "a brand new secret"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[test]
fn operators_demote_disable_enable_reset_and_delete_accounts_from_the_cli() {
    let host = host();
    host.add_user("root", true);
    let root = login(&host.url, "root").expect("root logs in");
    assert_eq!(root.get("/api/v1/admin/bots").status(), 200);
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("fast");
    let res = alice.post(
        &format!("/api/v1/conversations/{conv}/messages"),
        json!({"client_msg_id": "m1", "content": "hello"}),
    );
    assert_eq!(res.status(), 200);

    let list: Value =
        serde_json::from_str(&cli_ok(&host.user_cli(&["list", "--json"], ""))).unwrap();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["username"].as_str().unwrap(), u["role"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("root", "admin"), ("alice", "user")]);
    assert!(
        list[0].get("password_hash").is_none(),
        "no hash in the list"
    );

    // Demoted: the old token is over, and a new one is not an admin's.
    cli_ok(&host.user_cli(&["role", "root", "user"], ""));
    wait_for_answer(&host, &root, "/api/v1/admin/bots", (401, "session_ended"));
    let root = login(&host.url, "root").expect("root logs in again");
    assert_eq!(
        error_code(root.get("/api/v1/admin/bots")),
        (403, "forbidden".into())
    );

    // Disabled: refused everywhere, log-in included; enabled again: back.
    cli_ok(&host.user_cli(&["disable", "alice"], ""));
    wait_for_answer(&host, &alice, "/api/v1/bots", (403, "account_disabled"));
    let res = client()
        .post(format!("{}/api/v1/auth/login", host.url))
        .json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .unwrap();
    assert_eq!(error_code(res), (403, "account_disabled".into()));
    let table = cli_ok(&host.user_cli(&["list"], ""));
    assert!(
        table
            .lines()
            .any(|l| l.contains("alice") && l.contains("disabled")),
        "{table}"
    );
    cli_ok(&host.user_cli(&["enable", "alice"], ""));
    let alice = login(&host.url, "alice").expect("alice is back");

    // A password set by the operator; the old one stops working.
    cli_ok(&host.user_cli(&["passwd", "alice"], "set by the operator"));
    wait_for_answer(&host, &alice, "/api/v1/bots", (401, "session_ended"));
    assert!(login(&host.url, "alice").is_none());
    let res = client()
        .post(format!("{}/api/v1/auth/login", host.url))
        .json(&json!({"username": "alice", "password": "set by the operator"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let alice = ApiUser {
        base: host.url.clone(),
        token: res.json::<Value>().unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned(),
        client: client(),
    };

    // Deleted: only with --yes; then the token is refused (not a 500 on a
    // foreign key) and the data is gone.
    let out = host.user_cli(&["delete", "alice"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(alice.get("/api/v1/bots").status(), 200, "not deleted");
    cli_ok(&host.user_cli(&["delete", "alice", "--yes"], ""));
    wait_for_answer(
        &host,
        &alice,
        "/api/v1/conversations",
        (401, "session_ended"),
    );
    assert_eq!(
        error_code(alice.post("/api/v1/conversations", json!({"bot": "fast"}))),
        (401, "session_ended".into())
    );
    let out = host.user_cli(&["disable", "alice"], "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user 'alice'"));
    let bob = register(&host.url, "bob");
    assert_eq!(
        error_code(bob.get(&format!("/api/v1/conversations/{conv}/messages"))),
        (404, "not_found".into())
    );
}

/// Another extractor failing first drops the session check half-way; on
/// SQLite a query dropped half-way used to panic the connection's task, so
/// the client saw the connection cut instead of its 400.
#[test]
fn a_bad_query_next_to_a_session_check_gets_its_400() {
    let host = host();
    let alice = register(&host.url, "alice");
    let res = alice
        .client
        .post(format!("{}/api/v1/admin/restart?rolling=nope", host.url))
        .bearer_auth(&alice.token)
        .send()
        .expect("an answer, not a cut connection");
    assert_eq!(error_code(res), (400, "invalid_query".into()));
    assert!(!host.log().contains("panicked"), "{}", host.log());
}

/// A user's tabs all reconnect at once when a host comes back: their
/// requests wait for one lookup of the account, not one each.
#[actix_rt::test]
async fn a_burst_for_one_account_waits_for_a_single_lookup() {
    let (db, alice, sessions, claims) = alice_and_sessions().await;
    // Every check is polled, and misses the cache, before any lookup has
    // had a chance to run.
    let checks = futures_util::future::join_all((0..20).map(|_| sessions.check(&claims))).await;
    for check in checks {
        assert_eq!(check.expect("the session holds").id, alice.id);
    }
    assert_eq!(account_lookups(&db), 1);
    // Cached now: the next check reads nothing.
    sessions.check(&claims).await.expect("the session holds");
    assert_eq!(account_lookups(&db), 1);
    db.cleanup().await;
}

/// A lookup that may have read the account before this host changed it is
/// neither joined nor kept: the change ends older tokens at once here.
#[actix_rt::test]
async fn a_change_here_is_not_hidden_by_a_lookup_from_before_it() {
    use futures_util::FutureExt;

    let (db, alice, sessions, claims) = alice_and_sessions().await;
    // A request's lookup has read the account as it was, and the request
    // has not yet heard back…
    let mut before = Box::pin(sessions.check(&claims));
    assert!((&mut before).now_or_never().is_none());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while account_lookups(&db) == 0 {
        assert!(std::time::Instant::now() < deadline, "the lookup never ran");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // …when this host ends the account's sessions (a password change).
    change_password(&db, alice.id).await;
    sessions.forget(alice.id);
    let after = sessions.check(&claims).await;
    assert_eq!(
        after.expect_err("the old token ended").code,
        "session_ended"
    );
    // The request from before the change is judged by what it read; that
    // is not kept.
    assert!(before.await.is_ok());
    assert_eq!(
        sessions.check(&claims).await.expect_err("still ended").code,
        "session_ended"
    );
    db.cleanup().await;
}

/// An active user's view is read again in the background before it goes
/// stale, so a request after a pause finds it fresh and reads nothing;
/// and it is the database's view now (a change made by another host ends
/// the session).
#[actix_rt::test]
async fn an_active_users_view_is_read_again_before_it_goes_stale() {
    let (db, alice, sessions, claims) = alice_and_sessions().await;
    sessions.check(&claims).await.expect("the session holds");
    assert_eq!(account_lookups(&db), 1);
    assert_eq!(sessions.refresh().await.expect("refresh"), 0, "still fresh");
    // Another host changes the password: this one has not forgotten.
    change_password(&db, alice.id).await;
    refreshed(&sessions).await;
    assert_eq!(account_lookups(&db), 2, "one statement");
    assert_eq!(
        sessions.check(&claims).await.expect_err("ended").code,
        "session_ended"
    );
    assert_eq!(account_lookups(&db), 2, "the request read nothing");
    db.cleanup().await;
}

/// A refresh that read an account before this host changed it keeps
/// nothing it read: the change ends older tokens at once here.
#[actix_rt::test]
async fn a_refresh_from_before_a_change_here_is_not_kept() {
    use futures_util::FutureExt;

    let (db, alice, sessions, claims) = alice_and_sessions().await;
    sessions.check(&claims).await.expect("the session holds");
    // A refresh once the view is due (past half its life) has read the
    // account as it was…
    let refresh = eventually_async("the view due", Duration::from_secs(10), || async {
        let mut refresh = Box::pin(sessions.refresh());
        match (&mut refresh).now_or_never() {
            None => Some(refresh),
            Some(read) => {
                assert_eq!(read.expect("refresh"), 0, "nothing to read");
                None
            }
        }
    })
    .await
    .expect("due");
    eventually_async("the read", Duration::from_secs(10), || async {
        (account_lookups(&db) >= 2).then_some(())
    })
    .await
    .expect("the read ran");
    // …when this host ends the account's sessions.
    change_password(&db, alice.id).await;
    sessions.forget(alice.id);
    refresh.await.expect("refresh");
    assert_eq!(
        sessions.check(&claims).await.expect_err("ended").code,
        "session_ended"
    );
    db.cleanup().await;
}

/// Runs `sessions`' refresh until it reads something.
async fn refreshed(sessions: &bothost::web::sessions::Sessions) {
    eventually_async("a refresh that reads", Duration::from_secs(10), || async {
        (sessions.refresh().await.expect("refresh") > 0).then_some(())
    })
    .await
    .expect("read again");
}

async fn change_password(db: &common::db::TestDb, id: i64) {
    db.store
        .update_user(
            id,
            bothost::store::UserChange {
                password_hash: Some("new hash".into()),
                role: None,
                disabled_at: None,
            },
        )
        .await
        .expect("update")
        .expect("the user");
}

/// A user who comes back after a pause longer than the view is kept fresh
/// is kept fresh again from that request on: the lookup it waited for
/// counts as wanted.
#[actix_rt::test]
async fn a_user_back_after_a_long_pause_is_kept_fresh_again() {
    let (db, _, _, claims) = alice_and_sessions().await;
    // Views trusted 2 s, kept fresh 1.5 s after a request.
    let sessions = bothost::web::sessions::Sessions::with_times(
        db.store.clone(),
        Duration::from_secs(2),
        Duration::from_millis(1500),
    );
    sessions.check(&claims).await.expect("the session holds");
    // Past both, with no request meanwhile: the next one waits for a
    // lookup of its own.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    sessions.check(&claims).await.expect("the session holds");
    assert_eq!(account_lookups(&db), 2);
    refreshed(&sessions).await;
    assert_eq!(account_lookups(&db), 3);
    db.cleanup().await;
}

/// A store with one account, alice, this host's view of sessions on it,
/// and a token of hers.
async fn alice_and_sessions() -> (
    common::db::TestDb,
    bothost::store::User,
    bothost::web::sessions::Sessions,
    bothost::web::auth::Claims,
) {
    let db = common::db::sqlite(&bothost::config::DatabaseConfig::default()).await;
    let alice = db
        .store
        .create_user("alice", "hash", bothost::store::UserRole::User)
        .await
        .expect("user");
    let sessions = bothost::web::sessions::Sessions::with_times(
        db.store.clone(),
        Duration::from_secs(3),
        bothost::web::sessions::KEEP_FRESH_FOR,
    );
    let claims = bothost::web::auth::Claims {
        sub: alice.id,
        name: "alice".into(),
        generation: alice.token_generation,
        jti: "tab".into(),
        iat: 0,
        exp: u64::MAX,
    };
    (db, alice, sessions, claims)
}

/// Account lookups `db`'s store has made.
fn account_lookups(db: &common::db::TestDb) -> u64 {
    db.metrics
        .render()
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                "bothost_db_query_duration_seconds_count{query=\"users_and_revoked_tokens\"} ",
            )?
            .parse()
            .ok()
        })
        .unwrap_or(0)
}
