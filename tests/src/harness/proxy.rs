//! An in-process TCP proxy that injects network faults between a client and a server.
//!
//! Each accepted connection gets its own upstream connection and two pumps (one per direction),
//! all in one task per connection. The current [`ProxyMode`] lives in a watch channel that every
//! pump observes, so a mode change reaches live connections too, not only new ones.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

/// How the proxy treats traffic. Switch with [`FaultProxy::set_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// Forward bytes both ways as they come.
    #[default]
    Pass,
    /// Forward every chunk, in each direction, this long after it was read (pipelined: it adds
    /// delay, it does not cap throughput).
    Latency(Duration),
    /// A network partition. New connections are accepted, and what they send is read and
    /// discarded; they never reach the server and never get an answer, even after the mode
    /// changes. Live connections stall: bytes are held, not lost, and flow again when the mode
    /// leaves `Blackhole`, as when a partition heals.
    Blackhole,
    /// Nothing listens: new connections are refused (`ECONNREFUSED`, the listener is closed
    /// until the mode changes). Live connections keep flowing.
    Refuse,
}

/// Counters of a [`FaultProxy`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Connections accepted (in any mode).
    pub accepted: u64,
    /// Connections open right now.
    pub active: u64,
    /// Connections aborted by [`FaultProxy::reset_all`].
    pub resets: u64,
    /// Connections accepted in [`ProxyMode::Blackhole`] (swallowed).
    pub blackholed: u64,
    /// Connections closed because the upstream could not be reached.
    pub upstream_failures: u64,
}

#[derive(Debug, Clone, Copy)]
struct State {
    mode: ProxyMode,
    reset_generation: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    active: AtomicU64,
    resets: AtomicU64,
    blackholed: AtomicU64,
    upstream_failures: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    listen: SocketAddr,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    counters: Counters,
}

/// Stops the proxy when the last handle drops: aborting the accept task drops its `JoinSet`,
/// which aborts every connection task (closing their sockets).
#[derive(Debug)]
struct StopOnDrop(AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A fault-injecting TCP proxy on `127.0.0.1:<random port>` in front of an upstream address.
///
/// Cloning is cheap; every clone controls the same proxy, which stops when the last clone drops.
/// Must be started inside a tokio runtime.
///
/// ```no_run
/// # async fn demo(upstream: std::net::SocketAddr) {
/// use dbguard_tests::{FaultProxy, ProxyMode};
/// use std::time::Duration;
/// let proxy = FaultProxy::start(upstream).await.unwrap();
/// let url = proxy.rewrite_url("postgres://postgres@127.0.0.1:5432/postgres");
/// proxy.set_mode(ProxyMode::Latency(Duration::from_millis(200)));
/// proxy.set_mode(ProxyMode::Blackhole);
/// proxy.reset_all();
/// proxy.set_mode(ProxyMode::Pass);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FaultProxy {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

impl FaultProxy {
    /// Binds `127.0.0.1:0` and starts forwarding to `upstream` in [`ProxyMode::Pass`].
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let (state, _) = watch::channel(State { mode: ProxyMode::Pass, reset_generation: 0 });
        let shared =
            Arc::new(Shared { listen: listener.local_addr()?, upstream, state, counters: Counters::default() });
        let task = tokio::spawn(accept_loop(shared.clone(), listener));
        Ok(Self { shared, _stop: Arc::new(StopOnDrop(task.abort_handle())) })
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.shared.listen.port()
    }

    /// The upstream address.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// `url` with its host and port replaced by the proxy's (user, database and query kept).
    pub fn rewrite_url(&self, url: &str) -> String {
        super::names::with_host_port(url, &self.shared.listen.to_string())
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.state.borrow().mode
    }

    /// Switches the mode for new and live connections.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.shared.state.send_modify(|s| s.mode = mode);
    }

    /// Aborts every live connection now, on both sides, with a TCP RST (zero linger).
    /// New connections are not affected.
    pub fn reset_all(&self) {
        self.shared.state.send_modify(|s| s.reset_generation += 1);
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            active: c.active.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            blackholed: c.blackholed.load(Ordering::Relaxed),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut conns = JoinSet::new();
    let mut listener = Some(listener);
    let mut rx = shared.state.subscribe();
    loop {
        while conns.try_join_next().is_some() {}
        let mode = rx.borrow_and_update().mode;
        if mode == ProxyMode::Refuse {
            // Closing the listener makes the kernel answer SYNs with RST: a real refusal.
            listener = None;
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(shared.listen).await {
                Ok(l) => listener.insert(l),
                Err(e) => {
                    eprintln!("fault proxy: rebinding {} failed: {e}; retrying", shared.listen);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            accepted = l.accept() => match accepted {
                Ok((socket, _)) => {
                    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(connection(shared.clone(), socket, mode));
                }
                // E.g. EMFILE: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Counts a connection as active while it lives.
struct Active<'a>(&'a Counters);

impl<'a> Active<'a> {
    fn new(c: &'a Counters) -> Self {
        c.active.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves when `reset_all` is called after `generation` was observed.
async fn reset_requested(mut rx: watch::Receiver<State>, generation: u64) {
    loop {
        if rx.borrow_and_update().reset_generation != generation {
            return;
        }
        if rx.changed().await.is_err() {
            // The proxy is shutting down; its abort will end this task.
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves once the mode is not `Blackhole`.
async fn flowing(rx: &mut watch::Receiver<State>) -> io::Result<()> {
    loop {
        if rx.borrow_and_update().mode != ProxyMode::Blackhole {
            return Ok(());
        }
        rx.changed().await.map_err(|_| io::Error::other("fault proxy stopped"))?;
    }
}

async fn connection(shared: Arc<Shared>, mut client: TcpStream, mode: ProxyMode) {
    let counters = &shared.counters;
    let _active = Active::new(counters);
    let rx = shared.state.subscribe();
    let generation = rx.borrow().reset_generation;

    if mode == ProxyMode::Blackhole {
        counters.blackholed.fetch_add(1, Ordering::Relaxed);
        let swallow = async {
            let mut buf = [0u8; 4096];
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::select! {
            () = swallow => {}
            () = reset_requested(rx, generation) => {
                counters.resets.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_zero_linger();
            }
        }
        return;
    }

    let upstream = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(shared.upstream)).await {
        Ok(Ok(s)) => s,
        _ => {
            // Mirror an unreachable server as an abortive close.
            counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
            let _ = client.set_zero_linger();
            return;
        }
    };
    let mut upstream = upstream;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let abort = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let pumps = async { tokio::try_join!(pump(cr, uw, rx.clone()), pump(ur, cw, rx.clone())) };
        tokio::select! {
            result = pumps => result.is_err(),
            () = reset_requested(rx.clone(), generation) => {
                counters.resets.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    };
    if abort {
        // Zero linger turns the close into an RST, so both peers see a hard reset (an error
        // on one side is passed on to the other the same way).
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

/// Copies one direction: a reader stamps each chunk with its release time, a writer sends it
/// then; both hold still while the mode is `Blackhole`.
async fn pump(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, rx: watch::Receiver<State>) -> io::Result<()> {
    let (tx, mut chunks) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let mut read_rx = rx.clone();
    let reading = async move {
        loop {
            flowing(&mut read_rx).await?;
            let mut buf = vec![0u8; 16 * 1024];
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            buf.truncate(n);
            let delay = match read_rx.borrow().mode {
                ProxyMode::Latency(d) => d,
                _ => Duration::ZERO,
            };
            if tx.send((Instant::now() + delay, buf)).await.is_err() {
                return Ok(());
            }
        }
    };
    let mut write_rx = rx;
    let writing = async move {
        while let Some((release, buf)) = chunks.recv().await {
            tokio::time::sleep_until(release).await;
            flowing(&mut write_rx).await?;
            to.write_all(&buf).await?;
        }
        // The reader saw EOF: pass the half-close on.
        to.shutdown().await
    };
    tokio::try_join!(reading, writing).map(|_| ())
}
