//! Jittered exponential backoff, the one retry spacing of the control plane: outbound
//! calls ([`crate::outbound::send`]), store transactions that lose a race and log writes
//! ([`crate::store`]).

use std::time::Duration;

use rand::Rng;

/// Jittered exponential backoff: the wait before retry `k` (from 0) is uniform in
/// `[c / 2, c]` where `c = min(cap, base × 2^k)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub base: Duration,
    /// The largest ceiling; for outbound calls also the longest `Retry-After` honoured.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The longest wait before retry `retry` (0 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random wait before retry `retry`, between half of [`Backoff::ceiling`] and all of it.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(ceiling / 2..=ceiling))
    }

    /// The wait before retry `retry` when the answer asked for `asked`: at least that, at
    /// most the cap.
    pub fn wait(&self, retry: u32, asked: Option<Duration>) -> Duration {
        self.delay(retry)
            .max(asked.unwrap_or_default())
            .min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn backoff_ceilings_double_up_to_the_cap() {
        let backoff = Backoff::default();
        assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(1), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(5), Duration::from_millis(3200));
        assert_eq!(backoff.ceiling(6), Duration::from_secs(5));
        assert_eq!(backoff.ceiling(40), Duration::from_secs(5));
    }

    #[test]
    fn backoff_delays_stay_within_their_ceiling_and_vary() {
        let backoff = Backoff::default();
        for retry in 0..12 {
            let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(retry)).collect();
            assert!(delays.iter().all(|d| *d <= backoff.ceiling(retry)));
            let distinct: BTreeSet<Duration> = delays.into_iter().collect();
            assert!(distinct.len() > 10, "the jitter spreads the waits");
        }
    }
}
