//! The store on both backends: migrations, schema parity, history reads,
//! idempotent writes under concurrency, and the pool growing by itself.

mod common;

use secrecy::ExposeSecret;
use std::collections::BTreeSet;
use std::time::Duration;

use bothost::config::{DatabaseConfig, DatabaseTarget};
use bothost::store::{self, NewReply, ReplyStatus, Store, StoreError, UserRole};
use common::db::{backends, pg_base_url};
use common::eventually_async;
use diesel::sql_types::{BigInt, Text};
use diesel::{Connection, QueryableByName, SqliteConnection};
use diesel_async::{AsyncConnection, AsyncPgConnection};

fn config() -> DatabaseConfig {
    DatabaseConfig {
        pool_size: 8,
        pool_max: 8,
        ..DatabaseConfig::default()
    }
}

/// Stores a user message as a chat turn does; the row and whether it is
/// new.
async fn append(
    store: &Store,
    conversation: i64,
    client_msg_id: &str,
    content: &str,
) -> Result<(store::Message, bool), StoreError> {
    let turn = store
        .begin_user_turn(conversation, client_msg_id, content, 20, None, None)
        .await?;
    Ok((turn.message, turn.created))
}

async fn user_and_conversation(store: &Store, name: &str) -> (i64, i64) {
    let user = store
        .create_user(name, "hash", UserRole::User)
        .await
        .unwrap();
    let conv = store
        .create_conversation(user.id, "helper", "")
        .await
        .unwrap();
    (user.id, conv.id)
}

#[tokio::test]
async fn migrations_apply_from_empty_and_rerun_as_a_no_op() {
    for db in backends(&config()).await {
        // `backends` already migrated from empty; a second run finds nothing.
        let again = store::migrate(&db.target).await.unwrap();
        assert!(again.is_empty(), "{}: {again:?}", db.store.backend());
        db.store.ping().await.unwrap();
        db.cleanup().await;
    }
}

#[tokio::test]
async fn users_are_unique_and_the_hash_never_serializes() {
    for db in backends(&config()).await {
        let s = &db.store;
        let alice = s
            .create_user("alice", "secret-hash", UserRole::Admin)
            .await
            .unwrap();
        let err = s
            .create_user("alice", "x", UserRole::User)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m == "the user 'alice' already exists"),
            "{}: {err:?}",
            s.backend()
        );
        assert_eq!(s.user_by_name("alice").await.unwrap(), Some(alice.clone()));
        assert_eq!(s.user(alice.id).await.unwrap(), Some(alice.clone()));
        assert_eq!(s.user_by_name("bob").await.unwrap(), None);
        let json = serde_json::to_string(&alice).unwrap();
        assert!(!json.contains("secret-hash"), "{json}");
        db.cleanup().await;
    }
}

#[tokio::test]
async fn accounts_come_back_with_their_own_ended_tokens_only() {
    for db in backends(&config()).await {
        let s = &db.store;
        let alice = s.create_user("alice", "h", UserRole::User).await.unwrap();
        let bob = s.create_user("bob", "h", UserRole::User).await.unwrap();
        let far = 4_000_000_000;
        let one = |id| async move { s.users_and_revoked_tokens(&[id]).await.unwrap().remove(&id) };
        assert_eq!(
            one(alice.id).await,
            Some((alice.clone(), vec![])),
            "{}",
            s.backend()
        );
        for jti in ["a1", "a2"] {
            s.revoke_token(alice.id, jti, far).await.unwrap();
        }
        s.revoke_token(bob.id, "b1", far).await.unwrap();
        // Several accounts in one statement, an unknown one left out.
        let mut found = s
            .users_and_revoked_tokens(&[alice.id, bob.id, bob.id + 100])
            .await
            .unwrap();
        assert_eq!(found.len(), 2, "{}", s.backend());
        let (user, mut revoked) = found.remove(&alice.id).unwrap();
        revoked.sort();
        assert_eq!(
            (user, revoked),
            (alice.clone(), vec!["a1".into(), "a2".into()])
        );
        assert_eq!(
            found.remove(&bob.id),
            Some((bob.clone(), vec!["b1".into()]))
        );
        assert_eq!(one(bob.id).await, Some((bob.clone(), vec!["b1".into()])));
        assert_eq!(one(bob.id + 100).await, None);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn history_pages_newest_first_and_context_is_the_last_window_in_order() {
    for db in backends(&config()).await {
        let s = &db.store;
        let (_, conv) = user_and_conversation(s, "alice").await;
        let mut ids = Vec::new();
        for i in 0..25 {
            let (m, created) = append(s, conv, &format!("c{i}"), &format!("message {i}"))
                .await
                .unwrap();
            assert!(created);
            ids.push(m.id);
        }
        let page = s.history(conv, None, 10).await.unwrap();
        let got: Vec<i64> = page.iter().map(|m| m.id).collect();
        let want: Vec<i64> = ids.iter().rev().take(10).copied().collect();
        assert_eq!(got, want, "{}", s.backend());
        let older = s
            .history(conv, Some(*got.last().unwrap()), 10)
            .await
            .unwrap();
        assert_eq!(older[0].id, ids[14]);
        assert_eq!(
            s.history(conv, None, 1000).await.unwrap().len(),
            25,
            "limit is capped, not refused"
        );

        let context = s.context(conv, 3).await.unwrap();
        let contents: Vec<&str> = context.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, vec!["message 22", "message 23", "message 24"]);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_conversation_is_visible_to_its_owner_only_and_lists_by_activity() {
    for db in backends(&config()).await {
        let s = &db.store;
        let (alice, first) = user_and_conversation(s, "alice").await;
        let (bob, bobs) = user_and_conversation(s, "bob").await;
        let second = s
            .create_conversation(alice, "coder", "code")
            .await
            .unwrap()
            .id;
        assert!(s.conversation(alice, first).await.unwrap().is_some());
        assert_eq!(
            s.conversation(bob, first).await.unwrap(),
            None,
            "{}",
            s.backend()
        );
        assert_eq!(s.conversation(alice, bobs).await.unwrap(), None);

        // Writing to the first makes it the most recently active.
        tokio::time::sleep(Duration::from_millis(5)).await;
        append(s, first, "x", "hi").await.unwrap();
        let list: Vec<i64> = s
            .conversations(alice, 10, None)
            .await
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(list, vec![first, second]);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_first_message_names_its_untitled_conversation_in_the_same_trip() {
    for db in backends(&config()).await {
        let s = &db.store;
        let backend = s.backend();
        let (user, conv) = user_and_conversation(s, "alice").await;
        let named = s.create_conversation(user, "helper", "Kept").await.unwrap();
        let title = |id| async move { s.conversation(user, id).await.unwrap().unwrap() };

        let first = s
            .begin_user_turn(conv, "m1", "hello there", 20, None, Some("hello there"))
            .await
            .unwrap();
        let after = title(conv).await;
        assert_eq!(after.title, "hello there", "{backend}");
        // The insert's trigger still marks it active, after the title.
        assert_eq!(after.updated_at, first.message.created_at, "{backend}");

        // Titled now: a later message, or a resend, leaves it.
        s.begin_user_turn(conv, "m2", "and more", 20, None, Some("and more"))
            .await
            .unwrap();
        let resent = s
            .begin_user_turn(conv, "m1", "hello there", 20, None, Some("other"))
            .await
            .unwrap();
        assert!(!resent.created);
        assert_eq!(title(conv).await.title, "hello there", "{backend}");
        // A title given at creation stands.
        s.begin_user_turn(named.id, "n1", "hi", 20, None, Some("hi"))
            .await
            .unwrap();
        assert_eq!(title(named.id).await.title, "Kept", "{backend}");
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_new_turn_stores_its_message_with_its_context_and_lease() {
    for db in backends(&config()).await {
        let s = &db.store;
        let backend = s.backend();
        let (user, conv) = user_and_conversation(s, "alice").await;
        for i in 0..4 {
            append(s, conv, &format!("old{i}"), &format!("old {i}"))
                .await
                .unwrap();
        }
        let terms = || store::LeaseTerms {
            user_id: user,
            holder: "this-host",
            until: store::now_ms() + 10_000,
            max_live: 4,
        };
        let turn = s
            .begin_user_turn(conv, "new", "the new one", 3, Some(terms()), None)
            .await
            .unwrap();
        assert!(turn.created, "{backend}");
        assert_eq!(turn.message.content, "the new one");
        let stored = s.history(conv, None, 10).await.unwrap();
        assert_eq!(stored[0], turn.message, "{backend}: stored, once");
        assert_eq!(stored.len(), 5, "{backend}");
        // The context came with it (oldest first, ending with the new
        // message): one statement on PostgreSQL, one blocking call on SQLite.
        let context: Vec<_> = turn
            .context
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.content)
            .collect();
        assert_eq!(context, ["old 2", "old 3", "the new one"], "{backend}");
        if backend == "postgres" {
            // And the lease, in the same statement.
            assert!(turn.leased);
            let ttl = Duration::from_secs(10);
            let held = s.take_lease(turn.message.id, user, "another-host", ttl);
            assert!(!held.await.unwrap(), "another host finds the lease held");
        } else {
            assert!(!turn.leased, "{backend}: the caller takes the lease");
        }
        // A resend: the stored message, and the caller does the rest.
        let again = s
            .begin_user_turn(conv, "new", "sent again", 3, Some(terms()), None)
            .await
            .unwrap();
        assert_eq!(
            (again.created, again.context, again.leased),
            (false, None, false)
        );
        assert_eq!(again.message, turn.message, "{backend}");
        if backend == "postgres" {
            // Read back by the same statement, not a second one.
            assert!(
                !db.metrics
                    .render()
                    .contains("bothost_db_query_duration_seconds_count{query=\"user_message\"}"),
                "a resend took a second round trip"
            );
        }
        db.cleanup().await;
    }
}

/// On a shared database a user's turns in flight on every host are
/// counted where a new turn's lease is taken: in the statement that would
/// store its message.
#[tokio::test]
async fn a_new_message_waits_for_room_among_its_users_turns_in_flight() {
    let Some(base) = pg_base_url() else {
        return;
    };
    let db = common::db::postgres(&base, &config()).await;
    let s = &db.store;
    let (user, conv) = user_and_conversation(s, "alice").await;
    let (other, other_conv) = user_and_conversation(s, "bob").await;
    let terms = |user_id, holder| store::LeaseTerms {
        user_id,
        holder,
        until: store::now_ms() + 10_000,
        max_live: 2,
    };
    let begin = |conv, id: &'static str, user, holder| {
        s.begin_user_turn(conv, id, "hi", 20, Some(terms(user, holder)), None)
    };
    // Two in flight, on two hosts.
    assert!(begin(conv, "a", user, "host-a").await.unwrap().leased);
    assert!(begin(conv, "b", user, "host-b").await.unwrap().leased);
    let refused = begin(conv, "c", user, "host-a").await;
    assert!(
        matches!(refused, Err(StoreError::TurnsInFlight { max: 2 })),
        "{refused:?}"
    );
    let history = s.history(conv, None, 10).await.unwrap();
    assert_eq!(history.len(), 2, "the refused message is not stored");
    // A resend of one of them is its stored message, as always.
    let again = begin(conv, "a", user, "host-b").await.unwrap();
    assert_eq!(
        (again.created, again.message.content.as_str()),
        (false, "hi")
    );
    // Another user is not affected.
    assert!(
        begin(other_conv, "x", other, "host-a")
            .await
            .unwrap()
            .created
    );
    // A reply stored gives its lease back: room again.
    let first = history
        .iter()
        .find(|m| m.client_msg_id.as_deref() == Some("a"))
        .unwrap();
    let reply = NewReply {
        conversation_id: conv,
        reply_to: first.id,
        content: "hello",
        status: ReplyStatus::Complete,
        prompt_tokens: None,
        completion_tokens: None,
    };
    s.put_reply(reply, false, Some("host-a")).await.unwrap();
    assert!(begin(conv, "c", user, "host-a").await.unwrap().created);
    db.cleanup().await;
}

#[tokio::test]
async fn a_turns_last_write_gives_its_lease_back_with_the_reply() {
    for db in backends(&config()).await {
        let s = &db.store;
        let backend = s.backend();
        let (user, conv) = user_and_conversation(s, "alice").await;
        let ttl = Duration::from_secs(10);
        let held_elsewhere =
            |id| async move { !s.take_lease(id, user, "another-host", ttl).await.unwrap() };
        let reply = |reply_to, content, status| NewReply {
            conversation_id: conv,
            reply_to,
            content,
            status,
            prompt_tokens: None,
            completion_tokens: None,
        };
        // Streamed: a partial write keeps the lease, the last one gives it
        // back with the reply brought up to date.
        let (first, _) = append(s, conv, "a", "first").await.unwrap();
        assert!(s
            .take_lease(first.id, user, "this-host", ttl)
            .await
            .unwrap());
        let partial = reply(first.id, "Hel", ReplyStatus::Partial);
        s.put_reply(partial, false, None).await.unwrap();
        if s.is_shared() {
            assert!(held_elsewhere(first.id).await, "{backend}: still held");
        }
        let done = reply(first.id, "Hello", ReplyStatus::Complete);
        let stored = s.put_reply(done, true, Some("this-host")).await.unwrap();
        assert_eq!(
            (stored.content.as_str(), stored.status),
            ("Hello", ReplyStatus::Complete),
            "{backend}"
        );
        // Short: one write, the reply and the release.
        let (second, _) = append(s, conv, "b", "second").await.unwrap();
        assert!(s
            .take_lease(second.id, user, "this-host", ttl)
            .await
            .unwrap());
        let done = reply(second.id, "Hi", ReplyStatus::Complete);
        let stored = s.put_reply(done, false, Some("this-host")).await.unwrap();
        assert_eq!(stored.content, "Hi", "{backend}");
        // Written again (a retry after a lost answer): the stored reply.
        let again = reply(second.id, "Hi again", ReplyStatus::Complete);
        let replayed = s.put_reply(again, false, Some("this-host")).await.unwrap();
        assert_eq!(replayed, stored, "{backend}");
        let history = s.history(conv, None, 10).await.unwrap();
        assert_eq!(history.len(), 4, "{backend}: one reply each");
        if s.is_shared() {
            // Given back: another host may take either (and would replay).
            for id in [first.id, second.id] {
                assert!(!held_elsewhere(id).await, "{backend}: {id} given back");
            }
        }
        db.cleanup().await;
    }
}

#[tokio::test]
async fn the_same_client_message_id_is_stored_once_and_replies_once() {
    for db in backends(&config()).await {
        let s = &db.store;
        let (_, conv) = user_and_conversation(s, "alice").await;
        let (first, created) = append(s, conv, "abc", "hello").await.unwrap();
        assert!(created);
        let (again, created) = append(s, conv, "abc", "hello again").await.unwrap();
        assert!(!created);
        assert_eq!(
            again,
            first,
            "{}: the resend returns the stored message",
            s.backend()
        );

        let reply = |content, status| NewReply {
            conversation_id: conv,
            reply_to: first.id,
            content,
            status,
            prompt_tokens: Some(1),
            completion_tokens: Some(2),
        };
        let stored = s
            .append_reply(reply("Hi th", ReplyStatus::Partial))
            .await
            .unwrap();
        assert_eq!(
            (stored.status.as_str(), stored.content.as_str()),
            ("partial", "Hi th")
        );
        let second = s
            .append_reply(reply("other", ReplyStatus::Complete))
            .await
            .unwrap();
        assert_eq!(second, stored, "one reply per user message");
        assert_eq!(s.reply_to(first.id).await.unwrap(), Some(stored));
        assert_eq!(s.history(conv, None, 100).await.unwrap().len(), 2);
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_nothing_and_duplicate_nothing() {
    for db in backends(&config()).await {
        let s = db.store.clone();
        let (_, shared) = user_and_conversation(&s, "alice").await;
        let mut tasks = Vec::new();
        // 8 conversations × 25 messages, plus 20 tasks racing one client id.
        for c in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let conv = s.create_conversation(1, "helper", "").await.unwrap().id;
                for i in 0..25 {
                    append(&s, conv, &format!("m{i}"), "x").await.unwrap();
                    append(&s, shared, &format!("c{c}-{i}"), "x").await.unwrap();
                }
                0usize
            }));
        }
        for _ in 0..20 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let (_, created) = append(&s, shared, "same", "race").await.unwrap();
                usize::from(created)
            }));
        }
        let mut created = 0;
        for t in tasks {
            created += t.await.unwrap();
        }
        assert_eq!(
            created,
            1,
            "{}: exactly one racer created the row",
            s.backend()
        );
        let all = s.history(shared, None, 100).await.unwrap();
        let mut count = all.len();
        let mut before = all.last().map(|m| m.id);
        while let Some(b) = before {
            let page = s.history(shared, Some(b), 100).await.unwrap();
            count += page.len();
            before = page.last().map(|m| m.id);
        }
        assert_eq!(count, 8 * 25 + 1, "{}", s.backend());
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_pool_grows_toward_its_max_by_itself() {
    let config = DatabaseConfig {
        pool_size: 2,
        pool_max: 4,
        pool_grow_window: Duration::from_secs(1),
        acquire_timeout: Duration::from_secs(10),
        ..DatabaseConfig::default()
    };
    for db in backends(&config).await {
        let s = db.store.clone();
        let (_, conv) = user_and_conversation(&s, "alice").await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let (s, stop) = (s.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    // Writes and reads: SQLite queues its writers in the
                    // store, so on it the readers are what fill the pool.
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        i += 1;
                        append(&s, conv, &format!("{w}-{i}"), "x").await.unwrap();
                        for _ in 0..8 {
                            s.history(conv, None, 100).await.unwrap();
                        }
                    }
                })
            })
            .collect();
        // Whether it grew is asserted below, with the figures.
        let _ = eventually_async("the pool to grow", Duration::from_secs(20), || async {
            (s.pool_snapshot().max >= 4).then_some(())
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(
            s.pool_snapshot().max,
            4,
            "{}: grew from 2 to its max",
            s.backend()
        );
        let rendered = db.metrics.render();
        assert!(
            rendered.contains("bothost_db_pool_connections{state=\"max\"}"),
            "{rendered}"
        );
        assert!(
            rendered.contains("bothost_db_query_duration_seconds_bucket{query=\"begin_user_turn\"")
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn the_orphan_sweep_fails_unanswered_messages_once_and_only_old_enough_ones() {
    use bothost::orphans::Sweep;
    for db in backends(&config()).await {
        let s = &db.store;
        let (_, conv) = user_and_conversation(s, "alice").await;
        let answered = append(s, conv, "a", "answered").await.unwrap().0;
        let reply = |to: i64, status| NewReply {
            conversation_id: conv,
            reply_to: to,
            content: "so far",
            status,
            prompt_tokens: None,
            completion_tokens: None,
        };
        s.append_reply(reply(answered.id, ReplyStatus::Complete))
            .await
            .unwrap();
        let cut = append(s, conv, "b", "cut off").await.unwrap().0;
        s.append_reply(reply(cut.id, ReplyStatus::Partial))
            .await
            .unwrap();
        let orphan = append(s, conv, "c", "orphan").await.unwrap().0;

        // Too young to judge: a turn somewhere may still be answering it.
        let mut patient = Sweep::new(s.clone(), Duration::from_secs(3600));
        assert_eq!(patient.run().await.unwrap(), 0, "{}", s.backend());
        assert!(s.reply_to(orphan.id).await.unwrap().is_none());

        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut sweep = Sweep::new(s.clone(), Duration::ZERO);
        assert_eq!(sweep.run().await.unwrap(), 1, "{}", s.backend());
        let marked = s.reply_to(orphan.id).await.unwrap().expect("a reply row");
        assert_eq!(
            (marked.status, marked.content.as_str()),
            (ReplyStatus::Failed, "")
        );
        let kept = s.reply_to(cut.id).await.unwrap().unwrap();
        assert_eq!(
            (kept.status, kept.content.as_str()),
            (ReplyStatus::Partial, "so far")
        );
        // Once: the next pass starts after what it judged, and a fresh sweep
        // (another host) finds nothing left either.
        assert_eq!(sweep.run().await.unwrap(), 0);
        assert_eq!(
            Sweep::new(s.clone(), Duration::ZERO).run().await.unwrap(),
            0
        );
        db.cleanup().await;
    }
}

#[derive(QueryableByName, Debug)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = BigInt)]
    not_null: i64,
}

#[derive(QueryableByName, Debug)]
struct Named {
    #[diesel(sql_type = Text)]
    name: String,
}

/// The `name` column of `sql` run with `$1` = `schema`.
async fn pg_names(conn: &mut AsyncPgConnection, schema: &str, sql: &str) -> Vec<String> {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(sql)
        .bind::<Text, _>(schema)
        .load::<Named>(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect()
}

#[tokio::test]
async fn both_backends_have_the_same_schema() {
    use diesel_async::RunQueryDsl;
    let Some(base) = pg_base_url() else { return };
    let pg = common::db::postgres(&base, &config()).await;
    let sqlite = common::db::sqlite(&config()).await;
    let (DatabaseTarget::Postgres(pg_url), DatabaseTarget::Sqlite(path)) =
        (&pg.target, &sqlite.target)
    else {
        unreachable!()
    };
    let schema = pg_url
        .expose_secret()
        .rsplit("%3D")
        .next()
        .unwrap()
        .to_owned();

    let mut conn = AsyncPgConnection::establish(pg_url.expose_secret())
        .await
        .unwrap();
    let pg_columns: BTreeSet<(String, String, bool)> = diesel::sql_query(
        "SELECT table_name::text, column_name::text, (CASE WHEN is_nullable = 'NO' THEN 1 ELSE 0 END)::int8 AS not_null \
         FROM information_schema.columns WHERE table_schema = $1 AND table_name <> '__diesel_schema_migrations'",
    )
    .bind::<Text, _>(&schema)
    .load::<Column>(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .map(|c| (c.table_name, c.column_name, c.not_null == 1))
    .collect();
    let pg_indexes: BTreeSet<String> = pg_names(
        &mut conn,
        &schema,
        "SELECT indexname::text AS name FROM pg_indexes WHERE schemaname = $1 AND indexname NOT LIKE '%_pkey' \
         AND tablename <> '__diesel_schema_migrations'",
    )
    .await
    .into_iter()
    .collect();
    let pg_fks: BTreeSet<String> = pg_names(
        &mut conn,
        &schema,
        "SELECT (tc.table_name || '.' || kcu.column_name || '->' || ccu.table_name)::text AS name \
         FROM information_schema.table_constraints tc \
         JOIN information_schema.key_column_usage kcu ON tc.constraint_name = kcu.constraint_name AND tc.table_schema = kcu.table_schema \
         JOIN information_schema.constraint_column_usage ccu ON tc.constraint_name = ccu.constraint_name AND tc.table_schema = ccu.table_schema \
         WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_schema = $1",
    )
    .await
    .into_iter()
    .collect();

    // Only the minute counts skip the WAL; everything users wrote survives
    // a crash of PostgreSQL and reaches its standbys.
    let unlogged: Vec<String> = pg_names(
        &mut conn,
        &schema,
        "SELECT c.relname::text AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relpersistence = 'u'",
    )
    .await
    .into_iter()
    .collect();
    assert_eq!(unlogged, ["rate_windows"]);

    let mut lite = SqliteConnection::establish(&path.display().to_string()).unwrap();
    let tables = [
        "users",
        "conversations",
        "messages",
        "revoked_tokens",
        "turn_leases",
        "rate_windows",
    ];
    let mut lite_columns = BTreeSet::new();
    let mut lite_fks = BTreeSet::new();
    for table in tables {
        #[derive(QueryableByName)]
        struct Info {
            #[diesel(sql_type = Text)]
            name: String,
            #[diesel(sql_type = BigInt)]
            notnull: i64,
            #[diesel(sql_type = BigInt)]
            pk: i64,
        }
        for c in diesel::RunQueryDsl::load::<Info>(
            diesel::sql_query(format!(
                "SELECT name, \"notnull\", pk FROM pragma_table_info('{table}')"
            )),
            &mut lite,
        )
        .unwrap()
        {
            // SQLite does not mark an INTEGER PRIMARY KEY NOT NULL; it is.
            lite_columns.insert((table.to_owned(), c.name, c.notnull == 1 || c.pk == 1));
        }
        lite_fks.extend(
            diesel::RunQueryDsl::load::<Named>(
                diesel::sql_query(format!(
                    "SELECT '{table}.' || \"from\" || '->' || \"table\" AS name FROM pragma_foreign_key_list('{table}')"
                )),
                &mut lite,
            )
            .unwrap()
            .into_iter()
            .map(|n| n.name),
        );
    }
    let lite_indexes: BTreeSet<String> = diesel::RunQueryDsl::load::<Named>(
        diesel::sql_query(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'",
        ),
        &mut lite,
    )
    .unwrap()
    .into_iter()
    .map(|n| n.name)
    .collect();

    // Full-text search is each backend's own: an index in PostgreSQL, an
    // FTS5 table (with its triggers) in SQLite, one name for both.
    let mut pg_indexes = pg_indexes;
    assert!(pg_indexes.remove("messages_search"), "{pg_indexes:?}");
    let fts: Vec<Named> = diesel::RunQueryDsl::load(
        diesel::sql_query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'messages_search' \
             AND sql LIKE '%fts5%'",
        ),
        &mut lite,
    )
    .unwrap();
    assert_eq!(fts.len(), 1, "SQLite's search table");
    assert_eq!(pg_columns, lite_columns, "columns and nullability");
    assert_eq!(pg_indexes, lite_indexes, "indexes");
    assert_eq!(pg_fks, lite_fks, "foreign keys");
    assert_eq!(lite_indexes.len(), 8, "{lite_indexes:?}");
    pg.cleanup().await;
}

/// Opening a connection must wait for a busy SQLite like a query does: a
/// writer holding the lock while the pool opens new connections used to fail
/// them at once with "database is locked" (a 503 to a user registering).
#[tokio::test]
async fn new_sqlite_connections_wait_for_a_busy_writer() {
    let db = common::db::sqlite(&config()).await;
    let DatabaseTarget::Sqlite(path) = &db.target else {
        unreachable!("sqlite() gives a SQLite target")
    };
    let mut writer = SqliteConnection::establish(&path.display().to_string()).unwrap();
    diesel::connection::SimpleConnection::batch_execute(&mut writer, "BEGIN EXCLUSIVE").unwrap();
    // Eight callers at once make the pool open eight new connections while
    // the writer holds the lock for a moment.
    let users = (0..8).map(|i| {
        let store = db.store.clone();
        tokio::spawn(async move {
            store
                .create_user(&format!("waiter{i}"), "hash", UserRole::User)
                .await
        })
    });
    let users: Vec<_> = users.collect();
    // Commit only once a caller is inside the pool, opening a connection
    // against the locked database (deadpool counts it as waiting until the
    // connection exists): with the old order it failed at once.
    eventually_async(
        "a caller opening a connection",
        Duration::from_secs(10),
        || async { (db.store.pool_snapshot().waiting >= 1).then_some(()) },
    )
    .await
    .unwrap();
    assert!(
        users.iter().all(|u| !u.is_finished()),
        "no caller may finish while the writer holds the lock"
    );
    diesel::connection::SimpleConnection::batch_execute(&mut writer, "COMMIT").unwrap();
    for user in users {
        user.await
            .unwrap()
            .expect("a new connection waits for the lock");
    }
    db.cleanup().await;
}

/// SQLite checkpoints its WAL into the database file itself only at
/// `WAL_AUTOCHECKPOINT_PAGES` (40 MB); the host's checkpoint every second
/// brings what was committed since to the file (and so to the disk) in
/// between. The file's size tells: it grows when a checkpoint copies the
/// new pages into it.
#[tokio::test]
async fn sqlite_commits_reach_the_database_file_at_the_next_timed_checkpoint() {
    let db = common::db::sqlite(&config()).await;
    let DatabaseTarget::Sqlite(path) = db.target.clone() else {
        panic!("a SQLite store");
    };
    let size = || std::fs::metadata(&path).expect("the database file").len();
    let (_, conversation) = user_and_conversation(&db.store, "checkpointed").await;
    let before = size();
    // 6 MB, past SQLite's own default of 1,000 pages (4 MB): with it, the
    // file would have grown already.
    let text = "x".repeat(100_000);
    for i in 0..60 {
        append(&db.store, conversation, &format!("c{i}"), &text)
            .await
            .unwrap();
    }
    assert_eq!(size(), before, "nothing checkpointed before the timer");
    let stop = tokio_util::sync::CancellationToken::new();
    db.store
        .spawn_checkpoints(Duration::from_millis(100), stop.clone());
    eventually_async(
        "the WAL checkpointed into the file",
        Duration::from_secs(10),
        || async { (size() >= before + 6_000_000).then_some(()) },
    )
    .await
    .unwrap();
    stop.cancel();
}

/// The store's own tasks (the database probe, SQLite's timed checkpoints,
/// the orphan sweep) end by themselves when told to, between two passes,
/// so a stopping host never drops one in the middle of a database call
/// (aborted, a SQLite call blocks the host's thread).
#[tokio::test]
async fn the_stores_own_tasks_end_by_themselves_when_told_to_stop() {
    for db in backends(&config()).await {
        let stop = tokio_util::sync::CancellationToken::new();
        let mut tasks = vec![
            db.store
                .spawn_probe(Duration::from_millis(10), stop.clone()),
            bothost::orphans::spawn(db.store.clone(), Duration::ZERO, stop.clone()),
        ];
        tasks.extend(
            db.store
                .spawn_checkpoints(Duration::from_millis(10), stop.clone()),
        );
        assert_eq!(
            tasks.len(),
            if db.store.backend() == "sqlite" { 3 } else { 2 },
            "checkpoints are SQLite's only"
        );
        // A few passes each, then the word.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("ended within 5 s of being told")
                .expect("ended by itself, not aborted or panicked");
        }
        db.cleanup().await;
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// WAL writes (`pg_stat_wal.wal_write`: each commit that waits for the
/// disk writes its WAL out, then flushes it) on `admin`'s server so far, once
/// every other session has ended: a session adds its counts to the shared
/// statistics when it ends (or when idle for a second), not at each commit.
async fn wal_writes_after_others_end(admin: &mut AsyncPgConnection) -> i64 {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .execute(admin)
    .await
    .unwrap();
    // Each check's future borrows the connection in turn.
    let conn = tokio::sync::Mutex::new(admin);
    eventually_async(
        "the other sessions to end",
        Duration::from_secs(20),
        || async {
            let others: Vec<Count> = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .load(&mut **conn.lock().await)
            .await
            .unwrap();
            (others[0].n == 0).then_some(())
        },
    )
    .await
    .unwrap();
    let rows: Vec<Count> = diesel::sql_query("SELECT wal_write AS n FROM pg_stat_wal")
        .load(conn.into_inner())
        .await
        .unwrap();
    rows[0].n
}

/// `database.chat_commit`: with `async` (the default) a chat turn's two
/// writes do not wait for the disk, with `sync` each does. Counted in WAL
/// writes on a server of the test's own (its `fsync = off` would hide
/// flushes) whose WAL writer writes at most every 10 s, so an asynchronous
/// commit adds none of its own.
#[tokio::test]
async fn chat_writes_wait_for_the_disk_only_when_configured_to() {
    use bothost::config::{ChatCommit, Secret};
    use bothost::metrics::Metrics;
    use diesel_async::RunQueryDsl;
    const TURNS: i64 = 40;
    let Some(pg) = bothost_testkit::ThrowawayPg::start() else {
        return;
    };
    let target = DatabaseTarget::Postgres(Secret::from(pg.url()));
    store::migrate(&target).await.unwrap();
    let mut admin = AsyncPgConnection::establish(&pg.url()).await.unwrap();
    for setting in [
        "ALTER SYSTEM SET wal_writer_delay = '10s'",
        "SELECT pg_reload_conf()",
    ] {
        diesel::sql_query(setting)
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let mut writes = Vec::new();
    for (i, chat_commit) in [ChatCommit::Async, ChatCommit::Sync]
        .into_iter()
        .enumerate()
    {
        let config = DatabaseConfig {
            chat_commit,
            ..config()
        };
        let s = Store::connect(&config, &target, Metrics::new().unwrap()).unwrap();
        let (_, conv) = user_and_conversation(&s, &format!("user{i}")).await;
        let before = wal_writes_after_others_end(&mut admin).await;
        for turn in 0..TURNS {
            let (message, created) = append(&s, conv, &format!("m{turn}"), "hello")
                .await
                .unwrap();
            assert!(created);
            // Streamed: a partial reply first, then the end over it.
            for (status, written) in [(ReplyStatus::Partial, false), (ReplyStatus::Complete, true)]
            {
                let reply = NewReply {
                    conversation_id: conv,
                    reply_to: message.id,
                    content: "hi",
                    status,
                    prompt_tokens: None,
                    completion_tokens: None,
                };
                let stored = s.put_reply(reply, written, None).await.unwrap();
                assert_eq!(stored.status, status);
            }
        }
        let history = s.history(conv, None, 1000).await.unwrap();
        assert_eq!(history.len() as i64, 2 * TURNS, "{chat_commit:?}");
        writes.push(wal_writes_after_others_end(&mut admin).await - before);
    }
    let (async_writes, sync_writes) = (writes[0], writes[1]);
    // Three commits a turn: `sync` writes out each, `async` leaves them
    // all to the WAL writer.
    assert!(
        sync_writes >= 3 * TURNS,
        "sync: {sync_writes} WAL writes for {TURNS} turns"
    );
    assert!(
        async_writes < TURNS,
        "async: {async_writes} WAL writes for {TURNS} turns"
    );
}
