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

/// Longest age a filter accepts: 100 years, as `--retention-days`. Any claim is younger, and
/// the database clock minus it is always a timestamp (a longer one was "timestamp out of
/// range" from the store, exit 1, instead of a usage error).
pub const MAX_AGE: Duration = Duration::from_secs(36_500 * 86_400);

/// [`parse_duration`], at most [`MAX_AGE`].
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let age = parse_duration(text)?;
    if age > MAX_AGE {
        return Err(format!(
            "is longer than {}d, older than any claim",
            MAX_AGE.as_secs() / 86_400
        ));
    }
    Ok(age)
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

/// Serialized JSON with what [`acts_on_terminal`] picks written as JSON escapes (`\u009b`):
/// serde_json escapes C0 controls itself but leaves DEL, C1 controls and the bidirectional
/// marks raw, which a terminal acts on as well. Those only occur inside strings, where a
/// `\uXXXX` escape means the same character, so the document's value is unchanged.
pub fn json_printable(json: &str) -> std::borrow::Cow<'_, str> {
    // All of them are in the Basic Multilingual Plane: one `\uXXXX` each.
    escape(json, acts_on_terminal_in_json, |c| {
        format!("\\u{:04x}", u32::from(c))
    })
}

/// `text` with each character `needs` picks replaced by `escaped(c)`; borrowed when none is.
fn escape(text: &str, needs: fn(char) -> bool, escaped: fn(char) -> String) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(needs) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs(c) {
            out.push_str(&escaped(c));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The layout's own newlines and indentation stay; serde_json has escaped the rest of C0.
fn acts_on_terminal_in_json(c: char) -> bool {
    c != '\n' && acts_on_terminal(c)
}

/// What a terminal acts on instead of printing: C0 controls (ESC, BEL, CR, and the newline
/// too: a value must not forge a line), DEL, C1 controls (CSI, OSC as one byte each), and the
/// bidirectional overrides and isolates that reorder what follows. Claims come from the
/// webhook's validated fields, but a row written past it (a bypassed webhook, a hand-made
/// row) can hold anything.
pub fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
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
    fn ages_are_bounded_to_what_a_timestamp_can_go_back() {
        assert_eq!(parse_age("36500d"), Ok(MAX_AGE));
        for bad in ["36501d", "1000000000000d", "5300w"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
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

    #[test]
    fn json_keeps_its_values_and_shows_no_terminal_controls() -> Result<(), serde_json::Error> {
        let json = serde_json::to_string_pretty(&serde_json::json!({"n": "a\u{1b}\u{9b}\u{7f}\u{202e}"}))?;
        let shown = json_printable(&json);
        assert!(
            !shown.chars().any(|c| c != '\n' && acts_on_terminal(c)),
            "{shown}"
        );
        let back: serde_json::Value = serde_json::from_str(&shown)?;
        assert_eq!(back["n"], "a\u{1b}\u{9b}\u{7f}\u{202e}");
        Ok(())
    }
}
