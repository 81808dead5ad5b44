//! Cron expressions evaluated in an IANA time zone, with the daylight-saving rules stated:
//!
//! - a local time that does not exist (clocks spring forward over it) fires once, at the first
//!   instant after the gap, and the preview says so in a `note`;
//! - a local time that happens twice (clocks fall back) fires once, at its first occurrence.
//!
//! Parsing and matching are [`croner`]'s; this module only picks its five-field dialect and
//! drops the second occurrence of repeated local times, which croner fires for interval
//! patterns such as `*/30 * * * *`.

use chrono::{DateTime, LocalResult, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Steps through repeated local times a search may take before it gives up: a pattern
/// matching only inside a fall-back hour would otherwise loop for as long as croner searches.
const MAX_REPEATS_SKIPPED: usize = 200;

/// An IANA time zone name, parsed.
pub fn parse_timezone(raw: &str) -> Result<Tz, String> {
    raw.parse::<Tz>()
        .map_err(|_| format!("`{raw}` is not an IANA time zone name (e.g. `Europe/Paris`)"))
}

/// A five-field cron expression (`min hour day-of-month month day-of-week`) in a time zone.
#[derive(Clone, Debug)]
pub struct CronSpec {
    cron: Cron,
    tz: Tz,
}

/// One instant a schedule fires at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FireTime {
    /// The instant.
    pub at: DateTime<Utc>,
    /// The same instant in the schedule's time zone.
    pub local: DateTime<Tz>,
    /// Why it fires at this instant rather than the one the expression names, if it differs.
    pub note: Option<String>,
}

impl CronSpec {
    /// Parses `expression` (five fields, with `*`, lists, ranges, steps, names, `L`, `#`
    /// and `W`, or a nickname such as `@daily`) to be evaluated in `tz`.
    pub fn parse(expression: &str, tz: Tz) -> Result<Self, String> {
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(expression)
            .map_err(|err| format!("is not a valid five-field cron expression: {err}"))?;
        let spec = Self { cron, tz };
        // A pattern that can never match (`0 0 30 2 *`) is refused now, not at fire time.
        spec.next_after(Utc::now(), true)
            .ok_or_else(|| "never fires (no date matches it)".to_owned())?;
        Ok(spec)
    }

    /// The time zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first fire at or after `from` (`inclusive`) or strictly after it.
    pub fn next_after(&self, from: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        // Slots fall on whole minutes: a fraction of a second rounds the start up.
        let (mut cursor, mut inclusive) = if from.nanosecond() > 0 {
            (
                from.with_nanosecond(0)? + chrono::Duration::seconds(1),
                true,
            )
        } else {
            (from, inclusive)
        };
        for _ in 0..MAX_REPEATS_SKIPPED {
            let local = cursor.with_timezone(&self.tz);
            let at = self.cron.find_next_occurrence(&local, inclusive).ok()?;
            if !self.is_second_occurrence(&at) {
                return Some(at.with_timezone(&Utc));
            }
            cursor = at.with_timezone(&Utc);
            inclusive = false;
        }
        None
    }

    /// The last fire at or before `until`.
    pub fn last_until(&self, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut cursor = until.with_timezone(&self.tz);
        let mut inclusive = true;
        for _ in 0..MAX_REPEATS_SKIPPED {
            let at = self
                .cron
                .find_previous_occurrence(&cursor, inclusive)
                .ok()?;
            if !self.is_second_occurrence(&at) {
                return Some(at.with_timezone(&Utc));
            }
            cursor = at;
            inclusive = false;
        }
        None
    }

    /// The next `count` fires at or after `from`, with notes.
    pub fn fires_from(&self, from: DateTime<Utc>, count: usize) -> Vec<FireTime> {
        let mut fires = Vec::with_capacity(count);
        let mut next = self.next_after(from, true);
        while let (Some(at), true) = (next, fires.len() < count) {
            fires.push(self.fire_time(at));
            next = self.next_after(at, false);
        }
        fires
    }

    /// `at` as a fire: in local time, with a note if the expression does not name it.
    pub fn fire_time(&self, at: DateTime<Utc>) -> FireTime {
        let local = at.with_timezone(&self.tz);
        let note = (!self.cron.is_time_matching(&local).unwrap_or(true)).then(|| {
            format!(
                "the local time the expression names does not exist on {} in {} (clocks \
                 spring forward); it fires at the first instant after the gap",
                local.date_naive(),
                self.tz.name()
            )
        });
        FireTime { at, local, note }
    }

    /// Whether `at` is the second occurrence of a local time that happens twice.
    fn is_second_occurrence(&self, at: &DateTime<Tz>) -> bool {
        match self.tz.from_local_datetime(&at.naive_local()) {
            LocalResult::Ambiguous(first, _) => first.timestamp() != at.timestamp(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(raw: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(raw)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn spec(expression: &str, tz: &str) -> CronSpec {
        CronSpec::parse(expression, parse_timezone(tz).unwrap()).unwrap()
    }

    fn instants(fires: &[FireTime]) -> Vec<String> {
        fires
            .iter()
            .map(|f| crate::domain::ts::format(&f.at))
            .collect()
    }

    #[test]
    fn spring_forward_fires_once_at_the_first_instant_after_the_gap_with_a_note() {
        let fires =
            spec("30 2 * * *", "America/New_York").fires_from(utc("2027-03-13T00:00:00Z"), 3);
        assert_eq!(
            instants(&fires),
            [
                "2027-03-13T07:30:00.000Z",
                "2027-03-14T07:00:00.000Z",
                "2027-03-15T06:30:00.000Z"
            ]
        );
        assert_eq!(fires[0].note, None);
        assert!(fires[1].note.as_deref().unwrap().contains("does not exist"));
        assert_eq!(fires[1].local.to_rfc3339(), "2027-03-14T03:00:00-04:00");
        assert_eq!(fires[2].note, None);
    }

    #[test]
    fn fall_back_fires_a_repeated_local_time_once_at_its_first_occurrence() {
        let daily = spec("30 1 * * *", "America/New_York");
        assert_eq!(
            instants(&daily.fires_from(utc("2027-11-06T00:00:00Z"), 3)),
            [
                "2027-11-06T05:30:00.000Z",
                "2027-11-07T05:30:00.000Z",
                "2027-11-08T06:30:00.000Z"
            ]
        );
        let half_hourly = spec("*/30 * * * *", "America/New_York");
        assert_eq!(
            instants(&half_hourly.fires_from(utc("2027-11-07T04:30:00Z"), 4)),
            [
                "2027-11-07T04:30:00.000Z",
                "2027-11-07T05:00:00.000Z",
                "2027-11-07T05:30:00.000Z",
                // 01:00 and 01:30 EST repeat 01:00 and 01:30 EDT: skipped.
                "2027-11-07T07:00:00.000Z"
            ]
        );
    }

    #[test]
    fn a_start_inside_a_minute_rounds_up_and_a_start_on_a_slot_includes_it() {
        let every_minute = spec("* * * * *", "UTC");
        let at = utc("2027-01-01T10:00:00Z");
        assert_eq!(every_minute.next_after(at, true), Some(at));
        assert_eq!(
            every_minute.next_after(at, false),
            Some(utc("2027-01-01T10:01:00Z"))
        );
        assert_eq!(
            every_minute.next_after(utc("2027-01-01T10:00:00.5Z"), true),
            Some(utc("2027-01-01T10:01:00Z"))
        );
    }

    #[test]
    fn the_last_fire_until_an_instant_skips_repeated_local_times() {
        let half_hourly = spec("*/30 * * * *", "America/New_York");
        assert_eq!(
            half_hourly.last_until(utc("2027-11-07T06:45:00Z")),
            Some(utc("2027-11-07T05:30:00Z"))
        );
        assert_eq!(
            half_hourly.last_until(utc("2027-11-07T07:00:00Z")),
            Some(utc("2027-11-07T07:00:00Z"))
        );
    }

    #[test]
    fn last_day_and_nth_weekday_are_understood() {
        let last_day = spec("0 12 L * *", "UTC");
        assert_eq!(
            last_day.next_after(utc("2027-02-01T00:00:00Z"), true),
            Some(utc("2027-02-28T12:00:00Z"))
        );
        let second_monday = spec("0 9 * * 1#2", "Europe/Paris");
        assert_eq!(
            second_monday.next_after(utc("2027-03-01T00:00:00Z"), true),
            Some(utc("2027-03-08T08:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        let utc_zone = parse_timezone("UTC").unwrap();
        assert!(CronSpec::parse("* * * *", utc_zone).is_err());
        assert!(CronSpec::parse("0 0 * * * *", utc_zone).is_err());
        assert!(CronSpec::parse("61 * * * *", utc_zone).is_err());
        assert!(CronSpec::parse("0 0 30 2 *", utc_zone).is_err());
        assert!(parse_timezone("Mars/Olympus").is_err());
    }
}
