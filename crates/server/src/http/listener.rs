//! Client connections: at most `max` open at once, served by hyper with a header-read timeout.
//!
//! A connection is *idle* while no request of it is in flight: before its first request, while it
//! trickles a request header, and between keep-alive requests. When all slots are taken, a new
//! client takes the slot of the connection idle the longest, which is closed (gracefully: a
//! request that starts in that instant still gets its answer); the client waits (accepted, in
//! order) only while every open connection has a request in flight. An evicted connection still
//! trickling a header is dropped after [`EVICT_GRACE`]. So clients that connect and send nothing,
//! or too slowly, cannot keep others out nor pile up, and the header timeout closes them anyway.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tower::ServiceExt;

/// A client socket that, when hyper is done with it, is closed the way nginx's lingering close
/// does it: the server stops writing, then reads and discards what the client still sends for up
/// to [`LINGER`] before closing. A client that was still sending a body the server refused (413,
/// 408) then reads its answer instead of a connection reset.
struct Lingering(Option<TcpStream>);

/// How long an evicted connection (or any, when the server stops) may take to finish a request
/// header it has started before it is dropped.
const EVICT_GRACE: Duration = Duration::from_millis(250);

/// How long a closed connection keeps reading what its client still sends.
const LINGER: Duration = Duration::from_secs(2);

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut s) = self.0.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.shutdown().await;
            let mut buf = vec![0u8; 16 << 10];
            let _ =
                tokio::time::timeout(LINGER, async { while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {} }).await;
        });
    }
}

impl Lingering {
    fn io(self: Pin<&mut Self>) -> Pin<&mut TcpStream> {
        // The stream is only taken in Drop.
        Pin::new(self.get_mut().0.as_mut().expect("the stream is there until dropped"))
    }
}

impl AsyncRead for Lingering {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    // hyper shuts the write side when it closes; the reading goes on in Drop.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

/// One open connection's state.
pub struct Slot {
    /// Requests in flight: from the request's head until its response body is done or dropped.
    busy: AtomicUsize,
    /// When `busy` last fell to 0 (or the connection opened), in ms since the pool's start.
    idle_since_ms: AtomicU64,
    /// Told when the pool gives this connection's slot away.
    evict: Notify,
}

/// A request in flight on a connection; dropping it ends the request.
pub struct Busy {
    slot: Arc<Slot>,
    epoch: Instant,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.slot.idle_since_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
        self.slot.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The open connections.
pub struct Slots {
    max: usize,
    open: Mutex<Vec<Arc<Slot>>>,
    freed: Notify,
    epoch: Instant,
}

/// A connection's hold on its slot, given back when dropped.
pub struct Held {
    slots: Arc<Slots>,
    slot: Arc<Slot>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|s| !Arc::ptr_eq(s, &self.slot));
        drop(open);
        self.slots.freed.notify_waiters();
    }
}

impl Slots {
    /// Room for `max` connections (at least one).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Slots { max: max.max(1), open: Mutex::new(Vec::new()), freed: Notify::new(), epoch: Instant::now() })
    }

    /// A slot for a new connection: a free one, else the one of the connection idle the longest
    /// (told to close), else the first to be freed.
    pub async fn take(self: &Arc<Self>) -> Held {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a slot freed in between is not missed.
            freed.as_mut().enable();
            {
                let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
                if open.len() >= self.max {
                    let idle = open
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.busy.load(Ordering::SeqCst) == 0)
                        .min_by_key(|(_, s)| s.idle_since_ms.load(Ordering::SeqCst))
                        .map(|(i, _)| i);
                    if let Some(i) = idle {
                        open.swap_remove(i).evict.notify_one();
                    }
                }
                if open.len() < self.max {
                    let slot = Arc::new(Slot {
                        busy: AtomicUsize::new(0),
                        idle_since_ms: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
                        evict: Notify::new(),
                    });
                    open.push(slot.clone());
                    return Held { slots: self.clone(), slot };
                }
            }
            freed.await;
        }
    }

    /// Marks a request in flight on `held`'s connection until the returned guard is dropped.
    fn begin(&self, held: &Held) -> Busy {
        held.slot.busy.fetch_add(1, Ordering::SeqCst);
        Busy { slot: held.slot.clone(), epoch: self.epoch }
    }

    /// Requests in flight on all open connections.
    pub fn in_flight(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|s| s.busy.load(Ordering::SeqCst)).sum()
    }
}

/// Serves `app` on `listener`, each connection in one of `slots`, until `stop` turns true: then
/// no connection is accepted, open ones finish the request in flight and close, and this returns
/// once all have (or after `grace`). A client has `header_timeout` to send a request header, from
/// the connection's start and again after each answer (the keep-alive idle time).
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    slots: Arc<Slots>,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    // Every connection task holds a sender; all are gone when every connection has closed.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                eprintln!("turbine: accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let held = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            h = slots.take() => h,
        };
        let held = Arc::new(held);
        let svc = {
            let (app, held, slots) = (app.clone(), held.clone(), slots.clone());
            hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let busy = slots.begin(&held);
                let app = app.clone();
                async move {
                    let resp = app.oneshot(req.map(Body::new)).await?;
                    // The request stays in flight until its (maybe streamed) body is done.
                    Ok::<_, std::convert::Infallible>(resp.map(|b| {
                        Body::new(b.map_frame(move |f| {
                            let _ = &busy;
                            f
                        }))
                    }))
                }
            })
        };
        let conn = builder.serve_connection(TokioIo::new(Lingering(Some(stream))), svc);
        let (alive, mut stop) = (alive_tx.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::pin!(conn);
            // Evicted or the server stopping: finish the request in flight, then close.
            let close = async {
                tokio::select! {
                    _ = held.slot.evict.notified() => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = close => {
                    conn.as_mut().graceful_shutdown();
                    // hyper closes a connection waiting for its next request at once, but one
                    // half-way through a header (slowloris) only at the header timeout: with no
                    // request in flight after a moment, it is dropped instead.
                    loop {
                        tokio::select! {
                            _ = conn.as_mut() => break,
                            _ = tokio::time::sleep(EVICT_GRACE) => {
                                if held.slot.busy.load(Ordering::SeqCst) == 0 {
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            drop(held);
            drop(alive);
        });
    }
    drop(listener);
    drop(alive_tx);
    let _ = tokio::time::timeout(grace, alive_rx.recv()).await;
}

/// Waits until `f` holds, checking every 20 ms.
pub async fn until(mut f: impl FnMut() -> bool) {
    while !f() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
