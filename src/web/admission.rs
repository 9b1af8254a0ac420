//! Admission: how many API requests this host works on at once.
//!
//! Past `server.max_requests_in_flight`, a request is answered at once with
//! 503 `overloaded` and `Retry-After`, before any work is done for it (no
//! token checked, no database touched). Without it, a host that comes back
//! to ten thousand reconnecting browsers takes every request, each waits
//! for a database connection behind all the others, and the last ones get
//! a 408 after seconds of waiting: worse for them and no faster for anyone.
//! An immediate 503 costs microseconds, and the page and the load tool come
//! back after `Retry-After` with jitter, which spreads the storm out.
//!
//! Counted: the API (REST and the WebSocket upgrade, until it is
//! upgraded), and every chat turn until its reply starts
//! ([`leaves_admission`]): the database work before the first token is
//! what a storm of turns queues on, and a reply that streams for a minute
//! must not hold a place meanwhile. A REST request's ticket lives in its
//! extensions so that the chat handler can give it back early. Not
//! counted: `/healthz`, `/readyz`, `/metrics` and the page's files, which
//! an operator and a load balancer need most when the host is busiest.
//! A refused request did nothing, so a client may resend it as it was (a
//! POST included).
//!
//! Who goes first: while the host is refusing (it refused something in the
//! last [`REFUSING_FOR`]), a request's place depends on how many times it
//! has been tried: the page says so (`Bothost-Attempt` on a REST request,
//! `attempt` in the WebSocket's URL), and a WebSocket's turns start at its
//! upgrade's try and count the turns refused in a row since (the page
//! sends a refused message again on the same socket). A first try gets in
//! only while fewer than half the places are taken, and each further try
//! gets closer to all of them ([`limit`]), so the requests refused longest
//! get in first. Random admission let one unlucky client be refused for
//! the page's whole 15 s while the storm went on around it (in a slow
//! hour, dozens of 10,000 gave up). The price is refusals: a first try is
//! refused as long as retries are waiting, which in a storm of 10,000 is
//! about a quarter more of them, and about a tenth more of the host's CPU
//! a comeback. Tried and dropped: keeping only the last eighth of the
//! places for a third try and later refused as many and ended no sooner,
//! and the tries past the third competed at random again, errors and all.
//! A client that lies about its tries is put ahead of others but gets no
//! more places than the limit, and the rate limits still apply; one that
//! says nothing counts as a first try. When the host is not refusing,
//! every request has every place.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest};

use super::error::ApiError;
use crate::chat::ChatEvent;

/// Seconds a refused client is asked to wait (before its own jitter).
const RETRY_AFTER_SECONDS: u64 = 1;
/// After a refusal, how long the host keeps places for requests tried
/// before (see the module's doc).
pub const REFUSING_FOR: Duration = Duration::from_secs(2);
/// The request header a client counts its tries in (1 for the first).
pub const ATTEMPT_HEADER: &str = "bothost-attempt";
/// No refusal yet.
const NEVER: u64 = u64::MAX;

#[derive(Debug, Clone)]
pub struct Admission {
    in_flight: Arc<AtomicUsize>,
    max: usize,
    /// What `last_refused` counts from.
    started: Instant,
    /// Milliseconds from `started` to the last refusal, or [`NEVER`].
    last_refused: Arc<AtomicU64>,
}

/// One admitted request; leaves the count when dropped.
#[derive(Debug)]
pub struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max: usize) -> Self {
        Self {
            in_flight: Arc::new(AtomicUsize::new(0)),
            max,
            started: Instant::now(),
            last_refused: Arc::new(AtomicU64::new(NEVER)),
        }
    }

    /// A ticket for a request on its `attempt`-th try, or the 503 to
    /// answer with.
    pub fn enter(&self, attempt: u32) -> Result<Ticket, ApiError> {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(NEVER - 1);
        let last = self.last_refused.load(Ordering::Relaxed);
        let refusing = last != NEVER && now.saturating_sub(last) < REFUSING_FOR.as_millis() as u64;
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let ticket = Ticket(Arc::clone(&self.in_flight));
        if before >= limit(self.max, attempt, refusing) {
            drop(ticket);
            self.last_refused.store(now, Ordering::Relaxed);
            return Err(ApiError {
                retry_after: Some(RETRY_AFTER_SECONDS),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the server is busy; please try again in a moment",
                )
            });
        }
        Ok(ticket)
    }
}

/// The most requests a request on its `attempt`-th try may find in
/// flight and still get in, of `max`: all of them unless the host is
/// `refusing`, then half for a first try, three quarters for a second,
/// five sixths for a third, ... (`max - max / 2n`): each try is let in
/// ahead of every earlier one.
pub fn limit(max: usize, attempt: u32, refusing: bool) -> usize {
    if !refusing {
        return max;
    }
    let tries = usize::try_from(attempt.max(1)).unwrap_or(usize::MAX);
    max - max / tries.saturating_mul(2)
}

/// The try a request says it is on (`Bothost-Attempt`, or `attempt` in the
/// query string where a browser cannot set headers: the WebSocket's
/// upgrade); 1 when it says nothing, or nothing that reads as a number.
pub fn attempt_of(req: &HttpRequest) -> u32 {
    let said = req
        .headers()
        .get(ATTEMPT_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            req.query_string()
                .split('&')
                .find_map(|pair| pair.strip_prefix("attempt="))
        });
    said.and_then(|n| n.trim().parse().ok()).unwrap_or(1)
}

/// Whether a request to `path` is counted (see the module's doc).
pub fn counted(path: &str) -> bool {
    path.starts_with("/api/")
}

/// Whether a turn that sent `event` has left admission: its reply has
/// started, or the turn has ended. Until then it is still storing the
/// message and reading its context.
pub fn leaves_admission(event: &ChatEvent) -> bool {
    !matches!(event, ChatEvent::Accepted { .. })
}

/// Gives back the ticket of the request `req` (the chat handler, once its
/// reply has started; the admission middleware, at the latest, once the
/// handler is done).
pub fn release(req: &HttpRequest) {
    drop(req.extensions_mut().remove::<Ticket>());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_requests_are_refused_at_once_until_one_finishes() {
        let admission = Admission::new(2);
        let a = admission.enter(1).unwrap();
        let _b = admission.enter(1).unwrap();
        let refused = admission.enter(1).unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.code, "overloaded");
        assert_eq!(refused.retry_after, Some(1));
        assert_eq!(
            admission.in_flight.load(Ordering::Acquire),
            2,
            "a refusal holds no place"
        );
        drop(a);
        assert!(
            admission.enter(2).is_ok(),
            "a place freed is a retry's (one of two)"
        );
    }

    #[test]
    fn while_refusing_a_request_tried_more_often_goes_first() {
        let admission = Admission::new(8);
        let held: Vec<_> = (0..4).map(|_| admission.enter(1).unwrap()).collect();
        // Not refusing yet: a first try gets any place.
        let fifth = admission.enter(1).unwrap();
        let _full: Vec<_> = (0..3).map(|_| admission.enter(1).unwrap()).collect();
        assert!(admission.enter(1).is_err(), "full");
        // Refusing now: with 7 of 8 taken, only a try that has waited long
        // enough gets the place that frees.
        drop(fifth);
        assert!(admission.enter(1).is_err(), "a first try: half the places");
        assert!(admission.enter(3).is_err(), "a third: 8 - 8/6 = 7");
        let _eighth = admission.enter(5).unwrap();
        drop(held);
        // 4 of 8 taken: a first try waits, a second (up to 6) gets in.
        assert!(admission.enter(1).is_err());
        assert!(admission.enter(2).is_ok());
    }

    #[test]
    fn each_try_gets_closer_to_every_place_but_never_past_them() {
        assert_eq!(limit(512, 1, false), 512, "not refusing: all of them");
        let limits: Vec<usize> = [0, 1, 2, 3, 10, 1000, u32::MAX]
            .into_iter()
            .map(|n| limit(512, n, true))
            .collect();
        assert_eq!(limits, [256, 256, 384, 427, 487, 512, 512]);
        assert_eq!(limit(1, 1, true), 1, "one place is never none");
        assert_eq!(limit(0, 5, true), 0);
    }

    #[test]
    fn the_attempt_is_read_from_the_header_or_the_query() {
        use actix_web::test::TestRequest;
        let req = TestRequest::get()
            .uri("/api/v1/bots")
            .insert_header((ATTEMPT_HEADER, "4"))
            .to_http_request();
        assert_eq!(attempt_of(&req), 4);
        let ws = TestRequest::get()
            .uri("/api/v1/ws?token=abc&attempt=3")
            .to_http_request();
        assert_eq!(attempt_of(&ws), 3);
        for said in [
            "/api/v1/ws?token=abc",
            "/api/v1/ws?attempt=lots",
            "/api/v1/ws?xattempt=9",
        ] {
            let req = TestRequest::get().uri(said).to_http_request();
            assert_eq!(attempt_of(&req), 1, "{said}");
        }
    }

    #[test]
    fn only_the_api_is_counted() {
        assert!(counted("/api/v1/conversations"));
        assert!(counted("/api/v1/ws"));
        for free in ["/healthz", "/readyz", "/metrics", "/", "/app.js"] {
            assert!(!counted(free), "{free}");
        }
    }
}
