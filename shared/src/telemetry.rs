//! Logging set-up shared by both binaries: `tracing` events to stdout, text or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Keeps the webhook's log writer thread alive; dropping it flushes what is buffered.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// Installs the global subscriber, writing to stdout on the calling thread (the pruner: a
/// handful of lines, each of which must be out before the process exits).
/// `RUST_LOG` refines the level (default `info`). Calling it twice is harmless.
pub fn init(format: LogFormat) {
    install(format, std::io::stdout);
}

/// The same, but lines are written by a background thread (the webhook: one event per
/// admission request, so a slow log pipe must not stall request threads, and a write(2) per
/// request costs more than handing a line over). Nothing is dropped: when the buffer is
/// full, callers wait, as they would on stdout.
pub fn init_non_blocking(format: LogFormat) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::stdout());
    install(format, writer);
    LogGuard(guard)
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
        LogFormat::Text => builder.try_init(),
        // The request's span once (uid, operation, run, dryRun), not again in a span list.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
