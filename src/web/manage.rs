//! Managing what one has: the account (password, sessions, deletion), one's
//! conversations (rename, delete, export), and for admins, the users.
//!
//! Every route here acts on the caller's own things, scoped in the query
//! (`Store::conversation(owner, id)` and friends): another user's id is
//! "not found". A change to an account ends its sessions (`sessions`).
//! Nothing here talks to bots.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::{hash_password, hashing, verify_password};
use super::error::ApiError;
use super::limits::no_nul;
use super::sessions::{session_ended, AuthUser};
use super::state::AppState;
use crate::store::{Conversation, Message, MessageRole, User, UserChange};

/// The rules for a new account, as a plain function.
pub fn check_credentials(username: &str, password: &str) -> Result<(), ApiError> {
    // The OpenAPI document states this rule as a pattern.
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let name_ok = (3..=32).contains(&username.len())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && ends_ok(username.chars().next())
        && ends_ok(username.chars().last());
    if !name_ok {
        return Err(ApiError::bad_request(
            "invalid_username",
            "a username is 3 to 32 letters, digits, '.', '-' or '_', starting and ending \
             with a letter or digit",
        ));
    }
    if !(8..=256).contains(&password.chars().count()) {
        return Err(ApiError::bad_request(
            "invalid_password",
            "a password is 8 to 256 characters",
        ));
    }
    Ok(())
}

pub fn session(state: &AppState, user: &User) -> Result<serde_json::Value, ApiError> {
    let (token, expires_at) = state.auth.issue(user)?;
    Ok(json!({"token": token, "expires_at": expires_at, "user": user}))
}

/// `user`'s conversation `id`; someone else's is "not found", the same as
/// one that does not exist, so ids reveal nothing.
pub async fn owned(state: &AppState, user: &AuthUser, id: i64) -> Result<Conversation, ApiError> {
    state
        .store
        .conversation(user.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("the conversation"))
}

/// Checks the caller's password (re-authentication before a change that
/// cannot be undone from a stolen session alone).
async fn check_password(
    state: &AppState,
    user: &AuthUser,
    password: String,
) -> Result<(), ApiError> {
    let stored = state.store.user(user.id).await?.ok_or_else(session_ended)?;
    let hash = stored.password_hash;
    if hashing(move || verify_password(&password, Some(&hash))).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_credentials",
            "the password is wrong",
        ))
    }
}

/// Applies `change` to the caller's account, which ends all its sessions
/// (this host forgets its view at once; others within `sessions::RECHECK`).
async fn change_account(
    state: &AppState,
    user: &AuthUser,
    change: UserChange,
) -> Result<User, ApiError> {
    let updated = state.store.update_user(user.id, change).await?;
    state.sessions.forget(user.id);
    updated.ok_or_else(session_ended)
}

/// `POST /auth/logout`: this token stops working, on every host and across
/// restarts; the account's other sessions go on.
pub async fn logout(state: web::Data<AppState>, user: AuthUser) -> Result<HttpResponse, ApiError> {
    let claims = &user.claims;
    if claims.jti.is_empty() {
        // A token from before tokens had ids can only end with the rest.
        change_account(&state, &user, UserChange::default()).await?;
    } else {
        let expires = i64::try_from(claims.exp).unwrap_or(i64::MAX);
        state
            .store
            .revoke_token(user.id, &claims.jti, expires)
            .await?;
        state.sessions.forget(user.id);
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /auth/logout-all`: every token of the caller stops working,
/// this one included.
pub async fn logout_all(
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<HttpResponse, ApiError> {
    change_account(&state, &user, UserChange::default()).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// `POST /auth/password`: needs the current password; ends every other
/// session and answers with a fresh one for this client.
pub async fn change_password(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: AuthUser,
    body: web::Json<PasswordChange>,
) -> Result<HttpResponse, ApiError> {
    state.limits.login(req.peer_addr().map(|a| a.ip()))?;
    let PasswordChange {
        current_password,
        new_password,
    } = body.into_inner();
    check_credentials(&user.name, &new_password)?;
    check_password(&state, &user, current_password).await?;
    let hash = hashing(move || hash_password(&new_password)).await??;
    let change = UserChange {
        password_hash: Some(hash),
        ..UserChange::default()
    };
    let updated = change_account(&state, &user, change).await?;
    Ok(HttpResponse::Ok().json(session(&state, &updated)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reauth {
    password: String,
}

/// `DELETE /account`: the caller's account with every conversation and
/// message, after the password is given again.
pub async fn delete_account(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: AuthUser,
    body: web::Json<Reauth>,
) -> Result<HttpResponse, ApiError> {
    state.limits.login(req.peer_addr().map(|a| a.ip()))?;
    check_password(&state, &user, body.into_inner().password).await?;
    state.store.delete_user(user.id).await?;
    state.sessions.forget(user.id);
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    title: String,
}

/// A title as stored: no NUL, not blank, at most 200 characters.
pub fn check_title(title: &str) -> Result<String, ApiError> {
    no_nul("title", title)?;
    // The OpenAPI document states "not blank" as the pattern `[^ \t\n\r]`.
    let title = title.trim_matches([' ', '\t', '\n', '\r']);
    if title.is_empty() {
        return Err(ApiError::bad_request("invalid_title", "the title is empty"));
    }
    Ok(title.chars().take(200).collect())
}

/// `PATCH /conversations/{id}`: a new title.
pub async fn rename_conversation(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<i64>,
    body: web::Json<Rename>,
) -> Result<HttpResponse, ApiError> {
    let title = check_title(&body.title)?;
    let conv = state
        .store
        .rename_conversation(user.id, *id, &title)
        .await?
        .ok_or_else(|| ApiError::not_found("the conversation"))?;
    state.known.remember([&conv]);
    Ok(HttpResponse::Ok().json(conv))
}

/// `DELETE /conversations/{id}`: gone for real, with its messages.
pub async fn delete_conversation(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    if state.store.delete_conversation(user.id, *id).await? {
        state.known.forget(*id);
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found("the conversation"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    #[serde(default)]
    format: ExportFormat,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Json,
    Markdown,
}

/// `GET /conversations/{id}/export?format=json|markdown`: the whole
/// conversation as a download.
pub async fn export_conversation(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<i64>,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    let conv = owned(&state, &user, *id).await?;
    let messages = state.store.all_messages(conv.id).await?;
    let (content_type, extension, body) = match query.format {
        ExportFormat::Json => (
            "application/json",
            "json",
            serde_json::to_string_pretty(&json!({"conversation": conv, "messages": messages}))
                .map_err(|e| ApiError::internal(format!("cannot encode the export: {e}")))?,
        ),
        ExportFormat::Markdown => (
            "text/markdown; charset=utf-8",
            "md",
            markdown(&conv, &messages),
        ),
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            "Content-Disposition",
            format!(
                "attachment; filename=\"conversation-{}.{extension}\"",
                conv.id
            ),
        ))
        .body(body))
}

/// A conversation as Markdown: a heading, then each message under who
/// wrote it; a reply that did not finish says so.
pub fn markdown(conv: &Conversation, messages: &[Message]) -> String {
    let title = if conv.title.is_empty() {
        format!("Conversation {}", conv.id)
    } else {
        conv.title.clone()
    };
    let mut out = format!("# {title}\n\nWith **{}**.\n", conv.bot);
    for m in messages {
        let who = match m.role {
            MessageRole::User => "You".to_owned(),
            MessageRole::Assistant => conv.bot.clone(),
        };
        let note = match m.status {
            crate::store::ReplyStatus::Complete => "",
            crate::store::ReplyStatus::Partial => " (cut off)",
            crate::store::ReplyStatus::Failed => " (failed)",
        };
        out.push_str(&format!("\n## {who}{note}\n\n{}\n", m.content));
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    q: String,
    limit: Option<u32>,
}

/// Longest search text, in characters.
const MAX_QUERY_CHARS: usize = 200;

/// `GET /search?q=…`: the caller's messages holding every word, newest
/// first (50 unless `limit` says otherwise, at most 100).
pub async fn search(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, ApiError> {
    no_nul("q", &query.q)?;
    if query.q.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("a search is at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let limit = match query.limit {
        None => 50,
        Some(n) if (1..=crate::store::MAX_PAGE).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be 1 to {}, not {n}", crate::store::MAX_PAGE),
            ))
        }
    };
    let hits = state.store.search(user.id, &query.q, limit).await?;
    Ok(HttpResponse::Ok().json(hits))
}

/// `GET /admin/users`: every account.
pub async fn admin_users(
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<HttpResponse, ApiError> {
    user.require_admin()?;
    Ok(HttpResponse::Ok().json(state.store.users().await?))
}

async fn set_disabled(
    state: &AppState,
    admin: &AuthUser,
    id: i64,
    disabled: bool,
) -> Result<HttpResponse, ApiError> {
    admin.require_admin()?;
    if id == admin.id && disabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cannot_disable_self",
            "you cannot disable your own account",
        ));
    }
    let change = UserChange {
        disabled_at: Some(disabled.then(crate::store::now_ms)),
        ..UserChange::default()
    };
    let user = state
        .store
        .update_user(id, change)
        .await?
        .ok_or_else(|| ApiError::not_found("the user"))?;
    state.sessions.forget(id);
    Ok(HttpResponse::Ok().json(user))
}

/// `POST /admin/users/{id}/disable`: refuses the user's log-ins and ends
/// their sessions; their data stays.
pub async fn admin_disable_user(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    set_disabled(&state, &user, *id, true).await
}

/// `POST /admin/users/{id}/enable`.
pub async fn admin_enable_user(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    set_disabled(&state, &user, *id, false).await
}
