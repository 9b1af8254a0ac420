//! Who is told when a bot's state changes: every open WebSocket.
//!
//! Each connection registers its address here when it starts and leaves
//! when it stops; one task per host ([`Watchers::forward`]) takes each
//! change off the [`Board`] and hands it to all of them. A task and a
//! broadcast receiver of its own per connection cost about 650 bytes each
//! (6 MiB of the host's RSS at 10,000 idle connections, measured); an entry
//! here is a key and an address. Changes are rare (a bot restarting, or
//! back), so going through the whole list for one is cheap; it is a task
//! of its own, not part of the board's write, so that the hand-overs to
//! 10,000 connections never run on the Supervisor's thread.
//!
//! Must never block a connection, nor lose a change to a busy one: the
//! hand-over is `do_send`, which queues the message in the connection's
//! mailbox whatever its capacity and returns (a page that missed one would
//! show a stale state until it reconnects).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use actix::{Message, Recipient};
use tokio::sync::broadcast;

use crate::status::StatusChange;

/// A bot's new state, for one connection.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct BotStatusChanged(pub StatusChange);

/// The open connections, by the key each got when it registered.
#[derive(Clone, Default)]
pub struct Watchers {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    next_key: AtomicU64,
    list: Mutex<HashMap<u64, Recipient<BotStatusChanged>>>,
}

impl Watchers {
    /// Adds a connection; give the key back to [`Watchers::leave`].
    pub fn join(&self, watcher: Recipient<BotStatusChanged>) -> u64 {
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        self.list().insert(key, watcher);
        key
    }

    pub fn leave(&self, key: u64) {
        self.list().remove(&key);
    }

    /// Hands every change (the [`Board`]'s) to the connections registered
    /// at the time, until the board goes away. Spawned once per host.
    ///
    /// [`Board`]: crate::supervisor::Board
    pub async fn forward(self, mut changes: broadcast::Receiver<StatusChange>) {
        loop {
            match changes.recv().await {
                Ok(change) => self.tell_all(change),
                // Missed some: the ones after them still count.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn tell_all(&self, change: StatusChange) {
        for watcher in self.list().values() {
            watcher.do_send(BotStatusChanged(change.clone()));
        }
    }

    /// The list, even if a thread panicked holding it: entries are
    /// inserted and removed whole, so it is never half-changed.
    fn list(&self) -> MutexGuard<'_, HashMap<u64, Recipient<BotStatusChanged>>> {
        self.inner
            .list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix::{Actor, Context, Handler};

    use super::*;
    use crate::status::BotState;

    /// Writes down every change it is told.
    struct Page(Arc<Mutex<Vec<String>>>);

    impl Actor for Page {
        type Context = Context<Self>;
    }

    impl Handler<BotStatusChanged> for Page {
        type Result = ();
        fn handle(&mut self, BotStatusChanged(c): BotStatusChanged, _: &mut Context<Self>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {:?}", c.bot, c.state));
        }
    }

    fn change(bot: &str, state: BotState) -> StatusChange {
        StatusChange {
            bot: bot.into(),
            state,
        }
    }

    #[actix_rt::test]
    async fn every_registered_connection_is_told_and_one_that_left_is_not() {
        let watchers = Watchers::default();
        let (stays, left) = (Arc::default(), Arc::default());
        watchers.join(Page(Arc::clone(&stays)).start().recipient());
        let key = watchers.join(Page(Arc::clone(&left)).start().recipient());
        let (tx, rx) = broadcast::channel(4);
        actix_rt::spawn(watchers.clone().forward(rx));
        tx.send(change("helper", BotState::Restarting)).unwrap();
        let told = |list: &Arc<Mutex<Vec<String>>>| list.lock().unwrap().clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while told(&left).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        watchers.leave(key);
        tx.send(change("helper", BotState::Ready)).unwrap();
        while told(&stays).len() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(told(&stays), ["helper Restarting", "helper Ready"]);
        // Both were handed over in the same step, to every connection then
        // registered: the one that left got the first only.
        assert_eq!(told(&left), ["helper Restarting"]);
    }

    #[actix_rt::test]
    async fn a_full_mailbox_delays_changes_and_loses_none() {
        let watchers = Watchers::default();
        let told = Arc::default();
        let page = Page::create(|ctx| {
            ctx.set_mailbox_capacity(1);
            Page(Arc::clone(&told))
        });
        watchers.join(page.recipient());
        let (tx, rx) = broadcast::channel(16);
        // All queued before the forwarder runs: the second meets a full
        // mailbox.
        for n in 0..5 {
            tx.send(change(&format!("bot{n}"), BotState::Ready))
                .unwrap();
        }
        drop(tx);
        watchers.forward(rx).await;
        let count = || told.lock().unwrap().len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while count() < 5 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(count(), 5);
    }
}
