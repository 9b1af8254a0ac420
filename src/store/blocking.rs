//! Statements run on a SQLite connection itself, several to one task on
//! the blocking pool.
//!
//! Through diesel-async's wrapper every SQLite statement is a hop to the
//! blocking pool and back (two thread wake-ups, most of the host's kernel
//! time per turn). Where a turn needs several statements before its first
//! token, they run here together, with plain diesel; the query builders are
//! the store's own ([`super::queries`]), so what is read cannot drift from
//! the async path. Nothing here may await.

use diesel::prelude::*;

use super::cached::Cached;
use super::models::{Message, MessageRole, NewMessage, ReplyStatus};
use super::queries::{by_client_id, first_written, newest};
use super::schema::{conversations, messages};

/// [`super::Store::begin_user_turn`] on SQLite, as one task for the blocking pool:
/// the message, and when it is new, the conversation's `title` if it has
/// none, and the context (oldest first).
pub(super) fn begin_turn(
    now: i64,
    conversation_id: i64,
    client_msg_id: String,
    content: String,
    window: u32,
    title: Option<String>,
) -> impl FnOnce(&mut diesel::SqliteConnection) -> QueryResult<(Message, Option<Vec<Message>>)>
       + Send
       + 'static {
    move |conn| {
        let inserted = Cached(
            diesel::insert_into(messages::table)
                .values(NewMessage {
                    conversation_id,
                    role: MessageRole::User.as_str(),
                    content: &content,
                    status: ReplyStatus::Complete.as_str(),
                    client_msg_id: Some(&client_msg_id),
                    reply_to: None,
                    prompt_tokens: None,
                    completion_tokens: None,
                    created_at: now,
                    updated_at: now,
                })
                .on_conflict((messages::conversation_id, messages::client_msg_id))
                .do_nothing()
                .returning(Message::as_returning()),
        )
        .load(conn)
        .map(first_written)?;
        let Some(message) = inserted else {
            let existing = by_client_id(conversation_id, &client_msg_id)
                .select(Message::as_select())
                .first(conn)?;
            return Ok((existing, None));
        };
        if let Some(title) = &title {
            diesel::update(
                conversations::table
                    .find(conversation_id)
                    .filter(conversations::title.eq("")),
            )
            .set(conversations::title.eq(title))
            .execute(conn)?;
        }
        let mut context: Vec<Message> = newest(conversation_id, window)
            .select(Message::as_select())
            .load(conn)?;
        context.reverse();
        Ok((message, Some(context)))
    }
}
