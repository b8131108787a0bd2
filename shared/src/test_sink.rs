//! A writer the unit tests can read back (the log writer's and the JSON format's tests).

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Collects what is written; clones share it. `delay` makes each write slow.
#[derive(Clone, Default)]
pub(crate) struct Sink {
    pub(crate) bytes: Arc<Mutex<Vec<u8>>>,
    pub(crate) writes: Arc<Mutex<usize>>,
    pub(crate) delay: Duration,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        std::thread::sleep(self.delay);
        *self.writes.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink {
    /// Everything written so far, as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}
