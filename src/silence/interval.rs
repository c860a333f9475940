//! Recurring maintenance windows in Alertmanager's `time_intervals` syntax: `times`
//! (`start_time`/`end_time`, `"HH:MM"`), `weekdays` (`monday:friday`),
//! `days_of_month` (`1:5`, `-1` for the last day), `months` (`may:august`, `1:3`),
//! `years` (`2026:2027`) and `location` (an IANA time zone, UTC if unset).
//!
//! Semantics follow Alertmanager 0.25, so a window copied from its configuration
//! means the same: a field left out matches any time; a list matches when any of its
//! ranges does; every range is inclusive except a time range, which ends before its
//! `end_time`; times are wall-clock times in `location`, so a window follows
//! daylight-saving changes (a wall time skipped by a change never happens, one
//! repeated happens twice). A time range may not cross midnight: as in
//! Alertmanager, `22:00`–`02:00` is refused and written as two ranges.
//!
//! Parsing happens once, when a silence is loaded; [`TimeInterval::contains`] does no
//! allocation and no parsing. Must never panic on any input.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One interval as written (the CRD's and the silence files' `timeIntervals` items).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeIntervalSpec {
    /// Times of day, `start_time` inclusive, `end_time` exclusive, `"HH:MM"` (`24:00`
    /// allowed as an end).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub times: Vec<TimeRangeSpec>,
    /// Days of the week or ranges of them: `sunday`, `monday:friday`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weekdays: Vec<String>,
    /// Days of the month or ranges; negative days count from the month's end
    /// (`-1` is its last day, `-3:-1` its last three).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days_of_month: Vec<String>,
    /// Months by name or number, or ranges: `january`, `3:5`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub months: Vec<String>,
    /// Years or ranges: `2026`, `2026:2028`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub years: Vec<String>,
    /// The IANA time zone the other fields are read in (`Europe/Berlin`); UTC if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeRangeSpec {
    /// Start of the daily range, `HH:MM` (inclusive), in the interval's location.
    pub start_time: String,
    /// End of the daily range, `HH:MM` (exclusive); up to `24:00`, never before the
    /// start: a range crossing midnight is written as two ranges, as in Alertmanager.
    pub end_time: String,
}

/// Why an interval was refused: the field and what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("time interval {field}: {reason}")]
pub struct IntervalError {
    pub field: &'static str,
    pub reason: String,
}

fn refuse<T>(field: &'static str, reason: impl Into<String>) -> Result<T, IntervalError> {
    Err(IntervalError { field, reason: reason.into() })
}

/// A parsed interval, ready to be asked about any instant.
#[derive(Clone, Debug)]
pub struct TimeInterval {
    /// Minutes of the day, `[start, end)`.
    times: Vec<(u16, u16)>,
    /// Days of the week, Sunday = 0, inclusive.
    weekdays: Vec<(u8, u8)>,
    days_of_month: Vec<(i8, i8)>,
    months: Vec<(i8, i8)>,
    years: Vec<(i16, i16)>,
    location: TimeZone,
}

const WEEKDAYS: [&str; 7] = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"];
const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

impl TimeInterval {
    pub fn parse(spec: &TimeIntervalSpec) -> Result<TimeInterval, IntervalError> {
        let times = spec.times.iter().map(parse_time_range).collect::<Result<_, _>>()?;
        let weekdays = ranges(&spec.weekdays, "weekdays", |s| {
            WEEKDAYS.iter().position(|d| d.eq_ignore_ascii_case(s.trim())).map(|i| i as i64)
        })?
        .into_iter()
        .map(|(a, b)| (a as u8, b as u8))
        .collect();
        let days_of_month = spec.days_of_month.iter().map(|s| parse_day_range(s)).collect::<Result<_, _>>()?;
        let months = ranges(&spec.months, "months", |s| {
            let s = s.trim();
            MONTHS
                .iter()
                .position(|m| m.eq_ignore_ascii_case(s))
                .map(|i| i as i64 + 1)
                .or_else(|| s.parse::<i64>().ok().filter(|m| (1..=12).contains(m)))
        })?
        .into_iter()
        .map(|(a, b)| (a as i8, b as i8))
        .collect();
        let years = ranges(&spec.years, "years", |s| s.trim().parse::<i64>().ok().filter(|y| (1..=9999).contains(y)))?
            .into_iter()
            .map(|(a, b)| (a as i16, b as i16))
            .collect();
        let location = match spec.location.as_deref() {
            None | Some("UTC") => TimeZone::UTC,
            Some(name) => match TimeZone::get(name) {
                Ok(tz) => tz,
                Err(e) => return refuse("location", format!("unknown time zone {name:?}: {e}")),
            },
        };
        Ok(TimeInterval { times, weekdays, days_of_month, months, years, location })
    }

    /// Whether `t` falls in this interval, read in its location.
    pub fn contains(&self, t: Timestamp) -> bool {
        let local = self.location.to_datetime(t);
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let weekday = local.weekday().to_sunday_zero_offset() as u8;
        let (day, month, year) = (local.day(), local.month(), local.year());
        let month_len = local.date().days_in_month();
        any_or_empty(&self.times, |&(start, end)| start <= minute && minute < end)
            && any_or_empty(&self.weekdays, |&(a, b)| a <= weekday && weekday <= b)
            && any_or_empty(&self.days_of_month, |&(a, b)| day_in_range(day, month_len, a, b))
            && any_or_empty(&self.months, |&(a, b)| a <= month && month <= b)
            && any_or_empty(&self.years, |&(a, b)| a <= year && year <= b)
    }
}

fn any_or_empty<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}

/// A day-of-month range in a month of `len` days, negative days counted from its
/// end, clamped to the month as Alertmanager does: `1:31` is the whole of February,
/// and a range starting after the month's end matches none of it.
fn day_in_range(day: i8, len: i8, begin: i8, end: i8) -> bool {
    let resolve = |d: i8| if d < 0 { len + d + 1 } else { d };
    let (begin, end) = (resolve(begin), resolve(end));
    if begin > len {
        return false;
    }
    let (begin, end) = (begin.max(1), end.min(len));
    begin <= day && day <= end
}

/// `24:00`, in minutes: an end time only.
const END_OF_DAY: u16 = 24 * 60;

/// `"HH:MM"`, `00:00` to `23:59`, or `24:00`: minutes of the day.
fn parse_clock(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = (h.parse::<u16>().ok()?, m.parse::<u16>().ok()?);
    match (h, m) {
        (24, 0) => Some(END_OF_DAY),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

fn parse_time_range(r: &TimeRangeSpec) -> Result<(u16, u16), IntervalError> {
    let start = parse_clock(&r.start_time);
    let end = parse_clock(&r.end_time);
    match (start, end) {
        (Some(END_OF_DAY), _) => refuse("times", format!("start_time {:?} is the end of the day", r.start_time)),
        (Some(start), Some(end)) if start < end => Ok((start, end)),
        (Some(_), Some(_)) => refuse(
            "times",
            format!(
                "start_time {:?} is not before end_time {:?} (a range crossing midnight is written as two ranges, as in Alertmanager)",
                r.start_time, r.end_time
            ),
        ),
        (None, _) => refuse("times", format!("start_time {:?} is not HH:MM", r.start_time)),
        (_, None) => refuse("times", format!("end_time {:?} is not HH:MM", r.end_time)),
    }
}

/// Parses `a` or `a:b` items with `one`, refusing a range whose start is after its
/// end.
fn ranges(
    items: &[String],
    field: &'static str,
    one: impl Fn(&str) -> Option<i64>,
) -> Result<Vec<(i64, i64)>, IntervalError> {
    items
        .iter()
        .map(|item| {
            let (a, b) = item.split_once(':').unwrap_or((item, item));
            match (one(a), one(b)) {
                (Some(a), Some(b)) if a <= b => Ok((a, b)),
                (Some(_), Some(_)) => refuse(field, format!("{item:?}: the start is after the end")),
                _ => refuse(field, format!("{item:?} is not a valid value or range")),
            }
        })
        .collect()
}

/// Days `1`..`31` or `-31`..`-1`. A range may go from a positive day to a negative
/// one (`1:-1`, the whole month) but not the other way, and within one sign its
/// start may not be after its end.
fn parse_day_range(item: &str) -> Result<(i8, i8), IntervalError> {
    let one = |s: &str| s.trim().parse::<i8>().ok().filter(|d| *d != 0 && (-31..=31).contains(d));
    let (a, b) = item.split_once(':').unwrap_or((item, item));
    match (one(a), one(b)) {
        (Some(a), Some(b)) if a < 0 && b > 0 => {
            refuse("days_of_month", format!("{item:?}: a range from a negative day must end on a negative day"))
        }
        (Some(a), Some(b)) if (a > 0) == (b > 0) && a > b => {
            refuse("days_of_month", format!("{item:?}: the start is after the end"))
        }
        (Some(a), Some(b)) => Ok((a, b)),
        _ => refuse("days_of_month", format!("{item:?} is not a day (1 to 31, or -31 to -1) or a range of them")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> TimeIntervalSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    fn parse(yaml: &str) -> TimeInterval {
        TimeInterval::parse(&spec(yaml)).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn an_empty_interval_is_always() {
        assert!(parse("{}").contains(at("2026-12-05T12:00:00Z")));
    }

    #[test]
    fn a_time_range_includes_its_start_and_excludes_its_end() {
        let i = parse("times: [{start_time: '02:00', end_time: '04:00'}]");
        assert!(!i.contains(at("2026-12-06T01:59:59Z")));
        assert!(i.contains(at("2026-12-06T02:00:00Z")));
        assert!(i.contains(at("2026-12-06T03:59:59Z")));
        assert!(!i.contains(at("2026-12-06T04:00:00Z")));
        let to_midnight = parse("times: [{start_time: '22:00', end_time: '24:00'}]");
        assert!(to_midnight.contains(at("2026-12-06T23:59:59Z")));
        assert!(!to_midnight.contains(at("2026-12-07T00:00:00Z")));
    }

    #[test]
    fn a_range_crossing_midnight_is_refused_and_written_as_two() {
        let err = TimeInterval::parse(&spec("times: [{start_time: '22:00', end_time: '02:00'}]")).unwrap_err();
        assert_eq!(err.field, "times");
        assert!(err.reason.contains("two ranges"), "{err}");
        let two = parse("times: [{start_time: '22:00', end_time: '24:00'}, {start_time: '00:00', end_time: '02:00'}]");
        assert!(two.contains(at("2026-12-06T23:30:00Z")));
        assert!(two.contains(at("2026-12-07T01:30:00Z")));
        assert!(!two.contains(at("2026-12-07T02:00:00Z")));
    }

    #[test]
    fn malformed_times_are_refused() {
        for (start, end) in [
            ("24:00", "24:00"),
            ("10:00", "10:00"),
            ("9:00", "10:00"),
            ("10:60", "11:00"),
            ("-1:00", "02:00"),
            ("10:00", "25:00"),
        ] {
            let s = TimeIntervalSpec {
                times: vec![TimeRangeSpec { start_time: start.into(), end_time: end.into() }],
                ..Default::default()
            };
            assert!(TimeInterval::parse(&s).is_err(), "{start}-{end}");
        }
    }

    #[test]
    fn weekdays_by_name_and_range_with_sunday_first() {
        let i = parse("weekdays: ['monday:friday']");
        assert!(i.contains(at("2026-12-07T12:00:00Z")), "a Monday");
        assert!(i.contains(at("2026-12-11T12:00:00Z")), "a Friday");
        assert!(!i.contains(at("2026-12-06T12:00:00Z")), "a Sunday");
        assert!(!i.contains(at("2026-12-05T12:00:00Z")), "a Saturday");
        let weekend = parse("weekdays: [saturday, Sunday]");
        assert!(weekend.contains(at("2026-12-06T12:00:00Z")));
        assert!(TimeInterval::parse(&spec("weekdays: ['friday:monday']")).is_err(), "a range backwards");
        assert!(TimeInterval::parse(&spec("weekdays: [funday]")).is_err());
    }

    #[test]
    fn negative_days_count_from_the_end_of_each_month() {
        let last = parse("days_of_month: ['-1']");
        assert!(last.contains(at("2028-02-29T12:00:00Z")), "a leap February's last day");
        assert!(!last.contains(at("2028-02-28T12:00:00Z")));
        assert!(last.contains(at("2026-02-28T12:00:00Z")), "a common February's last day");
        assert!(last.contains(at("2026-04-30T12:00:00Z")));
        let last_three = parse("days_of_month: ['-3:-1']");
        assert!(last_three.contains(at("2026-12-29T00:00:00Z")));
        assert!(!last_three.contains(at("2026-12-28T23:59:59Z")));
        let whole = parse("days_of_month: ['1:-1']");
        assert!(whole.contains(at("2026-02-01T00:00:00Z")));
        assert!(whole.contains(at("2026-02-28T00:00:00Z")));
    }

    #[test]
    fn days_past_the_end_of_a_short_month_are_clamped() {
        let late = parse("days_of_month: ['28:31']");
        assert!(late.contains(at("2026-02-28T12:00:00Z")), "clamped to February's end");
        let after = parse("days_of_month: ['30:31']");
        assert!(!after.contains(at("2026-02-28T12:00:00Z")), "starts after February's end: none of it");
        assert!(after.contains(at("2026-03-31T12:00:00Z")));
    }

    #[test]
    fn malformed_days_of_month_are_refused() {
        for bad in ["0", "32", "-32", "5:1", "-1:-3", "-1:5", "x", "1:"] {
            let s = TimeIntervalSpec { days_of_month: vec![bad.into()], ..Default::default() };
            assert!(TimeInterval::parse(&s).is_err(), "{bad}");
        }
    }

    #[test]
    fn months_by_name_or_number_and_years_in_ranges() {
        let i = parse("months: ['may:august', '1']\nyears: ['2026:2027']");
        assert!(i.contains(at("2026-06-01T00:00:00Z")));
        assert!(i.contains(at("2027-01-15T00:00:00Z")));
        assert!(!i.contains(at("2026-09-01T00:00:00Z")));
        assert!(!i.contains(at("2028-06-01T00:00:00Z")));
        assert!(parse("months: ['3:5']").contains(at("2026-04-01T00:00:00Z")));
        for bad in ["months: ['13']", "months: ['december:january']", "years: ['2027:2026']", "months: [smarch]"] {
            assert!(TimeInterval::parse(&spec(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_combine_and_each_must_match() {
        let sunday_night =
            parse("weekdays: [sunday]\ntimes: [{start_time: '02:00', end_time: '04:00'}]\nlocation: Europe/Berlin");
        // 2026-12-06 is a Sunday; Berlin is UTC+1 in December.
        assert!(sunday_night.contains(at("2026-12-06T01:30:00Z")), "02:30 in Berlin");
        assert!(!sunday_night.contains(at("2026-12-06T03:30:00Z")), "04:30 in Berlin");
        assert!(!sunday_night.contains(at("2026-12-07T01:30:00Z")), "a Monday in Berlin");
    }

    #[test]
    fn the_location_decides_the_day_as_well_as_the_time() {
        let saturday_ny = parse("weekdays: [saturday]\nlocation: America/New_York");
        // 02:00 UTC on a Sunday is still Saturday evening in New York.
        assert!(saturday_ny.contains(at("2026-12-06T02:00:00Z")));
        assert!(!parse("weekdays: [saturday]").contains(at("2026-12-06T02:00:00Z")));
        assert!(TimeInterval::parse(&spec("location: Mars/Olympus_Mons")).is_err());
    }

    #[test]
    fn a_window_in_the_hour_skipped_by_daylight_saving_shrinks() {
        // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let i = parse("times: [{start_time: '02:00', end_time: '04:00'}]\nlocation: Europe/Berlin");
        assert!(!i.contains(at("2026-03-29T00:59:59Z")), "01:59:59 CET");
        assert!(i.contains(at("2026-03-29T01:00:00Z")), "03:00 CEST, the first instant past the gap");
        assert!(i.contains(at("2026-03-29T01:59:59Z")), "03:59:59 CEST");
        assert!(!i.contains(at("2026-03-29T02:00:00Z")), "04:00 CEST: the window lasted one hour");
    }

    #[test]
    fn a_window_in_the_hour_repeated_by_daylight_saving_happens_twice() {
        // Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC).
        let i = parse("times: [{start_time: '02:00', end_time: '03:00'}]\nlocation: Europe/Berlin");
        assert!(!i.contains(at("2026-10-24T23:59:59Z")), "01:59:59 CEST");
        assert!(i.contains(at("2026-10-25T00:00:00Z")), "02:00 CEST");
        assert!(i.contains(at("2026-10-25T00:59:59Z")), "02:59:59 CEST");
        assert!(i.contains(at("2026-10-25T01:00:00Z")), "02:00 CET, the same wall hour again");
        assert!(i.contains(at("2026-10-25T01:59:59Z")), "02:59:59 CET");
        assert!(!i.contains(at("2026-10-25T02:00:00Z")), "03:00 CET");
    }
}
