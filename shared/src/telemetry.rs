//! Logging set-up shared by both binaries: `tracing` events to stdout, text or JSON.
//!
//! Log lines carry values from requests (names, ids, error texts), so no value may break a
//! line: the JSON format escapes control characters itself (`\n`, `\u001b`:
//! [`crate::json_log`]); the text format writes fields through [`escape_fields`], which
//! escapes them.

use std::fmt::{self, Write as _};

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{self, Writer};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Keeps the webhook's log writer thread alive; dropping it writes what is buffered.
pub type LogGuard = crate::log_writer::LogWriterGuard;

/// Installs the global subscriber, writing to stdout on the calling thread (the pruner: a
/// handful of lines, each of which must be out before the process exits).
/// `RUST_LOG` refines the level (default `info`). Calling it twice is harmless.
pub fn init(format: LogFormat) {
    install(format, std::io::stdout);
}

/// The same, but lines are gathered and written by a background thread
/// ([`crate::log_writer`]; the webhook: one event per admission request, so a write(2) or a
/// thread wake-up per request would cost more than the line). Nothing is dropped: when the
/// buffer is full, callers wait, as they would on stdout. Falls back to writing on the
/// calling thread if the writer thread cannot be started.
pub fn init_non_blocking(format: LogFormat) -> Option<LogGuard> {
    match crate::log_writer::LogWriter::spawn(std::io::stdout()) {
        Ok((writer, guard)) => {
            install(format, writer);
            Some(guard)
        }
        Err(e) => {
            init(format);
            tracing::warn!(error = %e, "could not start the log writer thread; logging on request threads");
            None
        }
    }
}

fn install<W>(format: LogFormat, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: in a pod's log, a CronJob's log or a pipe they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match format {
        // Every field and the message through `escape_fields`: a value cannot start a line.
        LogFormat::Text => builder.fmt_fields(escape_fields()).try_init(),
        // The request's span once (uid, operation, run, dryRun), not again in a span list:
        // the lines tracing-subscriber's flattened JSON made, written directly (json_log.rs).
        LogFormat::Json => builder
            .fmt_fields(crate::json_log::JsonFields)
            .event_format(crate::json_log::JsonLines)
            .try_init(),
    };
}

/// The text format's fields, `message` first as is and then `name=value`, each written
/// through [`Escaping`]. Debug-formatted strings come out quoted and escaped already;
/// Display values (`%value`) and messages built with `format!` are escaped here.
pub fn escape_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    format::debug_fn(
        |writer: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn fmt::Debug| {
            let mut out = Escaping(writer);
            if field.name() == "message" {
                write!(out, "{value:?}")
            } else {
                write!(out, "{field}={value:?}")
            }
        },
    )
    .delimited(" ")
}

/// Writes through to `W`, replacing line breaks and other control characters (C0, DEL, C1
/// — which includes ESC, so no ANSI sequence either — and the Unicode line and paragraph
/// separators) with visible escapes: `\n`, `\r`, `\t`, `\u{1b}`.
pub struct Escaping<W>(pub W);

impl<W: fmt::Write> fmt::Write for Escaping<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(needs_escape) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                other => write!(self.0, "\\u{{{:x}}}", other as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        let _ = Escaping(&mut out).write_str(s);
        out
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escaped("plain text é"), "plain text é");
        assert_eq!(escaped("a\nb\r\nc\td"), "a\\nb\\r\\nc\\td");
        assert_eq!(escaped("\u{1b}[31mred\u{1b}[0m"), "\\u{1b}[31mred\\u{1b}[0m");
        assert_eq!(
            escaped("nul\0 del\u{7f} nel\u{85} ls\u{2028}"),
            "nul\\u{0} del\\u{7f} nel\\u{85} ls\\u{2028}"
        );
    }

    #[test]
    fn an_event_renders_on_one_line() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::fmt::MakeWriter;

        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| std::io::ErrorKind::Other)?
                    .extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Buffer {
            type Writer = Buffer;
            fn make_writer(&'a self) -> Self::Writer {
                self.clone()
            }
        }
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(buffer.clone())
            .fmt_fields(escape_fields())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("admission", run = %"ns/x\nINFO forged");
            let _enter = span.enter();
            let name = "a\r\nb\u{1b}[2J";
            tracing::info!(deliveryId = name, shown = %name, "decided {name}");
        });
        let text =
            String::from_utf8(buffer.0.lock().map(|b| b.clone()).unwrap_or_default()).unwrap_or_default();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'), "{text}");
        assert!(text.contains("run=ns/x\\nINFO forged"), "{text}");
        assert!(text.contains("decided a\\r\\nb\\u{1b}[2J"), "{text}");
        assert!(text.contains("shown=a\\r\\nb\\u{1b}[2J"), "{text}");
        assert!(text.contains(r#"deliveryId="a\r\nb\u{1b}[2J""#), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }
}
