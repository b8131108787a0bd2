//! The JSON log format (`--log-format json`): one object per line, written straight into the
//! line buffer.
//!
//! The lines look as tracing-subscriber's own JSON format made them (flattened event,
//! current span): `{"timestamp":…,"level":…,"message":…,<fields>,"span":{<fields>,"name":…}}`.
//! Why not that format: it keeps a span's fields as a JSON text and parses it back into a
//! map for every event, and builds each value through serde; at one decision event per
//! admission request that was a visible share of the webhook's CPU. Here a span's
//! fields are rendered once, as JSON members, when the span is created, and copied verbatim
//! into each event's line; an event's own fields are escaped as they are written.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format: one JSON object per line.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

/// A span's fields, as JSON object members (`"k":v,"k2":v2`), stored with the span.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonFields;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", event.metadata().level())?;
        let mut members = Members::new(&mut writer, false);
        event.record(&mut members);
        members.result?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() {
                if !fields.fields.is_empty() {
                    writer.write_str(&fields.fields)?;
                    writer.write_char(',')?;
                }
            }
            writer.write_str("\"name\":")?;
            write_string(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut members = Members::new(&mut writer, true);
        fields.record(&mut members);
        members.result
    }

    /// Fields recorded on a span later (`Span::record`) join the ones it has.
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut writer = current.as_writer();
        let mut members = Members::new(&mut writer, first);
        fields.record(&mut members);
        members.result
    }
}

/// Writes each field as a JSON member, `,` before each (unless it is the object's first).
struct Members<'a, 'w> {
    out: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl<'a, 'w> Members<'a, 'w> {
    fn new(out: &'a mut Writer<'w>, first: bool) -> Self {
        Self {
            out,
            first,
            result: Ok(()),
        }
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'w>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !self.first {
                self.out.write_char(',')?;
            }
            self.first = false;
            write_string(self.out, field.name())?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }
}

impl Visit for Members<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| write_string(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinities; serde_json writes them as null too.
        self.member(field, |out| {
            if value.is_finite() {
                write!(out, "{value}")
            } else {
                out.write_str("null")
            }
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Messages (`format_args!`) and `%value`/`?value` fields: their text, escaped as
        // it is written, without an intermediate String.
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaped(&mut *out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

fn write_string(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(&mut *out).write_str(s)?;
    out.write_char('"')
}

/// Writes through to `W` as the inside of a JSON string: `"` and `\` escaped, control
/// characters as `\n`, `\r`, `\t` or `\u00XX` (RFC 8259 §7), everything else as is.
struct Escaped<W>(W);

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        // Every byte to escape is ASCII, so a byte position is a char boundary: scanning bytes
        // avoids decoding each char of the (mostly plain) text.
        while let Some(at) = first_to_escape(rest.as_bytes()) {
            self.0.write_str(&rest[..at])?;
            let c = rest.as_bytes()[at];
            match c {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                other => write!(self.0, "\\u{other:04x}")?,
            }
            rest = &rest[at + 1..];
        }
        self.0.write_str(rest)
    }
}

thread_local! {
    /// The second this thread last wrote (none yet), and its text up to the seconds.
    static SECOND: RefCell<(Option<u64>, String)> = const { RefCell::new((None, String::new())) };
}

/// Now, as tracing-subscriber's `SystemTime` writes it (`2026-12-05T12:09:16.575013Z`: UTC,
/// microseconds), with the part up to the seconds formatted once a second per thread instead
/// of once a line (calendar arithmetic and six padded numbers were a tenth of a line's cost).
fn write_timestamp(out: &mut Writer<'_>) -> fmt::Result {
    let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
        return SystemTime.format_time(out);
    };
    let seconds = since_epoch.as_secs();
    // `try_with`: a line logged while this thread's locals are being torn down still gets a
    // timestamp, the slow way.
    let cached = SECOND.try_with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != Some(seconds) {
            second.0 = None;
            second.1.clear();
            let formatted = i64::try_from(seconds)
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .map(|t| write!(second.1, "{}", t.format("%Y-%m-%dT%H:%M:%S")));
            if !matches!(formatted, Some(Ok(()))) {
                return SystemTime.format_time(out);
            }
            second.0 = Some(seconds);
        }
        out.write_str(&second.1)?;
        write!(out, ".{:06}Z", since_epoch.subsec_micros())
    });
    cached.unwrap_or_else(|_| SystemTime.format_time(out))
}

/// Whether JSON needs `b` escaped in a string: `"`, `\` and the control characters below 0x20.
fn needs_escape(b: u8) -> bool {
    b < b' ' || b == b'"' || b == b'\\'
}

/// The position of the first byte of `bytes` that [`needs_escape`], looking at eight bytes at
/// a time: log text rarely has any, and a byte-by-byte scan was most of a decision line's
/// cost. A word is tested with the usual bit tricks (a byte below 0x20: `x - 0x20` borrows
/// into its high bit while `x`'s is clear; a byte equal to `c`: the same for `x ^ c` below 1);
/// a word that may hold one is then scanned byte by byte, so the tricks only have to be
/// right about words holding none.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x;
    let mut chunks = bytes.chunks_exact(8);
    let mut start = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        if (below(x, b' ') | below(quote, 1) | below(backslash, 1)) & HIGHS != 0 {
            if let Some(at) = chunk.iter().position(|&b| needs_escape(b)) {
                return Some(start + at);
            }
        }
        start += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| needs_escape(b))
        .map(|at| start + at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_sink::Sink;

    /// The cached timestamp reads as tracing-subscriber's own: same length, same text up to
    /// the seconds (taken again if a second boundary fell between the two), `.` and six
    /// digits and `Z` after.
    #[test]
    fn timestamps_read_as_tracing_subscribers_own() {
        for _ in 0..1000 {
            let (mut ours, mut theirs) = (String::new(), String::new());
            SystemTime.format_time(&mut Writer::new(&mut theirs)).unwrap();
            write_timestamp(&mut Writer::new(&mut ours)).unwrap();
            assert_eq!(ours.len(), theirs.len(), "{ours} vs {theirs}");
            let (ours_second, ours_micros) = ours.split_at(19);
            if ours_second != &theirs[..19] {
                continue;
            }
            assert!(
                ours_micros.len() == 8
                    && ours_micros.starts_with('.')
                    && ours_micros.ends_with('Z')
                    && ours_micros[1..7].bytes().all(|b| b.is_ascii_digit()),
                "{ours}"
            );
        }
        assert_eq!(
            chrono::DateTime::from_timestamp(1_796_472_556, 0)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string()),
            Some("2026-12-05T12:09:16".to_owned())
        );
    }

    /// Every byte value at every position of every length up to three words, alone and
    /// behind an earlier one, against a plain scan.
    #[test]
    fn the_word_scan_finds_what_a_byte_scan_finds() {
        let plain = |bytes: &[u8]| bytes.iter().position(|&b| needs_escape(b));
        for len in 0..24 {
            for at in 0..len {
                for b in 0..=u8::MAX {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    assert_eq!(first_to_escape(&bytes), plain(&bytes), "{bytes:?}");
                    bytes[len - 1] = b'"';
                    assert_eq!(first_to_escape(&bytes), plain(&bytes), "{bytes:?}");
                    bytes[0] = 0xff;
                    assert_eq!(first_to_escape(&bytes), plain(&bytes), "{bytes:?}");
                }
            }
        }
    }

    /// The lines `f` logs, each parsed as JSON (a line that is not JSON fails the test).
    fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let captured = Sink::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        captured
            .text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn an_event_is_one_object_with_its_fields_typed_and_its_span() {
        let lines = logged(|| {
            let span = tracing::info_span!("admission", uid = "u-1", dryRun = false);
            let _entered = span.enter();
            let latency_ms = 1.5;
            tracing::info!(
                deliveryId = "d-1",
                allowed = true,
                count = 3u64,
                offset = -2i64,
                latency_ms,
                run = %"agents/run-1",
                "delivery {} claimed",
                "d-1"
            );
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "delivery d-1 claimed");
        assert_eq!(line["deliveryId"], "d-1");
        assert_eq!(line["allowed"], true);
        assert_eq!(line["count"], 3);
        assert_eq!(line["offset"], -2);
        assert_eq!(line["latency_ms"], 1.5);
        assert_eq!(line["run"], "agents/run-1");
        assert_eq!(
            line["span"],
            serde_json::json!({"uid": "u-1", "dryRun": false, "name": "admission"})
        );
        let timestamp = line["timestamp"].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
            "{timestamp}"
        );
    }

    #[test]
    fn hostile_values_stay_inside_their_strings() {
        let nasty = "a\"b\\c\nd\re\tf\u{1}g\u{1b}[31mh\u{7f}\u{2028}i";
        let lines = logged(|| {
            let span = tracing::info_span!("admission", run = %nasty);
            let _entered = span.enter();
            tracing::warn!(field = nasty, debug = ?nasty, "message {nasty}");
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["field"], nasty);
        assert_eq!(line["debug"], format!("{nasty:?}"));
        assert_eq!(line["message"], format!("message {nasty}"));
        assert_eq!(line["span"]["run"], nasty);
    }

    #[test]
    fn outside_a_span_there_is_no_span_member_and_non_finite_numbers_are_null() {
        let lines = logged(|| {
            let nan = f64::NAN;
            tracing::info!(nan, "no span");
        });
        assert_eq!(lines.len(), 1);
        assert!(lines[0].get("span").is_none());
        assert!(lines[0]["nan"].is_null());
    }

    #[test]
    fn fields_recorded_on_a_span_later_join_its_others() {
        let lines = logged(|| {
            let span = tracing::info_span!("admission", uid = "u-1", decision = tracing::field::Empty);
            span.record("decision", "claimed");
            let _entered = span.enter();
            tracing::info!("decided");
        });
        assert_eq!(lines[0]["span"]["uid"], "u-1");
        assert_eq!(lines[0]["span"]["decision"], "claimed");
    }
}
