//! The edge: the accept loop and per-connection serving for one listener (HTTP/1.1 and h2c), with
//! the defences `axum::serve` lacks: a slow-header deadline, an idle timeout, a connection cap,
//! `TCP_NODELAY`, and a bounded graceful shutdown.
//!
//! The header deadline is ours, not hyper's `http1().header_read_timeout`: since hyper 1.6 that
//! timer also runs while a keep-alive connection waits for its next request, so it would cap
//! keep-alive idle at the header timeout (10 s by default) and make `idle_timeout_ms` (75 s)
//! dead for HTTP/1. A backend that closes idle connections sooner than the load balancer in
//! front of it (60 s on the common ones) races it and turns reuses into 502s. Here the deadline
//! starts at the first byte of a request head and stops when hyper hands the request over; the
//! idle timeout alone covers the quiet time between requests (and a client that sends nothing).
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::config::ServerConfig;
use crate::telemetry::metrics as m;

/// Edge limits of one listener.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// `data` or `admin`: the label of logs and the connections gauge.
    pub name: &'static str,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl EdgeConfig {
    pub fn new(name: &'static str, c: &ServerConfig) -> Self {
        Self {
            name,
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms.max(1)),
            max_connections: c.max_connections.clamp(1, u32::MAX as usize >> 3),
            shutdown_grace: Duration::from_millis(c.shutdown_grace_ms),
        }
    }

    /// How often each connection looks at its clocks: a quarter of the shorter timeout keeps the
    /// overshoot small without a timer wake-up per byte.
    fn check_every(&self) -> Duration {
        (self.header_read_timeout.min(self.idle_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, asks every
/// connection to finish (in-flight requests and streams continue), and returns once they have
/// or `shutdown_grace` has passed, whichever is first. Connections left then are dropped.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cfg: EdgeConfig,
    shutdown: impl Future<Output = ()> + Send,
) {
    let cfg = Arc::new(cfg);
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let (closing_tx, closing_rx) = watch::channel(false);
    let (kill_tx, kill_rx) = watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);

    tokio::pin!(shutdown);
    let headroom = (cfg.max_connections / 10).max(1);
    let mut saturated = false;
    let mut backoff = Duration::from_millis(10);
    'accept: loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                let open = cfg.max_connections - slots.available_permits();
                if saturated && open + headroom <= cfg.max_connections {
                    saturated = false;
                    tracing::info!(
                        listener = cfg.name,
                        open,
                        "open connections are below the cap again"
                    );
                }
                p
            }
            Err(_) => {
                if !saturated {
                    saturated = true;
                    tracing::warn!(
                        listener = cfg.name,
                        max_connections = cfg.max_connections,
                        "connection cap reached; new connections wait in the accept queue \
                         (server.max_connections)"
                    );
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => p.expect("the slot semaphore is never closed"),
                    _ = &mut shutdown => break 'accept,
                }
            }
        };
        let (stream, peer) = loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok(v) => { backoff = Duration::from_millis(10); break v }
                    // The peer gave up before we accepted: nothing wrong with us.
                    Err(e) if is_peer_error(&e) => continue,
                    Err(e) => {
                        // EMFILE/ENFILE/ENOMEM: accepting again at once would spin on the same
                        // error; a pause lets connections close and free descriptors.
                        tracing::warn!(listener = cfg.name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = &mut shutdown => break 'accept,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                },
                _ = &mut shutdown => break 'accept,
            }
        };
        // Streamed answers are many small writes; with Nagle on, each waits for the client's
        // delayed ACK (~40 ms) whenever an earlier segment is still unacknowledged.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let conn = Conn {
            cfg: cfg.clone(),
            router: router.clone(),
            builder: builder.clone(),
            closing: closing_rx.clone(),
            kill: kill_rx.clone(),
        };
        tokio::spawn(async move {
            let _permit = permit;
            let gauge = metrics::gauge!(m::CONNECTIONS_OPEN, "listener" => conn.cfg.name);
            gauge.increment(1.0);
            conn.run(stream, peer).await;
            gauge.decrement(1.0);
        });
    }
    drop(listener);

    // Every live connection holds a slot: all slots back means all connections are done.
    let all = cfg.max_connections as u32;
    let open = cfg.max_connections - slots.available_permits();
    tracing::info!(
        listener = cfg.name,
        open,
        "stopped accepting; draining connections"
    );
    let _ = closing_tx.send(true);
    if tokio::time::timeout(cfg.shutdown_grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        let left = cfg.max_connections - slots.available_permits();
        tracing::warn!(
            listener = cfg.name,
            left,
            "shutdown grace period over; dropping the connections left"
        );
        let _ = kill_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), slots.acquire_many(all)).await;
    }
}

fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

struct Conn {
    cfg: Arc<EdgeConfig>,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    closing: watch::Receiver<bool>,
    kill: watch::Receiver<bool>,
}

impl Conn {
    async fn run(self, stream: TcpStream, peer: SocketAddr) {
        let activity = Arc::new(Activity::default());
        activity.last.store(now_ms(), Ordering::Relaxed);
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let router = self.router.clone();
        let act = activity.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let guard = act.begin_request(req.version());
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                let resp = router
                    .oneshot(req.map(axum::body::Body::new))
                    .await
                    .unwrap_or_else(|never| match never {});
                Ok::<_, Infallible>(resp.map(|inner| TrackedBody {
                    inner,
                    _guard: guard,
                }))
            }
        });
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let mut closing = self.closing;
        let mut kill = self.kill;
        let mut draining = false;
        let mut tick = tokio::time::interval(self.cfg.check_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                    return;
                }
                _ = closing.wait_for(|c| *c), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = kill.wait_for(|k| *k) => return,
                _ = tick.tick() => match activity.verdict(now_ms(), &self.cfg) {
                    Verdict::Fine => {}
                    Verdict::SlowHead => {
                        tracing::debug!(%peer, "request head not received in time; closing");
                        return;
                    }
                    Verdict::Idle if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    // Asked to close and still silent an idle period later: not coming back.
                    Verdict::Idle => {
                        if activity.idle_for(now_ms()) >= 2 * self.cfg.idle_timeout.as_millis() as u64 {
                            return;
                        }
                    }
                },
            }
        }
    }
}

/// Milliseconds since the first call, plus one so that 0 can mean "not set".
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What one connection did last, stamped from the IO and the service, read by its watchdog.
#[derive(Default)]
struct Activity {
    /// Last time bytes moved either way.
    last: AtomicU64,
    /// When the first byte of a request head arrived (0: not waiting for one).
    head_since: AtomicU64,
    /// Requests handed to the router whose response body has not been sent or dropped yet.
    in_flight: AtomicUsize,
    /// HTTP/2 carries frames between requests (pings, settings): no head deadline there.
    h2: AtomicBool,
}

enum Verdict {
    Fine,
    SlowHead,
    Idle,
}

impl Activity {
    fn on_read(&self) {
        let now = now_ms();
        self.last.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 && !self.h2.load(Ordering::Relaxed) {
            let _ = self
                .head_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn begin_request(self: &Arc<Self>, version: hyper::Version) -> InFlight {
        if version == hyper::Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn idle_for(&self, now: u64) -> u64 {
        now.saturating_sub(self.last.load(Ordering::Relaxed))
    }

    fn verdict(&self, now: u64, cfg: &EdgeConfig) -> Verdict {
        // A request in flight is the router's business (upstream timeouts, body limits): a
        // reasoning model may think for minutes before its first byte.
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Verdict::Fine;
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 && now.saturating_sub(head) >= cfg.header_read_timeout.as_millis() as u64 {
            return Verdict::SlowHead;
        }
        if self.idle_for(now) >= cfg.idle_timeout.as_millis() as u64 {
            return Verdict::Idle;
        }
        Verdict::Fine
    }
}

/// Held from the request's arrival until its response body is finished or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last.store(now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight until hyper is done with it.
struct TrackedBody {
    inner: axum::body::Body,
    _guard: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, stamping `Activity` whenever bytes move.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.last.store(now_ms(), Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.last.store(now_ms(), Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
