//! The server: start-up, the front acceptor, the per-core runtimes, and shutdown.
//!
//! Start-up order: open the store (lock, empty `.tmp`, replay the journal) → choose the io
//! engine (probe io_uring once, log the decision) → bind → start one pinned core per
//! worker and wait until each reports ready → print `rhinobox: listening on ADDR` and
//! notify systemd. The acceptor (main thread) takes a connection permit *before* `accept`
//! (bounded connections) and hands connections to the cores round-robin over bounded
//! channels. SIGTERM/SIGINT: stop accepting, drain the cores within the shutdown timeout,
//! sync the journal and the file system, exit 0.

pub mod access_log;
pub mod core;
pub mod parse_errors;
pub mod router;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::api::metrics::HttpMetrics;
use crate::config::{Config, IoEngine};
use crate::store::Store;
use access_log::AccessLog;

/// Which engine the cores run after `auto` is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    Uring,
    Threads,
}

/// Live per-core figures for /stats and /metrics.
#[derive(Default)]
pub struct CoreStats {
    pub queue_len: AtomicUsize,
    pub connections: AtomicUsize,
    pub counters: Arc<crate::ingest::CoreCounters>,
}

/// State shared by every core (Send + Sync).
pub struct Shared {
    pub config: Config,
    pub store: Arc<Store>,
    pub job_slots: Arc<Semaphore>,
    pub cores: Vec<CoreStats>,
    pub http_metrics: HttpMetrics,
    pub access_log: AccessLog,
    pub shutting_down: AtomicBool,
    pub engine: EngineChoice,
    /// Removes the tmp files of failed requests off the cores.
    pub reaper: crate::store::tmp::Reaper,
    /// Runs listings and searches off the cores.
    pub scans: crate::api::scans::ScanPool,
    /// Connections accepted since start (the memory trimmer's clock).
    pub connections_accepted_total: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn jobs_in_flight(&self) -> usize {
        self.config.limits.jobs_in_flight_max - self.job_slots.available_permits()
    }

    /// The io engine the cores run: `uring` or `threads`.
    pub fn engine_name(&self) -> &'static str {
        match self.engine {
            EngineChoice::Uring => "uring",
            EngineChoice::Threads => "threads",
        }
    }

    pub fn stats_json(&self) -> serde_json::Value {
        let per_core: Vec<_> = self
            .cores
            .iter()
            .enumerate()
            .map(|(core, s)| {
                json!({
                    "core": core,
                    "queue_len": s.queue_len.load(Ordering::Relaxed),
                    "connections": s.connections.load(Ordering::Relaxed),
                    "files": s.counters.files.load(Ordering::Relaxed),
                })
            })
            .collect();
        json!({
            "io_engine": self.engine_name(),
            "durability": self.config.durability.as_str(),
            "cores": self.cores.len(),
            "queue_capacity": self.config.limits.jobs_in_flight_max,
            "in_flight": self.jobs_in_flight(),
            "per_core": per_core,
        })
    }
}

/// A start-up failure: `main` prints `rhinobox: error: <msg>` and exits 2.
#[derive(Debug)]
pub struct StartError(pub String);

/// Chooses the io engine, shrinking the registered buffer pools to fit RLIMIT_MEMLOCK
/// first. Returns the line saying the pools shrank, printed once the cores run on uring
/// (a fall back to `threads` says so in a line of its own instead: one warning either way).
fn choose_engine(
    config: &mut Config,
    probe_dir: &std::path::Path,
) -> Result<(EngineChoice, Option<String>), StartError> {
    use crate::store::io::memlock::{self, MemlockLimit, URING_ADVICE};
    if config.io_engine == IoEngine::Threads {
        return Ok((EngineChoice::Threads, None));
    }
    let fitted = memlock::fit_pools(
        &mut config.limits,
        config.workers,
        MemlockLimit::of_process(),
    );
    let probed = match fitted {
        Ok(note) => crate::store::io::probe_uring(&config.limits, probe_dir).map(|()| note),
        Err(why) => Err(why),
    };
    match (config.io_engine, probed) {
        (_, Ok(note)) => Ok((EngineChoice::Uring, note)),
        (IoEngine::Uring, Err(e)) => Err(StartError(format!(
            "RHINOBOX_IO_ENGINE/--io-engine: uring requested but unavailable: {e}; {URING_ADVICE}"
        ))),
        (_, Err(e)) => {
            crate::log_line!(
                "rhinobox: warning: io_uring unusable here ({e}); using the threads io engine \
                 (for io_uring: {URING_ADVICE})"
            );
            Ok((EngineChoice::Threads, None))
        }
    }
}

/// The running cores: their threads, connection channels and shutdown signal.
struct Cores {
    senders: Vec<mpsc::Sender<core::Handoff>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

impl Cores {
    /// Asks every core to drain and stop, and waits for their threads.
    fn stop(self) {
        let _ = self.shutdown.send(true);
        drop(self.senders);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Starts one core per worker and waits until each reports ready; on a failure the cores
/// already started are stopped again.
fn start_cores(shared: &Arc<Shared>) -> Result<Cores, String> {
    let workers = shared.cores.len();
    let (shutdown_sender, shutdown) = watch::channel(false);
    let (ready_sender, ready) = std::sync::mpsc::channel();
    let mut cores = Cores {
        senders: Vec::with_capacity(workers),
        threads: Vec::with_capacity(workers),
        shutdown: shutdown_sender,
    };
    for core_id in 0..workers {
        let (sender, receiver) = mpsc::channel(shared.config.limits.connections_max);
        cores.senders.push(sender);
        let thread = core::spawn_core(
            core_id,
            shared.clone(),
            shared.engine,
            receiver,
            shutdown.clone(),
            ready_sender.clone(),
        );
        match thread {
            Ok(thread) => cores.threads.push(thread),
            Err(e) => {
                cores.stop();
                return Err(format!("cannot start core thread: {e}"));
            }
        }
    }
    let mut failure = None;
    for _ in 0..workers {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert("a core thread died at start-up".to_string());
            }
        }
    }
    match failure {
        None => Ok(cores),
        Some(e) => {
            cores.stop();
            Err(e)
        }
    }
}

/// Runs the daemon until a signal; returns the exit code.
pub fn run(mut config: Config) -> Result<i32, StartError> {
    let started = std::time::Instant::now();
    let (mut store, report) =
        Store::open(&config.data_dir, config.durability).map_err(|e| StartError(e.0))?;
    if let Some(settings) = &config.cluster {
        let (cluster, warnings) =
            crate::cluster::Cluster::start(settings.clone()).map_err(StartError)?;
        for warning in warnings {
            crate::log_line!("rhinobox: warning: {warning}");
        }
        let cluster = Arc::new(cluster);
        cluster.start_tasks();
        store.cluster = Some(cluster);
    }
    let (engine, pools_note) = choose_engine(&mut config, &store.blobs.tmp_dir)?;
    let backlog = listen_backlog(config.limits.connections_max);
    let listener = listen(&config, backlog)?;
    let s3_listener = match &config.s3 {
        Some(s3) => Some(listen_on(
            s3.addr,
            s3.addr_every_interface,
            backlog,
            "RHINOBOX_S3_ADDR/--s3-addr",
        )?),
        None => None,
    };
    raise_open_file_limit(config.limits.connections_max);
    let local_addr = listener
        .local_addr()
        .map_err(|e| StartError(format!("listener: {e}")))?;
    let access_log =
        AccessLog::start().map_err(|e| StartError(format!("access log thread: {e}")))?;
    let reaper = crate::store::tmp::Reaper::start()
        .map_err(|e| StartError(format!("tmp file reaper thread: {e}")))?;
    // One scan thread per two cores: scans are background work next to ingest.
    let scans = crate::api::scans::ScanPool::start(config.workers.div_ceil(2))
        .map_err(|e| StartError(format!("scan thread: {e}")))?;
    let workers = config.workers;
    let mut shared = Arc::new(Shared {
        job_slots: Arc::new(Semaphore::new(config.limits.jobs_in_flight_max)),
        cores: (0..workers).map(|_| CoreStats::default()).collect(),
        http_metrics: HttpMetrics::new(),
        access_log,
        shutting_down: AtomicBool::new(false),
        engine,
        reaper,
        scans,
        connections_accepted_total: std::sync::atomic::AtomicU64::new(0),
        store: Arc::new(store),
        config,
    });
    let cores = match start_cores(&shared) {
        Ok(cores) => cores,
        // A core that could not set up io_uring (the probe ran on one core only): under
        // `auto`, every core starts again on the threads engine.
        Err(e)
            if shared.engine == EngineChoice::Uring
                && shared.config.io_engine == IoEngine::Auto =>
        {
            crate::log_line!(
                "rhinobox: warning: {e}; using the threads io engine (for io_uring: {})",
                crate::store::io::memlock::URING_ADVICE
            );
            let Ok(mut unshared) = Arc::try_unwrap(shared) else {
                return Err(StartError(
                    "stopped cores still hold the shared state".into(),
                ));
            };
            unshared.engine = EngineChoice::Threads;
            unshared.cores = (0..workers).map(|_| CoreStats::default()).collect();
            shared = Arc::new(unshared);
            start_cores(&shared).map_err(StartError)?
        }
        Err(e) if shared.engine == EngineChoice::Uring => {
            return Err(StartError(format!(
                "{e}; {}",
                crate::store::io::memlock::URING_ADVICE
            )));
        }
        Err(e) => return Err(StartError(e)),
    };
    let engine = shared.engine;
    if let (EngineChoice::Uring, Some(note)) = (engine, pools_note) {
        crate::log_line!("rhinobox: warning: {note}");
    }
    start_memory_trimmer(shared.clone());
    crate::log_line!(
        "rhinobox: ready: {} records replayed, {} tmp files removed, {} in-flight operations \
         re-checked ({} strays removed, {} lost records deleted), io engine {}, durability {}, \
         {} cores, in {:.0} ms",
        report.records_replayed,
        report.tmp_files_removed,
        report.in_flight_checked,
        report.strays_removed,
        report.records_lost,
        match engine {
            EngineChoice::Uring => "uring",
            EngineChoice::Threads => "threads",
        },
        shared.config.durability.as_str(),
        workers,
        started.elapsed().as_secs_f64() * 1e3
    );
    crate::log_line!("rhinobox: listening on {local_addr}");
    if let Some(s3) = &s3_listener {
        let s3_addr = s3
            .local_addr()
            .map_err(|e| StartError(format!("S3 listener: {e}")))?;
        crate::log_line!("rhinobox: S3 API listening on {s3_addr}");
    }
    notify_systemd("READY=1");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError(format!("acceptor runtime: {e}")))?;
    runtime.block_on(accept_until_signal(
        &shared,
        listener,
        s3_listener,
        &cores.senders,
    ))?;

    notify_systemd("STOPPING=1");
    shared.shutting_down.store(true, Ordering::Relaxed);
    cores.stop();
    finish(&shared)
}

fn finish(shared: &Shared) -> Result<i32, StartError> {
    // The cores are stopped: no more access-log lines; write out the queued ones.
    shared.access_log.stop();
    // Final flush: whatever durability mode, leave the journal and data synced on exit.
    shared.store.group_commit.stop();
    if let Err(e) = shared.store.sync_at_exit() {
        crate::log_line!("rhinobox: fatal: sync failed at shutdown: {e}");
        return Ok(crate::store::durability::EXIT_SYNC_FAILED);
    }
    crate::log_line!("rhinobox: stopped cleanly");
    Ok(0)
}

async fn accept_until_signal(
    shared: &Arc<Shared>,
    listener: std::net::TcpListener,
    s3_listener: Option<std::net::TcpListener>,
    senders: &[mpsc::Sender<core::Handoff>],
) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| StartError(format!("listener: {e}")))?;
    let s3_listener = match s3_listener {
        Some(l) => Some(
            tokio::net::TcpListener::from_std(l)
                .map_err(|e| StartError(format!("S3 listener: {e}")))?,
        ),
        None => None,
    };
    // The S3 listener, when off, never accepts.
    let accept_s3 = async |l: &Option<tokio::net::TcpListener>| match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    };
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| StartError(format!("signals: {e}")))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| StartError(format!("signals: {e}")))?;
    let permits = Arc::new(Semaphore::new(shared.config.limits.connections_max));
    let mut next_core = 0usize;
    loop {
        // The permit is taken before accept: at the limit, new connections wait in the backlog.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let (accepted, front) = tokio::select! {
            accepted = listener.accept() => (accepted, core::Front::Native),
            accepted = accept_s3(&s3_listener) => (accepted, core::Front::S3),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let (stream, peer) = match accepted {
            // A dual-stack socket reports IPv4 clients as `::ffff:a.b.c.d`; the log says
            // `a.b.c.d`, as an IPv4-only socket would.
            Ok((stream, peer)) => (
                stream,
                SocketAddr::new(peer.ip().to_canonical(), peer.port()),
            ),
            Err(e) => {
                // EMFILE/ENFILE and friends: back off briefly rather than spin.
                crate::log_line!("rhinobox: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        shared
            .connections_accepted_total
            .fetch_add(1, Ordering::Relaxed);
        let core = next_core % senders.len();
        next_core = next_core.wrapping_add(1);
        shared.cores[core].queue_len.fetch_add(1, Ordering::Relaxed);
        let handoff = core::Handoff {
            front,
            stream,
            peer,
            permit,
        };
        if senders[core].send(handoff).await.is_err() {
            shared.cores[core].queue_len.fetch_sub(1, Ordering::Relaxed);
        }
    }
    crate::log_line!("rhinobox: signal received; draining in-flight requests");
    Ok(())
}

/// Connections that must have come and gone before freed memory is handed back.
const TRIM_AFTER_CONNECTIONS: usize = 256;

/// Hands memory freed by closed connections back to the kernel.
///
/// Measured (5 cycles of 2,000 connections sending half a head, then closed): RSS rose
/// from 19 MB and levelled at 87 MB, all of it free memory that glibc keeps in its arenas
/// (a `malloc_trim(0)` brought it to 39 MB; the rest is allocator and channel blocks that
/// stay reserved). So no leak, but a daemon that had one burst of connections should not
/// hold their memory for good: every 5 s, when the open connections are at most half the
/// number accepted since the last trim, this thread trims (a few ms, off the cores).
fn start_memory_trimmer(shared: Arc<Shared>) {
    let spawned = std::thread::Builder::new()
        .name("rhinobox-trim".into())
        .spawn(move || {
            let mut accepted_at_trim = 0u64;
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                let open: usize = shared
                    .cores
                    .iter()
                    .map(|core| core.connections.load(Ordering::Relaxed))
                    .sum();
                let accepted = shared.connections_accepted_total.load(Ordering::Relaxed);
                let came = (accepted - accepted_at_trim) as usize;
                if came >= TRIM_AFTER_CONNECTIONS && open <= came / 2 {
                    // SAFETY: malloc_trim only returns free allocator memory to the kernel.
                    unsafe { libc::malloc_trim(0) };
                    accepted_at_trim = accepted;
                }
            }
        });
    if let Err(e) = spawned {
        crate::log_line!("rhinobox: warning: no memory trim thread: {e}");
    }
}

/// Binds and listens. The `:PORT` form is one `[::]:PORT` socket with IPV6_V6ONLY off,
/// so it takes IPv4 connections too (as `::ffff:a.b.c.d`) whatever `net.ipv6.bindv6only`
/// says; on a host without IPv6 it falls back to `0.0.0.0:PORT` with one warning line.
fn listen(config: &Config, backlog: i32) -> Result<std::net::TcpListener, StartError> {
    listen_on(
        config.addr,
        config.addr_every_interface,
        backlog,
        "RHINOBOX_ADDR/--addr",
    )
}

/// Binds `addr` for the setting `names` (the native or the S3 listener).
fn listen_on(
    addr: SocketAddr,
    every_interface: bool,
    backlog: i32,
    names: &str,
) -> Result<std::net::TcpListener, StartError> {
    let bind_error = |addr: SocketAddr, e: std::io::Error| {
        let fix = match e.raw_os_error() {
            Some(libc::EADDRINUSE) => {
                "another process listens there: stop it or choose another \
                                       port"
            }
            Some(libc::EACCES) => {
                "ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a \
                                   port from 1024 up"
            }
            Some(libc::EADDRNOTAVAIL) => "that is not an address of this host",
            _ => "choose another address",
        };
        StartError(format!("{names}: cannot bind {addr}: {e}; {fix}"))
    };
    let listener = match bind_socket(addr, backlog, every_interface) {
        Ok(listener) => listener,
        Err(e) if every_interface && ipv6_missing(&e) => {
            let ipv4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            crate::log_line!(
                "rhinobox: warning: no IPv6 on this host ({e}); listening on IPv4 only ({ipv4})"
            );
            bind_socket(ipv4, backlog, false).map_err(|e| bind_error(ipv4, e))?
        }
        Err(e) => return Err(bind_error(addr, e)),
    };
    warn_if_backlog_capped(backlog);
    Ok(listener)
}

/// Errors that say the host has no IPv6 (module absent, disabled, no address), as opposed
/// to a port in use or a missing permission, which fail the start.
fn ipv6_missing(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

/// A non-blocking listening socket on `addr` with SO_REUSEADDR (as std sets it, so a
/// restart does not wait for TIME_WAIT connections) and the given backlog.
fn bind_socket(
    addr: SocketAddr,
    backlog: i32,
    dual_stack: bool,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The listen queue sized to the connection limit (std listens with a backlog of 128: a
/// burst of connects beyond it loses SYNs, and those clients wait 1 s, then 3 s, for the
/// retransmit).
fn listen_backlog(connections_max: usize) -> i32 {
    connections_max.clamp(128, 65_535) as i32
}

/// The kernel caps the backlog at `net.core.somaxconn`; a lower cap is said once.
fn warn_if_backlog_capped(backlog: i32) {
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok());
    if let Some(cap) = somaxconn.filter(|cap| *cap < backlog) {
        crate::log_line!(
            "rhinobox: warning: net.core.somaxconn = {cap} caps the listen backlog below \
             {backlog}; bursts of new connections may wait for SYN retransmits (raise it with \
             sysctl)"
        );
    }
}

/// File descriptors kept for files, the journal and the rings besides connections.
const FILE_DESCRIPTORS_RESERVE: u64 = 1024;

/// Raises the soft open-file limit to the hard one, and says once when the connection
/// limit cannot be reached with it (accept then fails with EMFILE and backs off).
fn raise_open_file_limit(connections_max: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    let needed = connections_max as u64 + FILE_DESCRIPTORS_RESERVE;
    if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < needed {
        crate::log_line!(
            "rhinobox: warning: the open-file limit ({}) is below --max-connections {} plus \
             {FILE_DESCRIPTORS_RESERVE} for files; raise it (`ulimit -n`, LimitNOFILE= in a \
             systemd unit) or lower RHINOBOX_MAX_CONNECTIONS",
            limit.rlim_cur,
            connections_max
        );
    }
}

/// Sends a state line to systemd when run with Type=notify (no-op otherwise).
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(socket) => socket,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let result = if bytes.first() == Some(&b'@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        crate::log_line!("rhinobox: warning: cannot notify systemd: {e}");
    }
}
