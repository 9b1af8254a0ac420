//! Exponential backoff: the one rule for how long to wait before trying
//! again, used by crash restarts of workers, restarts of supervised model
//! servers and retries of a store write.
//!
//! A leaf module with no clock of its own: callers say which attempt this is
//! (or step a [`Backoff`]), so unit tests need no waiting.

use std::time::Duration;

/// `initial`, doubling each attempt, never above `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// The next delay [`Backoff::next_delay`] hands out.
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial.min(max),
        }
    }

    /// The delay before attempt `n` (1 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }

    /// The delay for now, doubling the next one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        delay
    }

    /// Success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.current = self.initial.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let steps: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(steps, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
        assert_eq!(b.delay(1), Duration::from_millis(500));
        assert_eq!(b.delay(3), Duration::from_secs(2));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(3));
    }
}
