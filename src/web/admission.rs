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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest};

use super::error::ApiError;
use crate::chat::ChatEvent;

/// Seconds a refused client is asked to wait (before its own jitter).
const RETRY_AFTER_SECONDS: u64 = 1;

#[derive(Debug, Clone)]
pub struct Admission {
    in_flight: Arc<AtomicUsize>,
    max: usize,
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
        }
    }

    /// A ticket, or the 503 to answer with.
    pub fn enter(&self) -> Result<Ticket, ApiError> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let ticket = Ticket(Arc::clone(&self.in_flight));
        if before >= self.max {
            drop(ticket);
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
        let a = admission.enter().unwrap();
        let _b = admission.enter().unwrap();
        let refused = admission.enter().unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.code, "overloaded");
        assert_eq!(refused.retry_after, Some(1));
        assert_eq!(
            admission.in_flight.load(Ordering::Acquire),
            2,
            "a refusal holds no place"
        );
        drop(a);
        assert!(admission.enter().is_ok());
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
