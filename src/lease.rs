//! Turn leases: one host answers a message at a time, even when several
//! hosts share one PostgreSQL database.
//!
//! A host claims a message in memory first (`chat`), which is enough for
//! one host. With a shared database ([`Store::is_shared`]) it then takes a
//! lease row for it: a resend of the same message that reaches another host
//! finds the lease held and answers `in_progress` (the page asks again a
//! moment later and then gets the stored reply), instead of asking a bot a
//! second time. The holder renews its lease every [`RENEW_EVERY`] while the
//! turn runs and gives it back when the reply is stored (in the same
//! statement, [`Store::put_reply`]; on the way out otherwise). A host that
//! dies stops renewing: after [`TTL`] the message can be taken again, and its
//! stored partial reply is what the next host replays.
//!
//! It never decides anything about a turn; it only says whether this host
//! may answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;

use crate::store::{ms_after, now_ms, LeaseTerms, Store, StoreError};

/// How long a lease lasts unless renewed.
pub const TTL: Duration = Duration::from_secs(10);

/// How often a running turn renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct Leases {
    store: Store,
    /// This host process: its hostname, pid and start time.
    holder: Arc<str>,
    /// A user's turns in flight across the fleet (`max_in_flight_per_user`):
    /// a new message finds room among them or is not stored.
    max_live: u32,
}

impl Leases {
    pub fn new(store: Store, max_live: u32) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".to_owned());
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            store,
            holder: format!("{host}:{}:{started:x}", std::process::id()).into(),
            max_live,
        }
    }

    /// The lease on answering user message `id`: `None` while another
    /// host holds it. Without a shared database, always granted.
    pub async fn take(&self, id: i64, user_id: i64) -> Result<Option<Lease>, StoreError> {
        if !self.store.is_shared() {
            return Ok(Some(Lease(None)));
        }
        if !self
            .store
            .take_lease(id, user_id, &self.holder, TTL)
            .await?
        {
            return Ok(None);
        }
        Ok(Some(self.adopt(id)))
    }

    /// The terms to store a new user message of `user_id` with, its lease
    /// taken in the same statement ([`Store::begin_user_turn`]), if the
    /// user's turns in flight on the fleet leave room; `None` without a
    /// shared database.
    pub fn terms(&self, user_id: i64) -> Option<LeaseTerms<'_>> {
        self.store.is_shared().then(|| LeaseTerms {
            user_id,
            holder: &self.holder,
            until: ms_after(now_ms(), TTL),
            max_live: self.max_live,
        })
    }

    /// Holds (renews, then gives back) the lease on message `id` that this
    /// host took, by [`Leases::take`] or with the message ([`Leases::terms`]).
    pub fn adopt(&self, id: i64) -> Lease {
        let (store, holder) = (self.store.clone(), Arc::clone(&self.holder));
        let renewal = tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEW_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = store.renew_lease(id, &holder, TTL).await {
                    warn!(message = id, "cannot renew a turn's lease: {e}");
                }
            }
        });
        Lease(Some(Held {
            leases: self.clone(),
            id,
            renewal: renewal.abort_handle(),
        }))
    }
}

/// A taken lease, given back when dropped.
pub struct Lease(Option<Held>);

impl Lease {
    /// Who holds it, for a statement that gives it back itself (the turn's
    /// last write, [`Store::put_reply`]); `None` without a shared database.
    pub fn holder(&self) -> Option<Arc<str>> {
        self.0.as_ref().map(|held| Arc::clone(&held.leases.holder))
    }

    /// Given back by such a statement: only the renewal is left to stop.
    pub fn given_back(mut self) {
        if let Some(held) = self.0.take() {
            held.renewal.abort();
        }
    }
}

struct Held {
    leases: Leases,
    id: i64,
    renewal: tokio::task::AbortHandle,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(held) = self.0.take() else {
            return;
        };
        held.renewal.abort();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // It expires by itself.
        };
        runtime.spawn(async move {
            let Held { leases, id, .. } = held;
            if let Err(e) = leases.store.release_lease(id, &leases.holder).await {
                warn!(
                    message = id,
                    "cannot release a turn's lease (it expires by itself): {e}"
                );
            }
        });
    }
}
