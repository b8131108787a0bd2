//! SIGTERM/SIGINT: recorded, never acted on mid-batch. The loop checks between batches
//! and cuts pauses and retry waits short.

use tokio::sync::watch;

/// Whether (and by which signal) a shutdown was requested.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Option<&'static str>>,
}

impl Shutdown {
    /// Listens for SIGTERM and SIGINT from now on (the default action, dying mid-batch, is
    /// replaced as soon as this returns). Must be called inside the runtime.
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
                "shutdown requested: finishing the batch in flight, then stopping"
            );
            let _ = tx.send(Some(name));
            // Keep the handlers installed: later signals are absorbed, the batch in flight
            // still commits (it is bounded by the batch timeout).
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
        });
        Ok(Self { rx })
    }

    /// A shutdown handle driven by hand (tests).
    #[cfg(test)]
    pub fn manual() -> (watch::Sender<Option<&'static str>>, Self) {
        let (tx, rx) = watch::channel(None);
        (tx, Self { rx })
    }

    /// The signal received, if any.
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
