//! One user chat turn, from the stored question to the stored answer.
//!
//! Owns the order that makes history impossible to lose:
//!
//! 1. the user's message is stored first (or found, when its client id was
//!    seen before); only then does anything reach a bot;
//! 2. a message that already has a reply is answered from the store, never
//!    by asking the bot again, and one still being answered is not started a
//!    second time;
//! 3. the bot sees its context window (the last `history_window` messages);
//! 4. the reply is stored when the turn ends, however it ends: `complete`,
//!    or `partial` / `failed` with exactly the text the user was shown,
//!    including when the caller goes away (which also cancels the turn);
//!    while it streams it is written down as `partial` every 250 ms, so a
//!    host killed outright keeps what was shown (see `write_reply`).
//!
//! A turn whose bot cannot take it at all (unknown, failed, restarting)
//! stores no reply, so the same message can simply be sent again.
//!
//! Turns run as tasks of their own ([`Chats::spawn`]) on the host's main
//! arbiter, tracked: the HTTP workers that took the request can stop first
//! and the reply is still stored. At shutdown [`Chats::close`] refuses new
//! turns (`restarting`, nothing stored) and [`Chats::wait`] waits for the
//! tracked ones to be stored.
//!
//! It never decides who may use a conversation: callers pass one they have
//! already checked belongs to the user.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use bot_worker::{ChatMessage, Role};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::backoff::Backoff;
use crate::lease::Leases;
use crate::metrics::Metrics;
use crate::store::{
    Conversation, Message, MessageRole, NewReply, ReplyStatus, Store, StoreError, UserTurn,
};
use crate::supervisor::{start_turn, Supervisor};
use crate::turn::{ErrorCode, TurnError, TurnEvent};

/// What the caller is told, in this order: `Accepted`, then `Delta`s, then
/// `Done` or `Failed`.
#[derive(Debug)]
pub enum ChatEvent {
    /// The user's message is stored. `replay`: it was stored before.
    Accepted {
        message: Message,
        replay: bool,
    },
    Delta(String),
    Done {
        reply: Message,
    },
    /// `reply` is what was stored of the answer, if anything was.
    Failed {
        error: TurnError,
        reply: Option<Message>,
    },
}

/// The chat service, shared by every caller of a host. Cheap to clone.
#[derive(Clone)]
pub struct Chats {
    store: Store,
    supervisor: Addr<Supervisor>,
    metrics: Metrics,
    /// User messages being answered now.
    in_flight: Arc<Mutex<HashSet<i64>>>,
    /// Cancelled when the host starts shutting down.
    closing: CancellationToken,
    turns: TaskTracker,
    /// Who answers a message when hosts share the database.
    leases: Leases,
    /// A turn the worker says nothing about for this long is ended
    /// (`supervisor.turn_idle_timeout`): a backstop for an engine that
    /// hangs without the worker noticing.
    idle_timeout: Duration,
}

/// What a turn is asked to answer.
#[derive(Debug, Clone)]
pub struct Ask {
    pub client_msg_id: String,
    /// The message's text; for a message stored already (a resend, a
    /// regeneration) the stored text is what the bot sees.
    pub content: String,
    /// Answer it anew: a stored reply is deleted instead of replayed
    /// (regenerate).
    pub fresh: bool,
}

impl Ask {
    pub fn message(client_msg_id: String, content: String) -> Self {
        Self {
            client_msg_id,
            content,
            fresh: false,
        }
    }
}

/// Removes its message from the in-flight set when the turn ends.
struct Claim {
    chats: Chats,
    id: i64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut set) = self.chats.in_flight.lock() {
            set.remove(&self.id);
        }
    }
}

impl Chats {
    pub fn new(
        store: Store,
        supervisor: Addr<Supervisor>,
        metrics: Metrics,
        idle_timeout: Duration,
        max_in_flight_per_user: u32,
    ) -> Self {
        Self {
            leases: Leases::new(store.clone(), max_in_flight_per_user),
            store,
            supervisor,
            metrics,
            in_flight: Arc::default(),
            closing: CancellationToken::new(),
            turns: TaskTracker::new(),
            idle_timeout,
        }
    }

    /// Runs [`Chats::send`] as a tracked task of its own on the host's
    /// main arbiter, so it outlives the HTTP worker that asked for it.
    pub fn spawn(
        &self,
        conversation: Conversation,
        ask: Ask,
        history_window: u32,
        events: mpsc::UnboundedSender<ChatEvent>,
    ) {
        let chats = self.clone();
        let turn = self.turns.track_future(async move {
            chats
                .send(&conversation, &ask, history_window, events)
                .await;
        });
        actix_rt::System::current().arbiter().spawn(turn);
    }

    /// The host is shutting down: new turns are refused from now on.
    pub fn close(&self) {
        self.closing.cancel();
        self.turns.close();
    }

    /// Cancelled when the host starts shutting down.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Waits up to `limit` for every turn to end and its reply to be
    /// stored; answers how many were still running.
    pub async fn wait(&self, limit: Duration) -> usize {
        if tokio::time::timeout(limit, self.turns.wait())
            .await
            .is_err()
        {
            return self.turns.len();
        }
        0
    }

    /// The error a turn gets while the host shuts down.
    pub fn restarting() -> TurnError {
        TurnError::new(
            ErrorCode::Restarting,
            "the server is restarting; your message was not sent and goes out again \
             once you are reconnected",
        )
    }

    /// Whether any of these user messages is being answered now.
    pub fn any_in_flight(&self, ids: &[i64]) -> bool {
        self.in_flight
            .lock()
            .map_or(true, |set| ids.iter().any(|id| set.contains(id)))
    }

    /// The error for a message another turn (here or on another host) is
    /// answering now.
    pub fn in_progress() -> TurnError {
        TurnError::new(
            ErrorCode::InProgress,
            "this message is still being answered",
        )
    }

    fn claim(&self, id: i64) -> Option<Claim> {
        let mut set = self.in_flight.lock().ok()?;
        set.insert(id).then(|| Claim {
            chats: self.clone(),
            id,
        })
    }

    /// Runs one turn, reporting to `events`. Returns when the turn is over
    /// and its reply stored; dropping `events`'s receiver cancels the turn.
    pub async fn send(
        &self,
        conversation: &Conversation,
        ask: &Ask,
        history_window: u32,
        events: mpsc::UnboundedSender<ChatEvent>,
    ) {
        let (client_msg_id, content) = (ask.client_msg_id.as_str(), ask.content.as_str());
        let (store, supervisor) = (&self.store, &self.supervisor);
        let outcome = |name: &str| self.metrics.chat_messages.with_label_values(&[name]).inc();
        let ended_before = |label: &str, error: TurnError| {
            outcome(label);
            ChatEvent::Failed { error, reply: None }
        };
        let fail = |error| ended_before("unavailable", error);
        // Not started, and nothing failed: the client sends it again later.
        let refuse = |error| ended_before("refused", error);
        if self.is_closing() {
            let _ = events.send(refuse(Self::restarting()));
            return;
        }
        let stored = store
            .begin_user_turn(
                conversation.id,
                client_msg_id,
                content,
                history_window,
                self.leases.terms(conversation.owner_id),
                // An untitled conversation is named after its first message.
                conversation
                    .title
                    .is_empty()
                    .then(|| title_from(content))
                    .as_deref(),
            )
            .await;
        let UserTurn {
            message,
            created,
            context,
            leased,
        } = match stored {
            Ok(stored) => stored,
            // A limit: the user was told to wait, and no turn failed.
            Err(StoreError::TurnsInFlight { max }) => {
                let _ = events.send(refuse(TurnError::too_many_in_flight(max)));
                return;
            }
            Err(e) => {
                let _ = events.send(fail(store_error(&e, "your message could not be saved")));
                return;
            }
        };
        let user_message_id = message.id;
        let stored_at = Instant::now();
        let _ = events.send(ChatEvent::Accepted {
            message,
            replay: !created && !ask.fresh,
        });

        // Claimed first: a reply stored while the turn still streams is
        // `partial` and must not be replayed as if it were the answer.
        let Some(_claim) = self.claim(user_message_id) else {
            let _ = events.send(refuse(Self::in_progress()));
            return;
        };
        // Held until the reply is stored: no other host answers meanwhile.
        let lease = if leased {
            Ok(Some(self.leases.adopt(user_message_id)))
        } else {
            self.leases
                .take(user_message_id, conversation.owner_id)
                .await
        };
        let lease = match lease {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                let _ = events.send(refuse(Self::in_progress()));
                return;
            }
            Err(e) => {
                let _ = events.send(fail(store_error(&e, "your conversation could not be read")));
                return;
            }
        };
        if !created && ask.fresh {
            // A new answer: the stored one goes first, under the claim, so
            // no resend can replay it meanwhile.
            if let Err(e) = store.delete_reply(user_message_id).await {
                let _ = events.send(fail(store_error(&e, "your conversation could not be read")));
                return;
            }
        } else if !created {
            match store.reply_to(user_message_id).await {
                Ok(Some(reply)) => {
                    outcome("replayed");
                    let _ = events.send(ChatEvent::Delta(reply.content.clone()));
                    let _ = events.send(ChatEvent::Done { reply });
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ =
                        events.send(fail(store_error(&e, "your conversation could not be read")));
                    return;
                }
            }
        }

        let context = match context {
            Some(context) => Ok(context),
            None => store.context(conversation.id, history_window).await,
        };
        let context = match context {
            Ok(context) => context,
            Err(e) => {
                let _ = events.send(fail(store_error(&e, "your conversation could not be read")));
                return;
            }
        };
        let mut turn = match start_turn(supervisor, &conversation.bot, to_prompt(&context)).await {
            Ok(turn) => turn,
            Err(error) => {
                let _ = events.send(fail(error));
                return;
            }
        };

        let (progress, watched) = watch::channel(Progress::default());
        let writer = actix_rt::spawn(write_reply(
            store.clone(),
            conversation.id,
            user_message_id,
            watched,
            lease.holder(),
        ));
        // Nothing shown yet: the reply so far lives in `progress` alone.
        let shown_nothing = |p: &watch::Sender<Progress>| p.borrow().text.is_empty();
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        let ended = loop {
            tokio::select! {
                event = turn.next() => match event {
                    Some(TurnEvent::Delta(delta)) => {
                        idle.as_mut().reset(tokio::time::Instant::now() + self.idle_timeout);
                        if shown_nothing(&progress) {
                            self.metrics.chat_first_token.observe(stored_at.elapsed().as_secs_f64());
                        }
                        // Kept only once it is on its way to the user: the
                        // stored reply is what they were shown, not more.
                        if events.send(ChatEvent::Delta(delta.clone())).is_err() {
                            drop(turn);
                            break Err(TurnError::new(ErrorCode::Cancelled, "the client went away"));
                        }
                        progress.send_modify(|p| p.text.push_str(&delta));
                    }
                    Some(TurnEvent::Done(usage)) => break Ok(usage),
                    Some(TurnEvent::Failed(error)) => break Err(error),
                    None => break Err(TurnError::new(ErrorCode::WorkerDied, "the reply ended unexpectedly")),
                },
                () = &mut idle => {
                    // Dropping the turn cancels it in the worker.
                    drop(turn);
                    warn!(
                        bot = %conversation.bot,
                        reply_to = user_message_id,
                        "a turn was silent for {} (supervisor.turn_idle_timeout): ended",
                        humantime::format_duration(self.idle_timeout)
                    );
                    break Err(TurnError::new(
                        ErrorCode::EngineTimeout,
                        "the bot stopped answering",
                    ));
                }
                () = events.closed() => {
                    // The caller went away: dropping the turn cancels it in
                    // the worker; what they were shown is kept.
                    drop(turn);
                    break Err(TurnError::new(ErrorCode::Cancelled, "the client went away"));
                }
            }
        };

        let (status, usage) = match &ended {
            Ok(usage) => (ReplyStatus::Complete, Some(usage)),
            Err(_) if shown_nothing(&progress) => (ReplyStatus::Failed, None),
            Err(_) => (ReplyStatus::Partial, None),
        };
        progress.send_modify(|p| {
            p.end = Some(End {
                status,
                prompt_tokens: usage.map(|u| clamp_i32(u.prompt_tokens)),
                completion_tokens: usage.map(|u| clamp_i32(u.completion_tokens)),
            })
        });
        let stored = match writer.await {
            Ok(stored) => stored,
            Err(e) => Err(StoreError::Setup(format!("the reply writer stopped: {e}"))),
        };
        if stored.is_ok() {
            // Given back with the reply, in the same statement.
            lease.given_back();
        }
        self.metrics
            .chat_reply
            .observe(stored_at.elapsed().as_secs_f64());
        if let Err(e) = &stored {
            // Whatever the turn's end, the operator learns the reply is lost.
            warn!(
                reply_to = user_message_id,
                "the reply could not be saved: {e}"
            );
        }
        // Each turn is counted once, as the user saw it end.
        let event = match (ended, stored) {
            (Ok(_), Ok(reply)) => {
                outcome(status.as_str());
                ChatEvent::Done { reply }
            }
            (Err(mut error), stored) => {
                outcome(status.as_str());
                if error.code != ErrorCode::Cancelled {
                    // True here, where the question was stored first.
                    note_saved(&mut error.message);
                }
                ChatEvent::Failed {
                    error,
                    reply: stored.ok(),
                }
            }
            (Ok(_), Err(e)) => fail(store_error(&e, "the reply could not be saved")),
        };
        let _ = events.send(event);
    }
}

/// A conversation's title from its first message: the first line, at most
/// 60 characters (an ellipsis when cut).
pub fn title_from(message: &str) -> String {
    let line = message.trim().lines().next().unwrap_or("").trim();
    let mut title: String = line.chars().take(60).collect();
    if line.chars().count() > 60 {
        title = format!("{}…", title.trim_end());
    }
    title
}

/// Tells the user their message is kept, as a sentence of its own.
fn note_saved(message: &mut String) {
    let trimmed = message.trim_end().len();
    message.truncate(trimmed);
    if !message.is_empty() && !message.ends_with(['.', '!', '?']) {
        message.push('.');
    }
    message.push_str(" Your message is saved.");
}

/// How often a reply being streamed is written down: what the user was
/// shown survives even a `kill -9` of the host, less at most this much.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// A turn's reply as it streams, and how it ended once it has.
#[derive(Default)]
struct Progress {
    text: String,
    end: Option<End>,
}

#[derive(Clone, Copy)]
struct End {
    status: ReplyStatus,
    prompt_tokens: Option<i32>,
    completion_tokens: Option<i32>,
}

/// The one writer of a turn's reply. A turn that ends within
/// [`FLUSH_EVERY`] of its first token is written once, as its final reply
/// (one INSERT: most turns). A longer one is written as `partial` then,
/// and again every [`FLUSH_EVERY`] while its text grows (one UPDATE, not a
/// row per token), so a host that dies mid-reply leaves what was shown;
/// its final reply is written as soon as it ends. Being the only writer, a
/// late flush can never overwrite the final reply.
async fn write_reply(
    store: Store,
    conversation_id: i64,
    reply_to: i64,
    mut progress: watch::Receiver<Progress>,
    release: Option<Arc<str>>,
) -> Result<Message, StoreError> {
    let gone = || StoreError::Setup("the turn ended without a reply".into());
    progress.changed().await.map_err(|_| gone())?;
    let mut written = false;
    loop {
        // Rest until the next flush, unless the turn ends first.
        let _ = tokio::time::timeout(FLUSH_EVERY, progress.wait_for(|p| p.end.is_some())).await;
        let (text, end) = snapshot(&mut progress);
        if let Some(end) = end {
            let reply = end.reply(conversation_id, reply_to, &text);
            return store_reply(&store, reply, written, release.as_deref()).await;
        }
        let partial = NewReply {
            conversation_id,
            reply_to,
            content: &text,
            status: ReplyStatus::Partial,
            prompt_tokens: None,
            completion_tokens: None,
        };
        match store.put_reply(partial, written, None).await {
            Ok(_) => written = true,
            Err(e) => warn!(reply_to, "cannot write the reply so far: {e}"),
        }
        // Then wait for more text (or the end) before writing again.
        progress.changed().await.map_err(|_| gone())?;
    }
}

/// The text so far and the end, if the turn has ended; marks it seen.
fn snapshot(progress: &mut watch::Receiver<Progress>) -> (String, Option<End>) {
    let p = progress.borrow_and_update();
    (p.text.clone(), p.end)
}

impl End {
    fn reply<'a>(self, conversation_id: i64, reply_to: i64, text: &'a str) -> NewReply<'a> {
        NewReply {
            conversation_id,
            reply_to,
            content: text,
            status: self.status,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        }
    }
}

/// A reply the user has seen must not be lost to a brief database hiccup:
/// a few retries before giving up. `partial_written`: a `partial` reply is
/// stored and is brought up to date; else the reply is a new row.
/// `release`: the turn's lease goes back with it ([`Store::put_reply`]).
async fn store_reply(
    store: &Store,
    reply: NewReply<'_>,
    partial_written: bool,
    release: Option<&str>,
) -> Result<Message, StoreError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    let mut attempt = 1;
    loop {
        match store
            .put_reply(reply.clone(), partial_written, release)
            .await
        {
            Err(StoreError::Unavailable(why)) if attempt < 4 => {
                let delay = backoff.next_delay();
                warn!(
                    attempt,
                    "storing a reply failed ({why}); retrying in {delay:?}"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The stored context as the bot sees it: what users and the bot said, in
/// order, leaving out replies that failed with nothing to show.
fn to_prompt(context: &[Message]) -> Vec<ChatMessage> {
    context
        .iter()
        .filter(|m| !(m.role == MessageRole::Assistant && m.content.is_empty()))
        .map(|m| ChatMessage {
            role: match m.role {
                MessageRole::Assistant => Role::Assistant,
                MessageRole::User => Role::User,
            },
            content: m.content.clone(),
        })
        .collect()
}

fn store_error(e: &StoreError, what: &str) -> TurnError {
    match e {
        StoreError::Unavailable(_) => TurnError::new(
            ErrorCode::StoreUnavailable,
            format!("{what}: the database is unavailable; please try again shortly"),
        ),
        StoreError::NotFound => TurnError::new(
            ErrorCode::NotFound,
            format!("{what}: the conversation no longer exists"),
        ),
        // The cause is for the operator's log, never for the user.
        other => {
            tracing::error!("{what}: {other}");
            TurnError::new(
                ErrorCode::Internal,
                format!("{what}: an internal error occurred"),
            )
        }
    }
}

fn clamp_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: MessageRole, content: &str) -> Message {
        Message {
            id: 1,
            conversation_id: 1,
            role,
            content: content.into(),
            status: ReplyStatus::Complete,
            client_msg_id: None,
            reply_to: None,
            prompt_tokens: None,
            completion_tokens: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn a_title_is_the_first_line_cut_at_60_characters() {
        assert_eq!(title_from("  plan a trip\nto Lisbon"), "plan a trip");
        let long = "word ".repeat(20);
        let title = title_from(&long);
        assert!(
            title.ends_with('…') && title.chars().count() <= 61,
            "{title}"
        );
    }

    #[test]
    fn the_saved_note_is_a_sentence_of_its_own() {
        let mut m = "the bot stopped responding; please try again".to_owned();
        note_saved(&mut m);
        assert_eq!(
            m,
            "the bot stopped responding; please try again. Your message is saved."
        );
        let mut m = "It is temporarily unavailable. ".to_owned();
        note_saved(&mut m);
        assert_eq!(m, "It is temporarily unavailable. Your message is saved.");
    }

    #[test]
    fn the_prompt_keeps_order_and_drops_empty_failed_replies() {
        let prompt = to_prompt(&[
            msg(MessageRole::User, "a"),
            msg(MessageRole::Assistant, ""),
            msg(MessageRole::User, "b"),
            msg(MessageRole::Assistant, "c"),
        ]);
        let got: Vec<(Role, &str)> = prompt
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![(Role::User, "a"), (Role::User, "b"), (Role::Assistant, "c")]
        );
    }
}
