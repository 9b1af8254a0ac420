//! The REST API under `/api/v1` (names fixed in DESIGN.md; the OpenAPI
//! document at `/api/v1/openapi.json` describes every route and a test keeps
//! the two in step).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::auth::{hash_password, hashing, verify_password};
use super::error::ApiError;
use super::limits::FleetCheck;
use super::manage::{check_credentials, owned, session};
use super::sessions::AuthUser;
use super::state::AppState;
use crate::chat::{Ask, ChatEvent};
use crate::status::{RestartErrorCode, RestartReason};
use crate::store::{Conversation, StoreError, UserRole, MAX_PAGE};
use crate::supervisor::{restart_all, rolling_restart, GetStatus, RestartBot};

/// One table registers every API route and lists it for the OpenAPI test,
/// so a route cannot exist undocumented.
macro_rules! api_routes {
    ($table:ident, $register:ident; $($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every API route as (method, path), in the OpenAPI document's terms.
        pub const $table: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        pub fn $register(cfg: &mut web::ServiceConfig) {
            $(cfg.route($path, web::$method().to($handler));)*
            // Registered after every route: a known path asked with a
            // method it does not serve.
            for (path, allow) in allowed_methods($table) {
                cfg.route(path, web::route().to(move || method_not_allowed(allow.clone())));
            }
        }
    };
}

// Matched in this order, and a path with a `{segment}` costs a regex match
// for every request that reaches it: the routes every page load uses come
// before those.
api_routes! {
    API_ROUTES, routes;
    get "/api/v1/ws" => super::ws::connect,
    post "/api/v1/auth/register" => register,
    post "/api/v1/auth/login" => login,
    post "/api/v1/auth/logout" => super::manage::logout,
    post "/api/v1/auth/logout-all" => super::manage::logout_all,
    post "/api/v1/auth/password" => super::manage::change_password,
    delete "/api/v1/account" => super::manage::delete_account,
    get "/api/v1/bots" => bots,
    post "/api/v1/conversations" => create_conversation,
    get "/api/v1/conversations" => conversations,
    patch "/api/v1/conversations/{id}" => super::manage::rename_conversation,
    delete "/api/v1/conversations/{id}" => super::manage::delete_conversation,
    get "/api/v1/conversations/{id}/export" => super::manage::export_conversation,
    get "/api/v1/conversations/{id}/messages" => history,
    get "/api/v1/search" => super::manage::search,
    post "/api/v1/conversations/{id}/messages" => post_message,
    post "/api/v1/conversations/{id}/messages/{client_msg_id}/regenerate" => regenerate,
    post "/api/v1/conversations/{id}/messages/{client_msg_id}/edit" => edit_message,
    get "/api/v1/admin/bots" => admin_bots,
    post "/api/v1/admin/bots/{name}/restart" => admin_restart_bot,
    post "/api/v1/admin/restart" => admin_restart_all,
    get "/api/v1/admin/users" => super::manage::admin_users,
    post "/api/v1/admin/users/{id}/disable" => super::manage::admin_disable_user,
    post "/api/v1/admin/users/{id}/enable" => super::manage::admin_enable_user,
    get "/api/v1/openapi.json" => openapi,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    username: String,
    password: String,
}

async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    state.limits.login(req.peer_addr().map(|a| a.ip()))?;
    if !state.open_registration {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "registration_closed",
            "registration is closed; ask an administrator for an account",
        ));
    }
    let Credentials { username, password } = body.into_inner();
    check_credentials(&username, &password)?;
    let hash = hashing(move || hash_password(&password)).await??;
    let user = state
        .store
        .create_user(&username, &hash, UserRole::User)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "username_taken",
                format!("the username '{username}' is taken"),
            ),
            other => other.into(),
        })?;
    Ok(HttpResponse::Created().json(session(&state, &user)?))
}

async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    state.limits.login(req.peer_addr().map(|a| a.ip()))?;
    let Credentials { username, password } = body.into_inner();
    // A name no account can have (NUL, spaces...) is not looked up: it
    // would only make the database complain.
    let user = if check_credentials(&username, "any valid password").is_ok() {
        state.store.user_by_name(&username).await?
    } else {
        None
    };
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let ok = hashing(move || verify_password(&password, hash.as_deref())).await?;
    match user {
        // Told only to whoever knows the password.
        Some(user) if ok && user.disabled_at.is_some() => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "account_disabled",
            "this account is disabled; ask an administrator",
        )),
        Some(user) if ok => Ok(HttpResponse::Ok().json(session(&state, &user)?)),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong username or password",
        )),
    }
}

async fn bots(state: web::Data<AppState>, _user: AuthUser) -> HttpResponse {
    let bots: Vec<_> = state
        .board
        .bots()
        .iter()
        .map(|b| json!({"name": b.name, "model": b.model, "status": b.state.as_str()}))
        .collect();
    HttpResponse::Ok().json(bots)
}

fn supervisor_gone() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the host is shutting down",
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewConversation {
    bot: String,
    #[serde(default)]
    title: String,
}

async fn create_conversation(
    state: web::Data<AppState>,
    user: AuthUser,
    body: web::Json<NewConversation>,
) -> Result<HttpResponse, ApiError> {
    if !state.history_windows.contains_key(&body.bot) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_bot",
            format!("there is no bot named '{}'", body.bot),
        ));
    }
    super::limits::no_nul("title", &body.title)?;
    let held = state.store.count_conversations(user.id).await?;
    state.limits.new_conversation(user.id, held)?;
    let title: String = body.title.chars().take(200).collect();
    let conv = state
        .store
        .create_conversation(user.id, &body.bot, &title)
        .await?;
    // Its first message follows, often on a WebSocket.
    state.known.remember([&conv]);
    Ok(HttpResponse::Created().json(conv))
}

/// Each path of `routes` with the methods it serves, as an `Allow` header
/// value (`GET, POST`), in the table's order.
fn allowed_methods(routes: &[(&str, &'static str)]) -> Vec<(&'static str, String)> {
    let mut paths: Vec<(&'static str, Vec<String>)> = Vec::new();
    for &(method, path) in routes {
        let method = method.to_ascii_uppercase();
        match paths.iter_mut().find(|(p, _)| *p == path) {
            Some((_, methods)) => methods.push(method),
            None => paths.push((path, vec![method])),
        }
    }
    paths
        .into_iter()
        .map(|(path, methods)| (path, methods.join(", ")))
        .collect()
}

async fn method_not_allowed(allow: String) -> HttpResponse {
    let e = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this path answers {allow}"),
    );
    let mut response = actix_web::ResponseError::error_response(&e);
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allow) {
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    response
}

#[derive(Deserialize)]
struct Page {
    before: Option<i64>,
    limit: Option<u32>,
}

impl Page {
    /// How many to return: 50 unless asked, never more than [`MAX_PAGE`].
    fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be 1 to {MAX_PAGE}, not {n}"),
            )),
        }
    }
}

async fn conversations(
    state: web::Data<AppState>,
    user: AuthUser,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    // `before`: the last conversation of the previous page.
    let after = match page.before {
        Some(id) => Some(owned(&state, &user, id).await?),
        None => None,
    };
    let list = state
        .store
        .conversations(user.id, page.limit()?, after.as_ref())
        .await?;
    // What the page opens next: its WebSocket's first message needs no read.
    state.known.remember(&list);
    Ok(HttpResponse::Ok().json(list))
}

async fn history(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<i64>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let conv = owned(&state, &user, *id).await?;
    let messages = state
        .store
        .history(conv.id, page.before, page.limit()?)
        .await?;
    Ok(HttpResponse::Ok().json(messages))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Send {
    pub client_msg_id: String,
    pub content: String,
}

/// The REST fallback: stores the message and answers with it and the whole
/// reply. On failure the error still carries the stored message.
async fn post_message(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    id: web::Path<i64>,
    body: web::Json<Send>,
) -> Result<HttpResponse, ApiError> {
    let conv = owned(&state, &user, *id).await?;
    state
        .limits
        .check_message(&body.client_msg_id, &body.content)?;
    let body = body.into_inner();
    answer(
        &state,
        &user,
        &req,
        conv,
        Ask::message(body.client_msg_id, body.content),
    )
    .await
}

/// `POST /conversations/{id}/messages/{client_msg_id}/regenerate`: a new
/// reply to the conversation's last message, replacing the stored one.
async fn regenerate(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    path: web::Path<(i64, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, client_msg_id) = path.into_inner();
    let conv = owned(&state, &user, id).await?;
    let ask = super::rewind::regenerate(&state, &conv, &client_msg_id).await?;
    answer(&state, &user, &req, conv, ask).await
}

/// `POST /conversations/{id}/messages/{client_msg_id}/edit`: the message
/// and everything after it are replaced by the new text, then answered.
async fn edit_message(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    path: web::Path<(i64, String)>,
    body: web::Json<Send>,
) -> Result<HttpResponse, ApiError> {
    let (id, client_msg_id) = path.into_inner();
    let conv = owned(&state, &user, id).await?;
    let body = body.into_inner();
    let ask = super::rewind::edit(
        &state,
        &conv,
        &client_msg_id,
        body.client_msg_id,
        body.content,
    )
    .await?;
    answer(&state, &user, &req, conv, ask).await
}

/// Runs `ask` within the caller's limits and answers with the message and
/// its whole reply.
async fn answer(
    state: &AppState,
    user: &AuthUser,
    req: &HttpRequest,
    conv: Conversation,
    ask: Ask,
) -> Result<HttpResponse, ApiError> {
    let ip = req.peer_addr().map(|a| a.ip());
    state.limits.message(user.id, ip)?;
    let _slot = state.limits.start_turn(user.id)?;
    let check = FleetCheck {
        read: None,
        turns: ask.fresh,
    };
    let mut counted = Some(
        state
            .limits
            .check_fleet(&state.store, user.id, ip, check)
            .await?
            .counted,
    );
    let window = state.history_windows.get(&conv.bot).copied().unwrap_or(20);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Its own task: a client that hangs up still gets its reply stored.
    state.chats.spawn(conv, ask, window, tx);
    let mut message = None;
    while let Some(event) = rx.recv().await {
        if let Some(counted) = counted.take() {
            state.limits.settle(counted, &event);
        }
        if super::admission::leaves_admission(&event) {
            super::admission::release(req);
        }
        match event {
            ChatEvent::Accepted { message: m, .. } => message = Some(m),
            ChatEvent::Delta(_) => {}
            ChatEvent::Done { reply } => {
                return Ok(HttpResponse::Ok().json(json!({"message": message, "reply": reply})));
            }
            ChatEvent::Failed { error, reply } => {
                return Err(
                    ApiError::from(error).with_extra(json!({"message": message, "reply": reply}))
                );
            }
        }
    }
    Err(ApiError::internal("the turn ended without an answer"))
}

async fn admin_bots(state: web::Data<AppState>, user: AuthUser) -> Result<HttpResponse, ApiError> {
    user.require_admin()?;
    let report = state
        .supervisor
        .send(GetStatus)
        .await
        .map_err(|_| supervisor_gone())?;
    Ok(HttpResponse::Ok().json(report))
}

async fn admin_restart_bot(
    state: web::Data<AppState>,
    user: AuthUser,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    user.require_admin()?;
    let bot = name.into_inner();
    let result = state
        .supervisor
        .send(RestartBot {
            bot: bot.clone(),
            reason: RestartReason::Operator,
        })
        .await
        .map_err(|_| supervisor_gone())?;
    match result {
        Ok(restarted) => Ok(HttpResponse::Ok().json(json!({"bot": bot, "restarted": restarted}))),
        Err(e) if e.code == RestartErrorCode::UnknownBot => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_bot",
            e.message,
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "restart_failed",
            e.message,
        )),
    }
}

#[derive(Deserialize)]
struct RestartAll {
    #[serde(default)]
    rolling: bool,
}

async fn admin_restart_all(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<RestartAll>,
) -> Result<HttpResponse, ApiError> {
    user.require_admin()?;
    // A task of its own: a client that goes away must not stop a rolling
    // restart half-way (dropping this handler drops only the wait).
    let supervisor = state.supervisor.clone();
    let rolling = query.rolling;
    let task = actix_rt::spawn(async move {
        if rolling {
            rolling_restart(&supervisor, RestartReason::Operator, None).await
        } else {
            restart_all(&supervisor, RestartReason::Operator).await
        }
    });
    let results = task
        .await
        .map_err(|_| supervisor_gone())?
        .map_err(|e| match e.code {
            RestartErrorCode::Busy => ApiError::new(StatusCode::CONFLICT, "busy", e.message),
            _ => supervisor_gone(),
        })?;
    let failed = results.iter().filter(|r| r.result.is_err()).count();
    Ok(HttpResponse::Ok().json(json!({"results": results, "failed": failed})))
}

/// The OpenAPI document, with this host's bot names as the values a `bot`
/// (and an admin's bot `name`) may take, so a client or a tester that
/// reads it can start a conversation that exists.
async fn openapi(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut bots: Vec<&str> = state.history_windows.keys().map(String::as_str).collect();
    bots.sort_unstable();
    let doc = openapi_for(&bots, state.limits.config.max_message_chars).map_err(|e| {
        tracing::error!("the embedded OpenAPI document is not JSON: {e}");
        ApiError::internal("the API document is broken")
    })?;
    Ok(HttpResponse::Ok().json(doc))
}

fn openapi_for(
    bots: &[&str],
    max_message_chars: usize,
) -> Result<serde_json::Value, serde_json::Error> {
    let mut doc: serde_json::Value = serde_json::from_str(include_str!("../../web/openapi.json"))?;
    let paths = &mut doc["paths"];
    paths["/api/v1/conversations/{id}/messages"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["properties"]["content"]["maxLength"] =
        json!(max_message_chars);
    paths["/api/v1/conversations"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"]["properties"]["bot"]["enum"] = json!(bots);
    if let Some(params) =
        paths["/api/v1/admin/bots/{name}/restart"]["post"]["parameters"].as_array_mut()
    {
        for param in params.iter_mut().filter(|p| p["name"] == "name") {
            param["schema"]["enum"] = json!(bots);
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The served OpenAPI document lists exactly the routes the API serves.
    #[test]
    fn the_openapi_document_matches_the_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../web/openapi.json")).unwrap();
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (method.clone(), path.clone()))
            })
            .collect();
        let mut served: Vec<(String, String)> = API_ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }

    /// Every state a bot can show is in the document, and nothing else.
    #[test]
    fn the_openapi_document_lists_every_bot_state() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../web/openapi.json")).unwrap();
        let documented = &doc["components"]["schemas"]["Bot"]["properties"]["status"]["enum"];
        let states: Vec<&str> = crate::status::BotState::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(documented, &serde_json::json!(states));
    }

    #[test]
    fn the_served_document_names_this_hosts_bots() {
        let doc = openapi_for(&["alpha", "beta"], 4000).unwrap();
        let paths = &doc["paths"];
        assert_eq!(
            paths["/api/v1/conversations"]["post"]["requestBody"]["content"]["application/json"]
                ["schema"]["properties"]["bot"]["enum"],
            json!(["alpha", "beta"])
        );
        let name = &paths["/api/v1/admin/bots/{name}/restart"]["post"]["parameters"][0];
        assert_eq!(name["schema"]["enum"], json!(["alpha", "beta"]));
        let send = &paths["/api/v1/conversations/{id}/messages"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["properties"];
        assert_eq!(send["content"]["maxLength"], 4000);
    }

    #[test]
    fn usernames_and_passwords_are_checked() {
        assert!(check_credentials("alice", "long enough").is_ok());
        assert!(check_credentials("a.b-c_9", "long enough").is_ok());
        for odd in ["...", ".alice", "alice-", "_x_"] {
            assert_eq!(
                check_credentials(odd, "long enough").unwrap_err().code,
                "invalid_username",
                "{odd}"
            );
        }
        assert_eq!(
            check_credentials("al", "long enough").unwrap_err().code,
            "invalid_username"
        );
        assert_eq!(
            check_credentials("a b c", "long enough").unwrap_err().code,
            "invalid_username"
        );
        assert_eq!(
            check_credentials("alice", "short").unwrap_err().code,
            "invalid_password"
        );
    }
}
