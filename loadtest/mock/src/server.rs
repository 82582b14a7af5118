//! Accepting connections and running a mock server.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;

use crate::config::MockConfig;
use crate::router;
use crate::state::Shared;

/// Listen backlog; deep enough for a benchmark's connection burst.
const BACKLOG: u32 = 1024;

/// Pause after a failed accept (e.g. out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Serves `cfg` on `listener` until the process ends. Failed accepts are
/// retried, so in practice this only returns by being dropped.
pub async fn serve(listener: TcpListener, cfg: MockConfig) -> io::Result<()> {
    let shared = Shared::new(cfg);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
            }
            Err(e) => {
                log::warn!("tollgate-mock: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Small SSE chunks must leave at once, not wait for Nagle.
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let service = service_fn(move |req| router::handle(req, Arc::clone(&shared)));
    // Connection errors (resets, aborted streams) are the client's business.
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Binds `addr` like `TcpListener::bind`, with a deep backlog. Needs a
/// tokio runtime context.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A mock server running on its own thread.
#[derive(Clone, Copy, Debug)]
pub struct MockHandle {
    addr: SocketAddr,
}

impl MockHandle {
    /// The bound address (with the real port when port 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds `addr` now and serves `cfg` on a new OS thread with its own
/// single-threaded tokio runtime, independent of the caller's runtime.
pub fn spawn(addr: SocketAddr, cfg: MockConfig) -> io::Result<MockHandle> {
    // The runtime is built, and on failure dropped, on the new thread: a
    // runtime must not be dropped inside the caller's async context.
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("tollgate-mock".to_owned())
        .spawn(move || match start_runtime(addr) {
            Ok((runtime, listener, bound)) => {
                let _ = ready_tx.send(Ok(bound));
                if let Err(e) = runtime.block_on(serve(listener, cfg)) {
                    log::error!("tollgate-mock on {bound} stopped: {e}");
                }
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })?;
    let addr = ready_rx
        .recv()
        .map_err(|_| io::Error::other("tollgate-mock thread exited before binding"))??;
    Ok(MockHandle { addr })
}

fn start_runtime(addr: SocketAddr) -> io::Result<(Runtime, TcpListener, SocketAddr)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _context = runtime.enter();
        bind(addr)?
    };
    let bound = listener.local_addr()?;
    Ok((runtime, listener, bound))
}

/// The same entry points as [`serve`] and [`spawn`], grouped on a type.
#[derive(Debug)]
pub struct MockServer;

impl MockServer {
    /// See [`serve`].
    pub async fn serve(listener: TcpListener, cfg: MockConfig) -> io::Result<()> {
        serve(listener, cfg).await
    }

    /// See [`spawn`].
    pub fn spawn(addr: SocketAddr, cfg: MockConfig) -> io::Result<MockHandle> {
        spawn(addr, cfg)
    }
}
