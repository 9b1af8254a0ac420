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

use super::address_minutes::{AddressMinutes, Count};
use super::error::ApiError;
use crate::config::LimitsConfig;
use crate::store::{now_ms, Conversation, Store};

pub struct Limits {
    pub config: LimitsConfig,
    per_user: DefaultKeyedRateLimiter<i64>,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    logins: DefaultKeyedRateLimiter<IpAddr>,
    new_conversations: DefaultKeyedRateLimiter<i64>,
    in_flight: Counted<i64>,
    websockets_per_user: Counted<i64>,
    websockets_per_ip: Counted<IpAddr>,
    /// The fleet's messages per address this minute ([`Limits::check_fleet`]).
    addresses: AddressMinutes,
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
            addresses: AddressMinutes::default(),
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
        self.in_flight.take(user, max).ok_or_else(|| {
            ApiError::too_many(
                format!("you already have {max} replies in progress; wait for one to finish"),
                1,
            )
        })
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
    /// user and per address in one-minute windows, and turns in flight per
    /// user from the live turn leases. This host's own limits (above) still
    /// apply first. It costs one statement per message on PostgreSQL (a
    /// write of the user's minute, a count of the user's leases); the
    /// address's minute is counted here and written in batches
    /// ([`super::address_minutes`]). Hosts racing may each let one more turn
    /// through than the cap.
    pub async fn check_fleet(
        &self,
        store: &Store,
        user: i64,
        ip: Option<IpAddr>,
    ) -> Result<(), ApiError> {
        self.check_fleet_reading(store, user, ip, None)
            .await
            .map(drop)
    }

    /// [`Limits::check_fleet`], and given `read`, `user`'s conversation of
    /// that id (`None` if there is none of theirs): in the fleet's
    /// statement where the store is shared, on its own where it is not.
    pub async fn check_fleet_reading(
        &self,
        store: &Store,
        user: i64,
        ip: Option<IpAddr>,
        read: Option<i64>,
    ) -> Result<Option<Conversation>, ApiError> {
        if !store.is_shared() {
            return match read {
                Some(id) => Ok(store.conversation(user, id).await?),
                None => Ok(None),
            };
        }
        let now = now_ms();
        let window = minute_of(now);
        let retry = u64::try_from((window + 60_000 - now) / 1000).unwrap_or(1);
        let max_ip = self.config.messages_per_minute_per_ip;
        let too_many_from_address =
            || ApiError::too_many("too many messages from your address", retry);
        let ip = ip.map(|ip| format!("ip:{ip}"));
        // The address goes to the database only if this host has no count
        // for it this minute.
        let count = ip
            .as_deref()
            .map(|ip| self.addresses.count(ip, window, max_ip));
        let ask_for_ip = match count {
            Some(Count::Over) => return Err(too_many_from_address()),
            Some(Count::Unknown) => ip.as_deref(),
            Some(Count::Counted) | None => None,
        };
        let (hits, conversation) = match store
            .fleet_hits(&format!("u:{user}"), ask_for_ip, window, user, read)
            .await
        {
            Ok(found) => found,
            Err(e) => {
                if let (Some(ip), Some(Count::Counted)) = (ip.as_deref(), count) {
                    self.addresses.uncount(ip, window);
                }
                return Err(e.into());
            }
        };
        if let Some(ip) = ask_for_ip {
            self.addresses.learn(ip, window, i64::from(hits.ip_hits));
        }
        let over = |hits: i32, max: u32| u32::try_from(hits).map_or(true, |h| h > max);
        if over(hits.user_hits, self.config.messages_per_minute_per_user) {
            return Err(ApiError::too_many(
                "you are sending messages too fast",
                retry,
            ));
        }
        if ask_for_ip.is_some() && over(hits.ip_hits, max_ip) {
            return Err(too_many_from_address());
        }
        let max = self.config.max_in_flight_per_user;
        if u64::try_from(hits.live_turns).unwrap_or(0) >= u64::from(max) {
            return Err(ApiError::too_many(
                format!("you already have {max} replies in progress; wait for one to finish"),
                1,
            ));
        }
        Ok(conversation)
    }

    /// Adds the messages per address counted here since the last batch to
    /// the fleet's minute rows, and learns the fleet's counts back: whether
    /// there was anything to write. On an error the batch goes out with the
    /// next one.
    pub async fn write_address_batch(
        &self,
        store: &Store,
    ) -> Result<bool, crate::store::StoreError> {
        let window = minute_of(now_ms());
        let batch = self.addresses.take_batch(window);
        if batch.is_empty() {
            return Ok(false);
        }
        let written = store.add_window_hits(window, &batch).await;
        self.addresses
            .settle(window, &batch, written.as_deref().ok());
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
