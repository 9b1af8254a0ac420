//! Rewinding a conversation: regenerate the last reply, or edit a message
//! and answer the edit. Both are plain rules over the store and the chat
//! service, shared by the REST routes and the WebSocket.
//!
//! Regenerate replaces: the last message's stored reply is deleted (under
//! the message's claim, in `chat`) and a new one is generated; the old one
//! is not kept. Edit truncates: the edited message and everything after it
//! are deleted, and the new text is sent as a new message. Both refuse
//! while a turn they would touch is running (`in_progress`), so no reply
//! being written disappears under its writer.

use actix_web::http::StatusCode;

use super::error::ApiError;
use super::state::AppState;
use crate::chat::{Ask, Chats};
use crate::store::{Conversation, Message};

async fn user_message(
    state: &AppState,
    conv: &Conversation,
    client_msg_id: &str,
) -> Result<Message, ApiError> {
    state
        .store
        .user_message(conv.id, client_msg_id)
        .await?
        .ok_or_else(|| ApiError::not_found("the message"))
}

/// A new answer to `client_msg_id`, which must be the conversation's last
/// message from its user.
pub async fn regenerate(
    state: &AppState,
    conv: &Conversation,
    client_msg_id: &str,
) -> Result<Ask, ApiError> {
    let message = user_message(state, conv, client_msg_id).await?;
    let later = state
        .store
        .user_message_ids_from(conv.id, message.id)
        .await?;
    if later.len() > 1 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_last",
            "only the reply to the last message can be regenerated",
        ));
    }
    if state.chats.any_in_flight(&[message.id]) {
        return Err(Chats::in_progress().into());
    }
    Ok(Ask {
        client_msg_id: message.client_msg_id.unwrap_or_default(),
        content: message.content,
        fresh: true,
    })
}

/// `client_msg_id` rewritten as `content` (sent as `new_client_msg_id`):
/// it and everything after it are deleted first.
pub async fn edit(
    state: &AppState,
    conv: &Conversation,
    client_msg_id: &str,
    new_client_msg_id: String,
    content: String,
) -> Result<Ask, ApiError> {
    state.limits.check_message(&new_client_msg_id, &content)?;
    let message = user_message(state, conv, client_msg_id).await?;
    let affected = state
        .store
        .user_message_ids_from(conv.id, message.id)
        .await?;
    if state.chats.any_in_flight(&affected) {
        return Err(Chats::in_progress().into());
    }
    state.store.truncate_from(conv.id, message.id).await?;
    Ok(Ask::message(new_client_msg_id, content))
}
