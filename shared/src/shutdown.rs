//! SIGTERM/SIGINT for both binaries: recorded when it arrives, acted on where the caller
//! checks or waits (the webhook stops accepting and drains; the pruner finishes the batch
//! in flight). Also cuts retry waits short ([`crate::retry`]).

use tokio::sync::watch;

/// Whether (and by which signal) a shutdown was requested. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Option<&'static str>>,
}

impl Shutdown {
    /// Listens for SIGTERM and SIGINT from now on: the default action (dying on the spot) is
    /// replaced as soon as this returns, so call it before announcing readiness. Must be
    /// called inside a tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(
                signal = name,
                "shutdown requested: finishing the work in flight, then stopping"
            );
            let _ = tx.send(Some(name));
            // Keep the handlers installed: later signals are absorbed while the work in
            // flight finishes (each piece of it is bounded by its own timeout).
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
        });
        Ok(Self { rx })
    }

    /// A shutdown driven by hand: send `Some(reason)` to request it (tests, embedding).
    pub fn manual() -> (watch::Sender<Option<&'static str>>, Self) {
        let (tx, rx) = watch::channel(None);
        (tx, Self { rx })
    }

    /// The signal (or reason) received, if any.
    pub fn requested(&self) -> Option<&'static str> {
        *self.rx.borrow()
    }

    /// Resolves once a shutdown is requested (never, if the sender is gone without one).
    pub async fn wait(&mut self) {
        if self.rx.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
