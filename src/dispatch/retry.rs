//! The retry schedule, jitter and `Retry-After` (pure).

use std::time::Duration;

/// When failed deliveries are tried again.
///
/// `schedule[n]` is the wait before attempt `n + 1`; its first entry is the
/// wait before the first attempt (normally zero). When every entry is used the
/// delivery is marked failed. Each wait is varied by ±[`jitter`](Self::jitter)
/// so that a receiver coming back is not hit by every retry at once.
///
/// Throttling answers (429, 502, 503, 504) and timeouts wait at least
/// [`throttle_delay`](Self::throttle_delay); a `Retry-After` in seconds is
/// honoured within `[scheduled wait, 2 × scheduled wait]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    schedule: Vec<Duration>,
    jitter: f64,
    throttle_delay: Duration,
}

impl Default for RetryPolicy {
    /// The Standard Webhooks example schedule: immediately, 5 s, 5 min,
    /// 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h (10 attempts over about
    /// three days), ±20% jitter, one minute at least after throttling.
    fn default() -> Self {
        const M: u64 = 60;
        const H: u64 = 3600;
        RetryPolicy {
            schedule: [
                0,
                5,
                5 * M,
                30 * M,
                2 * H,
                5 * H,
                10 * H,
                14 * H,
                20 * H,
                24 * H,
            ]
            .into_iter()
            .map(Duration::from_secs)
            .collect(),
            jitter: 0.2,
            throttle_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy with this schedule, the default jitter (20%) and throttle
    /// delay (60 s). An empty schedule is treated as `[0]`: one attempt.
    pub fn new(schedule: impl Into<Vec<Duration>>) -> RetryPolicy {
        let mut schedule = schedule.into();
        if schedule.is_empty() {
            schedule.push(Duration::ZERO);
        }
        RetryPolicy {
            schedule,
            ..RetryPolicy::default()
        }
    }

    /// Random variation of each wait, as a fraction (clamped to 0..=0.5). Default: 0.2.
    pub fn jitter(mut self, fraction: f64) -> RetryPolicy {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 0.5)
        } else {
            0.0
        };
        self
    }

    /// The least wait after a throttling answer or a timeout. Default: 60 s.
    pub fn throttle_delay(mut self, delay: Duration) -> RetryPolicy {
        self.throttle_delay = delay;
        self
    }

    /// The waits, first attempt included.
    pub fn schedule(&self) -> &[Duration] {
        &self.schedule
    }

    /// How many attempts a delivery gets in all.
    pub fn max_attempts(&self) -> u32 {
        self.schedule.len() as u32
    }

    /// The wait before the first attempt of a new delivery.
    pub(crate) fn first_delay(&self) -> Duration {
        self.schedule[0]
    }

    /// The wait after attempt number `attempts` (1-based) failed, or `None`
    /// when the schedule is used up. `unit` is a uniform random number in
    /// `[0, 1)` for the jitter.
    pub(crate) fn next_delay(
        &self,
        attempts: u32,
        throttled: bool,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        let base = *self.schedule.get(attempts as usize)?;
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        let mut delay = base.mul_f64(factor);
        if throttled {
            delay = delay.max(self.throttle_delay);
        }
        if let Some(asked) = retry_after {
            delay = asked.clamp(delay, delay * 2);
        }
        Some(delay)
    }
}

/// Parses a `Retry-After` value in delta-seconds. HTTP-dates are not
/// honoured (the schedule applies), as are values over a day.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    (secs <= 86_400).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(vec![
            Duration::ZERO,
            Duration::from_secs(5),
            Duration::from_secs(300),
        ])
    }

    #[test]
    fn default_is_the_standard_webhooks_example() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts(), 10);
        assert_eq!(p.schedule()[1], Duration::from_secs(5));
        assert_eq!(p.schedule()[9], Duration::from_secs(24 * 3600));
    }

    #[test]
    fn schedule_then_exhaustion() {
        let p = policy().jitter(0.0);
        assert_eq!(
            p.next_delay(1, false, None, 0.5),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            p.next_delay(2, false, None, 0.5),
            Some(Duration::from_secs(300))
        );
        assert_eq!(p.next_delay(3, false, None, 0.5), None);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let p = policy();
        let lo = p.next_delay(2, false, None, 0.0).unwrap();
        let hi = p.next_delay(2, false, None, 0.999_999).unwrap();
        assert_eq!(lo, Duration::from_secs(240));
        assert!(hi > Duration::from_secs(359) && hi <= Duration::from_secs(360));
    }

    #[test]
    fn throttling_waits_at_least_a_minute() {
        let p = policy().jitter(0.0);
        assert_eq!(
            p.next_delay(1, true, None, 0.5),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            p.next_delay(2, true, None, 0.5),
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn retry_after_is_bounded_by_schedule() {
        let p = policy().jitter(0.0);
        let five = Some(Duration::from_secs(5));
        // Asked for less than scheduled: the schedule wins.
        assert_eq!(
            p.next_delay(2, false, five, 0.5),
            Some(Duration::from_secs(300))
        );
        // Asked for more than twice the schedule: capped.
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(
            p.next_delay(2, false, hour, 0.5),
            Some(Duration::from_secs(600))
        );
        // Within bounds: honoured.
        let asked = Some(Duration::from_secs(450));
        assert_eq!(p.next_delay(2, false, asked, 0.5), asked);
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("999999999"), None);
    }

    #[test]
    fn empty_schedule_means_one_attempt() {
        let p = RetryPolicy::new(Vec::new());
        assert_eq!(p.max_attempts(), 1);
        assert_eq!(p.next_delay(1, false, None, 0.5), None);
    }
}
