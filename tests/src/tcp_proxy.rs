//! A loopback TCP proxy standing in for a Kubernetes Service in front of PostgreSQL (e.g.
//! CloudNativePG's `-rw` Service): clients connect to one address, the proxy relays each
//! connection to the current target.
//!
//! A lost node behind a Service sends no FIN and no RST: open connections just go silent,
//! and new ones get no answer until the Service's endpoints move. The proxy plays that:
//! - [`TcpProxy::black_hole_existing`]: every open connection stops relaying in both
//!   directions but stays open (the client's writes are accepted by the local kernel and go
//!   nowhere, nothing ever comes back);
//! - [`TcpProxy::set_target`]`(None)`: new connections are accepted and black-holed too (on a
//!   real network they would hang in SYN; here the connect succeeds and then nothing answers:
//!   for PostgreSQL's start-up exchange the effect is the same);
//! - [`TcpProxy::set_target`]`(Some(addr))`: new connections go to `addr` (the endpoints
//!   moved), open ones keep their old target.
//!
//! Since the proxy's own kernel acknowledges everything, TCP keepalives and the TCP user
//! timeout cannot notice a black-holed connection here: what recovers the client in these
//! tests is the store's own hygiene (a timed-out call discards its connection).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Shared {
    target: Mutex<Option<SocketAddr>>,
    /// Bumped by `black_hole_existing`: a connection accepted under an older value stops
    /// relaying.
    black_holes: watch::Sender<u64>,
}

/// A running proxy; stops (closing every connection) on drop.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping it ends the accept loop and every connection task.
    _stop: watch::Sender<bool>,
}

impl TcpProxy {
    /// Listens on a free loopback port and relays to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let (black_holes, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            target: Mutex::new(Some(target)),
            black_holes,
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        Ok(Self {
            addr,
            shared,
            _stop: stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// New connections go to `target`; `None` black-holes them.
    pub fn set_target(&self, target: Option<SocketAddr>) {
        if let Ok(mut t) = self.shared.target.lock() {
            *t = target;
        }
    }

    /// Every connection open now stops relaying and stays open.
    pub fn black_hole_existing(&self) {
        self.shared.black_holes.send_modify(|n| *n += 1);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        let Ok((client, _)) = accepted else { continue };
        let target = shared.target.lock().ok().and_then(|t| *t);
        let generation = *shared.black_holes.borrow();
        let holes = shared.black_holes.subscribe();
        tokio::spawn(relay(client, target, generation, holes, stopped.clone()));
    }
}

/// Relays one connection until either side closes, or parks it (open, silent) once it is
/// black-holed, until the proxy stops.
async fn relay(
    mut client: TcpStream,
    target: Option<SocketAddr>,
    generation: u64,
    mut holes: watch::Receiver<u64>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut server = match target {
        Some(target) => match TcpStream::connect(target).await {
            Ok(server) => Some(server),
            // The target refuses (a stopped server): so does the "Service".
            Err(_) => return,
        },
        None => None,
    };
    if let Some(server) = server.as_mut() {
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, server) => return,
            _ = holes.wait_for(|n| *n > generation) => {}
            _ = stopped.changed() => return,
        }
    }
    // Black-holed: keep both sockets open and relay nothing.
    let _ = stopped.changed().await;
    drop(server);
    drop(client);
}
