//! A TCP proxy that a test can cut and restore, to play a network or server outage between
//! deskpool and PostgreSQL or vCenter (the "chaos proxy" of crates.io's tests).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Debug, Default)]
struct State {
    open: AtomicBool,
    /// Delay of every chunk, each way, in microseconds.
    latency_us: AtomicU64,
    conns: Mutex<Vec<AbortHandle>>,
}

/// Forwards `addr` to a target until cut.
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: AbortHandle,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        Self::start_with_latency(target, Duration::ZERO).await
    }

    /// Like [`Proxy::start`], but every chunk waits `latency` before it is passed on (each
    /// way), so one query round trip costs at least twice that: a slow or distant server.
    pub async fn start_with_latency(target: SocketAddr, latency: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy: bind");
        let addr = listener.local_addr().expect("proxy: local addr");
        let state = Arc::new(State::default());
        state.open.store(true, Ordering::SeqCst);
        state
            .latency_us
            .store(latency.as_micros() as u64, Ordering::SeqCst);
        let s = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !s.open.load(Ordering::SeqCst) {
                    drop(client); // refused: the connection closes at once
                    continue;
                }
                let state = Arc::clone(&s);
                let conn = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(
                        delayed_copy(cr, sw, Arc::clone(&state)),
                        delayed_copy(sr, cw, state)
                    );
                });
                s.conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            addr,
            state,
            accept,
        }
    }

    /// Breaks every open connection and refuses new ones.
    pub fn cut(&self) {
        self.state.open.store(false, Ordering::SeqCst);
        for c in self
            .state
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }

    /// Changes the delay of every chunk from now on, open connections included.
    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_us
            .store(latency.as_micros() as u64, Ordering::SeqCst);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding each chunk back for the proxy's current latency.
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let latency = state.latency_us.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
