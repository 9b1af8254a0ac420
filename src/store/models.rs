//! Rows as the rest of the host sees them. These are boundary types (the
//! REST API returns them), so they derive `Serialize`; the password hash is
//! never serialized.

use diesel::prelude::*;
use serde::Serialize;

use super::schema::{conversations, messages, users};
use crate::names::named_enum;

named_enum! {
    /// What a user may do.
    pub enum UserRole {
        User = "user",
        /// Also the admin API: every bot's status, restarts.
        Admin = "admin",
    }
}

named_enum! {
    /// Who wrote a message.
    pub enum MessageRole {
        User = "user",
        Assistant = "assistant",
    }
}

named_enum! {
    /// How a message ended. A user's message is always `complete`.
    pub enum ReplyStatus {
        Complete = "complete",
        /// Cut off (crash, cancel, restart) after some text was produced.
        Partial = "partial",
        /// Nothing usable was produced.
        Failed = "failed",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = users)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct User {
    pub id: i64,
    pub username: String,
    #[serde(skip)]
    pub password_hash: String,
    #[diesel(deserialize_as = String)]
    pub role: UserRole,
    pub created_at: i64,
    /// Tokens issued before the last bump are refused (see `web::sessions`).
    #[serde(skip)]
    pub token_generation: i64,
    /// When the account was disabled (ms since the epoch); it may neither
    /// log in nor use a token meanwhile.
    pub disabled_at: Option<i64>,
}

/// A change to an account (`Store::update_user`). Every change also ends
/// the account's sessions: the token generation goes up with it.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = users)]
pub struct UserChange {
    pub password_hash: Option<String>,
    pub role: Option<&'static str>,
    /// `Some(None)` enables the account again.
    pub disabled_at: Option<Option<i64>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = conversations)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct Conversation {
    pub id: i64,
    pub owner_id: i64,
    pub bot: String,
    pub title: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = messages)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct Message {
    pub id: i64,
    pub conversation_id: i64,
    #[diesel(deserialize_as = String)]
    pub role: MessageRole,
    pub content: String,
    #[diesel(deserialize_as = String)]
    pub status: ReplyStatus,
    pub client_msg_id: Option<String>,
    pub reply_to: Option<i64>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Insertable)]
#[diesel(table_name = users)]
pub(super) struct NewUser<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub role: &'a str,
    pub created_at: i64,
}

#[derive(Insertable)]
#[diesel(table_name = conversations)]
pub(super) struct NewConversation<'a> {
    pub owner_id: i64,
    pub bot: &'a str,
    pub title: &'a str,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Insertable)]
#[diesel(table_name = messages)]
pub(super) struct NewMessage<'a> {
    pub conversation_id: i64,
    pub role: &'a str,
    pub content: &'a str,
    pub status: &'a str,
    pub client_msg_id: Option<&'a str>,
    pub reply_to: Option<i64>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub created_at: i64,
    pub updated_at: i64,
}
