//! Sessions: whether a signed token still speaks for its user.
//!
//! A signature cannot be taken back, so every authenticated request also
//! checks the account behind the token: it must still exist, not be
//! disabled, and still be at the token generation the token was issued at.
//! The role is the account's role now, never the one a token was issued
//! with. Bumping the generation (`Store::update_user`: password change, log
//! out everywhere, role change, disable) therefore ends every older token:
//! at once on the host that made the change (it forgets its cached view),
//! within [`RECHECK`] on every other host, and across restarts, because the
//! generation lives in the database.
//!
//! One lookup per user per [`RECHECK`], not per request: the cache keeps
//! what the database said, so a burst of requests (or a WebSocket's turns)
//! costs a hash-map read. Requests that find no fresh view while a lookup
//! of the same account is under way wait for that one instead of starting
//! their own: when a host comes back, a user's tabs all reconnect at once.
//! While the database cannot be reached, a user seen before is judged by
//! what was seen last; one never seen gets a 503.
//!
//! Users who made a request lately ([`KEEP_FRESH_FOR`]) have their view
//! read again before it goes stale, many accounts a statement
//! ([`Sessions::refresh`], every [`REFRESH_EVERY`]): a person takes longer
//! than [`RECHECK`] to type the next message, so without it nearly every
//! message waited for a lookup before its turn could start, and at twenty
//! chats starting together those lookups queued for the database (5–25 ms
//! for a third of them, on the first token).
//!
//! This module never issues tokens (`auth` does) and never decides what a
//! role may do (handlers do).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use futures_util::future::{BoxFuture, FutureExt, Shared};

use super::auth::Claims;
use super::error::ApiError;
use crate::store::{Store, StoreError, User, UserRole};

/// How long one host trusts what the database said about an account: the
/// longest a change made elsewhere (another host, `bothost user …`) takes
/// to end a session here.
pub const RECHECK: Duration = Duration::from_secs(5);

/// Beyond this many cached accounts, stale ones are dropped on insert.
const CACHE_PRUNE_AT: usize = 50_000;

/// How long after a user's last request [`Sessions::refresh`] keeps their
/// view fresh: longer than a person pauses between messages.
pub const KEEP_FRESH_FOR: Duration = Duration::from_secs(120);

/// How often [`Sessions::refresh`] should run: views are read again once
/// past half of [`RECHECK`], so none ages past it between two runs.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Accounts read in one statement by [`Sessions::refresh`].
const REFRESH_BATCH: usize = 500;

/// The authenticated caller of a request, as the account is now.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: i64,
    pub name: String,
    pub admin: bool,
    /// The token's claims, so a long-lived connection (a WebSocket) can
    /// check its session again later.
    pub claims: Claims,
}

impl AuthUser {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this needs the admin role",
            ))
        }
    }
}

/// What a session check needs of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub role: UserRole,
    pub generation: i64,
    pub disabled: bool,
    /// Tokens of this account ended one by one ("log out").
    pub revoked: Vec<String>,
}

impl Account {
    fn of(user: &User, revoked: Vec<String>) -> Self {
        Self {
            name: user.username.clone(),
            role: user.role,
            generation: user.token_generation,
            disabled: user.disabled_at.is_some(),
            revoked,
        }
    }
}

struct Seen {
    /// When the database said this.
    at: Instant,
    /// When a request last needed it.
    wanted: Instant,
    /// `None`: the account does not exist (deleted).
    account: Option<Account>,
}

impl Seen {
    /// Whether [`Sessions::refresh`] should read this view again at `now`:
    /// it is past half its life, and its user made a request lately.
    fn due(&self, now: Instant, recheck: Duration, keep_fresh_for: Duration) -> bool {
        now.saturating_duration_since(self.at) >= recheck / 2
            && now.saturating_duration_since(self.wanted) < keep_fresh_for
    }
}

/// One account's lookup, awaited by every request that needs it.
type Lookup = Shared<BoxFuture<'static, Result<Option<Account>, Arc<StoreError>>>>;

pub struct Sessions {
    store: Store,
    /// How long a view is trusted: [`RECHECK`] but in tests.
    recheck: Duration,
    /// [`KEEP_FRESH_FOR`] but in tests.
    keep_fresh_for: Duration,
    cache: Mutex<HashMap<i64, Seen>>,
    /// Lookups under way, by account.
    pending: Mutex<HashMap<i64, Lookup>>,
    /// Bumped by [`Sessions::forget`]: a refresh that read accounts while
    /// it changed keeps none of what it read.
    forgets: AtomicU64,
}

impl Sessions {
    pub fn new(store: Store) -> Self {
        Self::with_times(store, RECHECK, KEEP_FRESH_FOR)
    }

    /// Trusting a view for `recheck` instead of [`RECHECK`], and keeping
    /// it fresh for `keep_fresh_for` instead of [`KEEP_FRESH_FOR`].
    pub fn with_times(store: Store, recheck: Duration, keep_fresh_for: Duration) -> Self {
        Self {
            store,
            recheck,
            keep_fresh_for,
            cache: Mutex::default(),
            pending: Mutex::default(),
            forgets: AtomicU64::new(0),
        }
    }

    /// Who `claims` speak for now, or why they no longer do.
    pub async fn check(&self, claims: &Claims) -> Result<AuthUser, ApiError> {
        let fresh = self.cached(claims.sub, |seen| seen.at.elapsed() < self.recheck);
        let account = match fresh {
            Some(account) => account,
            None => match self.lookup(claims.sub).await {
                Ok(account) => account,
                Err(e) => match self.cached(claims.sub, |_| true) {
                    Some(stale) => {
                        tracing::warn!(user = claims.sub, "judging a session by a stale view: {e}");
                        stale
                    }
                    // The error itself when this request was the only one
                    // waiting for it; its words otherwise.
                    None => {
                        return Err(Arc::try_unwrap(e)
                            .unwrap_or_else(|shared| StoreError::Unavailable(shared.to_string()))
                            .into())
                    }
                },
            },
        };
        verdict(claims, account.as_ref())
    }

    /// The account as the database has it now, through the lookup of it
    /// already under way if there is one. What it found is cached before
    /// the lookup stops being the one under way, so a request that comes
    /// after finds one or the other; unless this host changed the account
    /// meanwhile ([`Sessions::forget`]): then what it found may be from
    /// before the change, and the next request reads the account again.
    async fn lookup(&self, id: i64) -> Result<Option<Account>, Arc<StoreError>> {
        let lookup = match self.pending.lock() {
            Ok(mut pending) => pending
                .entry(id)
                .or_insert_with(|| Self::read(self.store.clone(), id))
                .clone(),
            Err(_) => Self::read(self.store.clone(), id),
        };
        let found = lookup.clone().await;
        if let Ok(mut pending) = self.pending.lock() {
            if pending.get(&id).is_some_and(|p| p.ptr_eq(&lookup)) {
                if let Ok(account) = &found {
                    self.remember(id, account.clone(), true);
                }
                pending.remove(&id);
            }
        }
        found
    }

    /// Reads the account from the database ([`read_accounts`]), once for
    /// every request that waits for it.
    fn read(store: Store, id: i64) -> Lookup {
        let read = read_accounts(store, vec![id]);
        async move {
            read.await
                .map(|mut found| found.remove(&id))
                .map_err(Arc::new)
        }
        .boxed()
        .shared()
    }

    /// Drops what this host knows of user `id`, after this host changed
    /// the account: the next request reads it again.
    /// A lookup under way is dropped too: it may have read the account
    /// before the change.
    pub fn forget(&self, id: i64) {
        self.forgets.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(&id);
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&id);
        }
    }

    /// Reads again the views of users who made a request lately before
    /// they go stale ([`Seen::due`]), [`REFRESH_BATCH`] accounts a
    /// statement; how many it read. Run every [`REFRESH_EVERY`].
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        let now = Instant::now();
        let due: Vec<i64> = match self.cache.lock() {
            Ok(cache) => cache
                .iter()
                .filter(|(_, seen)| seen.due(now, self.recheck, self.keep_fresh_for))
                .map(|(id, _)| *id)
                .collect(),
            Err(_) => return Ok(0),
        };
        for batch in due.chunks(REFRESH_BATCH) {
            let forgets = self.forgets.load(Ordering::Acquire);
            let mut found = read_accounts(self.store.clone(), batch.to_vec()).await?;
            if self.forgets.load(Ordering::Acquire) != forgets {
                // An account changed here meanwhile; what was read may be
                // from before the change, and its next request reads it.
                continue;
            }
            for id in batch {
                self.remember(*id, found.remove(id), false);
            }
        }
        Ok(due.len())
    }

    /// The cached view of `id` when `usable` accepts it (`Some(None)`: the
    /// account is known to be gone); a request needs it now.
    fn cached(&self, id: i64, usable: impl Fn(&Seen) -> bool) -> Option<Option<Account>> {
        let mut cache = self.cache.lock().ok()?;
        let seen = cache.get_mut(&id).filter(|seen| usable(seen))?;
        seen.wanted = Instant::now();
        Some(seen.account.clone())
    }

    /// What the database says of `id` now, read for a request (`wanted`)
    /// or by [`Sessions::refresh`] (when a request last wanted it is kept).
    fn remember(&self, id: i64, account: Option<Account>, wanted: bool) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_PRUNE_AT {
            let recheck = self.recheck;
            cache.retain(|_, seen| seen.at.elapsed() < recheck);
        }
        let now = Instant::now();
        let wanted = match cache.get(&id) {
            Some(seen) if !wanted => seen.wanted,
            _ => now,
        };
        cache.insert(
            id,
            Seen {
                at: now,
                wanted,
                account,
            },
        );
    }
}

/// Reads accounts `ids` (those that exist) in a task of its own, started
/// now. The extractor's future is dropped whenever another extractor of the
/// same request fails first, and a SQLite query dropped half-way panics
/// (diesel-async waits for it with `block_in_place`, which the HTTP
/// workers' single-threaded runtime does not allow); a task runs to its
/// end whoever stops waiting for it.
fn read_accounts(
    store: Store,
    ids: Vec<i64>,
) -> impl std::future::Future<Output = Result<HashMap<i64, Account>, StoreError>> {
    let task = actix_rt::spawn(async move {
        let found = store.users_and_revoked_tokens(&ids).await?;
        Ok(found
            .into_iter()
            .map(|(id, (user, revoked))| (id, Account::of(&user, revoked)))
            .collect())
    });
    async move {
        task.await.unwrap_or_else(|e| {
            Err(StoreError::Setup(format!(
                "the account lookup stopped: {e}"
            )))
        })
    }
}

/// The rule, as a plain function: a token speaks for an account that
/// exists, is enabled, and is still at the token's generation.
pub fn verdict(claims: &Claims, account: Option<&Account>) -> Result<AuthUser, ApiError> {
    match account {
        Some(account) if account.disabled => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "account_disabled",
            "this account is disabled; ask an administrator",
        )),
        Some(account)
            if account.generation == claims.generation
                && (claims.jti.is_empty() || !account.revoked.contains(&claims.jti)) =>
        {
            Ok(AuthUser {
                id: claims.sub,
                name: account.name.clone(),
                admin: account.role == UserRole::Admin,
                claims: claims.clone(),
            })
        }
        _ => Err(session_ended()),
    }
}

/// The session is over before its token expired: logged out everywhere,
/// password changed, role changed, or the account deleted.
pub fn session_ended() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "session_ended",
        "this session has ended (logged out, password or role changed, or account removed); \
         please log in again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(generation: i64) -> Claims {
        Claims {
            sub: 7,
            name: "alice".into(),
            generation,
            jti: "t1".into(),
            iat: 0,
            exp: u64::MAX,
        }
    }

    fn account(role: UserRole, generation: i64, disabled: bool) -> Account {
        Account {
            name: "alice".into(),
            role,
            generation,
            disabled,
            revoked: vec!["t0".into()],
        }
    }

    #[test]
    fn the_role_comes_from_the_account_not_the_token() {
        let user = verdict(&claims(0), Some(&account(UserRole::Admin, 0, false))).unwrap();
        assert!(user.admin);
        let user = verdict(&claims(0), Some(&account(UserRole::User, 0, false))).unwrap();
        assert!(!user.admin);
    }

    #[test]
    fn an_older_generation_a_deleted_or_disabled_account_ends_the_session() {
        let code = |account: Option<&Account>| verdict(&claims(1), account).unwrap_err().code;
        assert_eq!(
            code(Some(&account(UserRole::User, 2, false))),
            "session_ended"
        );
        assert_eq!(code(None), "session_ended");
        let mut logged_out = account(UserRole::User, 1, false);
        logged_out.revoked.push("t1".into());
        assert_eq!(
            code(Some(&logged_out)),
            "session_ended",
            "this token was ended"
        );
        assert_eq!(
            code(Some(&account(UserRole::User, 1, true))),
            "account_disabled"
        );
    }

    #[test]
    fn a_view_is_read_again_past_half_its_life_while_its_user_is_active() {
        let t0 = Instant::now();
        let (recheck, keep) = (Duration::from_secs(4), KEEP_FRESH_FOR);
        let seen = Seen {
            at: t0,
            wanted: t0,
            account: None,
        };
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert!(!seen.due(at(1), recheck, keep), "fresh");
        assert!(seen.due(at(2), recheck, keep), "half its life");
        assert!(
            seen.due(at(30), recheck, keep),
            "stale, the user active lately"
        );
        assert!(
            !seen.due(t0 + keep, recheck, keep),
            "the user has made no request for a while"
        );
    }
}
