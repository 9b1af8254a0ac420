//! Query builders shared by the async store and its blocking tasks
//! ([`super::blocking`]): what a query reads is written once, whichever
//! connection runs it.

use diesel::prelude::*;

use super::schema::messages;

/// A conversation's message with client id `client_msg_id`.
#[diesel::dsl::auto_type]
pub(super) fn by_client_id<'a>(conversation_id: i64, client_msg_id: &'a str) -> _ {
    messages::table
        .filter(messages::conversation_id.eq(conversation_id))
        .filter(messages::client_msg_id.eq(client_msg_id))
}

/// A conversation's newest `window` messages, newest first.
#[diesel::dsl::auto_type]
pub(super) fn newest(conversation_id: i64, window: u32) -> _ {
    let window: i64 = window.into();
    messages::table
        .filter(messages::conversation_id.eq(conversation_id))
        .order(messages::id.desc())
        .limit(window)
}

/// The first row a write with `RETURNING` gave, once it has run to its end
/// (`load`, not `get_result`). SQLite commits a statement that was stepped
/// only once when it is reset, and diesel does not look at what the reset
/// says: a commit that failed there (a full disk) went unseen, and a
/// message was acknowledged that was never stored (`tests/chaos.rs`, the
/// SQLite disk-full case, caught it). Run to its end, the statement's own
/// last step commits and reports. Every write with `RETURNING` goes
/// through it.
pub(super) fn first_written<T>(rows: Vec<T>) -> Option<T> {
    rows.into_iter().next()
}

/// [`first_written`] for a write that always returns its row (an insert).
pub(super) fn written<T>(rows: Vec<T>) -> QueryResult<T> {
    first_written(rows).ok_or(diesel::result::Error::NotFound)
}
