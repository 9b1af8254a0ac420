//! Rolling the schema back and forward with data in place, through the CLI,
//! on both backends: `bothost migrate --down-to VERSION` reverts the newer
//! migrations with their down.sql and keeps every row; `bothost migrate`
//! brings them back; a host on the result serves the same users.

mod common;

use bothost::config::{DatabaseTarget, Secret};
use bothost::store::dump;
use bothost_testkit::PgDatabase;
use common::web::{login, register};
use common::*;
use serde_json::json;

const INIT: &str = "2026-11-25-000001";
const USERNAMES_CI: &str = "2026-11-30-000001";
const SESSIONS: &str = "2026-11-30-000002";
const SEARCH: &str = "2026-11-30-000003";
const REVOKED_TOKENS: &str = "2026-11-30-000004";
const FLEET: &str = "2026-11-30-000005";
const TOUCH: &str = "2026-11-30-000006";
const UNLOGGED_WINDOWS: &str = "2026-11-30-000007";
/// Every migration after INIT, newest first.
const AFTER_INIT: [&str; 7] = [
    UNLOGGED_WINDOWS,
    TOUCH,
    FLEET,
    REVOKED_TOKENS,
    SEARCH,
    SESSIONS,
    USERNAMES_CI,
];

fn config(url: &str) -> String {
    format!(
        "{FAST_SUPERVISOR}\n[database]\nurl = \"{url}\"\n[backup]\nschedule = \"off\"\n{}",
        bots(&["echo"])
    )
}

fn down_and_up(url: &str, target: DatabaseTarget) {
    let host = TestHost::start_with_config(&config(url));
    let alice = register(&host.url, "alice");
    let conv = alice.conversation("echo");
    let res = alice.post(
        &format!("/api/v1/conversations/{conv}/messages"),
        json!({"client_msg_id": "m1", "content": "remember me"}),
    );
    assert_eq!(res.status(), 200);
    // One account per name, whatever its case.
    let res = common::web::client()
        .post(format!("{}/api/v1/auth/register", host.url))
        .json(&json!({"username": "ALICE", "password": "correct horse battery"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 409);
    assert!(login(&host.url, "Alice").is_some(), "login ignores case");
    let rt = runtime();
    let before = rt.block_on(dump::contents(&target)).unwrap();
    assert_eq!(before.schema_version, AFTER_INIT[0].replace('-', ""));

    let out = host.cli(&["migrate", "--down-to", INIT]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for version in AFTER_INIT {
        assert!(
            stdout.contains(&format!("reverted {}", version.replace('-', ""))),
            "{stdout}"
        );
    }
    let down = rt.block_on(dump::contents(&target)).unwrap();
    assert_eq!(down.rows, before.rows, "every row kept");
    assert_eq!(down.schema_version, INIT.replace('-', ""));
    let status = rt
        .block_on(bothost::store::migration_status(&target))
        .unwrap();
    assert_eq!(status.pending.len(), AFTER_INIT.len(), "{status:?}");

    // A version that is not applied is refused, naming what is.
    let out = host.cli(&["migrate", "--down-to", "2020-01-01-000000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not applied"));

    let out = host.cli(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let up = rt.block_on(dump::contents(&target)).unwrap();
    assert_eq!(up, before, "forward again, nothing lost");
    drop(host);
    let again = TestHost::start_with_config(&config(url));
    let alice = login(&again.url, "alice").expect("alice logs in");
    assert_eq!(alice.history(conv).len(), 2);
}

#[test]
fn sqlite_goes_down_and_up_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bothost.db");
    down_and_up(
        &format!("sqlite://{}", db.display()),
        DatabaseTarget::Sqlite(db.clone()),
    );
}

#[test]
fn postgres_goes_down_and_up_with_its_data() {
    let Some(base) = bothost_testkit::test_database_url() else {
        return;
    };
    let rt = runtime();
    let db = rt
        .block_on(PgDatabase::create(&base, "migrations"))
        .unwrap();
    down_and_up(
        &db.url,
        DatabaseTarget::Postgres(Secret::from(db.url.clone())),
    );
    rt.block_on(db.drop_database()).unwrap();
}
