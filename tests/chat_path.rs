//! The chat path's storage guarantees, with real workers and a real store
//! on each backend: the user's message is stored before the bot sees it,
//! a resend never asks the bot twice, and a reply cut off by a crash or a
//! departed caller is stored with exactly what was shown.

mod common;

use std::path::Path;
use std::time::Duration;

use bothost::chat::{Ask, ChatEvent, Chats};
use bothost::config::{Config, DatabaseConfig};
use bothost::startup::Host;
use bothost::store::{Conversation, Store, UserRole};
use bothost::supervisor::GetStatus;
use bothost::turn::ErrorCode;
use common::db::{backends, TestDb};
use common::eventually_async;
use tokio::sync::mpsc;

/// The real host, in-process, on `db`'s database.
async fn host(db: &TestDb) -> (tempfile::TempDir, Host) {
    let dir = tempfile::tempdir().unwrap();
    let worker = Path::new(common::BOTHOST).with_file_name("bot-worker");
    let text = format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{}\"\n\
         [supervisor]\nruntime_dir = \"run\"\nworker_binary = \"{}\"\nrestart_schedule = \"off\"\n\
         backoff_initial = \"50ms\"\nbackoff_max = \"100ms\"\n\
         [[bots]]\nname = \"fast\"\n[bots.builtin]\ntoken_delay = \"0s\"\n\
         [[bots]]\nname = \"slow\"\n[bots.builtin]\ntoken_delay = \"100ms\"\n",
        db.url(),
        worker.display()
    );
    let config = Config::parse(&text, &dir.path().join("supervisor.toml"), Vec::new()).unwrap();
    let host = Host::build(config).await.unwrap();
    (dir, host)
}

async fn conversation(store: &Store, user: &str, bot: &str) -> Conversation {
    let owner = match store.user_by_name(user).await.unwrap() {
        Some(u) => u,
        None => store.create_user(user, "h", UserRole::User).await.unwrap(),
    };
    store.create_conversation(owner.id, bot, "").await.unwrap()
}

/// Starts a send; returns the event stream.
fn send(
    chats: &Chats,
    conv: &Conversation,
    id: &str,
    text: &str,
    window: u32,
) -> mpsc::UnboundedReceiver<ChatEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (chats, conv, id, text) = (chats.clone(), conv.clone(), id.to_owned(), text.to_owned());
    actix_rt::spawn(async move { chats.send(&conv, &Ask::message(id, text), window, tx).await });
    rx
}

/// Reads to the end: (the replay flag, if `Accepted` was still to come; the
/// streamed text; the last event).
async fn drain(rx: &mut mpsc::UnboundedReceiver<ChatEvent>) -> (Option<bool>, String, ChatEvent) {
    let mut replay = None;
    let mut text = String::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the turn ends")
            .expect("events until the end");
        match event {
            ChatEvent::Accepted { replay: r, .. } => replay = Some(r),
            ChatEvent::Delta(d) => text.push_str(&d),
            last => return (replay, text, last),
        }
    }
}

async fn for_each_backend(test: impl AsyncFn(&TestDb, &Chats, &Host)) {
    for db in backends(&DatabaseConfig::default()).await {
        let (_dir, host) = host(&db).await;
        test(&db, host.chats(), &host).await;
        host.stop().await.unwrap();
        db.cleanup().await;
    }
}

#[actix_rt::test]
async fn a_turn_is_stored_whole_and_a_resend_replays_it_without_the_bot() {
    for_each_backend(async |db, chats, _| {
        let s = &db.store;
        let conv = conversation(s, "alice", "fast").await;
        let (replay, text, last) = drain(&mut send(chats, &conv, "c1", "hello there", 20)).await;
        assert_eq!(replay, Some(false));
        let ChatEvent::Done { reply } = last else {
            panic!("{last:?}")
        };
        assert_eq!(
            (reply.status.as_str(), reply.content.as_str()),
            ("complete", text.as_str())
        );
        assert!(reply.completion_tokens.unwrap() > 5);

        let (replay, again, last) = drain(&mut send(chats, &conv, "c1", "hello there", 20)).await;
        assert_eq!(replay, Some(true), "{}", s.backend());
        assert_eq!(again, text);
        let ChatEvent::Done { reply: replayed } = last else {
            panic!("{last:?}")
        };
        assert_eq!(replayed.id, reply.id);
        assert_eq!(s.history(conv.id, None, 100).await.unwrap().len(), 2);
    })
    .await;
}

#[actix_rt::test]
async fn a_worker_killed_mid_reply_leaves_the_partial_reply_stored() {
    for_each_backend(async |db, chats, host| {
        let s = &db.store;
        let conv = conversation(s, "alice", "slow").await;
        let mut rx = send(chats, &conv, "k1", "tell me everything", 20);
        let mut shown = String::new();
        while shown.split_whitespace().count() < 3 {
            match rx.recv().await.unwrap() {
                ChatEvent::Delta(d) => shown.push_str(&d),
                ChatEvent::Accepted { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        let status = host.supervisor().send(GetStatus).await.unwrap();
        let pid = status
            .bots
            .iter()
            .find(|b| b.name == "slow")
            .unwrap()
            .pid
            .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let (_, rest, last) = drain(&mut rx).await;
        shown.push_str(&rest);
        let ChatEvent::Failed {
            error,
            reply: Some(reply),
        } = last
        else {
            panic!("{last:?}")
        };
        assert_eq!(error.code, ErrorCode::WorkerDied);
        assert_eq!(
            (reply.status.as_str(), reply.content.as_str()),
            ("partial", shown.as_str()),
            "{}",
            s.backend()
        );
        // The bot comes back for the next turn.
        eventually_async("slow to come back", Duration::from_secs(10), || async {
            let st = host.supervisor().send(GetStatus).await.unwrap();
            st.bots
                .iter()
                .any(|b| b.name == "slow" && b.pid.is_some_and(|p| p != pid))
                .then_some(())
        })
        .await
        .unwrap();
    })
    .await;
}

#[actix_rt::test]
async fn a_caller_that_goes_away_cancels_the_turn_and_keeps_what_it_saw() {
    for_each_backend(async |db, chats, host| {
        let s = &db.store;
        let conv = conversation(s, "alice", "slow").await;
        let mut rx = send(chats, &conv, "g1", "a long answer please", 20);
        let mut shown = String::new();
        while shown.is_empty() {
            if let ChatEvent::Delta(d) = rx.recv().await.unwrap() {
                shown.push_str(&d);
            }
        }
        drop(rx);
        // The partial reply may already be stored: find the question by its id.
        let user_msg = s
            .history(conv.id, None, 10)
            .await
            .unwrap()
            .into_iter()
            .find(|m| m.client_msg_id.as_deref() == Some("g1"))
            .expect("the question is stored");
        // The worker hears of the cancel, and the turn ends.
        eventually_async("the turn to end", Duration::from_secs(5), || async {
            let st = host.supervisor().send(GetStatus).await.ok()?;
            let slow = st.bots.into_iter().find(|b| b.name == "slow")?;
            (slow.in_flight == 0).then_some(())
        })
        .await
        .unwrap();
        // (While it streamed, the reply was already written down `partial`.)
        let reply = eventually_async("the reply to be stored", Duration::from_secs(5), || async {
            s.reply_to(user_msg.id).await.unwrap()
        })
        .await
        .unwrap_or_else(|e| panic!("{e} on {}; user message {user_msg:?}", s.backend()));
        assert_eq!(reply.status.as_str(), "partial");
        assert!(
            reply.content.starts_with(&shown),
            "{:?} vs {shown:?}",
            reply.content
        );
        assert!(
            reply.content.len() < 60,
            "cancelled, not finished: {:?}",
            reply.content
        );
    })
    .await;
}

#[actix_rt::test]
async fn when_the_bot_cannot_answer_the_message_stays_stored_for_a_retry() {
    for_each_backend(async |db, chats, _| {
        let s = &db.store;
        let conv = conversation(s, "alice", "no-such-bot").await;
        let (replay, text, last) = drain(&mut send(chats, &conv, "u1", "anyone?", 20)).await;
        assert!(replay == Some(false) && text.is_empty());
        let ChatEvent::Failed { error, reply: None } = last else {
            panic!("{last:?}")
        };
        assert_eq!(error.code, ErrorCode::UnknownBot);
        let history = s.history(conv.id, None, 100).await.unwrap();
        assert_eq!(
            history.len(),
            1,
            "{}: the question is kept, no reply",
            s.backend()
        );
        assert_eq!(history[0].content, "anyone?");
    })
    .await;
}

#[actix_rt::test]
async fn the_same_message_sent_twice_at_once_is_answered_once() {
    for_each_backend(async |db, chats, _| {
        let s = &db.store;
        let conv = conversation(s, "alice", "slow").await;
        let mut a = send(chats, &conv, "d1", "only once", 20);
        let mut b = send(chats, &conv, "d1", "only once", 20);
        let (_, _, first) = drain(&mut a).await;
        let (_, _, second) = drain(&mut b).await;
        let codes: Vec<_> = [&first, &second]
            .iter()
            .map(|e| match e {
                ChatEvent::Done { .. } => None,
                ChatEvent::Failed { error, .. } => Some(error.code),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            codes.contains(&None) && codes.contains(&Some(ErrorCode::InProgress)),
            "{codes:?}"
        );
        assert_eq!(
            s.history(conv.id, None, 100).await.unwrap().len(),
            2,
            "{}",
            s.backend()
        );
    })
    .await;
}

#[actix_rt::test]
async fn the_bot_sees_only_its_history_window() {
    for_each_backend(async |db, chats, _| {
        let s = &db.store;
        let conv = conversation(s, "alice", "fast").await;
        drain(&mut send(chats, &conv, "w1", "one two three four five", 20)).await;
        // Window 1: the bot sees only the new message, 2 words.
        let (_, _, last) = drain(&mut send(chats, &conv, "w2", "six seven", 1)).await;
        let ChatEvent::Done { reply } = last else {
            panic!("{last:?}")
        };
        assert_eq!(reply.prompt_tokens, Some(2), "{}", s.backend());
        // Window 20: it sees everything before too.
        let (_, _, last) = drain(&mut send(chats, &conv, "w3", "eight", 20)).await;
        let ChatEvent::Done { reply } = last else {
            panic!("{last:?}")
        };
        assert!(
            reply.prompt_tokens.unwrap() > 20,
            "{:?}",
            reply.prompt_tokens
        );
    })
    .await;
}

/// Restarting every bot of a host whose Supervisor has stopped fails; it
/// does not report "0 failed" for restarts that never happened.
#[actix_rt::test]
async fn restarting_all_bots_without_a_supervisor_fails() {
    let db = common::db::sqlite(&DatabaseConfig::default()).await;
    let (_dir, host) = host(&db).await;
    let supervisor = host.supervisor().clone();
    let done =
        bothost::supervisor::restart_all(&supervisor, bothost::status::RestartReason::Operator)
            .await
            .expect("a running host restarts every bot");
    assert_eq!(done.len(), 2);
    host.stop().await.unwrap();
    eventually_async("the supervisor stopped", Duration::from_secs(5), || {
        let s = supervisor.clone();
        async move { (!s.connected()).then_some(()) }
    })
    .await
    .unwrap();
    let e = bothost::supervisor::restart_all(&supervisor, bothost::status::RestartReason::Operator)
        .await
        .expect_err("nothing to restart with");
    assert_eq!(e.code, bothost::status::RestartErrorCode::SupervisorGone);
}
