//! Request limits: messages per minute per user and per IP address, login
//! attempts per IP address, turns in flight per user, WebSockets open per
//! user and per IP address, conversations created per minute per user and
//! held in all.
//!
//! Owns the counters; a refusal is a 429 with `Retry-After` (REST) or an
//! `error` frame (WebSocket) carrying the same code. The client address is
//! the TCP peer's: behind a reverse proxy every user shares the proxy's, so
//! raise `messages_per_minute_per_ip` there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use actix_web::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;
use super::fleet_minutes::{Count, FleetMinutes};
use crate::chat::ChatEvent;
use crate::config::LimitsConfig;
use crate::store::{now_ms, Conversation, Store};
use crate::turn::{ErrorCode, TurnError};

pub struct Limits {
    pub config: LimitsConfig,
    per_user: DefaultKeyedRateLimiter<i64>,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    logins: DefaultKeyedRateLimiter<IpAddr>,
    new_conversations: DefaultKeyedRateLimiter<i64>,
    in_flight: Counted<i64>,
    websockets_per_user: Counted<i64>,
    websockets_per_ip: Counted<IpAddr>,
    /// The fleet's messages per user and per address this minute
    /// ([`Limits::check_fleet`]).
    minutes: FleetMinutes,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

/// How many of something each key holds now (turns running, sockets open).
struct Counted<K>(Arc<Mutex<HashMap<K, u32>>>);

impl<K: std::hash::Hash + Eq + Clone> Counted<K> {
    fn new() -> Self {
        Self(Arc::default())
    }

    /// One more for `key`, unless it holds `max` already.
    fn take(&self, key: K, max: u32) -> Option<Slot<K>> {
        let mut counts = self.0.lock().ok()?;
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: Arc::clone(&self.0),
            key,
        })
    }
}

/// One unit of a [`Counted`], given back when dropped.
pub struct Slot<K: std::hash::Hash + Eq> {
    counts: Arc<Mutex<HashMap<K, u32>>>,
    key: K,
}

impl<K: std::hash::Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock() {
            if let Some(n) = counts.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&self.key);
                }
            }
        }
    }
}

/// What [`Limits::check_fleet`] does besides counting a message's minute.
#[derive(Debug, Default, Clone, Copy)]
pub struct FleetCheck {
    /// Also read the caller's conversation of this id, in the same
    /// statement.
    pub read: Option<i64>,
    /// Also count the user's turns in flight on the fleet: for a turn whose
    /// message is stored already (regenerate), whose lease is taken without
    /// that check.
    pub turns: bool,
}

/// What [`Limits::check_fleet`] let through.
pub struct FleetPass {
    /// The conversation [`FleetCheck::read`] asked for, if it is the caller's.
    pub conversation: Option<Conversation>,
    /// Counted on this host only so far: [`Limits::settle`] it with the
    /// turn's first event.
    pub counted: CountedHere,
}

/// The subjects a message was counted against on this host, in one minute.
#[derive(Debug, Default)]
pub struct CountedHere {
    window: i64,
    subjects: Vec<String>,
}

/// A turn counted against its user's `max_in_flight_per_user`.
pub type InFlight = Slot<i64>;

/// An open WebSocket, counted against its user and its address.
pub struct WebSocketSlot {
    _user: Slot<i64>,
    _ip: Option<Slot<IpAddr>>,
}

impl Limits {
    /// Checks a message before anything is stored: a usable client id, some
    /// text, and no more than `max_message_chars`.
    pub fn check_message(&self, client_msg_id: &str, content: &str) -> Result<(), ApiError> {
        check_client_msg_id(client_msg_id)?;
        no_nul("content", content)?;
        // The OpenAPI document states this rule as the pattern `[^ \t\n\r]`.
        if content
            .chars()
            .all(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
        {
            return Err(ApiError::bad_request(
                "empty_message",
                "the message is empty",
            ));
        }
        let max = self.config.max_message_chars;
        if content.chars().count() > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "message_too_long",
                format!("a message is at most {max} characters"),
            ));
        }
        Ok(())
    }

    pub fn new(config: LimitsConfig) -> Self {
        Self {
            per_user: RateLimiter::keyed(per_minute(config.messages_per_minute_per_user)),
            per_ip: RateLimiter::keyed(per_minute(config.messages_per_minute_per_ip)),
            logins: RateLimiter::keyed(per_minute(config.logins_per_minute_per_ip)),
            new_conversations: RateLimiter::keyed(per_minute(
                config.conversations_per_minute_per_user,
            )),
            in_flight: Counted::new(),
            websockets_per_user: Counted::new(),
            websockets_per_ip: Counted::new(),
            minutes: FleetMinutes::default(),
            config,
        }
    }

    /// One chat message from `user` at `ip`.
    pub fn message(&self, user: i64, ip: Option<IpAddr>) -> Result<(), ApiError> {
        check(&self.per_user, &user, "you are sending messages too fast")?;
        match ip {
            Some(ip) => check(&self.per_ip, &ip, "too many messages from your address"),
            None => Ok(()),
        }
    }

    /// One login or registration attempt from `ip`.
    pub fn login(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        match ip {
            Some(ip) => check(&self.logins, &ip, "too many login attempts; wait a moment"),
            None => Ok(()),
        }
    }

    /// Claims an in-flight slot for `user`, or refuses when all are taken.
    pub fn start_turn(&self, user: i64) -> Result<InFlight, ApiError> {
        let max = self.config.max_in_flight_per_user;
        self.in_flight
            .take(user, max)
            .ok_or_else(|| TurnError::too_many_in_flight(max).into())
    }

    /// Claims a WebSocket for `user` at `ip`, held until the slot drops.
    pub fn open_websocket(&self, user: i64, ip: Option<IpAddr>) -> Result<WebSocketSlot, ApiError> {
        let refused = |message: String| ApiError {
            code: "too_many_websockets",
            ..ApiError::too_many(message, 5)
        };
        let max = self.config.websockets_per_user;
        let user_slot = self.websockets_per_user.take(user, max).ok_or_else(|| {
            refused(format!(
                "you have {max} connections open already (tabs, devices); close one"
            ))
        })?;
        let ip_slot = match ip {
            Some(ip) => {
                let max = self.config.websockets_per_ip;
                Some(self.websockets_per_ip.take(ip, max).ok_or_else(|| {
                    refused(format!(
                        "{max} connections are open from your address already"
                    ))
                })?)
            }
            None => None,
        };
        Ok(WebSocketSlot {
            _user: user_slot,
            _ip: ip_slot,
        })
    }

    /// One new conversation for `user`, who holds `held` already.
    pub fn new_conversation(&self, user: i64, held: u64) -> Result<(), ApiError> {
        let max = self.config.max_conversations_per_user;
        if held >= u64::from(max) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many_conversations",
                format!("you have {max} conversations, the most one account may keep; delete some first"),
            ));
        }
        check(
            &self.new_conversations,
            &user,
            "you are starting conversations too fast",
        )
    }

    /// The same message limits counted by the whole fleet, where hosts
    /// share the database ([`Store::is_shared`]): messages per minute per
    /// user and per address, in one-minute windows counted here and added
    /// to the database in batches ([`super::fleet_minutes`]), so only a
    /// subject's first message of a minute on this host costs a statement.
    /// This host's own limits (above) still apply first. Turns in flight
    /// are checked where a turn's lease is taken, with its message
    /// ([`crate::store::Store::begin_user_turn`]); `check.turns` checks
    /// them here too, for a turn whose message is stored already.
    /// Given `check.read`, the pass carries `user`'s conversation of that
    /// id (`None` if there is none of theirs), read in the same statement.
    pub async fn check_fleet(
        &self,
        store: &Store,
        user: i64,
        ip: Option<IpAddr>,
        check: FleetCheck,
    ) -> Result<FleetPass, ApiError> {
        if !store.is_shared() {
            let conversation = match check.read {
                Some(id) => store.conversation(user, id).await?,
                None => None,
            };
            return Ok(FleetPass {
                conversation,
                counted: CountedHere::default(),
            });
        }
        let now = now_ms();
        let window = minute_of(now);
        let retry = u64::try_from((window + 60_000 - now) / 1000).unwrap_or(1);
        let mut counted = CountedHere {
            window,
            subjects: Vec::new(),
        };
        // Counted here where this host knows the minute; the rest is asked
        // of the database, by one request at a time per subject (the others
        // wait for its answer). Subjects are always taken in this order, so
        // two requests never wait for each other.
        let mut ask = [None, None];
        let mut asking = Vec::new();
        let subjects = [
            (
                Some(format!("u:{user}")),
                self.config.messages_per_minute_per_user,
                "you are sending messages too fast",
            ),
            (
                ip.map(|ip| format!("ip:{ip}")),
                self.config.messages_per_minute_per_ip,
                "too many messages from your address",
            ),
        ];
        for ((subject, max, refusal), asked) in subjects.iter().zip(&mut ask) {
            let Some(subject) = subject else { continue };
            match self.minutes.count_waiting(subject, window, *max).await {
                Count::Over => {
                    self.take_back(&counted);
                    return Err(ApiError::too_many(*refusal, retry));
                }
                Count::Counted => counted.subjects.push(subject.clone()),
                Count::Unknown(ask) => {
                    asking.push(ask);
                    *asked = Some(subject.as_str());
                }
                // `count_waiting` has waited already.
                Count::Wait(_) => {}
            }
        }
        if ask.iter().all(Option::is_none) && check.read.is_none() && !check.turns {
            return Ok(FleetPass {
                conversation: None,
                counted,
            });
        }
        let [ask_user, ask_ip] = ask;
        let found = store
            .fleet_hits(ask_user, ask_ip, window, user, check.read, check.turns)
            .await;
        let (hits, conversation) = match found {
            Ok(found) => found,
            Err(e) => {
                self.take_back(&counted);
                return Err(e.into());
            }
        };
        // Every answer is learned before any refusal: both rows were hit.
        let mut refused = None;
        let answers = [(ask_user, hits.user_hits), (ask_ip, hits.ip_hits)];
        for ((_, max, refusal), (asked, hits)) in subjects.iter().zip(answers) {
            let Some(subject) = asked else { continue };
            self.minutes.learn(subject, window, i64::from(hits));
            if u32::try_from(hits).map_or(true, |h| h > *max) {
                refused.get_or_insert(*refusal);
            }
        }
        // Learned: those waiting for these answers count here now.
        drop(asking);
        if let Some(refusal) = refused {
            return Err(ApiError::too_many(refusal, retry));
        }
        let max = self.config.max_in_flight_per_user;
        if check.turns && u64::try_from(hits.live_turns).unwrap_or(0) >= u64::from(max) {
            return Err(TurnError::too_many_in_flight(max).into());
        }
        Ok(FleetPass {
            conversation,
            counted,
        })
    }

    /// Settles what [`Limits::check_fleet`] counted here for a message
    /// with its turn's first event: taken back if the database could not
    /// store the message (an outage), which must not hold its user or
    /// address over the cap once the outage ends.
    pub fn settle(&self, counted: CountedHere, first: &ChatEvent) {
        if let ChatEvent::Failed { error, .. } = first {
            if error.code == ErrorCode::StoreUnavailable {
                self.take_back(&counted);
            }
        }
    }

    fn take_back(&self, counted: &CountedHere) {
        for subject in &counted.subjects {
            self.minutes.uncount(subject, counted.window);
        }
    }

    /// Adds the messages per user and address counted here since the last batch to
    /// the fleet's minute rows, and learns the fleet's counts back: whether
    /// there was anything to write. On an error the batch goes out with the
    /// next one.
    pub async fn write_minutes_batch(
        &self,
        store: &Store,
    ) -> Result<bool, crate::store::StoreError> {
        let window = minute_of(now_ms());
        let batch = self.minutes.take_batch(window);
        if batch.is_empty() {
            return Ok(false);
        }
        let written = store.add_window_hits(window, &batch).await;
        self.minutes.settle(window, &batch, written.as_deref().ok());
        written.map(|_| true)
    }

    /// Forgets the fleet's minutes before the last (run by the sweeper,
    /// not per message).
    pub async fn forget_fleet_windows(&self, store: &Store) {
        if !store.is_shared() {
            return;
        }
        if let Err(e) = store.forget_windows(minute_of(now_ms()) - 60_000).await {
            tracing::warn!("cannot forget old rate windows: {e}");
        }
    }

    /// Forgets keys that have been quiet, so memory stays bounded.
    pub fn forget_idle(&self) {
        self.per_user.retain_recent();
        self.per_ip.retain_recent();
        self.logins.retain_recent();
        self.new_conversations.retain_recent();
    }
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    message: &str,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::too_many(message, wait.as_secs_f64().ceil() as u64)
    })
}

/// The start of the minute (ms since the epoch) holding `ms`: a fleet rate
/// window.
fn minute_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(60_000)
}

/// A client message id: 1 to 64 characters, no NUL.
pub fn check_client_msg_id(client_msg_id: &str) -> Result<(), ApiError> {
    no_nul("client_msg_id", client_msg_id)?;
    if client_msg_id.is_empty() || client_msg_id.chars().count() > 64 {
        return Err(ApiError::bad_request(
            "invalid_client_msg_id",
            "client_msg_id must be 1 to 64 characters",
        ));
    }
    Ok(())
}

/// Text with a NUL character is refused, the same on both backends:
/// PostgreSQL cannot store one, and no person types it.
pub fn no_nul(field: &str, text: &str) -> Result<(), ApiError> {
    if text.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid_text",
            format!("{field} must not contain a NUL character"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::new(LimitsConfig {
            messages_per_minute_per_user: 3,
            messages_per_minute_per_ip: 5,
            logins_per_minute_per_ip: 2,
            max_in_flight_per_user: 2,
            websockets_per_user: 2,
            websockets_per_ip: 3,
            conversations_per_minute_per_user: 2,
            max_conversations_per_user: 5,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn a_user_over_the_rate_gets_retry_after() {
        let l = limits();
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..3 {
            l.message(1, ip).unwrap();
        }
        let e = l.message(1, ip).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (429, "rate_limited"));
        assert!(e.retry_after.unwrap() >= 1);
        l.message(2, ip).unwrap(); // another user is unaffected
    }

    #[test]
    fn an_address_is_limited_across_users() {
        let l = limits();
        let ip = Some(IpAddr::from([10, 0, 0, 2]));
        for user in 0..5 {
            l.message(user, ip).unwrap();
        }
        assert!(l.message(99, ip).is_err());
    }

    #[test]
    fn in_flight_slots_are_returned_on_drop() {
        let l = limits();
        let a = l.start_turn(1).unwrap();
        let _b = l.start_turn(1).unwrap();
        assert!(l.start_turn(1).is_err());
        drop(a);
        assert!(l.start_turn(1).is_ok());
    }

    #[test]
    fn websockets_are_counted_per_user_and_per_address_until_closed() {
        let l = limits();
        let ip = Some(IpAddr::from([10, 0, 0, 3]));
        let a = l.open_websocket(1, ip).unwrap();
        let _b = l.open_websocket(1, ip).unwrap();
        let e = l.open_websocket(1, ip).err().unwrap();
        assert_eq!((e.status.as_u16(), e.code), (429, "too_many_websockets"));
        let _c = l.open_websocket(2, ip).unwrap();
        assert!(l.open_websocket(3, ip).is_err(), "the address is full");
        assert!(
            l.open_websocket(3, None).is_ok(),
            "no address, no address limit"
        );
        drop(a);
        assert!(l.open_websocket(1, ip).is_ok());
    }

    #[test]
    fn conversations_have_a_rate_and_a_total() {
        let l = limits();
        l.new_conversation(1, 0).unwrap();
        l.new_conversation(1, 1).unwrap();
        assert_eq!(l.new_conversation(1, 2).unwrap_err().code, "rate_limited");
        let e = l.new_conversation(2, 5).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (409, "too_many_conversations"));
    }
}
