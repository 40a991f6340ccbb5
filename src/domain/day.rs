//! Calendar days in UTC, the unit of usage counts: `YYYY-MM-DD`, from 1970-01-01 to 9999-12-31.

use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::error::Problem;

const SECONDS_PER_DAY: u64 = 86_400;

/// One UTC calendar day, as a count of days since 1970-01-01.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Day(u32);

/// The last day a date may name: 9999-12-31.
pub const LAST_DAY: Day = Day(2_932_896);

impl Day {
    /// The UTC day `at` falls on (instants before 1970 fall on 1970-01-01, after 9999 on
    /// 9999-12-31).
    pub fn of(at: SystemTime) -> Day {
        let days = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / SECONDS_PER_DAY);
        Day(u32::try_from(days).unwrap_or(u32::MAX).min(LAST_DAY.0))
    }

    /// The first instant of the day.
    pub fn start(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::from(self.0) * SECONDS_PER_DAY)
    }

    /// Days since 1970-01-01.
    pub fn number(self) -> u32 {
        self.0
    }

    /// The day `n` days later (at most [`LAST_DAY`]).
    pub fn plus(self, n: u32) -> Day {
        Day(self.0.saturating_add(n).min(LAST_DAY.0))
    }

    /// The day `n` days earlier (at least 1970-01-01).
    pub fn minus(self, n: u32) -> Day {
        Day(self.0.saturating_sub(n))
    }

    /// How many days `start..=self` holds (0 when `start` is later).
    pub fn span_from(self, start: Day) -> u32 {
        if start > self { 0 } else { self.0 - start.0 + 1 }
    }

    /// Every day from `self` to `last`, inclusive, oldest first.
    pub fn through(self, last: Day) -> impl Iterator<Item = Day> {
        (self.0..=last.0).map(Day)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = humantime::format_rfc3339_seconds(self.start()).to_string();
        f.write_str(text.get(..10).unwrap_or(&text))
    }
}

impl fmt::Debug for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Day({self})")
    }
}

impl FromStr for Day {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Day, Problem> {
        let bad = || Problem::new(format!("`{}` is not a date YYYY-MM-DD", super::ids::shorten(s)));
        let shaped = s.len() == 10
            && s.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
        if !shaped {
            return Err(bad());
        }
        let at = humantime::parse_rfc3339(&format!("{s}T00:00:00Z")).map_err(|_| bad())?;
        let day = Day::of(at);
        // humantime accepts some impossible dates' neighbours; the round trip refuses them.
        if day.to_string() != s {
            return Err(bad());
        }
        Ok(day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_through_their_text() {
        for text in ["1970-01-01", "2024-02-29", "2025-12-31", "9999-12-31"] {
            let day: Day = text.parse().expect(text);
            assert_eq!(day.to_string(), text);
        }
        assert_eq!("9999-12-31".parse::<Day>(), Ok(LAST_DAY));
    }

    #[test]
    fn malformed_and_impossible_dates_are_refused() {
        for bad in
            ["", "2024-1-01", "2024-13-01", "2023-02-29", "2024-02-30", "20240101", "2024-01-01T00", "abcd-ef-gh"]
        {
            assert!(bad.parse::<Day>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_instant_falls_on_its_utc_day() {
        let day: Day = "2024-03-10".parse().expect("day");
        assert_eq!(Day::of(day.start()), day);
        assert_eq!(Day::of(day.start() + Duration::from_secs(SECONDS_PER_DAY - 1)), day);
        assert_eq!(Day::of(day.start() + Duration::from_secs(SECONDS_PER_DAY)), day.plus(1));
        assert_eq!(day.plus(1).minus(1), day);
        assert_eq!(day.plus(29).span_from(day), 30);
        assert_eq!(day.span_from(day.plus(1)), 0);
        assert_eq!(day.through(day.plus(2)).count(), 3);
    }
}
