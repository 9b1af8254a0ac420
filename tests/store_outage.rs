//! PostgreSQL down and back, on a throwaway server this test starts itself
//! (initdb and pg_ctl from the machine's postgresql package, on a free
//! port): requests fail fast with a clear error while it is down, `/readyz`
//! says so, and everything recovers without restarting bothost, with no
//! acknowledged row lost.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bothost::config::{DatabaseConfig, DatabaseTarget, Secret};
use bothost::metrics::Metrics;
use bothost::store::{self, Store, StoreError, UserRole};
use bothost_testkit::ThrowawayPg;
use common::*;

#[derive(Default)]
struct Log {
    acked: Vec<String>,
    errors: Vec<(Duration, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_fast_while_postgres_is_down_and_recover_with_nothing_lost() {
    let Some(pg) = ThrowawayPg::start() else {
        return;
    };
    let target = DatabaseTarget::Postgres(Secret::from(pg.url()));
    store::migrate(&target).await.unwrap();
    let config = DatabaseConfig {
        pool_size: 4,
        pool_max: 4,
        acquire_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        ..DatabaseConfig::default()
    };
    let store = Store::connect(&config, &target, Metrics::new().unwrap()).unwrap();
    let user = store
        .create_user("alice", "h", UserRole::User)
        .await
        .unwrap();
    let conv = store
        .create_conversation(user.id, "helper", "")
        .await
        .unwrap()
        .id;

    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, log, stop) = (store.clone(), log.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = format!("w{i}");
                let started = Instant::now();
                let result = store
                    .begin_user_turn(conv, &id, "hello", 20, None, None)
                    .await;
                {
                    let mut log = log.lock().unwrap();
                    match result {
                        Ok(_) => log.acked.push(id),
                        Err(e @ StoreError::Unavailable(_)) => {
                            log.errors.push((started.elapsed(), e.to_string()))
                        }
                        Err(other) => panic!("not a clear outage error: {other:?}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let wait = |what: &'static str, limit: Duration, cond: Box<dyn Fn(&Log) -> bool + Send>| {
        let log = log.clone();
        async move {
            eventually_async(what, limit, || async {
                cond(&log.lock().unwrap()).then_some(())
            })
            .await
            .unwrap();
        }
    };
    wait(
        "writes before the outage",
        Duration::from_secs(10),
        Box::new(|l| l.acked.len() >= 20),
    )
    .await;

    pg.stop();
    wait(
        "errors while down",
        Duration::from_secs(15),
        Box::new(|l| l.errors.len() >= 5),
    )
    .await;
    assert!(store.ping().await.is_err());
    {
        let log = log.lock().unwrap();
        for (took, message) in &log.errors {
            assert!(
                *took < Duration::from_secs(3),
                "failed fast, not after {took:?}: {message}"
            );
            assert!(
                message.starts_with("the database is unavailable"),
                "{message}"
            );
        }
    }

    let acked_before = log.lock().unwrap().acked.len();
    pg.start_again();
    wait(
        "writes after the restart",
        Duration::from_secs(30),
        Box::new(move |l| l.acked.len() >= acked_before + 10),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    let mut stored = BTreeSet::new();
    let mut before = None;
    loop {
        let page = store.history(conv, before, 100).await.unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        stored.extend(page.into_iter().filter_map(|m| m.client_msg_id));
    }
    let log = log.lock().unwrap();
    let lost: Vec<_> = log
        .acked
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

#[test]
fn readyz_follows_the_database_and_the_host_recovers_without_a_restart() {
    let Some(pg) = ThrowawayPg::start() else {
        return;
    };
    let host = TestHost::start_with_config(&format!(
        "{FAST_SUPERVISOR}\n{}\n[database]\nurl = \"{}\"\nacquire_timeout = \"1s\"\nconnect_timeout = \"1s\"\n",
        bots(&["alpha"]),
        pg.url()
    ));
    let pid = host.pid();
    let (code, body) = host.http_get("/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"backend\":\"postgres\""), "{body}");

    pg.stop();
    let body = host.wait_for(
        "/readyz to report the store down",
        Duration::from_secs(15),
        || {
            let (code, body) = host.http_get("/readyz");
            (code == 503).then_some(body)
        },
    );
    assert!(body.contains("the database is unavailable"), "{body}");
    assert!(
        body.contains("\"alpha\":\"ready\""),
        "the workers are fine: {body}"
    );

    pg.start_again();
    host.wait_for("/readyz to recover", Duration::from_secs(30), || {
        (host.http_get("/readyz").0 == 200).then_some(())
    });
    assert_eq!(host.pid(), pid);
    let log = host.log();
    assert!(
        log.contains("the database is unavailable") || log.contains("store ready"),
        "{log}"
    );
    assert!(
        !log.contains("hunter2"),
        "the database password reached the log"
    );
}

/// The database goes away while a reply streams: the user is told the
/// reply could not be saved (their message is), the operator's log says
/// so, and the turn is counted once, as the user saw it end.
#[test]
fn a_reply_that_cannot_be_stored_is_counted_once_and_logged() {
    let Some(pg) = ThrowawayPg::start() else {
        return;
    };
    let host = TestHost::start_with_config(&format!(
        "{FAST_SUPERVISOR}\n[[bots]]\nname = \"slow\"\n[bots.builtin]\ntoken_delay = \"60ms\"\n\
         [database]\nurl = \"{}\"\nacquire_timeout = \"1s\"\nconnect_timeout = \"1s\"\n",
        pg.url()
    ));
    let alice = common::web::register(&host.url, "alice");
    let conv = alice.conversation("slow");
    let end = runtime().block_on(async {
        let mut ws = alice.ws().await;
        ws.chat(conv, "m1", "tell me something long while the database goes")
            .await;
        assert_eq!(ws.next().await["type"], "ack");
        assert_eq!(ws.next().await["type"], "delta");
        pg.stop();
        loop {
            let f = ws.next().await;
            if f["type"] != "delta" {
                break f;
            }
        }
    });
    assert_eq!(end["type"], "error", "{end}");
    assert_eq!(end["code"], "store_unavailable", "{end}");
    let count = |outcome: &str| {
        host.metric(&format!(
            "bothost_chat_messages_total{{outcome=\"{outcome}\"}}"
        ))
        .unwrap_or(0.0)
    };
    assert_eq!(
        (count("complete"), count("unavailable")),
        (0.0, 1.0),
        "counted once"
    );
    assert!(host.log().contains("the reply could not be saved"));
}
