//! Time rules of missions: 5-field cron patterns evaluated in UTC and one-shot instants
//! (spec §6.8), and the ISO 8601 durations of delays (spec §6.1).

use chrono::{DateTime, NaiveDateTime};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A mission's `schedule`: a cron pattern or one instant.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron(Box<Cron>),
    Once(i64),
}

/// Reads a `schedule` string: five cron fields of `*`, numbers, lists, ranges and steps, or an
/// RFC 3339 instant. The error says what is wrong.
pub fn parse(text: &str) -> Result<Schedule, String> {
    if let Some(ms) = crate::clock::parse_rfc3339(text) {
        return Ok(Schedule::Once(ms));
    }
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(
            "must be a 5-field cron pattern (minute hour day-of-month month day-of-week) or an RFC 3339 instant".into(),
        );
    }
    if let Some(bad) = fields
        .iter()
        .find(|f| !f.bytes().all(|b| b.is_ascii_digit() || b"*,-/".contains(&b)))
    {
        return Err(format!("cron field {bad:?} may use only digits, '*', ',', '-' and '/'"));
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .dom_and_dow(false)
        .build();
    let cron = parser.parse(text).map_err(|e| format!("invalid cron pattern: {e}"))?;
    // A pattern such as `0 0 31 2 *` parses but never fires.
    if next_of(&cron, crate::clock::now_ms()).is_none() {
        return Err("this cron pattern never fires".into());
    }
    Ok(Schedule::Cron(Box::new(cron)))
}

fn naive(ms: i64) -> Option<NaiveDateTime> {
    DateTime::from_timestamp_millis(ms).map(|t| t.naive_utc())
}

fn millis(t: NaiveDateTime) -> i64 {
    t.and_utc().timestamp_millis()
}

fn next_of(cron: &Cron, after_ms: i64) -> Option<i64> {
    cron.find_next_occurrence(&naive(after_ms)?, false).ok().map(millis)
}

impl Schedule {
    pub fn is_cron(&self) -> bool {
        matches!(self, Self::Cron(_))
    }

    /// The first tick strictly after `after_ms`.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Self::Cron(cron) => next_of(cron, after_ms),
            Self::Once(at) => (*at > after_ms).then_some(*at),
        }
    }

    /// The latest tick at or before `at_ms`.
    pub fn latest_until(&self, at_ms: i64) -> Option<i64> {
        match self {
            Self::Cron(cron) => cron.find_previous_occurrence(&naive(at_ms)?, true).ok().map(millis),
            Self::Once(at) => (*at <= at_ms).then_some(*at),
        }
    }
}

/// Delays last from one second to thirty days (spec §6.1).
const MIN_DELAY_MS: i64 = 1000;
const MAX_DELAY_MS: i64 = 30 * 86_400_000;

/// Reads an ISO 8601 duration such as `PT30M`, `P1DT2H` or `P1W` into milliseconds. Years and
/// months have no fixed length and are refused.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not an ISO 8601 duration such as PT30M or P1DT2H");
    let rest = text.strip_prefix('P').ok_or_else(bad)?;
    let (date, time) = match rest.split_once('T') {
        Some((date, time)) if !time.is_empty() => (date, Some(time)),
        Some(_) => return Err(bad()),
        None => (rest, None),
    };
    if date.is_empty() && time.is_none() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    let mut read = |part: &str, units: &[(char, f64)]| -> Result<(), String> {
        let mut number = String::new();
        let mut last = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let position = units.iter().position(|(u, _)| *u == c).ok_or_else(|| {
                if c == 'Y' || c == 'M' {
                    format!("{text:?}: years and months have no fixed length; use days (P30D)")
                } else {
                    bad()
                }
            })?;
            if number.is_empty() || position < last {
                return Err(bad());
            }
            let value: f64 = number.parse().map_err(|_| bad())?;
            total += value * units[position].1;
            number.clear();
            last = position + 1;
        }
        if number.is_empty() { Ok(()) } else { Err(bad()) }
    };
    read(date, &[('W', 604_800_000.0), ('D', 86_400_000.0)])?;
    if let Some(time) = time {
        read(time, &[('H', 3_600_000.0), ('M', 60_000.0), ('S', 1000.0)])?;
    }
    #[allow(clippy::cast_possible_truncation)]
    let ms = total.round() as i64;
    if !(MIN_DELAY_MS..=MAX_DELAY_MS).contains(&ms) {
        return Err("must be between 1 second (PT1S) and 30 days (P30D)".into());
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN_1_2026: i64 = 1_767_225_600_000; // a Thursday, 00:00 UTC

    #[test]
    fn cron_ticks_are_utc_minutes_and_either_day_field_may_match() {
        let every_minute = parse("* * * * *").unwrap();
        assert_eq!(every_minute.next_after(JAN_1_2026), Some(JAN_1_2026 + 60_000));
        assert_eq!(every_minute.latest_until(JAN_1_2026 + 59_999), Some(JAN_1_2026));
        let steps = parse("*/15 9-17 * * 1-5").unwrap();
        assert_eq!(steps.next_after(JAN_1_2026), Some(JAN_1_2026 + 9 * 3_600_000));
        // Day 15 of the month, or any Sunday (0 and 7 both name it).
        for sunday in ["0 0 15 * 0", "0 0 15 * 7"] {
            let either = parse(sunday).unwrap();
            assert_eq!(
                either.next_after(JAN_1_2026),
                Some(JAN_1_2026 + 3 * 86_400_000),
                "{sunday}"
            );
        }
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for bad in [
            "* * * *",
            "* * * * * *",
            "61 * * * *",
            "@daily",
            "0 0 * * MON",
            "0 0 30 2 *",
            "L * * * *",
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
        let once = parse("2026-03-01T18:00:00Z").unwrap();
        assert!(!once.is_cron());
        assert_eq!(
            once.next_after(JAN_1_2026),
            Some(JAN_1_2026 + 59 * 86_400_000 + 18 * 3_600_000)
        );
    }

    #[test]
    fn durations_read_as_iso_8601() {
        assert_eq!(parse_duration("PT30M"), Ok(1_800_000));
        assert_eq!(parse_duration("P1DT2H"), Ok(93_600_000));
        assert_eq!(parse_duration("PT2S"), Ok(2000));
        assert_eq!(parse_duration("P1W"), Ok(604_800_000));
        assert_eq!(parse_duration("PT1.5S"), Ok(1500));
        for bad in ["30m", "P", "PT", "P1M", "PT0S", "P31D", "PT5M30H", "P1H", "PTXS"] {
            assert!(parse_duration(bad).is_err(), "{bad} was accepted");
        }
    }
}
