//! One core: a pinned thread running its own runtime (tokio-uring, or plain tokio for the
//! `threads` engine), serving the connections the acceptor hands it.
//!
//! Connections arrive as `std::net::TcpStream` over a bounded channel (tokio-uring values
//! are !Send, so only plain data crosses cores). Each is served by hyper's HTTP/1.1
//! connection on tokio's reactor; file I/O goes through the core's [`CoreIo`].
//! At shutdown the core stops taking connections, asks each to finish its current request
//! (graceful shutdown), and waits for them up to the shutdown timeout.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, watch};

use super::parse_errors::{JsonParseErrors, ResponsesInFlight};
use super::{EngineChoice, Shared, router};
use crate::ingest::IngestContext;
use crate::store::io::CoreIo;

/// Which API a connection speaks (which listener accepted it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    /// The native HTTP API and the web page.
    Native,
    /// The S3-compatible API (`crate::s3`).
    S3,
}

thread_local! {
    /// This core's context, for request handlers that cannot carry it (s3s's `Send`
    /// futures): they run on the core and spawn their file work here.
    static CORE_CONTEXT: std::cell::RefCell<Option<Rc<IngestContext>>> =
        const { std::cell::RefCell::new(None) };
}

/// The context of the core this thread runs; `None` off the cores.
pub fn context() -> Option<Rc<IngestContext>> {
    CORE_CONTEXT.with(|c| c.borrow().clone())
}

/// A connection handed to a core, with the permit that counts it against the limit.
pub struct Handoff {
    pub front: Front,
    pub stream: std::net::TcpStream,
    /// The client's address as accepted (IPv4-mapped addresses made IPv4), for the log.
    pub peer: std::net::SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

/// Starts the core thread; `ready` reports whether its runtime and io engine came up.
pub fn spawn_core(
    core_id: usize,
    shared: Arc<Shared>,
    engine: EngineChoice,
    connections: mpsc::Receiver<Handoff>,
    shutdown: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("rhinobox-core-{core_id}"))
        .spawn(move || {
            if let Some(ids) = core_affinity::get_core_ids()
                && !ids.is_empty()
            {
                core_affinity::set_for_current(ids[core_id % ids.len()]);
            }
            match engine {
                EngineChoice::Uring => {
                    let runtime = match tokio_uring::Runtime::new(&tokio_uring::builder()) {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ =
                                ready.send(Err(format!("core {core_id}: io_uring runtime: {e}")));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let limits = shared.config.limits.clone();
                        match register_buffers(&limits).await {
                            Ok(io) => {
                                run_core(core_id, shared, io, connections, shutdown, ready).await
                            }
                            Err(e) => {
                                let _ = ready.send(Err(format!(
                                    "core {core_id}: registering {} KiB of io buffers failed: {e}",
                                    crate::store::io::memlock::pool_bytes(&limits) / 1024
                                )));
                            }
                        }
                    });
                }
                EngineChoice::Threads => {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = ready.send(Err(format!("core {core_id}: runtime: {e}")));
                            return;
                        }
                    };
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, async move {
                        let limits = shared.config.limits.clone();
                        match CoreIo::threads(&limits) {
                            Ok(io) => {
                                run_core(core_id, shared, io, connections, shutdown, ready).await
                            }
                            Err(e) => {
                                let _ = ready.send(Err(format!("core {core_id}: io threads: {e}")));
                            }
                        }
                    });
                }
            }
        })
}

/// Registration attempts of a core's io buffers before it reports failure.
const REGISTER_ATTEMPTS_MAX: u32 = 5;

/// Registers the core's buffers, retrying a refusal for lack of locked memory a few times:
/// locked memory is counted per user, and the rings of a process of the same user that
/// just exited (a restart) are released asynchronously, some milliseconds later.
async fn register_buffers(limits: &crate::config::Limits) -> std::io::Result<CoreIo> {
    let mut attempt = 1;
    loop {
        match CoreIo::uring(limits) {
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && attempt < REGISTER_ATTEMPTS_MAX => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Live connections of this core, and a wake-up when the last one ends.
struct ConnectionTracker {
    live: Cell<usize>,
    drained: Notify,
}

/// One live connection: counted in the per-core figures and the drain tracker, holding
/// its connection permit. Everything is released on drop, also when the task serving the
/// connection unwinds from a panic.
struct LiveConnection {
    core_id: usize,
    shared: Arc<Shared>,
    tracker: Rc<ConnectionTracker>,
    _permit: OwnedSemaphorePermit,
}

impl LiveConnection {
    fn new(
        core_id: usize,
        shared: Arc<Shared>,
        tracker: Rc<ConnectionTracker>,
        permit: OwnedSemaphorePermit,
    ) -> LiveConnection {
        tracker.live.set(tracker.live.get() + 1);
        shared.cores[core_id]
            .connections
            .fetch_add(1, Ordering::Relaxed);
        LiveConnection {
            core_id,
            shared,
            tracker,
            _permit: permit,
        }
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.shared.cores[self.core_id]
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        self.tracker.live.set(self.tracker.live.get() - 1);
        if self.tracker.live.get() == 0 {
            self.tracker.drained.notify_waiters();
        }
    }
}

async fn run_core(
    core_id: usize,
    shared: Arc<Shared>,
    io: CoreIo,
    mut connections: mpsc::Receiver<Handoff>,
    mut shutdown: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let ctx = Rc::new(IngestContext::new(
        core_id,
        shared.store.clone(),
        io,
        Arc::new(shared.config.limits.clone()),
        shared.job_slots.clone(),
        shared.cores[core_id].counters.clone(),
        shared.reaper.clone(),
    ));
    CORE_CONTEXT.with(|c| *c.borrow_mut() = Some(ctx.clone()));
    let s3_service = shared
        .config
        .s3
        .as_ref()
        .map(|s3| crate::s3::service(shared.clone(), s3));
    let tracker = Rc::new(ConnectionTracker {
        live: Cell::new(0),
        drained: Notify::new(),
    });
    let _ = ready.send(Ok(()));
    loop {
        tokio::select! {
            handoff = connections.recv() => {
                let Some(Handoff { front, stream, peer, permit }) = handoff else { break };
                shared.cores[core_id].queue_len.fetch_sub(1, Ordering::Relaxed);
                let guard = LiveConnection::new(core_id, shared.clone(), tracker.clone(), permit);
                let (shared, ctx) = (shared.clone(), ctx.clone());
                let shutdown = shutdown.clone();
                let s3_service = s3_service.clone();
                tokio::task::spawn_local(async move {
                    match (front, s3_service) {
                        (Front::S3, Some(service)) => {
                            serve_s3_connection(&shared, service, stream, peer, shutdown).await;
                        }
                        _ => serve_connection(&shared, ctx, stream, peer, shutdown).await,
                    }
                    drop(guard);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    CORE_CONTEXT.with(|c| c.borrow_mut().take());
    // Drain: connections finish their current request; bounded by the shutdown timeout.
    let deadline = tokio::time::Instant::now() + shared.config.limits.shutdown_timeout;
    while tracker.live.get() > 0 {
        let drained = tracker.drained.notified();
        if tracker.live.get() == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, drained).await.is_err() {
            crate::log_line!(
                "rhinobox: core {core_id}: {} connection(s) still open at the shutdown timeout",
                tracker.live.get()
            );
            break;
        }
    }
}

async fn serve_connection(
    shared: &Arc<Shared>,
    ctx: Rc<IngestContext>,
    stream: std::net::TcpStream,
    peer: std::net::SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            crate::log_line!("rhinobox: cannot adopt a connection: {e}");
            return;
        }
    };
    let limits = &shared.config.limits;
    let service_shared = shared.clone();
    let in_flight = ResponsesInFlight::default();
    let service_in_flight = in_flight.clone();
    let service = service_fn(move |request| {
        let (shared, ctx) = (service_shared.clone(), ctx.clone());
        let guard = service_in_flight.start();
        async move {
            let response = router::serve(shared, ctx, peer, request, guard).await;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let io = JsonParseErrors::new(TokioIo::new(stream), in_flight, shared.clone(), peer);
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.header_size_bytes_max.max(8192))
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Serves one connection of the S3 listener with s3s (SigV4, XML; `crate::s3`).
/// `Expect: 100-continue` on a request with an empty body: hyper answers without a
/// `100 Continue` (there is no body to ask for), and botocore 1.43 — the one aws-cli v1
/// ships — then reads the next response on that connection wrongly and times out (an
/// `aws s3 sync` of a tree with an empty file stalls). Closing the connection after the
/// answer makes the client open a new one; it costs one handshake per such request.
fn expects_continue_without_body(headers: &hyper::HeaderMap) -> bool {
    let expects = headers
        .get(hyper::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    expects
        && headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0")
}

async fn serve_s3_connection(
    shared: &Arc<Shared>,
    s3: s3s::service::S3Service,
    stream: std::net::TcpStream,
    peer: std::net::SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            crate::log_line!("rhinobox: cannot adopt an S3 connection: {e}");
            return;
        }
    };
    let limits = &shared.config.limits;
    let service_shared = shared.clone();
    // s3s answers every request itself (errors as S3 XML); this only adds the access-log
    // line and the request metrics, as for the native API.
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let (shared, s3) = (service_shared.clone(), s3.clone());
        async move {
            use http_body_util::BodyExt;
            let started = std::time::Instant::now();
            let line = (
                request.method().clone(),
                request.uri().path().to_string(),
                request.uri().query().map(str::to_string),
            );
            let close_after = expects_continue_without_body(request.headers());
            let mut response = hyper::service::Service::call(&s3, request).await?;
            if close_after {
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            let response = response.map(|body| {
                body.map_err(|e| std::io::Error::other(e.to_string()))
                    .boxed_unsync()
            });
            Ok::<_, s3s::HttpError>(router::logged(shared, peer, line, started, response, None))
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.header_size_bytes_max.max(8192))
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
