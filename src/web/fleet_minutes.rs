//! The fleet's count of messages per minute, per user and per client
//! address, kept by each host in memory and added to the shared database in
//! batches, not with every message.
//!
//! Why: a count written with every message was a statement of its own per
//! turn, a third of a turn's database work; and every client behind one
//! proxy or NAT has the same address, so their messages all updated one
//! row, each waiting for the previous update's commit.
//!
//! How a host knows the fleet's count for a subject (`u:<id>` or
//! `ip:<address>`) in a minute:
//! - its first message from that subject in the minute is counted in the
//!   database by a statement whose answer is the fleet's count
//!   ([`Count::Unknown`]);
//! - later ones are counted here ([`Count::Counted`]) and added to the row
//!   by the next batch (every [`BATCH_EVERY`]), whose answer is the fleet's
//!   count again, now with the other hosts' messages.
//!
//! One request at a time asks the database about a subject's minute: the
//! others that find no count meanwhile wait for its answer
//! ([`Count::Wait`]) and then count here; if it gave up, they ask
//! themselves rather than wait again ([`FleetMinutes::count_waiting`]).
//! A user's tabs that start a minute together send one statement instead
//! of one each; twenty people behind one office NAT still ask about their
//! own accounts, but only one of their statements updates the address's
//! row, where each used to wait there for the one before it to commit.
//!
//! A message counted here that the database then could not take (an
//! outage) is taken back ([`FleetMinutes::uncount`]): an outage must not
//! leave a subject over its cap once it ends.
//!
//! The price: a host learns of the other hosts' messages from a subject
//! only when it writes its own, so the fleet may let through, over the cap,
//! what the other hosts let through since this host's last batch (a
//! quarter of a second of that user's or address's traffic). One host
//! alone counts exactly. Turns in flight are not counted here: a turn's
//! lease is taken with its message, in the statement that stores it
//! ([`crate::store::Store::begin_user_turn`]).
//!
//! It never refuses by itself ([`super::Limits::check_fleet`] decides) and
//! never talks to the database (the batch task does).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// How often a host adds what it counted to the database.
pub const BATCH_EVERY: Duration = Duration::from_millis(250);

/// The subjects seen this minute.
#[derive(Default)]
pub struct FleetMinutes(Mutex<Subjects>);

#[derive(Default)]
struct Subjects {
    minutes: HashMap<String, Minute>,
    /// The subjects the database is being asked about now, each watched
    /// by those waiting for the answer: while its [`Asking`] lives.
    asking: HashMap<String, watch::Receiver<()>>,
}

/// One subject's count in one minute, as this host knows it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Minute {
    /// The minute's start (ms since the epoch).
    start: i64,
    /// The fleet's count as the database last answered (with every message
    /// of this host that had reached it then).
    fleet: i64,
    /// Counted here, in a batch being written now.
    sending: i64,
    /// Counted here, not yet in any batch (below zero: taken back after
    /// it went out, see [`FleetMinutes::uncount`]).
    unsent: i64,
}

impl Minute {
    fn total(&self) -> i64 {
        self.fleet + self.sending + self.unsent
    }
}

/// What [`FleetMinutes::count`] made of one message.
#[derive(Debug)]
pub enum Count {
    /// This host has no count for the subject this minute: count the
    /// message in the database and tell [`FleetMinutes::learn`] the answer,
    /// then drop the [`Asking`].
    Unknown(Asking),
    /// Another request is asking the database about the subject's minute:
    /// wait for it, then count again.
    Wait(Waiting),
    /// Counted here; the batch adds it to the database.
    Counted,
    /// The subject has had `max` messages this minute: refused, not counted.
    Over,
}

/// Held by the one request asking the database about a subject: those
/// waiting go on when it is dropped, answered or not.
#[derive(Debug)]
pub struct Asking {
    _answered: watch::Sender<()>,
}

impl Asking {
    /// An ask nobody waits for.
    fn unwatched() -> Self {
        Self {
            _answered: watch::channel(()).0,
        }
    }
}

/// A wait for another request's answer about a subject.
#[derive(Debug)]
pub struct Waiting(watch::Receiver<()>);

impl Waiting {
    /// Returns when the request asking has dropped its [`Asking`].
    pub async fn done(mut self) {
        // Nothing is ever sent: this returns when the sender is dropped.
        let _ = self.0.changed().await;
    }
}

/// One minute's batch: each subject and how many messages to add.
pub type Batch = Vec<(String, i32)>;

impl FleetMinutes {
    /// Counts one message from `subject` in the minute starting at `start`,
    /// if this host knows the fleet's count and it stays within `max`.
    pub fn count(&self, subject: &str, start: i64, max: u32) -> Count {
        self.count_or_ask(subject, start, max, true)
    }

    /// [`FleetMinutes::count`], waiting out another request's ask
    /// ([`Count::Wait`]) once: never answers `Wait`.
    pub async fn count_waiting(&self, subject: &str, start: i64, max: u32) -> Count {
        match self.count(subject, start, max) {
            Count::Wait(answer) => {
                answer.done().await;
                self.count_after_waiting(subject, start, max)
            }
            count => count,
        }
    }

    /// [`FleetMinutes::count`] for a message that has waited for an answer
    /// once ([`Count::Wait`]) and found none (the request asking gave up:
    /// an outage, a request cancelled): it asks the database itself rather
    /// than wait again, so that in an outage the messages from one subject
    /// do not fail one after another, each after the one before.
    fn count_after_waiting(&self, subject: &str, start: i64, max: u32) -> Count {
        self.count_or_ask(subject, start, max, false)
    }

    fn count_or_ask(&self, subject: &str, start: i64, max: u32, may_wait: bool) -> Count {
        let Ok(mut subjects) = self.0.lock() else {
            return Count::Unknown(Asking::unwatched());
        };
        let Subjects { minutes, asking } = &mut *subjects;
        match minutes.get_mut(subject) {
            Some(m) if m.start == start => {
                if m.total() >= i64::from(max) {
                    Count::Over
                } else {
                    m.unsent += 1;
                    Count::Counted
                }
            }
            _ => match asking
                .get(subject)
                .filter(|asked| asked.has_changed().is_ok())
            {
                Some(asked) if may_wait => Count::Wait(Waiting(asked.clone())),
                // Asks alongside the one asking; nobody waits for it.
                Some(_) => Count::Unknown(Asking::unwatched()),
                None => {
                    let (answered, asked) = watch::channel(());
                    asking.insert(subject.to_owned(), asked);
                    Count::Unknown(Asking {
                        _answered: answered,
                    })
                }
            },
        }
    }

    /// Takes back a message [`Count::Counted`] here that was not let
    /// through after all because the database could not be reached: an
    /// outage must not leave a subject over its cap when it ends. If the
    /// message went out in a batch meanwhile, the next batch carries one
    /// fewer (`unsent` goes below zero until then).
    pub fn uncount(&self, subject: &str, start: i64) {
        let Ok(mut subjects) = self.0.lock() else {
            return;
        };
        if let Some(m) = subjects
            .minutes
            .get_mut(subject)
            .filter(|m| m.start == start)
        {
            m.unsent -= 1;
        }
    }

    /// The database says `subject` has had `fleet` messages in the minute
    /// starting at `start`. Counts only grow within a minute, so an answer
    /// smaller than one already known is an older one.
    pub fn learn(&self, subject: &str, start: i64, fleet: i64) {
        let Ok(mut subjects) = self.0.lock() else {
            return;
        };
        let fresh = Minute {
            start,
            fleet,
            sending: 0,
            unsent: 0,
        };
        let m = subjects.minutes.entry(subject.to_owned()).or_insert(fresh);
        if m.start < start {
            *m = fresh;
        } else if m.start == start {
            m.fleet = m.fleet.max(fleet);
        }
    }

    /// Takes what was counted here in the minute starting at `start` and is
    /// not yet in the database, as one batch, and forgets earlier minutes:
    /// what they did not write can no longer change a decision.
    pub fn take_batch(&self, start: i64) -> Batch {
        let Ok(mut subjects) = self.0.lock() else {
            return Vec::new();
        };
        let Subjects { minutes, asking } = &mut *subjects;
        minutes.retain(|_, m| m.start >= start);
        // Answered (or given up) asks: nobody can wait for them any more.
        asking.retain(|_, asked| asked.has_changed().is_ok());
        let mut batch: Batch = minutes
            .iter_mut()
            .filter(|(_, m)| m.start == start && m.unsent > 0)
            .map(|(subject, m)| {
                let n = i32::try_from(m.unsent).unwrap_or(i32::MAX);
                m.unsent -= i64::from(n);
                m.sending += i64::from(n);
                (subject.clone(), n)
            })
            .collect();
        // Every host writes its rows in one order, so two batches never
        // wait on each other's rows in a cycle.
        batch.sort_unstable();
        batch
    }

    /// After the batch for the minute starting at `start` was written:
    /// `Some` with the fleet's counts it answered, or `None` if it failed
    /// (its messages go into the next batch).
    pub fn settle(&self, start: i64, batch: &[(String, i32)], answer: Option<&[(String, i64)]>) {
        let Ok(mut subjects) = self.0.lock() else {
            return;
        };
        let minutes = &mut subjects.minutes;
        for (subject, n) in batch {
            if let Some(m) = minutes.get_mut(subject).filter(|m| m.start == start) {
                m.sending -= i64::from(*n);
                if answer.is_none() {
                    m.unsent += i64::from(*n);
                }
            }
        }
        for (subject, fleet) in answer.unwrap_or_default() {
            if let Some(m) = minutes.get_mut(subject).filter(|m| m.start == start) {
                m.fleet = m.fleet.max(*fleet);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minute's start (ms since the epoch).
    const MINUTE: i64 = 1_800_000_000_000;

    /// What `count` answered, by name (an answer that asks carries its
    /// [`Asking`], dropped here).
    fn kind(count: Count) -> &'static str {
        match count {
            Count::Unknown(_) => "unknown",
            Count::Wait(_) => "wait",
            Count::Counted => "counted",
            Count::Over => "over",
        }
    }

    /// The first request that finds no count for `ip:1` asks; the second
    /// waits for it.
    fn asking_and_waiting(a: &FleetMinutes) -> (Asking, Waiting) {
        let Count::Unknown(asking) = a.count("ip:1", MINUTE, 3) else {
            panic!("the first asks");
        };
        let Count::Wait(waiting) = a.count("ip:1", MINUTE, 3) else {
            panic!("the second waits");
        };
        (asking, waiting)
    }

    #[tokio::test]
    async fn one_request_asks_about_a_subject_and_the_others_wait_for_its_answer() {
        let a = FleetMinutes::default();
        let (asking, waiting) = asking_and_waiting(&a);
        assert_eq!(
            kind(a.count("u:1", MINUTE, 3)),
            "unknown",
            "another subject asks"
        );
        let waited = tokio::spawn(waiting.done());
        tokio::task::yield_now().await;
        assert!(!waited.is_finished(), "no answer yet");
        a.learn("ip:1", MINUTE, 1);
        drop(asking);
        waited.await.unwrap();
        assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "counted");
        assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "counted");
        assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "over");
    }

    #[tokio::test]
    async fn an_ask_given_up_lets_the_next_request_ask() {
        let a = FleetMinutes::default();
        let (asking, waiting) = asking_and_waiting(&a);
        // The database could not be reached: nothing learned.
        drop(asking);
        waiting.done().await;
        let Count::Unknown(next) = a.count_after_waiting("ip:1", MINUTE, 3) else {
            panic!("the first of those who waited asks");
        };
        // Another who waited does not wait again behind it, in an outage
        // each ask as long as the pool's timeout: it asks too.
        assert_eq!(kind(a.count_after_waiting("ip:1", MINUTE, 3)), "unknown");
        assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "wait", "a newcomer waits");
        drop(next);
        assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "unknown", "asks itself");
        assert!(a.take_batch(MINUTE).is_empty());
        assert_eq!(
            a.0.lock().unwrap().asking.len(),
            0,
            "forgotten once answered"
        );
    }

    #[tokio::test]
    async fn messages_that_waited_for_an_ask_given_up_do_not_wait_on_each_other() {
        let a = std::sync::Arc::new(FleetMinutes::default());
        let Count::Unknown(asking) = a.count("ip:1", MINUTE, 3) else {
            panic!("the first asks");
        };
        // Each waiter keeps what it was answered (an ask, if it asks).
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move { a.count_waiting("ip:1", MINUTE, 3).await })
            })
            .collect();
        tokio::task::yield_now().await;
        drop(asking);
        // All answers held (and the asks in them alive) until all are in.
        let mut counts = Vec::new();
        for waiter in waiters {
            counts.push(
                tokio::time::timeout(Duration::from_secs(5), waiter)
                    .await
                    .expect("not waiting behind another that waited")
                    .unwrap(),
            );
        }
        assert!(counts.into_iter().all(|c| kind(c) == "unknown"));
    }

    #[test]
    fn the_first_message_of_a_minute_asks_the_database_then_the_rest_count_here() {
        let a = FleetMinutes::default();
        assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "unknown");
        a.learn("ip:1", MINUTE, 1);
        assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "counted");
        assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "counted");
        assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "over");
        // Another address, and the next minute, start from the database.
        assert_eq!(kind(a.count("ip:2", MINUTE, 3)), "unknown");
        assert_eq!(kind(a.count("ip:1", MINUTE + 60_000, 3)), "unknown");
    }

    #[test]
    fn a_batch_carries_what_was_counted_here_and_brings_back_the_fleets_count() {
        let a = FleetMinutes::default();
        a.learn("ip:b", MINUTE, 1);
        a.learn("ip:a", MINUTE, 4);
        for _ in 0..2 {
            assert_eq!(kind(a.count("ip:b", MINUTE, 10)), "counted");
        }
        assert_eq!(kind(a.count("ip:a", MINUTE, 10)), "counted");
        let batch = a.take_batch(MINUTE);
        assert_eq!(batch, vec![("ip:a".into(), 1), ("ip:b".into(), 2)]);
        // Counted while the batch is written: neither lost nor sent twice.
        assert_eq!(kind(a.count("ip:b", MINUTE, 10)), "counted");
        assert_eq!(a.take_batch(MINUTE), vec![("ip:b".into(), 1)]);
        // Another host had sent 5 for ip:b meanwhile: 1 + 2 + 5.
        a.settle(
            MINUTE,
            &batch,
            Some(&[("ip:a".into(), 5), ("ip:b".into(), 8)]),
        );
        // 8 known + 1 in flight: one more fits under 10.
        assert_eq!(kind(a.count("ip:b", MINUTE, 10)), "counted");
        assert_eq!(kind(a.count("ip:b", MINUTE, 10)), "over");
        assert_eq!(kind(a.count("ip:a", MINUTE, 6)), "counted");
        assert_eq!(kind(a.count("ip:a", MINUTE, 6)), "over");
    }

    #[test]
    fn a_failed_batch_goes_out_with_the_next_and_still_counts_meanwhile() {
        let a = FleetMinutes::default();
        a.learn("ip:1", MINUTE, 1);
        assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "counted");
        let batch = a.take_batch(MINUTE);
        a.settle(MINUTE, &batch, None);
        assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "counted");
        assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "over");
        assert_eq!(a.take_batch(MINUTE), vec![("ip:1".into(), 2)]);
    }

    #[test]
    fn a_message_the_database_never_saw_is_taken_back() {
        let a = FleetMinutes::default();
        a.learn("ip:1", MINUTE, 1);
        assert_eq!(kind(a.count("ip:1", MINUTE, 2)), "counted");
        a.uncount("ip:1", MINUTE);
        assert!(a.take_batch(MINUTE).is_empty());
        assert_eq!(kind(a.count("ip:1", MINUTE, 2)), "counted");
        assert_eq!(kind(a.count("ip:1", MINUTE, 2)), "over");

        // Taken back after it went out in a batch: the next carries one
        // fewer, whether that batch was written or not.
        for written in [true, false] {
            let a = FleetMinutes::default();
            a.learn("ip:1", MINUTE, 1);
            assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "counted");
            let batch = a.take_batch(MINUTE);
            a.uncount("ip:1", MINUTE);
            let answer = [("ip:1".to_owned(), 2)];
            a.settle(MINUTE, &batch, written.then_some(&answer[..]));
            assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "counted");
            assert_eq!(kind(a.count("ip:1", MINUTE, 3)), "counted");
            assert_eq!(
                kind(a.count("ip:1", MINUTE, 3)),
                "over",
                "written: {written}"
            );
            let next: i32 = a.take_batch(MINUTE).iter().map(|(_, n)| n).sum();
            assert_eq!(next, if written { 1 } else { 2 }, "written: {written}");
        }
    }

    #[test]
    fn an_older_answer_never_lowers_the_count_and_a_past_minute_is_forgotten() {
        let a = FleetMinutes::default();
        a.learn("ip:1", MINUTE, 3);
        a.learn("ip:1", MINUTE, 2);
        assert_eq!(kind(a.count("ip:1", MINUTE, 4)), "counted");
        assert_eq!(kind(a.count("ip:1", MINUTE, 4)), "over");
        // The next minute: last minute's unwritten message is dropped.
        let next = MINUTE + 60_000;
        assert!(a.take_batch(next).is_empty());
        assert_eq!(kind(a.count("ip:1", next, 4)), "unknown");
        a.learn("ip:1", next, 1);
        a.learn("ip:1", MINUTE, 9);
        assert_eq!(kind(a.count("ip:1", next, 4)), "counted");
    }
}
