//! The retry schedule, jitter and `Retry-After` (pure).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::event::{civil_from_days, days_from_civil};

/// When failed deliveries are tried again.
///
/// `schedule[n]` is the wait before attempt `n + 1`; its first entry is the
/// wait before the first attempt (normally zero). When every entry is used the
/// delivery is marked failed. Each wait is varied by ±[`jitter`](Self::jitter)
/// so that a receiver coming back is not hit by every retry at once.
///
/// Throttling answers (429, 502, 503, 504) and timeouts wait at least
/// [`throttle_delay`](Self::throttle_delay); a `Retry-After` (seconds or an
/// HTTP-date, up to a day) is honoured within
/// `[scheduled wait, 2 × scheduled wait]`.
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
        // Checked even though `check` bounds every input: a policy is data,
        // and no schedule may turn into a panic or a wrap on a worker.
        let mut delay = Duration::try_from_secs_f64(base.as_secs_f64() * factor)
            .unwrap_or(MAX_RETRY_DELAY)
            .min(MAX_RETRY_DELAY);
        if throttled {
            delay = delay.max(self.throttle_delay.min(MAX_RETRY_DELAY));
        }
        if let Some(asked) = retry_after {
            delay = asked.clamp(delay, delay.saturating_mul(2));
        }
        Some(delay)
    }

    /// Refuses waits beyond [`MAX_RETRY_DELAY`], which could only be mistakes and
    /// would overflow time arithmetic.
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some((i, wait)) = self
            .schedule
            .iter()
            .enumerate()
            .find(|(_, w)| **w > MAX_RETRY_DELAY)
        {
            return Err(format!(
                "wait {} of the schedule ({wait:?}) is beyond the limit of 30 days",
                i + 1
            ));
        }
        if self.throttle_delay > MAX_RETRY_DELAY {
            return Err(format!(
                "the throttle delay ({:?}) is beyond the limit of 30 days",
                self.throttle_delay
            ));
        }
        Ok(())
    }
}

/// The longest wait a retry schedule may hold: 30 days.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The longest `Retry-After` honoured; a longer one is ignored (the
/// schedule applies).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delta-seconds, or an
/// HTTP-date in any of the three formats recipients must accept (a date in
/// the past means now). `None` for anything else, or a wait over a day.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(value.parse().ok()?)
    } else {
        let at = parse_http_date(value, now)?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    (wait <= MAX_RETRY_AFTER).then_some(wait)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// An HTTP-date: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the
/// obsolete RFC 850 form (`Sunday, 06-Nov-94 08:49:37 GMT`) or asctime
/// (`Sun Nov  6 08:49:37 1994`). `now` resolves RFC 850's two-digit year.
fn parse_http_date(s: &str, now: SystemTime) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_ascii_whitespace().collect();
    let (day, month, year, time) = match parts.as_slice() {
        [weekday, day, month, year, time, "GMT"] if DAYS.contains(&weekday.strip_suffix(',')?) => {
            (*day, *month, digits(year, 4..=4)? as i64, *time)
        }
        [weekday, date, time, "GMT"] if LONG_DAYS.contains(&weekday.strip_suffix(',')?) => {
            let mut fields = date.split('-');
            let (day, month, yy) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() {
                return None;
            }
            let year = two_digit_year(digits(yy, 2..=2)? as i64, now);
            (day, month, year, *time)
        }
        [weekday, month, day, time, year] if DAYS.contains(weekday) => {
            (*day, *month, digits(year, 4..=4)? as i64, *time)
        }
        _ => return None,
    };
    let day = digits(day, 1..=2)? as u32;
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let mut hms = time.split(':');
    let mut field = |max: u64| -> Option<u64> {
        let v = digits(hms.next()?, 2..=2)?;
        (v <= max).then_some(v)
    };
    let (h, m, sec) = (field(23)?, field(59)?, field(60)?);
    if hms.next().is_some() {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if civil_from_days(days) != (year, month, day) {
        return None; // 30 February and the like
    }
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + sec;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// A field of ASCII digits only (no sign, no spaces), `len` long.
fn digits(s: &str, len: std::ops::RangeInclusive<usize>) -> Option<u64> {
    if !len.contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// RFC 9110: a two-digit year more than 50 years in the future is the most
/// recent past year with the same last two digits.
fn two_digit_year(yy: i64, now: SystemTime) -> i64 {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let this_year = civil_from_days(secs / 86_400).0;
    let mut year = this_year - this_year.rem_euclid(100) + yy;
    if year > this_year + 50 {
        year -= 100;
    }
    year
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
        let now = SystemTime::now();
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(parse_retry_after(" 120 ", now), secs(120));
        assert_eq!(parse_retry_after("0", now), secs(0));
        assert_eq!(parse_retry_after("86400", now), secs(86_400));
        for bad in [
            "-1",
            "+5",
            "1.5",
            "",
            "  ",
            "86401",
            "999999999999999999999",
            "soon",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    /// 2015-10-21 07:28:00 UTC.
    fn oct_21_2015() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_445_412_480)
    }

    #[test]
    fn retry_after_http_dates_in_all_three_formats() {
        let now = oct_21_2015();
        for date in [
            "Wed, 21 Oct 2015 07:29:30 GMT",
            "Wednesday, 21-Oct-15 07:29:30 GMT",
            "Wed Oct 21 07:29:30 2015",
            "  Wed, 21 Oct 2015 07:29:30 GMT  ",
        ] {
            assert_eq!(
                parse_retry_after(date, now),
                Some(Duration::from_secs(90)),
                "{date:?}"
            );
        }
        // asctime pads a one-digit day with a space.
        let earlier = UNIX_EPOCH + Duration::from_secs(784_111_777 - 60);
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:37 1994", earlier),
            Some(Duration::from_secs(60))
        );
        // A date in the past means now; more than a day ahead is ignored.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Thu, 22 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_retry_after("Thu, 22 Oct 2015 07:28:01 GMT", now),
            None
        );
    }

    #[test]
    fn malformed_http_dates_are_ignored() {
        let now = oct_21_2015();
        for bad in [
            "Wed, 21 Oct 2015 07:29:30",           // no zone
            "Wed, 21 Oct 2015 07:29:30 UTC",       // not GMT
            "Wed, 21 Okt 2015 07:29:30 GMT",       // month
            "Xyz, 21 Oct 2015 07:29:30 GMT",       // weekday
            "Wed 21 Oct 2015 07:29:30 GMT",        // comma
            "Wed, 30 Feb 2015 07:29:30 GMT",       // no such day
            "Wed, 21 Oct 2015 24:00:00 GMT",       // hour
            "Wed, 21 Oct 2015 07:60:00 GMT",       // minute
            "Wed, 21 Oct 2015 7:29:30 GMT",        // two digits
            "Wed, 21 Oct 2015 07:29:30:00 GMT",    // extra field
            "Wed, 21 Oct 15 07:29:30 GMT",         // IMF needs 4 digits
            "Wed, 121 Oct 2015 07:29:30 GMT",      // day
            "Wednesday, 21-Oct-2015 07:29:30 GMT", // RFC 850 has 2 digits
            "Wed Oct 21 07:29:30 15",
            "Wed, 21 Oct 2015 07:29:30 GMT extra",
            "Wed, +1 Oct 2015 07:29:30 GMT", // signs are not digits
            "Wed, 21 Oct 2015 +7:29:30 GMT",
            "Wed, 21 Oct +015 07:29:30 GMT",
            "Wednesday, 21-Oct--5 07:29:30 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn rfc850_two_digit_years_are_never_far_in_the_future() {
        let now = oct_21_2015();
        assert_eq!(two_digit_year(15, now), 2015);
        assert_eq!(two_digit_year(65, now), 2065);
        assert_eq!(two_digit_year(66, now), 1966);
        assert_eq!(two_digit_year(99, now), 1999);
    }

    /// An IMF-fixdate, as a receiver would write it.
    fn imf_fixdate(t: SystemTime) -> String {
        let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let days = secs / 86_400;
        let (y, m, d) = civil_from_days(days);
        let rem = secs % 86_400;
        format!(
            "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
            DAYS[(days + 3).rem_euclid(7) as usize],
            MONTHS[m as usize - 1],
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    proptest::proptest! {
        #[test]
        fn any_http_date_within_a_day_is_the_wait_it_names(
            now_secs in 0u64..8_000_000_000,
            ahead in 0u64..=86_400,
        ) {
            let now = UNIX_EPOCH + Duration::from_secs(now_secs);
            let date = imf_fixdate(now + Duration::from_secs(ahead));
            proptest::prop_assert_eq!(
                parse_retry_after(&date, now),
                Some(Duration::from_secs(ahead)),
                "{}", date
            );
        }

        #[test]
        fn arbitrary_values_never_panic(value in "\\PC{0,64}", now_secs in 0u64..8_000_000_000) {
            let now = UNIX_EPOCH + Duration::from_secs(now_secs);
            if let Some(wait) = parse_retry_after(&value, now) {
                proptest::prop_assert!(wait <= MAX_RETRY_AFTER);
            }
        }

        #[test]
        fn date_shaped_noise_never_panics(
            day in "[0-9]{0,3}", month in "[A-Za-z]{0,4}", year in "[0-9]{0,5}",
            time in "[0-9:]{0,9}", zone in "(GMT|UTC|)",
        ) {
            let now = SystemTime::now();
            let _ = parse_retry_after(&format!("Sun, {day} {month} {year} {time} {zone}"), now);
            let _ = parse_retry_after(&format!("Sunday, {day}-{month}-{year} {time} {zone}"), now);
            let _ = parse_retry_after(&format!("Sun {month} {day} {time} {year}"), now);
        }
    }

    #[test]
    fn civil_dates_roundtrip() {
        for days in [-719_468, -1, 0, 1, 11_016, 16_729, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn empty_schedule_means_one_attempt() {
        let p = RetryPolicy::new(Vec::new());
        assert_eq!(p.max_attempts(), 1);
        assert_eq!(p.next_delay(1, false, None, 0.5), None);
    }
}
