//! The WebSocket session: one actor per connection (actix-web-actors).
//!
//! Protocol (JSON text frames, DESIGN.md):
//!
//! ```text
//! client → {"type":"send","conversation_id":1,"client_msg_id":"c1","content":"hi"}
//!        → {"type":"cancel","client_msg_id":"c1"}
//! server ← {"type":"ack","client_msg_id":"c1","message_id":41,"replay":false}
//!        ← {"type":"delta","client_msg_id":"c1","text":"Hel"} …
//!        ← {"type":"done","client_msg_id":"c1","message_id":42,"status":"complete"}
//!        ← {"type":"error","client_msg_id":"c1","code":"worker_died","message":"…"}
//!        ← {"type":"bot_status","bot":"helper","status":"restarting"}
//! ```
//!
//! Each turn runs in the chat service as its own task; this actor only
//! forwards its events, so a turn's reply is stored even if the connection
//! dies. The connection going away (or `cancel`) drops the turn's event
//! stream, which cancels it in the worker. A bad frame gets an `error` frame
//! and the connection carries on; only frames over 1 MiB (the codec's limit)
//! close it. The server pings every `ws_heartbeat` and drops a client silent
//! for `ws_timeout`.
//!
//! When the host shuts down, a connection takes no new turns (`restarting`:
//! the page keeps the message and sends it again once reconnected), lets
//! the ones in flight finish (up to `drain_timeout`), then closes with code
//! 1012, *service restart*, which tells the page to reconnect at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use actix_web_actors::ws;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::limits::{check_client_msg_id, FleetCheck, WebSocketSlot};
use super::rewind;
use super::sessions::AuthUser;
use super::state::AppState;
use super::watchers::BotStatusChanged;
use crate::chat::{Ask, ChatEvent};
use crate::status::BotState;
use crate::store::{Conversation, ReplyStatus};

/// The codec refuses (and closes on) frames above this; smaller frames over
/// `limits.max_ws_frame` get an error frame and the connection stays.
const CODEC_MAX_FRAME: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Send {
        conversation_id: i64,
        client_msg_id: String,
        content: String,
    },
    Cancel {
        client_msg_id: String,
    },
    /// A new reply to the conversation's last message, replacing its own.
    Regenerate {
        conversation_id: i64,
        client_msg_id: String,
    },
    /// `client_msg_id` and everything after it replaced by `content`, sent
    /// as `new_client_msg_id` (whose frames the answer carries).
    Edit {
        conversation_id: i64,
        client_msg_id: String,
        new_client_msg_id: String,
        content: String,
    },
}

/// What a turn on this connection is to answer.
enum Wanted {
    Message(String),
    Regenerate,
    Edit { original: String, content: String },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerFrame {
    Ack {
        client_msg_id: String,
        message_id: i64,
        replay: bool,
    },
    Delta {
        client_msg_id: String,
        text: String,
    },
    Done {
        client_msg_id: String,
        message_id: i64,
        status: ReplyStatus,
    },
    Error {
        client_msg_id: Option<String>,
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
        /// The stored (partial) reply, when there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_id: Option<i64>,
    },
    BotStatus {
        bot: String,
        status: BotState,
    },
}

impl ServerFrame {
    fn error(client_msg_id: Option<&str>, e: ApiError) -> Self {
        ServerFrame::Error {
            client_msg_id: client_msg_id.map(str::to_owned),
            code: e.code,
            message: e.message,
            retry_after: e.retry_after,
            reply_id: None,
        }
    }
}

/// `GET /api/v1/ws`: authenticates (header or `?token=`), then upgrades.
pub async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<HttpResponse, actix_web::Error> {
    // A plain GET is told to upgrade (426), in the API's JSON error shape.
    if let Err(e) = ws::handshake(&req) {
        let mut response = ApiError::new(
            actix_web::http::StatusCode::UPGRADE_REQUIRED,
            "not_websocket",
            format!("this endpoint speaks WebSocket: {e}"),
        )
        .error_response();
        response.headers_mut().insert(
            actix_web::http::header::UPGRADE,
            actix_web::http::header::HeaderValue::from_static("websocket"),
        );
        return Ok(response);
    }
    let ip = req.peer_addr().map(|a| a.ip());
    let slot = state.limits.open_websocket(user.id, ip)?;
    let session = WsSession {
        user,
        ip,
        _slot: slot,
        fragments: Fragments::default(),
        state,
        last_heard: Instant::now(),
        turns: HashMap::new(),
        watching: None,
        closing: false,
        turn_try: super::admission::attempt_of(&req),
    };
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(CODEC_MAX_FRAME)
        .start()
}

struct WsSession {
    user: AuthUser,
    ip: Option<IpAddr>,
    /// Counts this connection against its user's and address's limits
    /// until the session is dropped.
    _slot: WebSocketSlot,
    fragments: Fragments,
    state: web::Data<AppState>,
    last_heard: Instant,
    /// Turns of this connection, by client message id: cancelling one
    /// stops forwarding its events, which cancels the turn (its reply is
    /// stored as far as it got). Never aborted: an abort could cut a
    /// SQLite call half-way, and diesel-async then blocks in place, which
    /// panics on this single-threaded runtime.
    turns: HashMap<String, CancellationToken>,
    /// Its key among the host's watchers (`web::watchers`) while registered.
    watching: Option<u64>,
    /// The host is shutting down: no new turns, close when the last ends.
    closing: bool,
    /// Which try (`web::admission`) the next turn is on: the upgrade's at
    /// first (a socket that took n tries to open belongs to a client that
    /// has waited as long, and its message is the last thing it needs),
    /// one more for each turn refused since (the page sends a refused
    /// message again on the same socket), 1 once one is let in. Counted
    /// here, not said by the page, so that no frame changes (a host before
    /// this one refuses unknown fields).
    turn_try: u32,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Push(ServerFrame);

#[derive(Message)]
#[rtype(result = "()")]
struct TurnEnded(String);

/// A turn refused before it began. When the reason is the session itself
/// (401/403: it has ended, or the account is disabled), the connection is
/// closed with [`SESSION_ENDED`] too: nothing more will be taken on it.
#[derive(Message)]
#[rtype(result = "()")]
struct TurnRefused(String, ApiError);

/// The close code that tells the page to log in again.
const SESSION_ENDED: u16 = 4401;

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.state.metrics.ws_connections.inc();
        ctx.run_interval(self.state.ws_heartbeat, |act, ctx| {
            if act.last_heard.elapsed() > act.state.ws_timeout {
                ctx.stop();
            } else {
                ctx.ping(b"");
            }
        });
        self.watching = Some(self.state.watchers.join(ctx.address().recipient()));
        let closing = self.state.chats.closing();
        ctx.spawn(
            async move { closing.cancelled_owned().await }
                .into_actor(self)
                .map(|(), act, ctx| act.begin_closing(ctx)),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Dropping each turn's event stream cancels it; its reply is stored.
        for (_, turn) in self.turns.drain() {
            turn.cancel();
        }
        if let Some(key) = self.watching.take() {
            self.state.watchers.leave(key);
        }
        self.state.metrics.ws_connections.dec();
    }
}

impl Handler<BotStatusChanged> for WsSession {
    type Result = ();

    fn handle(&mut self, BotStatusChanged(change): BotStatusChanged, ctx: &mut Self::Context) {
        let frame = ServerFrame::BotStatus {
            bot: change.bot,
            status: change.state,
        };
        Handler::<Push>::handle(self, Push(frame), ctx);
    }
}

impl Handler<Push> for WsSession {
    type Result = ();

    fn handle(&mut self, Push(frame): Push, ctx: &mut Self::Context) {
        match serde_json::to_string(&frame) {
            Ok(text) => ctx.text(text),
            Err(e) => tracing::error!("cannot encode a frame: {e}"),
        }
    }
}

impl Handler<TurnEnded> for WsSession {
    type Result = ();

    fn handle(&mut self, TurnEnded(id): TurnEnded, ctx: &mut Self::Context) {
        self.turns.remove(&id);
        if self.closing && self.turns.is_empty() {
            Self::close_for_restart(ctx);
        }
    }
}

impl Handler<TurnRefused> for WsSession {
    type Result = ();

    fn handle(&mut self, TurnRefused(id, e): TurnRefused, ctx: &mut Self::Context) {
        let ends_session = matches!(e.status.as_u16(), 401 | 403);
        let description = e.message.clone();
        Handler::<Push>::handle(self, Push(ServerFrame::error(Some(&id), e)), ctx);
        Handler::<TurnEnded>::handle(self, TurnEnded(id), ctx);
        if ends_session {
            ctx.close(Some(ws::CloseReason {
                code: ws::CloseCode::Other(SESSION_ENDED),
                description: Some(description),
            }));
            ctx.stop();
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let max =
            usize::try_from(self.state.limits.config.max_ws_frame.as_u64()).unwrap_or(usize::MAX);
        match item {
            Ok(ws::Message::Ping(bytes)) => {
                self.last_heard = Instant::now();
                ctx.pong(&bytes);
            }
            Ok(ws::Message::Pong(_)) => self.last_heard = Instant::now(),
            // Only answers to pings count as heard: a client that sends but
            // never reads would otherwise stay, and what it is sent would
            // pile up in this connection's buffer without end.
            Ok(ws::Message::Text(text)) => {
                self.on_message(Assembled::Text(text.to_string()), max, ctx);
            }
            Ok(ws::Message::Binary(_)) => self.on_message(Assembled::Binary, max, ctx),
            // A message in fragments counts when its last one arrives.
            Ok(ws::Message::Continuation(item)) => {
                let assembled = self.fragments.feed(item, max);
                self.on_message(assembled, max, ctx);
            }
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(ws::Message::Nop) => {}
            Err(e) => {
                tracing::debug!(user = %self.user.name, "WebSocket protocol error: {e}");
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Size,
                    description: Some(format!("{e}")),
                }));
                ctx.stop();
            }
        }
    }
}

impl WsSession {
    /// One whole client message: a frame, or the fragments of one.
    fn on_message(&mut self, message: Assembled, max: usize, ctx: &mut ws::WebsocketContext<Self>) {
        let push = |ctx: &mut ws::WebsocketContext<Self>, frame: ServerFrame| {
            if let Ok(text) = serde_json::to_string(&frame) {
                ctx.text(text);
            }
        };
        let refuse = |ctx: &mut ws::WebsocketContext<Self>, e: ApiError| {
            push(ctx, ServerFrame::error(None, e));
        };
        let text = match message {
            Assembled::Pending => return,
            Assembled::Text(text) if text.len() <= max => text,
            Assembled::Text(_) | Assembled::TooLarge => {
                return refuse(
                    ctx,
                    ApiError::new(
                        actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        format!("a WebSocket message is at most {max} bytes"),
                    ),
                )
            }
            Assembled::Binary => {
                return refuse(
                    ctx,
                    ApiError::bad_request("invalid_json", "send JSON text frames, not binary"),
                )
            }
            Assembled::Invalid(why) => {
                return refuse(ctx, ApiError::bad_request("invalid_json", why))
            }
        };
        match serde_json::from_str::<ClientFrame>(&text) {
            Ok(ClientFrame::Send {
                conversation_id,
                client_msg_id,
                content,
            }) => {
                let wanted = Wanted::Message(content);
                if let Err(e) = self.start(conversation_id, &client_msg_id, wanted, ctx) {
                    push(ctx, ServerFrame::error(Some(&client_msg_id), e));
                }
            }
            Ok(ClientFrame::Regenerate {
                conversation_id,
                client_msg_id,
            }) => {
                if let Err(e) = self.start(conversation_id, &client_msg_id, Wanted::Regenerate, ctx)
                {
                    push(ctx, ServerFrame::error(Some(&client_msg_id), e));
                }
            }
            Ok(ClientFrame::Edit {
                conversation_id,
                client_msg_id,
                new_client_msg_id,
                content,
            }) => {
                let wanted = Wanted::Edit {
                    original: client_msg_id,
                    content,
                };
                if let Err(e) = self.start(conversation_id, &new_client_msg_id, wanted, ctx) {
                    push(ctx, ServerFrame::error(Some(&new_client_msg_id), e));
                }
            }
            Ok(ClientFrame::Cancel { client_msg_id }) => {
                if let Some(turn) = self.turns.remove(&client_msg_id) {
                    turn.cancel();
                    let e = ApiError::new(
                        actix_web::http::StatusCode::OK,
                        "cancelled",
                        "cancelled; what was written so far is kept",
                    );
                    push(ctx, ServerFrame::error(Some(&client_msg_id), e));
                }
            }
            Err(e) => refuse(
                ctx,
                ApiError::bad_request("invalid_json", format!("not a valid message: {e}")),
            ),
        }
    }
}

/// A client message as far as it has arrived.
#[derive(Debug, PartialEq)]
enum Assembled {
    /// More fragments to come.
    Pending,
    Text(String),
    Binary,
    /// Over `max_ws_frame` in all: its bytes were not kept.
    TooLarge,
    Invalid(&'static str),
}

/// The fragments of a message sent in pieces, gathered up to the message
/// size limit (each fragment is a frame of its own, so the codec's frame
/// limit alone would let a client grow this without bound).
#[derive(Debug, Default)]
struct Fragments {
    /// Receiving a message: text or binary.
    open: Option<bool>,
    bytes: Vec<u8>,
    too_large: bool,
}

impl Fragments {
    fn feed(&mut self, item: Item, max: usize) -> Assembled {
        let (chunk, first, last) = match item {
            Item::FirstText(b) => (b, Some(true), false),
            Item::FirstBinary(b) => (b, Some(false), false),
            Item::Continue(b) => (b, None, false),
            Item::Last(b) => (b, None, true),
        };
        if let Some(text) = first {
            *self = Self {
                open: Some(text),
                ..Self::default()
            };
        }
        let Some(text) = self.open else {
            return Assembled::Invalid("a continuation frame without a first frame");
        };
        if self.bytes.len() + chunk.len() > max {
            self.too_large = true;
            self.bytes = Vec::new();
        } else if !self.too_large {
            self.bytes.extend_from_slice(&chunk);
        }
        if !last {
            return Assembled::Pending;
        }
        let done = std::mem::take(self);
        match (text, done.too_large) {
            (_, true) => Assembled::TooLarge,
            (false, false) => Assembled::Binary,
            (true, false) => String::from_utf8(done.bytes).map_or(
                Assembled::Invalid("the message is not UTF-8"),
                Assembled::Text,
            ),
        }
    }
}

impl WsSession {
    /// The host is shutting down: close once the turns in flight end, or
    /// after `drain_timeout` (their replies are stored `partial` then).
    fn begin_closing(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        self.closing = true;
        if self.turns.is_empty() {
            return Self::close_for_restart(ctx);
        }
        ctx.run_later(self.state.drain_timeout, |_, ctx| {
            Self::close_for_restart(ctx)
        });
    }

    fn close_for_restart(ctx: &mut ws::WebsocketContext<Self>) {
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Restart,
            description: Some("the server is restarting; reconnect".into()),
        }));
        ctx.stop();
    }

    /// Checks and starts one turn, forwarding its events to this actor.
    fn start(
        &mut self,
        conversation_id: i64,
        client_msg_id: &str,
        wanted: Wanted,
        ctx: &mut ws::WebsocketContext<Self>,
    ) -> Result<(), ApiError> {
        if self.closing {
            return Err(crate::chat::Chats::restarting().into());
        }
        match &wanted {
            Wanted::Message(content) | Wanted::Edit { content, .. } => {
                self.state.limits.check_message(client_msg_id, content)?
            }
            // Its text is stored already.
            Wanted::Regenerate => check_client_msg_id(client_msg_id)?,
        }
        if self.turns.contains_key(client_msg_id) {
            return Err(crate::chat::Chats::in_progress().into());
        }
        self.state.limits.message(self.user.id, self.ip)?;
        let slot = self.state.limits.start_turn(self.user.id)?;
        // Counted with the API's requests until the reply starts: the
        // database work before it is what a storm of turns queues on.
        let admitted = self.state.admission.enter(self.turn_try);
        self.turn_try = match admitted {
            Ok(_) => 1,
            Err(_) => self.turn_try.saturating_add(1),
        };
        let mut ticket = Some(admitted?);
        let (state, me, owner, ip) = (self.state.clone(), ctx.address(), self.user.id, self.ip);
        let cid = client_msg_id.to_owned();
        let claims = self.user.claims.clone();
        // Seen by this host lately (listed, or read by a turn), so a turn
        // needs no read of its own: see `web::known`.
        let known = self.state.known.get(owner, conversation_id);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        actix_rt::spawn(async move {
            let _slot = slot;
            // The session may have ended since the connection opened
            // (logged out everywhere, password changed, account removed).
            if let Err(e) = state.sessions.check(&claims).await {
                me.do_send(TurnRefused(cid, e));
                return;
            }
            // The fleet's counts, and the conversation unless this
            // host knows it: one statement where hosts share the
            // database, if one is needed at all.
            let check = FleetCheck {
                read: known.is_none().then_some(conversation_id),
                turns: matches!(wanted, Wanted::Regenerate),
            };
            let read = check.read;
            let passed = state
                .limits
                .check_fleet(&state.store, owner, ip, check)
                .await
                .and_then(|pass| {
                    let conv = known
                        .or(pass.conversation)
                        .ok_or_else(|| ApiError::not_found("the conversation"))?;
                    Ok((conv, pass.counted))
                });
            let (conv, counted) = match passed {
                Ok(passed) => passed,
                Err(e) => {
                    me.do_send(TurnRefused(cid, e));
                    return;
                }
            };
            let mut counted = Some(counted);
            match (&wanted, conv.title.is_empty()) {
                // Named after this message from now on: the chat service
                // titles an untitled conversation only.
                (Wanted::Message(content), true) => state.known.remember([&Conversation {
                    title: crate::chat::title_from(content),
                    ..conv.clone()
                }]),
                _ if read.is_some() => state.known.remember([&conv]),
                _ => {}
            }
            if stopped.is_cancelled() {
                return;
            }
            let ask = match wanted {
                Wanted::Message(content) => Ok(Ask::message(cid.clone(), content)),
                Wanted::Regenerate => rewind::regenerate(&state, &conv, &cid).await,
                Wanted::Edit { original, content } => {
                    rewind::edit(&state, &conv, &original, cid.clone(), content).await
                }
            };
            let ask = match ask {
                Ok(ask) => ask,
                Err(e) => {
                    me.do_send(TurnRefused(cid, e));
                    return;
                }
            };
            let window = state.history_windows.get(&conv.bot).copied().unwrap_or(20);
            let (tx, mut rx) = mpsc::unbounded_channel();
            // Detached: the reply is stored even if this forwarder stops
            // (cancel) or the connection dies.
            state.chats.spawn(conv, ask, window, tx);
            loop {
                tokio::select! {
                    biased;
                    () = stopped.cancelled() => {
                        // What the turn sent before it heard of the stop is
                        // stored as shown: show it.
                        while let Ok(event) = rx.try_recv() {
                            me.do_send(Push(frame(&cid, event)));
                        }
                        return;
                    }
                    event = rx.recv() => {
                        let Some(event) = event else { break };
                        if let Some(counted) = counted.take() {
                            state.limits.settle(counted, &event);
                        }
                        if super::admission::leaves_admission(&event) {
                            drop(ticket.take());
                        }
                        let (event, next) = match event {
                            ChatEvent::Delta(text) => {
                                let (text, next) = gather_deltas(text, &mut rx);
                                (ChatEvent::Delta(text), next)
                            }
                            other => (other, None),
                        };
                        me.do_send(Push(frame(&cid, event)));
                        if let Some(next) = next {
                            me.do_send(Push(frame(&cid, next)));
                        }
                    }
                }
            }
            me.do_send(TurnEnded(cid));
        });
        self.turns.insert(client_msg_id.to_owned(), stop);
        Ok(())
    }
}

/// `text` and the deltas queued behind it, as one: under load a turn's
/// tokens pile up faster than frames go out, and one frame for them all is
/// one message for the connection's actor, one serialization and one write
/// instead of many. The page appends either way. Also the first event
/// after them, if one was taken off the queue.
fn gather_deltas(
    mut text: String,
    rx: &mut mpsc::UnboundedReceiver<ChatEvent>,
) -> (String, Option<ChatEvent>) {
    while let Ok(event) = rx.try_recv() {
        match event {
            ChatEvent::Delta(more) => text.push_str(&more),
            other => return (text, Some(other)),
        }
    }
    (text, None)
}

fn frame(cid: &str, event: ChatEvent) -> ServerFrame {
    let client_msg_id = cid.to_owned();
    match event {
        ChatEvent::Accepted { message, replay } => ServerFrame::Ack {
            client_msg_id,
            message_id: message.id,
            replay,
        },
        ChatEvent::Delta(text) => ServerFrame::Delta {
            client_msg_id,
            text,
        },
        ChatEvent::Done { reply } => ServerFrame::Done {
            client_msg_id,
            message_id: reply.id,
            status: reply.status,
        },
        ChatEvent::Failed { error, reply } => ServerFrame::Error {
            client_msg_id: Some(client_msg_id),
            code: error.code.as_str(),
            retry_after: super::error::turn_retry_after(error.code),
            message: error.message,
            reply_id: reply.map(|r| r.id),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn queued_deltas_go_out_as_one_and_what_follows_them_is_kept() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for piece in ["lo", ", ", "world"] {
            tx.send(ChatEvent::Delta(piece.into())).unwrap();
        }
        tx.send(ChatEvent::Failed {
            error: crate::chat::Chats::in_progress(),
            reply: None,
        })
        .unwrap();
        tx.send(ChatEvent::Delta("after".into())).unwrap();
        let (text, next) = gather_deltas("Hel".into(), &mut rx);
        assert_eq!(text, "Hello, world");
        assert!(matches!(next, Some(ChatEvent::Failed { .. })), "{next:?}");
        // Nothing past the first other event was taken.
        assert!(matches!(rx.try_recv(), Ok(ChatEvent::Delta(t)) if t == "after"));
        let (text, next) = gather_deltas("alone".into(), &mut rx);
        assert_eq!((text.as_str(), next.is_none()), ("alone", true));
    }

    proptest! {
        /// A client frame of any text parses or is refused; a `send` with
        /// any id and content passes the message rules or gets a 400/413.
        #[test]
        fn any_client_frame_parses_or_is_refused(text in "(?s).{0,200}", id in "(?s).{0,80}", content in "(?s).{0,300}") {
            let _ = serde_json::from_str::<ClientFrame>(&text);
            let frame = serde_json::json!({
                "type": "send", "conversation_id": 1, "client_msg_id": id, "content": content,
            });
            let Ok(ClientFrame::Send { client_msg_id, content, .. }) =
                serde_json::from_value::<ClientFrame>(frame)
            else {
                return Err(TestCaseError::fail("a send frame"));
            };
            let limits = super::super::limits::Limits::new(crate::config::LimitsConfig {
                max_message_chars: 200,
                ..Default::default()
            });
            if let Err(e) = limits.check_message(&client_msg_id, &content) {
                prop_assert!(matches!(e.status.as_u16(), 400 | 413), "{:?}", e);
            } else {
                prop_assert!(!content.contains('\0') && !client_msg_id.contains('\0'));
            }
        }
    }

    #[test]
    fn fragments_make_one_message_within_the_size_limit() {
        use actix_web::web::Bytes;
        let mut f = Fragments::default();
        assert_eq!(
            f.feed(Item::FirstText(Bytes::from_static(b"{\"a\"")), 16),
            Assembled::Pending
        );
        assert_eq!(
            f.feed(Item::Continue(Bytes::from_static(b":")), 16),
            Assembled::Pending
        );
        assert_eq!(
            f.feed(Item::Last(Bytes::from_static(b"1}")), 16),
            Assembled::Text("{\"a\":1}".into())
        );
        f.feed(Item::FirstText(Bytes::from(vec![b'x'; 10])), 16);
        f.feed(Item::Continue(Bytes::from(vec![b'x'; 10])), 16);
        assert!(f.bytes.is_empty(), "nothing kept past the limit");
        assert_eq!(f.feed(Item::Last(Bytes::new()), 16), Assembled::TooLarge);
        f.feed(Item::FirstBinary(Bytes::from_static(b"x")), 16);
        assert_eq!(f.feed(Item::Last(Bytes::new()), 16), Assembled::Binary);
        f.feed(Item::FirstText(Bytes::from_static(b"\xff")), 16);
        assert!(matches!(
            f.feed(Item::Last(Bytes::new()), 16),
            Assembled::Invalid(_)
        ));
        assert!(matches!(
            f.feed(Item::Last(Bytes::new()), 16),
            Assembled::Invalid(_)
        ));
    }
}
