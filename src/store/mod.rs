//! The store: users, conversations and chat history, on PostgreSQL or SQLite.
//!
//! Owns the connection pool, every query, and the rules that make chat
//! history impossible to lose or duplicate:
//!
//! - a user message is inserted (and its id returned) before anything is
//!   sent to a bot; the same `client_msg_id` in a conversation returns the
//!   existing row, enforced by a unique index (`INSERT … ON CONFLICT DO
//!   NOTHING`, then read), never by check-then-insert;
//! - a reply is stored once per user message (unique `reply_to`), with its
//!   status: `complete`, or `partial`/`failed` with what was produced.
//!
//! It never talks to bots and never decides who may see what: callers pass
//! the owner they have authenticated, and every read is scoped by it.
//!
//! Both backends run the very same query code: [`with_conn!`] expands one
//! body per backend, so a query cannot be written for one and forgotten for
//! the other. The one exception is [`Store::begin_user_turn`], which every
//! turn waits for before its first token: on PostgreSQL a new message, its
//! context and its lease are one statement (two round trips fewer); on
//! SQLite the message and its context are one task on the blocking pool
//! ([`blocking`], with the same query builders, [`queries`]). Errors are
//! classified into what a caller can act on ([`StoreError`]): unavailable
//! (503), conflict, not found.

mod blocking;
mod cached;
pub mod dump;
mod error;
pub mod inspect;
mod migrate;
mod models;
mod pool;
mod queries;
mod schema;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cached::Cached;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel_async::RunQueryDsl;
use pool::Pools;
use queries::{by_client_id, first_written, newest, written};
use tokio_util::sync::CancellationToken;

pub use error::StoreError;

diesel::define_sql_function! {
    /// SQL's `lower()`, the same on both backends for ASCII (all a
    /// username may hold).
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}
pub use migrate::{migrate, migration_status, revert_to, MigrationStatus};
pub use models::{Conversation, Message, MessageRole, ReplyStatus, User, UserChange, UserRole};
pub use pool::{PoolGrowth, PoolSnapshot};

use crate::config::{DatabaseConfig, DatabaseTarget};
use crate::metrics::Metrics;
use models::{NewConversation, NewMessage, NewUser};
use schema::{conversations, messages, rate_windows, revoked_tokens, turn_leases, users};

/// Most messages one history page returns.
pub const MAX_PAGE: u32 = 100;

/// Cheap to clone; all clones share one pool.
#[derive(Clone)]
pub struct Store {
    pools: Arc<Pools>,
    metrics: Metrics,
    /// SQLite's one writer at a time, queued in the process (see `with_conn!`).
    sqlite_writes: Arc<tokio::sync::Mutex<()>>,
    /// `database.shared`.
    shared: bool,
    /// `synchronous_commit` for a chat turn's writes on PostgreSQL
    /// (`database.chat_commit`).
    chat_commit: &'static str,
}

/// Runs `$body` with `$conn` bound to a pooled connection of whichever
/// backend the store uses, times it as `$op`, and classifies its errors.
/// `with_conn!(store, "op", |conn| body)` for reads; `with_conn!(store,
/// write "op", |conn| body)` for writes, which on SQLite take the store's
/// one write slot first: SQLite admits one writer at a time, and writers
/// that meet in the database wait in its busy handler, which sleeps in
/// steps of up to 100 ms (a 45 ms P95 at ten chatting users). Queued here,
/// they wait only for each other.
macro_rules! with_conn {
    ($store:expr, write $op:literal, |$conn:ident| $body:expr) => {
        with_conn!(@run $store, true, $op, |$conn| $body)
    };
    ($store:expr, $op:literal, |$conn:ident| $body:expr) => {
        with_conn!(@run $store, false, $op, |$conn| $body)
    };
    (@run $store:expr, $write:expr, $op:literal, |$conn:ident| $body:expr) => {{
        let started = Instant::now();
        let result: Result<_, StoreError> = async {
            match &*$store.pools {
                Pools::Postgres(shards) => {
                    let mut pooled = shards.get().await?;
                    let $conn = &mut *pooled;
                    Ok($body?)
                }
                Pools::Sqlite(pool) => {
                    let _writing = if $write {
                        Some($store.sqlite_writes.lock().await)
                    } else {
                        None
                    };
                    let mut pooled = pool.get().await?;
                    let $conn = &mut *pooled;
                    Ok($body?)
                }
            }
        }
        .await;
        $store.timed($op, started);
        result
    }};
}

impl Store {
    /// Builds the pool. Nothing is queried: a database that is down now
    /// makes the first query fail, not start-up.
    pub fn connect(
        config: &DatabaseConfig,
        target: &DatabaseTarget,
        metrics: Metrics,
    ) -> Result<Self, StoreError> {
        let pools = Arc::new(pool::build(config, target)?);
        pool::spawn_growth(&pools, metrics.clone(), config);
        Ok(Self {
            pools,
            metrics,
            sqlite_writes: Arc::default(),
            shared: config.shared,
            chat_commit: config.chat_commit.synchronous_commit(),
        })
    }

    pub fn backend(&self) -> &'static str {
        match &*self.pools {
            Pools::Postgres(_) => "postgres",
            Pools::Sqlite(_) => "sqlite",
        }
    }

    /// One round trip: is the database there?
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_conn!(self, "ping", |conn| diesel::sql_query("SELECT 1")
            .execute(conn)
            .await
            .map(drop))
    }

    /// SQLite: checkpoints the WAL every `every` (a passive checkpoint:
    /// readers and the writer carry on), so commits reach the disk within
    /// about that long also when too few are written for SQLite's own
    /// checkpoint (`pool::WAL_AUTOCHECKPOINT_PAGES`), until `stop` is
    /// cancelled: between checkpoints, never during one (a SQLite call
    /// dropped half-way panics; ARCHITECTURE.md's invariants). Nothing to
    /// do on PostgreSQL.
    pub fn spawn_checkpoints(
        &self,
        every: std::time::Duration,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !matches!(&*self.pools, Pools::Sqlite(_)) {
            return None;
        }
        let store = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut log = crate::telemetry::Retrying::new(
                "cannot checkpoint the SQLite WAL",
                "the SQLite WAL is checkpointed again",
            );
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let done = with_conn!(store, "checkpoint", |conn| {
                    diesel_async::SimpleAsyncConnection::batch_execute(
                        conn,
                        "PRAGMA wal_checkpoint(PASSIVE);",
                    )
                    .await
                });
                log.saw(done.map(|()| true));
            }
        }))
    }

    /// Pings the database every `every` and exports the verdict as
    /// `bothost_db_up`, until `stop` is cancelled (between two pings, for
    /// the reason [`Store::spawn_checkpoints`] gives).
    pub fn spawn_probe(
        &self,
        every: std::time::Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let up = store.ping().await.is_ok();
                store.metrics.db_up.set(i64::from(up));
            }
        })
    }

    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: UserRole,
    ) -> Result<User, StoreError> {
        let new = NewUser {
            username,
            password_hash,
            role: role.as_str(),
            created_at: now_ms(),
        };
        with_conn!(self, write "create_user", |conn| diesel::insert_into(
            users::table
        )
        .values(&new)
        .returning(User::as_returning())
        .load(conn)
        .await
        .and_then(written))
        .map_err(|e| match e {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("the user '{username}' already exists"))
            }
            other => other,
        })
    }

    /// The user whose name is `username` in any letter case (names are
    /// unique regardless of case).
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        with_conn!(self, "user_by_name", |conn| users::table
            .filter(lower(users::username).eq(lower(username)))
            .select(User::as_select())
            .first(conn)
            .await
            .optional())
    }

    pub async fn user(&self, id: i64) -> Result<Option<User>, StoreError> {
        with_conn!(self, "user", |conn| users::table
            .find(id)
            .select(User::as_select())
            .first(conn)
            .await
            .optional())
    }

    /// Every account, oldest first (`bothost user list`).
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        with_conn!(self, "users", |conn| users::table
            .order(users::id.asc())
            .select(User::as_select())
            .load(conn)
            .await)
    }

    /// Applies `change` to user `id` and ends the user's sessions (the token
    /// generation goes up in the same statement); `None` when no such user.
    pub async fn update_user(
        &self,
        id: i64,
        change: UserChange,
    ) -> Result<Option<User>, StoreError> {
        with_conn!(self, write "update_user", |conn| diesel::update(
            users::table.find(id)
        )
        .set((
            change,
            users::token_generation.eq(users::token_generation + 1),
        ))
        .returning(User::as_returning())
        .load(conn)
        .await
        .map(first_written))
    }

    /// Ends one token (`jti`) of user `id` until `expires_at` (seconds since
    /// the epoch, when it would have expired anyway); tokens already past
    /// their expiry are forgotten on the way.
    pub async fn revoke_token(
        &self,
        user_id: i64,
        jti: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms() / 1000;
        with_conn!(self, write "revoke_token", |conn| {
            async {
                diesel::delete(revoked_tokens::table.filter(revoked_tokens::expires_at.lt(now)))
                    .execute(conn)
                    .await?;
                diesel::insert_into(revoked_tokens::table)
                    .values((
                        revoked_tokens::jti.eq(jti),
                        revoked_tokens::user_id.eq(user_id),
                        revoked_tokens::expires_at.eq(expires_at),
                    ))
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await
                    .map(drop)
            }
            .await
        })
    }

    /// Users `ids` (those that exist) and the ids of their tokens ended one
    /// by one, in one statement: a session check needs both, after a
    /// restart every returning user's first request waits for it, and
    /// `web::sessions` reads the accounts of active users again in
    /// batches.
    pub async fn users_and_revoked_tokens(
        &self,
        ids: &[i64],
    ) -> Result<HashMap<i64, (User, Vec<String>)>, StoreError> {
        let rows: Vec<(User, Option<String>)> =
            with_conn!(self, "users_and_revoked_tokens", |conn| {
                users::table
                    .left_join(revoked_tokens::table.on(revoked_tokens::user_id.eq(users::id)))
                    .filter(users::id.eq_any(ids))
                    .select((User::as_select(), revoked_tokens::jti.nullable()))
                    .load(conn)
                    .await
            })?;
        let mut found: HashMap<i64, (User, Vec<String>)> = HashMap::with_capacity(ids.len());
        for (user, jti) in rows {
            let (_, revoked) = found.entry(user.id).or_insert_with(|| (user, Vec::new()));
            revoked.extend(jti);
        }
        Ok(found)
    }

    /// Deletes user `id` with everything the user owns (conversations and
    /// their messages go with it: `ON DELETE CASCADE`). False when no such
    /// user.
    pub async fn delete_user(&self, id: i64) -> Result<bool, StoreError> {
        with_conn!(self, write "delete_user", |conn| diesel::delete(
            users::table.find(id)
        )
        .execute(conn)
        .await)
        .map(|n| n > 0)
    }

    /// How many conversations `owner_id` keeps.
    pub async fn count_conversations(&self, owner_id: i64) -> Result<u64, StoreError> {
        let n: i64 = with_conn!(self, "count_conversations", |conn| conversations::table
            .filter(conversations::owner_id.eq(owner_id))
            .count()
            .get_result(conn)
            .await)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn create_conversation(
        &self,
        owner_id: i64,
        bot: &str,
        title: &str,
    ) -> Result<Conversation, StoreError> {
        let now = now_ms();
        let new = NewConversation {
            owner_id,
            bot,
            title,
            created_at: now,
            updated_at: now,
        };
        with_conn!(self, write "create_conversation", |conn| {
            diesel::insert_into(conversations::table)
                .values(&new)
                .returning(Conversation::as_returning())
                .load(conn)
                .await
                .and_then(written)
        })
    }

    /// `owner`'s conversation `id`, or `None`, also when it is someone
    /// else's: callers cannot tell the two apart, by design.
    pub async fn conversation(
        &self,
        owner_id: i64,
        id: i64,
    ) -> Result<Option<Conversation>, StoreError> {
        with_conn!(self, "conversation", |conn| conversations::table
            .find(id)
            .filter(conversations::owner_id.eq(owner_id))
            .select(Conversation::as_select())
            .first(conn)
            .await
            .optional())
    }

    /// `owner`'s conversations, most recently active first.
    /// Those after `after` (a conversation of the page before) when given.
    pub async fn conversations(
        &self,
        owner_id: i64,
        limit: u32,
        after: Option<&Conversation>,
    ) -> Result<Vec<Conversation>, StoreError> {
        let limit = i64::from(limit.clamp(1, MAX_PAGE));
        // The order's key, (updated_at, id), strictly below the last seen.
        let (updated, id) = after.map_or((i64::MAX, i64::MAX), |c| (c.updated_at, c.id));
        with_conn!(self, "conversations", |conn| conversations::table
            .filter(conversations::owner_id.eq(owner_id))
            .filter(
                conversations::updated_at
                    .lt(updated)
                    .or(conversations::updated_at
                        .eq(updated)
                        .and(conversations::id.lt(id))),
            )
            .order((conversations::updated_at.desc(), conversations::id.desc()))
            .limit(limit)
            .select(Conversation::as_select())
            .load(conn)
            .await)
    }

    /// Renames `owner`'s conversation `id`; `None` when there is no such
    /// conversation of theirs.
    pub async fn rename_conversation(
        &self,
        owner_id: i64,
        id: i64,
        title: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        with_conn!(self, write "rename_conversation", |conn| diesel::update(
            conversations::table
                .find(id)
                .filter(conversations::owner_id.eq(owner_id))
        )
        .set(conversations::title.eq(title))
        .returning(Conversation::as_returning())
        .load(conn)
        .await
        .map(first_written))
    }

    /// Deletes `owner`'s conversation `id` with its messages (`ON DELETE
    /// CASCADE`); false when there is no such conversation of theirs.
    pub async fn delete_conversation(&self, owner_id: i64, id: i64) -> Result<bool, StoreError> {
        with_conn!(self, write "delete_conversation", |conn| diesel::delete(
            conversations::table
                .find(id)
                .filter(conversations::owner_id.eq(owner_id))
        )
        .execute(conn)
        .await)
        .map(|n| n > 0)
    }

    /// `owner`'s messages holding every word of `query`, newest first, at
    /// most `limit`: PostgreSQL's full-text search or SQLite's FTS5 (see
    /// the search migration), scoped by the owner in the query itself.
    pub async fn search(
        &self,
        owner_id: i64,
        query: &str,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let limit = i64::from(limit.clamp(1, MAX_PAGE));
        let (matches, text) = match &*self.pools {
            Pools::Postgres(_) => (
                "to_tsvector('simple', messages.content) @@ plainto_tsquery('simple', ",
                query.to_owned(),
            ),
            Pools::Sqlite(_) => (
                "messages.id IN (SELECT rowid FROM messages_search WHERE messages_search MATCH ",
                fts5_words(query),
            ),
        };
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        with_conn!(self, "search", |conn| messages::table
            .inner_join(conversations::table)
            .filter(conversations::owner_id.eq(owner_id))
            .filter(
                diesel::dsl::sql::<diesel::sql_types::Bool>(matches)
                    .bind::<diesel::sql_types::Text, _>(&text)
                    .sql(")")
            )
            .order(messages::id.desc())
            .limit(limit)
            .select(Message::as_select())
            .load(conn)
            .await)
    }

    /// Every message of a conversation, oldest first (an export).
    pub async fn all_messages(&self, conversation_id: i64) -> Result<Vec<Message>, StoreError> {
        with_conn!(self, "all_messages", |conn| messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .order(messages::id.asc())
            .select(Message::as_select())
            .load(conn)
            .await)
    }

    /// Stores a user's message unless one with the same client id exists in
    /// the conversation (the unique index decides, never a check first)
    /// and, when it is new, reads what its turn needs: the bot's context
    /// (the last `window` messages, this one included) and, given `lease`,
    /// the turn's lease. A turn's first token waits for all of it, so each
    /// backend takes the fewest trips it can: PostgreSQL one statement,
    /// SQLite one blocking call (through diesel-async every statement is a
    /// hop to the blocking pool and back; SQLite takes no lease here, the
    /// caller does). Given `title`, a new message also names its
    /// conversation, if it has no title yet, in the same trip. A message
    /// stored before comes back with `created: false` and nothing else.
    /// Given `lease`, a new message is refused
    /// ([`StoreError::TurnsInFlight`]) while its user has
    /// [`LeaseTerms::max_live`] turns in flight on any host: the fleet's
    /// cap is checked where the lease is taken, not in a statement of its
    /// own.
    pub async fn begin_user_turn(
        &self,
        conversation_id: i64,
        client_msg_id: &str,
        content: &str,
        window: u32,
        lease: Option<LeaseTerms<'_>>,
        title: Option<&str>,
    ) -> Result<UserTurn, StoreError> {
        match &*self.pools {
            Pools::Postgres(_) => {
                self.begin_turn_postgres(
                    conversation_id,
                    client_msg_id,
                    content,
                    window,
                    lease,
                    title,
                )
                .await
            }
            Pools::Sqlite(pool) => {
                let started = Instant::now();
                let _writing = self.sqlite_writes.lock().await;
                let result = async {
                    let mut conn = pool.get().await?;
                    let (message, context) = conn
                        .spawn_blocking(blocking::begin_turn(
                            now_ms(),
                            conversation_id,
                            client_msg_id.to_owned(),
                            content.to_owned(),
                            window,
                            title.map(str::to_owned),
                        ))
                        .await?;
                    Ok(UserTurn {
                        message,
                        created: context.is_some(),
                        context,
                        leased: false,
                    })
                }
                .await;
                self.timed("begin_user_turn", started);
                result
            }
        }
    }

    async fn begin_turn_postgres(
        &self,
        conversation_id: i64,
        client_msg_id: &str,
        content: &str,
        window: u32,
        lease: Option<LeaseTerms<'_>>,
        title: Option<&str>,
    ) -> Result<UserTurn, StoreError> {
        use diesel::sql_types::{BigInt, Nullable, Text};
        // The context is read from the snapshot before the insert: the rows
        // before this message, to which it is added. A message stored
        // before comes back alone (the same snapshot holds it). The title is set
        // here and the conversation's activity time by the insert's
        // trigger, which runs after this statement's own changes and sees
        // them. `durability` sets `synchronous_commit` for this statement's
        // own transaction only (`database.chat_commit`,
        // [`crate::config::ChatCommit`]); it is a CTE the insert reads
        // from, as PostgreSQL skips a CTE no one reads.
        const SQL: &str = "\
            WITH durability AS (SELECT set_config('synchronous_commit', $11, true)), \
            m AS ( \
                INSERT INTO messages (conversation_id, role, content, status, client_msg_id, \
                                      created_at, updated_at) \
                SELECT $1, 'user', $2, 'complete', $3, $4, $4 FROM durability \
                WHERE $7 IS NULL OR (SELECT count(*) FROM turn_leases \
                                     WHERE user_id = $6 AND expires_at > $4) < $10 \
                ON CONFLICT (conversation_id, client_msg_id) DO NOTHING \
                RETURNING *), \
            lease AS ( \
                INSERT INTO turn_leases (message_id, user_id, holder, expires_at) \
                SELECT id, $6, $7, $8 FROM m WHERE $7 IS NOT NULL), \
            titled AS ( \
                UPDATE conversations SET title = $9 \
                WHERE id = $1 AND $9 IS NOT NULL AND title = '' AND EXISTS (SELECT 1 FROM m)) \
            SELECT true AS new, m.* FROM m \
            UNION ALL \
            SELECT false AS new, before.* FROM ( \
                SELECT * FROM messages WHERE conversation_id = $1 \
                ORDER BY id DESC LIMIT $5) AS before \
            WHERE EXISTS (SELECT 1 FROM m) \
            UNION ALL \
            SELECT false AS new, stored.* FROM messages AS stored \
            WHERE stored.conversation_id = $1 AND stored.client_msg_id = $3 \
              AND NOT EXISTS (SELECT 1 FROM m)";
        let now = now_ms();
        let (user_id, holder, until, max_live) = match &lease {
            Some(terms) => (
                terms.user_id,
                Some(terms.holder),
                terms.until,
                terms.max_live,
            ),
            None => (0, None, 0, 0),
        };
        let rows = with_conn!(self, write "begin_user_turn", |conn| Cached(
            diesel::sql_query(SQL)
                .bind::<BigInt, _>(conversation_id)
                .bind::<Text, _>(content)
                .bind::<Text, _>(client_msg_id)
                .bind::<BigInt, _>(now)
                .bind::<BigInt, _>(i64::from(window.saturating_sub(1)))
                .bind::<BigInt, _>(user_id)
                .bind::<Nullable<Text>, _>(holder)
                .bind::<BigInt, _>(until)
                .bind::<Nullable<Text>, _>(title)
                .bind::<BigInt, _>(i64::from(max_live))
                .bind::<Text, _>(self.chat_commit)
        )
        .load::<TurnRow>(conn)
        .await)?;
        if rows.iter().any(|r| r.new) {
            let mut context = rows
                .into_iter()
                .map(|row| Message::try_from(row.message))
                .collect::<Result<Vec<_>, _>>()?;
            context.sort_unstable_by_key(|m| m.id);
            let message = context.last().cloned().ok_or(StoreError::NotFound)?;
            return Ok(UserTurn {
                message,
                created: true,
                context: Some(context),
                leased: lease.is_some(),
            });
        }
        // Stored before (the insert met its unique index): the existing
        // row, and the caller does the rest. The statement read it too,
        // unless it was committed by another transaction after this
        // statement's snapshot was taken (a resend racing its original).
        let stored = rows
            .into_iter()
            .next()
            .map(|row| Message::try_from(row.message));
        // Nothing at all: the user's turns in flight left no room for a
        // new one (a message stored before comes back whatever they are).
        let message = match stored {
            Some(message) => message?,
            None => self
                .user_message(conversation_id, client_msg_id)
                .await?
                .ok_or(match lease {
                    Some(_) => StoreError::TurnsInFlight { max: max_live },
                    None => StoreError::NotFound,
                })?,
        };
        Ok(UserTurn {
            message,
            created: false,
            context: None,
            leased: false,
        })
    }

    /// Stores the bot's reply to user message `reply_to` (once: a second
    /// call returns the first reply). The conversation's activity time is
    /// its last user message's: a reply leaves it alone (one statement
    /// less per turn).
    pub async fn append_reply(&self, reply: NewReply<'_>) -> Result<Message, StoreError> {
        let now = now_ms();
        let conversation_id = reply.conversation_id;
        let reply_to = reply.reply_to;
        let new = NewMessage {
            conversation_id,
            role: MessageRole::Assistant.as_str(),
            content: reply.content,
            status: reply.status.as_str(),
            client_msg_id: None,
            reply_to: Some(reply_to),
            prompt_tokens: reply.prompt_tokens,
            completion_tokens: reply.completion_tokens,
            created_at: now,
            updated_at: now,
        };
        with_conn!(self, write "append_reply", |conn| {
            async {
                let inserted = Cached(
                    diesel::insert_into(messages::table)
                        .values(&new)
                        .on_conflict(messages::reply_to)
                        .do_nothing()
                        .returning(Message::as_returning()),
                )
                .load(conn)
                .await
                .map(first_written)?;
                if let Some(message) = inserted {
                    return Ok(message);
                }
                messages::table
                    .filter(messages::reply_to.eq(reply_to))
                    .select(Message::as_select())
                    .first(conn)
                    .await
            }
            .await
        })
    }

    /// Stores `reply` as the answer to its user message while the turn runs
    /// and when it ends: brings an unfinished (`partial`) stored reply up to
    /// date, or stores a first one. A finished reply is never overwritten:
    /// then the stored one comes back.
    async fn save_reply(&self, reply: NewReply<'_>) -> Result<Message, StoreError> {
        let now = now_ms();
        let updated = with_conn!(self, write "save_reply", |conn| {
            Cached(
                diesel::update(
                    messages::table
                        .filter(messages::reply_to.eq(reply.reply_to))
                        .filter(messages::status.eq(ReplyStatus::Partial.as_str())),
                )
                .set((
                    messages::content.eq(reply.content),
                    messages::status.eq(reply.status.as_str()),
                    messages::prompt_tokens.eq(reply.prompt_tokens),
                    messages::completion_tokens.eq(reply.completion_tokens),
                    messages::updated_at.eq(now),
                ))
                .returning(Message::as_returning()),
            )
            .load(conn)
            .await
            .map(first_written)
        })?;
        match updated {
            Some(message) => Ok(message),
            None => self.append_reply(reply).await,
        }
    }

    /// Stores a reply: over the `partial` one already stored, else as a new
    /// row (on SQLite, which is told by `partial_written`: an UPDATE or an
    /// INSERT; on PostgreSQL one statement tries both). Given `release` (a
    /// turn's last write, on a shared database), the turn's lease that
    /// holder took is given back in the same statement: no other host may
    /// answer before the reply is stored, and none need wait for a second
    /// round trip.
    pub async fn put_reply(
        &self,
        reply: NewReply<'_>,
        partial_written: bool,
        release: Option<&str>,
    ) -> Result<Message, StoreError> {
        match &*self.pools {
            Pools::Postgres(_) => self.put_reply_postgres(reply, release).await,
            Pools::Sqlite(_) if partial_written => self.save_reply(reply).await,
            Pools::Sqlite(_) => self.append_reply(reply).await,
        }
    }

    async fn put_reply_postgres(
        &self,
        reply: NewReply<'_>,
        holder: Option<&str>,
    ) -> Result<Message, StoreError> {
        use diesel::sql_types::{BigInt, Integer, Nullable, Text};
        // The partial row brought up to date, else a new row; a reply that
        // ended before (the unique index) is read after. A NULL holder
        // releases nothing. `durability`: as in `begin_turn_postgres`.
        const SQL: &str = "\
            WITH durability AS (SELECT set_config('synchronous_commit', $9, true)), \
            released AS ( \
                DELETE FROM turn_leases WHERE message_id = $4 AND holder = $8), \
            updated AS ( \
                UPDATE messages SET content = $2, status = $3, prompt_tokens = $5, \
                                    completion_tokens = $6, updated_at = $7 \
                FROM durability \
                WHERE reply_to = $4 AND status = 'partial' \
                RETURNING messages.*), \
            inserted AS ( \
                INSERT INTO messages (conversation_id, role, content, status, reply_to, \
                                      prompt_tokens, completion_tokens, created_at, updated_at) \
                SELECT $1, 'assistant', $2, $3, $4, $5, $6, $7, $7 FROM durability \
                WHERE NOT EXISTS (SELECT 1 FROM updated) \
                ON CONFLICT (reply_to) DO NOTHING \
                RETURNING *) \
            SELECT * FROM updated UNION ALL SELECT * FROM inserted";
        let now = now_ms();
        let rows = with_conn!(self, write "put_reply", |conn| Cached(
            diesel::sql_query(SQL)
                .bind::<BigInt, _>(reply.conversation_id)
                .bind::<Text, _>(reply.content)
                .bind::<Text, _>(reply.status.as_str())
                .bind::<BigInt, _>(reply.reply_to)
                .bind::<Nullable<Integer>, _>(reply.prompt_tokens)
                .bind::<Nullable<Integer>, _>(reply.completion_tokens)
                .bind::<BigInt, _>(now)
                .bind::<Nullable<Text>, _>(holder)
                .bind::<Text, _>(self.chat_commit)
        )
        .load::<MessageRow>(conn)
        .await)?;
        match rows.into_iter().next() {
            Some(row) => Message::try_from(row),
            None => self
                .reply_to(reply.reply_to)
                .await?
                .ok_or(StoreError::NotFound),
        }
    }

    /// Up to `limit` user messages after id `after`, in id order, each with
    /// whether a reply to it is stored: what the orphan sweep walks.
    pub async fn user_messages_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(Message, bool)>, StoreError> {
        let page: Vec<Message> = with_conn!(self, "user_messages_after", |conn| messages::table
            .filter(messages::id.gt(after))
            .filter(messages::role.eq(MessageRole::User.as_str()))
            .order(messages::id.asc())
            .limit(limit)
            .select(Message::as_select())
            .load(conn)
            .await)?;
        let ids: Vec<i64> = page.iter().map(|m| m.id).collect();
        let answered: std::collections::HashSet<i64> =
            with_conn!(self, "user_messages_after", |conn| messages::table
                .filter(messages::reply_to.eq_any(&ids))
                .select(messages::reply_to.assume_not_null())
                .load::<i64>(conn)
                .await)?
            .into_iter()
            .collect();
        Ok(page
            .into_iter()
            .map(|m| {
                let has_reply = answered.contains(&m.id);
                (m, has_reply)
            })
            .collect())
    }

    /// Deletes the reply to user message `id` (to answer it anew).
    pub async fn delete_reply(&self, id: i64) -> Result<(), StoreError> {
        with_conn!(self, write "delete_reply", |conn| diesel::delete(
            messages::table.filter(messages::reply_to.eq(id))
        )
        .execute(conn)
        .await
        .map(drop))
    }

    /// The user message `client_msg_id` of a conversation.
    pub async fn user_message(
        &self,
        conversation_id: i64,
        client_msg_id: &str,
    ) -> Result<Option<Message>, StoreError> {
        with_conn!(self, "user_message", |conn| by_client_id(
            conversation_id,
            client_msg_id
        )
        .select(Message::as_select())
        .first(conn)
        .await
        .optional())
    }

    /// The ids of a conversation's user messages from `from_id` on.
    pub async fn user_message_ids_from(
        &self,
        conversation_id: i64,
        from_id: i64,
    ) -> Result<Vec<i64>, StoreError> {
        with_conn!(self, "user_message_ids_from", |conn| messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .filter(messages::role.eq(MessageRole::User.as_str()))
            .filter(messages::id.ge(from_id))
            .select(messages::id)
            .load(conn)
            .await)
    }

    /// Deletes a conversation's messages from `from_id` on (an edited
    /// message and all that followed it).
    pub async fn truncate_from(
        &self,
        conversation_id: i64,
        from_id: i64,
    ) -> Result<(), StoreError> {
        with_conn!(self, write "truncate_from", |conn| diesel::delete(
            messages::table
                .filter(messages::conversation_id.eq(conversation_id))
                .filter(messages::id.ge(from_id))
        )
        .execute(conn)
        .await
        .map(drop))
    }

    /// Runs `work` while holding the database-wide lock `key` (PostgreSQL's
    /// advisory lock, waiting for any other host holding it); on SQLite,
    /// where there is one host, or with `database.shared = false`, just
    /// runs it. The lock is the session's, so
    /// it ends with a host that dies.
    pub async fn exclusive<T>(
        &self,
        key: i64,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, StoreError> {
        let Pools::Postgres(pool) = &*self.pools else {
            return Ok(work.await);
        };
        if !self.shared {
            return Ok(work.await);
        }
        let mut conn = pool.get().await?;
        diesel::sql_query("SELECT pg_advisory_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(key)
            .execute(&mut *conn)
            .await?;
        let out = work.await;
        if let Err(e) = diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<diesel::sql_types::BigInt, _>(key)
            .execute(&mut *conn)
            .await
        {
            // Dropping the connection's session would release it too.
            tracing::warn!("cannot release a fleet lock: {e}");
            drop(deadpool::managed::Object::take(conn));
        }
        Ok(out)
    }

    /// Whether several hosts may share this database (PostgreSQL, unless
    /// `database.shared = false`): then a
    /// turn's claim must be a database fact ([`Store::take_lease`]), not
    /// only one host's memory.
    pub fn is_shared(&self) -> bool {
        self.shared && matches!(&*self.pools, Pools::Postgres(_))
    }

    /// Takes the lease on answering user message `id` for `holder` until
    /// `ttl` from now, unless another holder's lease is still running.
    pub async fn take_lease(
        &self,
        id: i64,
        user_id: i64,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        // `ON CONFLICT … DO UPDATE … WHERE`: the insert statement's own
        // filter, not a query's.
        use diesel::query_dsl::methods::FilterDsl;
        let now = now_ms();
        let until = ms_after(now, ttl);
        with_conn!(self, write "take_lease", |conn| Cached(
            diesel::insert_into(turn_leases::table)
                .values((
                    turn_leases::message_id.eq(id),
                    turn_leases::user_id.eq(user_id),
                    turn_leases::holder.eq(holder),
                    turn_leases::expires_at.eq(until),
                ))
                .on_conflict(turn_leases::message_id)
                .do_update()
                .set((
                    turn_leases::holder.eq(holder),
                    turn_leases::expires_at.eq(until),
                ))
                .filter(
                    turn_leases::expires_at
                        .lt(now)
                        .or(turn_leases::holder.eq(holder)),
                )
                .returning(turn_leases::message_id)
        )
        .load::<i64>(conn)
        .await
        .map(first_written))
        .map(|taken| taken.is_some())
    }

    /// The fleet's bookkeeping for one message, in one round trip: a hit
    /// for `user_subject`'s and `ip_subject`'s minute starting at
    /// `window_start` (ms), each if given (its count is 0 if not), and,
    /// given `turns`, how many turns of user `user_id` some host is
    /// answering now. Given `read`, also user `user_id`'s conversation of
    /// that id, if there is one: a WebSocket's first message to a
    /// conversation needs both, and a statement is most of what either
    /// costs. PostgreSQL only (see [`Store::is_shared`]).
    pub async fn fleet_hits(
        &self,
        user_subject: Option<&str>,
        ip_subject: Option<&str>,
        window_start: i64,
        user_id: i64,
        read: Option<i64>,
        turns: bool,
    ) -> Result<(FleetHits, Option<Conversation>), StoreError> {
        use diesel::sql_types::{BigInt, Bool, Nullable, Text};
        // The rows are upserted in one order (the user's, then the
        // address's), so two messages never wait on each other's rows in a
        // cycle.
        const SQL: &str = "\
            WITH hit AS ( \
                INSERT INTO rate_windows (subject, window_start, hits) \
                SELECT s, $3, 1 FROM unnest(ARRAY[$1, $2]::text[]) WITH ORDINALITY AS u(s, n) \
                WHERE s IS NOT NULL ORDER BY n \
                ON CONFLICT (subject, window_start) DO UPDATE SET hits = rate_windows.hits + 1 \
                RETURNING subject, hits) \
            SELECT COALESCE((SELECT hits FROM hit WHERE subject = $1), 0) AS user_hits, \
                   COALESCE((SELECT hits FROM hit WHERE subject = $2), 0) AS ip_hits, \
                   CASE WHEN $7 THEN (SELECT count(*) FROM turn_leases \
                                      WHERE user_id = $4 AND expires_at > $5) \
                        ELSE 0 END AS live_turns, \
                   c.id AS c_id, c.owner_id AS c_owner_id, c.bot AS c_bot, c.title AS c_title, \
                   c.created_at AS c_created_at, c.updated_at AS c_updated_at \
            FROM (SELECT 1) AS one \
            LEFT JOIN conversations AS c ON c.id = $6 AND c.owner_id = $4";
        let now = now_ms();
        let row = with_conn!(self, write "fleet_hits", |conn| Cached(
            diesel::sql_query(SQL)
                .bind::<Nullable<Text>, _>(user_subject)
                .bind::<Nullable<Text>, _>(ip_subject)
                .bind::<BigInt, _>(window_start)
                .bind::<BigInt, _>(user_id)
                .bind::<BigInt, _>(now)
                .bind::<Nullable<BigInt>, _>(read)
                .bind::<Bool, _>(turns)
        )
        .get_result::<FleetRow>(conn)
        .await)?;
        Ok((row.hits, row.conversation()))
    }

    /// Adds each `(subject, hits)` of `batch` to its row for the minute
    /// starting at `window_start` (ms), in the batch's order, and answers
    /// each row's count after it. PostgreSQL only (see
    /// [`Store::is_shared`]); on SQLite it answers nothing.
    pub async fn add_window_hits(
        &self,
        window_start: i64,
        batch: &[(String, i32)],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        use diesel::sql_types::{Array, BigInt, Integer, Text};
        const SQL: &str = "\
            INSERT INTO rate_windows (subject, window_start, hits) \
            SELECT s, $2, h FROM unnest($1::text[], $3::int[]) WITH ORDINALITY AS u(s, h, n) \
            ORDER BY n \
            ON CONFLICT (subject, window_start) DO UPDATE SET hits = rate_windows.hits + excluded.hits \
            RETURNING subject, hits";
        let Pools::Postgres(pool) = &*self.pools else {
            return Ok(Vec::new());
        };
        let started = Instant::now();
        let (subjects, hits): (Vec<&str>, Vec<i32>) =
            batch.iter().map(|(s, n)| (s.as_str(), *n)).unzip();
        let result = async {
            let mut conn = pool.get().await?;
            Ok::<_, StoreError>(
                Cached(
                    diesel::sql_query(SQL)
                        .bind::<Array<Text>, _>(subjects)
                        .bind::<BigInt, _>(window_start)
                        .bind::<Array<Integer>, _>(hits),
                )
                .load::<WindowCount>(&mut *conn)
                .await?,
            )
        }
        .await;
        self.timed("add_window_hits", started);
        Ok(result?
            .into_iter()
            .map(|row| (row.subject, i64::from(row.hits)))
            .collect())
    }

    /// Forgets the minutes that started before `before` (ms).
    pub async fn forget_windows(&self, before: i64) -> Result<(), StoreError> {
        with_conn!(self, write "forget_windows", |conn| diesel::delete(
            rate_windows::table.filter(rate_windows::window_start.lt(before))
        )
        .execute(conn)
        .await
        .map(drop))
    }

    /// Extends `holder`'s lease on message `id` to `ttl` from now.
    pub async fn renew_lease(
        &self,
        id: i64,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        let until = ms_after(now_ms(), ttl);
        with_conn!(self, write "renew_lease", |conn| Cached(
            diesel::update(
                turn_leases::table
                    .filter(turn_leases::message_id.eq(id))
                    .filter(turn_leases::holder.eq(holder))
            )
            .set(turn_leases::expires_at.eq(until))
        )
        .execute(conn)
        .await
        .map(drop))
    }

    /// Gives `holder`'s lease on message `id` back.
    pub async fn release_lease(&self, id: i64, holder: &str) -> Result<(), StoreError> {
        with_conn!(self, write "release_lease", |conn| diesel::delete(
            turn_leases::table
                .filter(turn_leases::message_id.eq(id))
                .filter(turn_leases::holder.eq(holder))
        )
        .execute(conn)
        .await
        .map(drop))
    }

    /// The reply to user message `id`, if one was stored.
    pub async fn reply_to(&self, id: i64) -> Result<Option<Message>, StoreError> {
        with_conn!(self, "reply_to", |conn| messages::table
            .filter(messages::reply_to.eq(id))
            .select(Message::as_select())
            .first(conn)
            .await
            .optional())
    }

    /// A page of history, newest first: messages with ids below `before`
    /// (all when `None`), at most `limit` (capped at [`MAX_PAGE`]).
    pub async fn history(
        &self,
        conversation_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let limit = i64::from(limit.clamp(1, MAX_PAGE));
        let before = before.unwrap_or(i64::MAX);
        with_conn!(self, "history", |conn| messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .filter(messages::id.lt(before))
            .order(messages::id.desc())
            .limit(limit)
            .select(Message::as_select())
            .load(conn)
            .await)
    }

    /// The last `window` messages, oldest first: what a bot is shown.
    pub async fn context(
        &self,
        conversation_id: i64,
        window: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let mut page = with_conn!(self, "context", |conn| newest(conversation_id, window)
            .select(Message::as_select())
            .load::<Message>(conn)
            .await)?;
        page.reverse();
        Ok(page)
    }

    /// Records how long operation `op`, begun at `started`, took.
    fn timed(&self, op: &str, started: Instant) {
        self.metrics
            .db_query_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
    }

    /// The pool as it is now.
    pub fn pool_snapshot(&self) -> PoolSnapshot {
        pool::snapshot(&self.pools)
    }
}

/// One row [`Store::add_window_hits`] wrote.
#[derive(Debug, QueryableByName)]
struct WindowCount {
    #[diesel(sql_type = diesel::sql_types::Text)]
    subject: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    hits: i32,
}

/// What [`Store::fleet_hits`] counted.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct FleetHits {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub user_hits: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub ip_hits: i32,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub live_turns: i64,
}

/// [`Store::fleet_hits`]'s row: the counts and the conversation asked
/// for, whose columns are all null when there is none.
#[derive(QueryableByName)]
struct FleetRow {
    #[diesel(embed)]
    hits: FleetHits,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    c_id: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    c_owner_id: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    c_bot: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    c_title: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    c_created_at: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    c_updated_at: Option<i64>,
}

impl FleetRow {
    fn conversation(self) -> Option<Conversation> {
        Some(Conversation {
            id: self.c_id?,
            owner_id: self.c_owner_id?,
            bot: self.c_bot?,
            title: self.c_title?,
            created_at: self.c_created_at?,
            updated_at: self.c_updated_at?,
        })
    }
}

#[derive(Clone)]
pub struct NewReply<'a> {
    pub conversation_id: i64,
    pub reply_to: i64,
    pub content: &'a str,
    pub status: ReplyStatus,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
}

/// A user's search text as an FTS5 query: each word a quoted phrase (so no
/// character of theirs is FTS5 syntax), all of them required.
fn fts5_words(query: &str) -> String {
    query
        .split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `by` after `from`, both as the store writes times (a lease's expiry).
pub fn ms_after(from: i64, by: std::time::Duration) -> i64 {
    from.saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX))
}

/// Now, as the store writes times: milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The turn lease a new user message is stored with (see
/// [`Store::begin_user_turn`] and `lease`).
pub struct LeaseTerms<'a> {
    pub user_id: i64,
    pub holder: &'a str,
    /// Milliseconds since the epoch.
    pub until: i64,
    /// The user's live leases (turns in flight on any host) that leave no
    /// room for another: a new message is not stored then.
    pub max_live: u32,
}

/// What [`Store::begin_user_turn`] did.
#[derive(Debug)]
pub struct UserTurn {
    pub message: Message,
    /// False: the message was stored before (a resend).
    pub created: bool,
    /// The bot's context, oldest first, when it was read with the message.
    pub context: Option<Vec<Message>>,
    /// The lease was taken with the message.
    pub leased: bool,
}

/// A message as raw SQL returns it (read by column name; `Message`'s roles
/// and statuses need converting from their text).
#[derive(diesel::QueryableByName)]
#[diesel(table_name = messages)]
struct MessageRow {
    id: i64,
    conversation_id: i64,
    role: String,
    content: String,
    status: String,
    client_msg_id: Option<String>,
    reply_to: Option<i64>,
    prompt_tokens: Option<i32>,
    completion_tokens: Option<i32>,
    created_at: i64,
    updated_at: i64,
}

/// A row of [`Store::begin_user_turn`]'s statement: a message, and whether
/// it is the one just stored.
#[derive(diesel::QueryableByName)]
struct TurnRow {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    new: bool,
    #[diesel(embed)]
    message: MessageRow,
}

impl TryFrom<MessageRow> for Message {
    type Error = StoreError;

    fn try_from(row: MessageRow) -> Result<Self, StoreError> {
        let bad = |e: String| StoreError::Query(DieselError::DeserializationError(e.into()));
        Ok(Message {
            id: row.id,
            conversation_id: row.conversation_id,
            role: MessageRole::try_from(row.role).map_err(bad)?,
            content: row.content,
            status: ReplyStatus::try_from(row.status).map_err(bad)?,
            client_msg_id: row.client_msg_id,
            reply_to: row.reply_to,
            prompt_tokens: row.prompt_tokens,
            completion_tokens: row.completion_tokens,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}
