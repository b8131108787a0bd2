//! Durations and times for people: `--older-than 7d` in, `3d4h` and `2026-12-01 10:00:00Z` out.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Seconds per unit a duration may be written in.
const UNITS: &[(char, u64)] = &[
    ('w', 7 * 86_400),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

/// Parses `90s`, `2m`, `12h`, `7d`, `1w`, or several run together (`1h30m`). A bare number is
/// refused: minutes and days are both plausible, so the unit is required.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut parts = 0;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let Some(&(_, secs)) = UNITS.iter().find(|(unit, _)| *unit == c) else {
            return Err(format!(
                "`{c}` is not a unit (s, m, h, d, w): write e.g. 90s, 2m, 7d, 1h30m"
            ));
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("a number must come before `{c}`: write e.g. 90s, 2m, 7d, 1h30m"))?;
        total = n
            .checked_mul(secs)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| "is too long".to_owned())?;
        digits.clear();
        parts += 1;
    }
    if !digits.is_empty() || parts == 0 {
        return Err("needs a unit (s, m, h, d, w): write e.g. 90s, 2m, 7d, 1h30m".into());
    }
    Ok(Duration::from_secs(total))
}

/// `3d4h`, `2m13s`, `45s`: the two largest units, for ages in a table.
pub fn span(d: chrono::Duration) -> String {
    let secs = d.num_seconds().unsigned_abs();
    let mut out = String::new();
    let mut rest = secs;
    let mut shown = 0;
    for &(unit, size) in &UNITS[1..] {
        let n = rest / size;
        if n > 0 || (shown > 0 && shown < 2) {
            if n > 0 {
                out.push_str(&format!("{n}{unit}"));
            }
            shown += 1;
            rest %= size;
        }
        if shown == 2 {
            break;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// `3m2s ago` for the past, `in 6d23h` for the future.
pub fn relative(d: chrono::Duration) -> String {
    if d < chrono::Duration::zero() {
        format!("in {}", span(d))
    } else {
        format!("{} ago", span(d))
    }
}

/// `2026-12-01 10:00:00Z`: UTC to the second, for tables.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// RFC 3339 in UTC with microseconds (PostgreSQL's precision), for JSON.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `1.2 MiB`.
pub fn bytes(n: u64) -> String {
    const STEPS: &[&str] = &["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for step in STEPS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = step;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        for bad in ["", "7", "d", "7x", "1h30", "-2m", "99999999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spans_show_the_two_largest_units() {
        let s = chrono::Duration::seconds;
        assert_eq!(span(s(0)), "0s");
        assert_eq!(span(s(45)), "45s");
        assert_eq!(span(s(133)), "2m13s");
        assert_eq!(span(s(3 * 86_400 + 4 * 3_600 + 59)), "3d4h");
        assert_eq!(span(s(86_400 + 30)), "1d");
        assert_eq!(span(s(3_600 + 5)), "1h");
        assert_eq!(relative(s(-60)), "in 1m");
        assert_eq!(relative(s(60)), "1m ago");
    }

    #[test]
    fn sizes_are_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
