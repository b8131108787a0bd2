//! The webhook's log writer: request threads append whole lines to one buffer, and a
//! background thread writes what has gathered, one `write(2)` per [`FLUSH_INTERVAL`] at most.
//!
//! Why not a channel with a line per message (tracing-appender's `non_blocking`, used
//! before): at thousands of decisions a second every line woke the writer thread, and the
//! wake-up (a futex on each side, a context switch), the write and the writer's own polling
//! were a large share of the webhook's CPU per request. Here the writer
//! is woken once when the buffer stops being empty and then lets lines gather, so under load
//! it wakes ~1/[`FLUSH_INTERVAL`] times a second, whatever the request rate.
//!
//! Nothing is dropped: past [`MAX_BUFFERED_BYTES`] a line waits for the writer (as it would
//! on a full stdout pipe). Each line goes in with one `write` call (tracing's formatter
//! writes an event with one `write_all`), so lines from different threads never interleave.
//! Dropping the [`LogWriterGuard`] writes what is left and stops the thread. A line reaches
//! stdout at most [`FLUSH_INTERVAL`] after it was logged; a `kill -9` loses at most that
//! much, as it lost the channel's queue before.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest a line waits in the buffer before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Buffered bytes that wake the writer before [`FLUSH_INTERVAL`] is up.
pub const EARLY_FLUSH_BYTES: usize = 64 * 1024;
/// Buffered bytes past which a new line waits for the writer: ~2,000 decision lines,
/// the memory the buffer may hold (twice, while one copy is being written).
pub const MAX_BUFFERED_BYTES: usize = 1024 * 1024;

struct Shared {
    state: Mutex<State>,
    /// Writer: lines arrived (buffer no longer empty, or past [`EARLY_FLUSH_BYTES`]), or closing.
    arrived: Condvar,
    /// Appenders waiting for room: the writer took the buffer.
    taken: Condvar,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing that can panic runs under the lock; the buffer is valid at every step.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Appends lines for the writer thread; cheap to clone (`MakeWriter` hands one out per event).
#[derive(Clone)]
pub struct LogWriter(Arc<Shared>);

/// Stops the writer thread when dropped, after writing everything buffered.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogWriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Starts the writer thread (named `log-writer`) writing to `sink`.
    pub fn spawn<W: Write + Send + 'static>(sink: W) -> io::Result<(LogWriter, LogWriterGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            arrived: Condvar::new(),
            taken: Condvar::new(),
        });
        let thread = std::thread::Builder::new().name("log-writer".into()).spawn({
            let shared = shared.clone();
            move || write_loop(&shared, sink)
        })?;
        Ok((
            LogWriter(shared.clone()),
            LogWriterGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.0;
        let mut state = shared.lock();
        while state.buffer.len() >= MAX_BUFFERED_BYTES && !state.closing {
            state = shared.taken.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        let before = state.buffer.len();
        state.buffer.extend_from_slice(line);
        let after = state.buffer.len();
        drop(state);
        // Only the changes the writer acts on: something to write, or a lot of it.
        if before == 0 || (before < EARLY_FLUSH_BYTES && after >= EARLY_FLUSH_BYTES) {
            shared.arrived.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Lines are written within FLUSH_INTERVAL; the guard's drop writes the rest.
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.arrived.notify_one();
        self.shared.taken.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop<W: Write>(shared: &Shared, mut sink: W) {
    // Swapped with the buffer each round, so both keep their capacity.
    let mut spare: Vec<u8> = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.buffer.is_empty() && !state.closing {
            state = shared.arrived.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        if state.buffer.is_empty() && state.closing {
            return;
        }
        // Let lines gather for one interval, unless many are waiting or the process is closing.
        if state.buffer.len() < EARLY_FLUSH_BYTES && !state.closing {
            state = shared
                .arrived
                .wait_timeout(state, FLUSH_INTERVAL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut state.buffer, &mut spare);
        drop(state);
        shared.taken.notify_all();
        // A failed write (stdout closed) loses these lines but must not stop the process
        // or block its requests: the next round writes the next lines.
        let _ = sink.write_all(&spare).and_then(|()| sink.flush());
        spare.clear();
        // Do not keep a burst's worth of memory for ever.
        spare.shrink_to(EARLY_FLUSH_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_sink::Sink;
    use std::time::Instant;

    fn write_lines(writer: &LogWriter, thread: usize, lines: usize) {
        let mut w = writer.clone();
        for i in 0..lines {
            // One write per line, as tracing's formatter does.
            let line = format!("thread {thread} line {i} {}\n", "x".repeat(i % 300));
            assert_eq!(w.write(line.as_bytes()).ok(), Some(line.len()));
        }
    }

    /// Every line from every thread comes out whole, each thread's in its order.
    fn assert_all_lines(text: &str, threads: usize, lines: usize) {
        let mut next = vec![0usize; threads];
        for line in text.lines() {
            let mut parts = line.split(' ');
            let (Some("thread"), Some(t), Some("line"), Some(i)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                panic!("a broken line: {line:?}");
            };
            let (t, i): (usize, usize) = match (t.parse(), i.parse()) {
                (Ok(t), Ok(i)) => (t, i),
                _ => panic!("a broken line: {line:?}"),
            };
            assert_eq!(i, next[t], "thread {t} out of order");
            assert_eq!(parts.next().map(str::len), Some(i % 300), "line cut: {line:?}");
            next[t] += 1;
        }
        assert_eq!(next, vec![lines; threads], "lines missing");
    }

    #[test]
    fn lines_from_many_threads_all_come_out_whole_and_in_order_and_the_guard_flushes() {
        let sink = Sink::default();
        let Ok((writer, guard)) = LogWriter::spawn(sink.clone()) else {
            panic!("spawn");
        };
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || write_lines(&writer, t, 5_000))
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        drop(guard);
        assert_all_lines(&sink.text(), 8, 5_000);
        // 40,000 lines in far fewer writes: they were gathered, not written one by one.
        let writes = *sink.writes.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(writes < 4_000, "{writes} writes for 40,000 lines");
    }

    #[test]
    fn a_slow_sink_holds_writers_back_instead_of_losing_lines() {
        let sink = Sink {
            delay: Duration::from_millis(20),
            ..Sink::default()
        };
        let Ok((writer, guard)) = LogWriter::spawn(sink.clone()) else {
            panic!("spawn");
        };
        // Four times the buffer's bound, through a sink that takes 20 ms a write.
        let lines = 4 * MAX_BUFFERED_BYTES / 150;
        write_lines(&writer, 0, lines);
        drop(guard);
        assert_all_lines(&sink.text(), 1, lines);
    }

    #[test]
    fn a_lone_line_is_written_within_the_flush_interval() {
        let sink = Sink::default();
        let Ok((mut writer, _guard)) = LogWriter::spawn(sink.clone()) else {
            panic!("spawn");
        };
        let started = Instant::now();
        assert!(writer.write(b"one\n").is_ok());
        while sink.text().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(5), "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.text(), "one\n");
    }
}
