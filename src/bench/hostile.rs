//! The hostile group: what normal clients get while
//! other clients misbehave.
//!
//! - **trickle**: normal clients (single-file 4 KiB POSTs) undisturbed, then beside
//!   trickling uploads that send a multipart head with a 100 MB Content-Length, a first
//!   chunk (1000 B, every fifth 200 KiB) and then one byte per second for the whole run.
//! - **search**: ingest alone, then beside clients that search and page a large index
//!   without pause (`GET /files/search?name=`, `GET /files?media_type=images&page=`).
//! - **floods**: the daemon's RSS at baseline and after each cycle of opening many
//!   connections (half idle, half sending a request head slowly), holding them, closing.
//!
//! The load shapes run on [`super::load`] with a per-step timeout and a time limit, and
//! every hostile connection and search is bounded in count and time, so a daemon that
//! stalls shows as failed requests and timeouts, not as a hung run. Shapes alternate
//! (calm, disturbed, calm, disturbed) so drift of a shared host hits both sides; figures
//! are medians over the rounds.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::Connection;

use super::load::{self, LoadSpec};
use super::report::{RunLabels, RunResult};
use super::stats::{Latency, median};
use super::target::{self, Endpoint, Mode, load_average};
use super::workload::{Sizes, Workload, fresh_nonce};

/// Content-Length a trickling upload announces and never sends.
const TRICKLE_DECLARED_BYTES: u64 = 100_000_000;
/// First chunk of a trickling upload: most send a little, every fifth enough to get past
/// the small io buffer (64 KiB) into the large ones (where slow clients once pinned the pool).
const TRICKLE_FIRST_SMALL_BYTES: usize = 1000;
const TRICKLE_FIRST_LARGE_BYTES: usize = 200 * 1024;
/// Pause between two bytes of one trickling upload.
const TRICKLE_INTERVAL: Duration = Duration::from_secs(1);
/// Upper bound on how long trickling uploads stay open, whatever the run does.
const TRICKLE_RUN_MAX: Duration = Duration::from_secs(180);
/// Bound on connecting (and on a blocking write of a head) for every hostile socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A loopback connect slower than this had its SYN dropped (full listen backlog).
const CONNECT_SLOW: Duration = Duration::from_millis(500);
/// Bound on one search request (connect, every read and write).
const SEARCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on how long the search clients run, whatever the run does.
const SEARCH_RUN_MAX: Duration = Duration::from_secs(180);
/// Threads opening a flood's connections, as a burst of reconnecting clients would.
const FLOOD_CONNECTORS: usize = 4;
/// The start of a request head a slow flood connection sends, then one byte more.
const SLOW_HEAD: &[u8] =
    b"POST /ingest/media HTTP/1.1\r\nHost: flood\r\nContent-Type: multipart/form-";

/// The system's load average now, as `/proc/loadavg` has it.
fn load_now() -> String {
    load_average()
}

// ---------------------------------------------------------------------------------------
// Trickling uploads

/// Trickling uploads and the thread that keeps them trickling.
pub struct Trickler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<TrickleTally>>,
    pub opened: usize,
    pub connect_failed: usize,
    pub open_s: f64,
}

/// What the trickling uploads did.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct TrickleTally {
    pub bytes_trickled: u64,
    /// Connections still open (neither answered nor closed by the server) at the end.
    pub alive_at_end: usize,
    /// Connections the server answered or closed while they trickled.
    pub ended_by_server: usize,
}

impl Trickler {
    /// Opens `count` trickling uploads to `addr` and starts trickling.
    pub fn start(addr: SocketAddr, count: usize) -> Trickler {
        let opened_at = Instant::now();
        let mut streams = Vec::with_capacity(count);
        let mut connect_failed = 0;
        for index in 0..count {
            match open_trickling_upload(addr, index) {
                Ok(stream) => streams.push(stream),
                Err(_) => connect_failed += 1,
            }
        }
        let open_s = opened_at.elapsed().as_secs_f64();
        let opened = streams.len();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("bench-trickler".into())
            .spawn(move || trickle(streams, &flag))
            .expect("spawning the trickler");
        Trickler {
            stop,
            thread: Some(thread),
            opened,
            connect_failed,
            open_s,
        }
    }

    /// Stops trickling and closes every connection.
    pub fn stop(mut self) -> TrickleTally {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|thread| thread.join().expect("trickler panicked"))
            .unwrap_or_default()
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open_trickling_upload(addr: SocketAddr, index: usize) -> std::io::Result<TcpStream> {
    let boundary = "trickleBoundary0123456789";
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    let head = format!(
        "POST /ingest/media HTTP/1.1\r\nHost: trickle\r\n\
Content-Type: multipart/form-data; boundary={boundary}\r\n\
Content-Length: {TRICKLE_DECLARED_BYTES}\r\n\r\n\
--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
filename=\"trickle{index}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    stream.set_nonblocking(true)?;
    let first = if index.is_multiple_of(5) {
        TRICKLE_FIRST_LARGE_BYTES
    } else {
        TRICKLE_FIRST_SMALL_BYTES
    };
    // A server that reads nothing takes what the socket buffers hold; the rest is dropped.
    write_nonblocking(&mut stream, &vec![b'x'; first]);
    Ok(stream)
}

/// One byte to every live socket per [`TRICKLE_INTERVAL`] until stopped or
/// [`TRICKLE_RUN_MAX`]; a socket the server answered or closed is dropped from the round.
fn trickle(streams: Vec<TcpStream>, stop: &AtomicBool) -> TrickleTally {
    let mut live: Vec<Option<TcpStream>> = streams.into_iter().map(Some).collect();
    let deadline = Instant::now() + TRICKLE_RUN_MAX;
    let mut tally = TrickleTally::default();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        for slot in &mut live {
            let Some(stream) = slot else { continue };
            if ended_by_server(stream) {
                *slot = None;
                tally.ended_by_server += 1;
                continue;
            }
            tally.bytes_trickled += write_nonblocking(stream, b"x") as u64;
        }
        let next = Instant::now() + TRICKLE_INTERVAL;
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(20));
        }
    }
    tally.alive_at_end = live.iter().flatten().count();
    tally
}

/// Whether the server answered (any bytes) or closed a non-blocking socket.
fn ended_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 512];
    match stream.read(&mut byte) {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) if e.kind() == ErrorKind::Interrupted => false,
        Err(_) => true,
    }
}

/// Writes what a non-blocking socket takes now; returns the bytes written.
fn write_nonblocking(stream: &mut TcpStream, bytes: &[u8]) -> usize {
    let mut sent = 0;
    while sent < bytes.len() {
        match stream.write(&bytes[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    sent
}

// ---------------------------------------------------------------------------------------
// Searching clients

/// What the searching clients got.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SearchTally {
    pub clients: usize,
    pub duration_s: f64,
    /// Searches and listings answered 200.
    pub answered: u64,
    /// Answered 503 by the scan pool (refused, not failed).
    pub refused_503: u64,
    /// Other statuses, timeouts and connection errors.
    pub failed: u64,
    pub error_samples: Vec<String>,
    pub per_s: f64,
    /// Latency of the 200 answers.
    pub latency: Latency,
    pub load_average: String,
}

#[derive(Default)]
struct SearcherTally {
    latencies_ns: Vec<u64>,
    answered: u64,
    refused_503: u64,
    failed: u64,
    errors: Vec<String>,
}

/// Clients that search and list without pause until stopped.
pub struct Searchers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<SearcherTally>>,
    started: Instant,
}

impl Searchers {
    /// Starts `clients` searching `addr`; `records` is how many records the index holds
    /// (named `img_NNNNNNN.jpg` by [`super::index_scale`]), for the substrings and pages.
    pub fn start(addr: SocketAddr, clients: usize, records: usize) -> Searchers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|client| {
                let flag = stop.clone();
                thread::Builder::new()
                    .name(format!("bench-search-{client}"))
                    .spawn(move || search_loop(addr, client, records, &flag))
                    .expect("spawning a search client")
            })
            .collect();
        Searchers {
            stop,
            threads,
            started: Instant::now(),
        }
    }

    /// Stops the clients (each finishes the request it is in) and merges their tallies.
    pub fn stop(self) -> SearchTally {
        self.stop.store(true, Ordering::Relaxed);
        let clients = self.threads.len();
        let tallies: Vec<SearcherTally> = self
            .threads
            .into_iter()
            .map(|t| t.join().expect("search client panicked"))
            .collect();
        let duration_s = self.started.elapsed().as_secs_f64();
        let mut out = SearchTally {
            clients,
            duration_s,
            load_average: load_now(),
            ..SearchTally::default()
        };
        let mut latencies = Vec::new();
        for tally in tallies {
            latencies.extend_from_slice(&tally.latencies_ns);
            out.answered += tally.answered;
            out.refused_503 += tally.refused_503;
            out.failed += tally.failed;
            for error in tally.errors {
                if out.error_samples.len() < 5 {
                    out.error_samples.push(error);
                }
            }
        }
        out.per_s = out.answered as f64 / duration_s.max(1e-9);
        out.latency = Latency::from_ns(&mut latencies);
        out
    }
}

/// The `n`-th request of a search client: searches and listings alternate; substrings
/// match about ten records each (five of the seven digits), the case is mixed so the
/// case-insensitive match is exercised; pages fall anywhere in the index.
pub fn search_path(n: u64, client: usize, records: usize) -> String {
    let mix = splitmix(n ^ ((client as u64) << 48));
    if n.is_multiple_of(2) {
        let prefix = if mix & 1 == 0 { "img_" } else { "IMG_" };
        let tens = (records / 10).max(1) as u64;
        format!("/files/search?name={prefix}{:06}", (mix >> 1) % tens)
    } else {
        let pages = (records / 50).max(1) as u64;
        format!("/files?media_type=images&page={}", 1 + (mix >> 1) % pages)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn search_loop(
    addr: SocketAddr,
    client: usize,
    records: usize,
    stop: &AtomicBool,
) -> SearcherTally {
    let deadline = Instant::now() + SEARCH_RUN_MAX;
    let mut tally = SearcherTally::default();
    let mut connection: Option<Connection> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let path = search_path(n, client, records);
        n += 1;
        let sent = Instant::now();
        let result = search_once(&mut connection, addr, &path);
        match result {
            Ok(200) => {
                tally.answered += 1;
                tally.latencies_ns.push(sent.elapsed().as_nanos() as u64);
            }
            Ok(503) => {
                tally.refused_503 += 1;
                // The daemon says when to retry; a tight loop would only spin.
                thread::sleep(Duration::from_millis(10));
            }
            Ok(status) => record_error(&mut tally, format!("{path}: status {status}")),
            Err(error) => {
                connection = None;
                record_error(&mut tally, format!("{path}: {error}"));
            }
        }
    }
    tally
}

fn record_error(tally: &mut SearcherTally, error: String) {
    tally.failed += 1;
    if tally.errors.len() < 5 {
        tally.errors.push(error);
    }
}

fn search_once(
    connection: &mut Option<Connection>,
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<u16> {
    if connection.as_ref().is_none_or(|c| c.is_closed()) {
        *connection = Some(Connection::connect_timeout(addr, SEARCH_TIMEOUT)?);
    }
    let open = connection.as_mut().expect("connected above");
    Ok(open.request("GET", path, &[], b"")?.status)
}

// ---------------------------------------------------------------------------------------
// Connection floods

/// One cycle of a connection flood.
#[derive(Clone, Debug, Serialize)]
pub struct FloodCycle {
    pub cycle: usize,
    pub opened: usize,
    pub connect_failed: usize,
    /// Connects that took longer than 500 ms (a dropped SYN waits for the 1 s retry).
    pub connect_slow: usize,
    pub open_s: f64,
    /// While the connections are held.
    pub rss_held_mib: f64,
    /// After they are closed and the daemon had a second to notice.
    pub rss_after_mib: f64,
    /// A normal 4 KiB upload right after the cycle: status (0 = no answer) and time.
    pub upload_after_status: u16,
    pub upload_after_ms: f64,
    pub load_average: String,
}

/// Opens `connections` connections (every other one sends `SLOW_HEAD`, then one more
/// byte halfway through the hold), holds them `hold`, closes them; samples `pid`.
pub fn flood_cycle(
    addr: SocketAddr,
    pid: Option<u32>,
    cycle: usize,
    connections: usize,
    hold: Duration,
) -> FloodCycle {
    let opened_at = Instant::now();
    let per_thread = connections.div_ceil(FLOOD_CONNECTORS);
    let openers: Vec<_> = (0..FLOOD_CONNECTORS)
        .map(|t| {
            let count = per_thread.min(connections.saturating_sub(t * per_thread));
            thread::spawn(move || open_flood(addr, count))
        })
        .collect();
    let mut streams = Vec::with_capacity(connections);
    let (mut connect_failed, mut connect_slow) = (0, 0);
    for opener in openers {
        let (opened, failed, slow) = opener.join().expect("flood opener panicked");
        streams.extend(opened);
        connect_failed += failed;
        connect_slow += slow;
    }
    let open_s = opened_at.elapsed().as_secs_f64();
    thread::sleep(hold / 2);
    for (index, stream) in streams.iter_mut().enumerate() {
        if index % 2 == 1 {
            write_nonblocking(stream, b"d");
        }
    }
    thread::sleep(hold / 2);
    let rss_held_mib = rss_mib(pid);
    let opened = streams.len();
    drop(streams);
    thread::sleep(Duration::from_secs(1));
    let rss_after_mib = rss_mib(pid);
    let (upload_after_status, upload_after_ms) = one_upload(addr, cycle);
    FloodCycle {
        cycle,
        opened,
        connect_failed,
        connect_slow,
        open_s,
        rss_held_mib,
        rss_after_mib,
        upload_after_status,
        upload_after_ms,
        load_average: load_now(),
    }
}

fn open_flood(addr: SocketAddr, count: usize) -> (Vec<TcpStream>, usize, usize) {
    let mut streams = Vec::with_capacity(count);
    let (mut failed, mut slow) = (0, 0);
    for index in 0..count {
        let started = Instant::now();
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(mut stream) => {
                if started.elapsed() > CONNECT_SLOW {
                    slow += 1;
                }
                if stream.set_nonblocking(true).is_ok() && index % 2 == 1 {
                    write_nonblocking(&mut stream, SLOW_HEAD);
                }
                streams.push(stream);
            }
            Err(_) => failed += 1,
        }
    }
    (streams, failed, slow)
}

/// RSS of `pid` in MiB (0 when it cannot be read).
pub fn rss_mib(pid: Option<u32>) -> f64 {
    pid.and_then(target::sample)
        .map(|s| s.rss_kib as f64 / 1024.0)
        .unwrap_or(0.0)
}

/// One 4 KiB multipart upload on a fresh connection: status (0 on error) and ms.
fn one_upload(addr: SocketAddr, cycle: usize) -> (u16, f64) {
    let bytes = crate::client::payload(crate::client::MediaKind::Png, 4096, 0xF100D + cycle as u64);
    let (content_type, body) = crate::client::Multipart::new()
        .file(
            "file",
            &format!("after-flood-{cycle}.png"),
            "image/png",
            &bytes,
        )
        .finish();
    let started = Instant::now();
    let status = Connection::connect_timeout(addr, SEARCH_TIMEOUT)
        .and_then(|mut c| {
            c.request(
                "POST",
                "/ingest/media",
                &[("Content-Type", &content_type)],
                &body,
            )
        })
        .map(|r| r.status)
        .unwrap_or(0);
    (status, started.elapsed().as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------------------
// The shapes

/// The sizes of the hostile shapes.
#[derive(Clone, Debug, Serialize)]
pub struct HostileSpec {
    pub trickle_per_core: usize,
    /// Cores (workers) of the daemon under test, for the per-core counts.
    pub cores: usize,
    pub search_clients: usize,
    pub flood_connections: usize,
    pub flood_cycles: usize,
    pub flood_hold_s: f64,
    /// Calm/disturbed pairs per shape; figures are medians over them.
    pub rounds: usize,
    pub scale: f64,
}

/// Bound on connecting and on each read and write of a normal request: above the
/// daemon's own 5 s waits (so its 503s show as 503s), far below a hung run.
const NORMAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the measured part of one normal-client run.
const NORMAL_RUN_MAX: Duration = Duration::from_secs(30);
/// Time the trickling uploads get to settle before the normal clients start, so that they
/// hold whatever they are going to hold.
const TRICKLE_SETTLE: Duration = Duration::from_millis(1500);
/// Time the search clients run before ingest starts.
const SEARCH_LEAD: Duration = Duration::from_millis(500);

/// Where a shape runs.
pub struct Target<'a> {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    pub desc: &'a str,
    pub durability: Option<String>,
}

/// One calm/disturbed pair of the trickle shape.
#[derive(Clone, Debug, Serialize)]
pub struct TrickleRound {
    pub calm: RunResult,
    pub trickled: RunResult,
    pub trickling_opened: usize,
    pub trickling_connect_failed: usize,
    pub trickling_open_s: f64,
    pub trickling: TrickleTally,
}

/// The trickle shape: medians over rounds and the p99 ratio (goal: ≤ 2).
#[derive(Clone, Debug, Serialize)]
pub struct TrickleOutcome {
    pub trickling_uploads: usize,
    pub rounds: Vec<TrickleRound>,
    pub calm_files_per_s: f64,
    pub trickled_files_per_s: f64,
    pub calm_p50_ms: f64,
    pub trickled_p50_ms: f64,
    pub calm_p99_ms: f64,
    pub trickled_p99_ms: f64,
    pub trickled_failed_files: u64,
    /// Median trickled p99 / median calm p99.
    pub p99_ratio: Option<f64>,
}

/// Normal clients: 8 keep-alive clients posting single 4 KiB files, bounded.
fn normal_clients(spec: &HostileSpec) -> LoadSpec {
    LoadSpec {
        clients: 8,
        warmup_per_client: 2,
        requests_per_client: scaled(1500, spec.scale),
        workload: workload(1),
        rate: None,
        request_timeout: Some(NORMAL_REQUEST_TIMEOUT),
        run_time_max: Some(NORMAL_RUN_MAX),
    }
}

/// Ingest: 8 clients posting 100-file batches of 4 KiB (the `sustained` shape), bounded.
fn ingest_clients(spec: &HostileSpec) -> LoadSpec {
    LoadSpec {
        clients: 8,
        warmup_per_client: 2,
        requests_per_client: scaled(40, spec.scale),
        workload: workload(100),
        rate: None,
        request_timeout: Some(NORMAL_REQUEST_TIMEOUT),
        run_time_max: Some(NORMAL_RUN_MAX),
    }
}

fn workload(files_per_request: usize) -> Workload {
    Workload {
        files_per_request,
        sizes: Sizes::Fixed(4096),
        duplicate_ratio: 0.0,
        nonce: fresh_nonce(),
        mode: Mode::Post,
    }
}

fn scaled(count: usize, scale: f64) -> usize {
    ((count as f64 * scale).round() as usize).max(1)
}

/// Runs `load` (with a fresh nonce) on `target` as scenario `name`.
fn measure(target: &Target, load: &LoadSpec, name: &str) -> RunResult {
    let mut load = load.clone();
    load.workload.nonce = fresh_nonce();
    let endpoint = Endpoint::new(target.addr, "", Mode::Post);
    let outcome = load::run(&endpoint, target.pid, &load, name);
    let labels = RunLabels {
        scenario: name.to_string(),
        target: "A".into(),
        target_desc: target.desc.to_string(),
        mode: Mode::Post,
        clients: load.clients,
        files_per_request: load.workload.files_per_request,
        file_size: load.workload.sizes.label(),
        duplicate_ratio: 0.0,
        rate_per_s: None,
        durability: target.durability.clone(),
    };
    let result = RunResult::new(labels, outcome);
    println!("{}", result.line());
    result
}

/// The trickle shape: calm, then beside `trickle_per_core × cores` trickling uploads,
/// `rounds` times.
pub fn trickle_shape(target: &Target, spec: &HostileSpec) -> TrickleOutcome {
    let count = spec.trickle_per_core * spec.cores.max(1);
    let load = normal_clients(spec);
    let mut rounds = Vec::new();
    for _ in 0..spec.rounds.max(1) {
        let calm = measure(target, &load, "hostile/trickle-calm");
        let trickler = Trickler::start(target.addr, count);
        let (opened, connect_failed, open_s) =
            (trickler.opened, trickler.connect_failed, trickler.open_s);
        eprintln!(
            "  {opened} trickling uploads open in {open_s:.1} s ({connect_failed} failed to connect)"
        );
        thread::sleep(TRICKLE_SETTLE);
        let trickled = measure(target, &load, &format!("hostile/trickle-{count}"));
        let tally = trickler.stop();
        eprintln!(
            "  trickled {} bytes; {} still open at the end, {} answered or closed by the daemon",
            tally.bytes_trickled, tally.alive_at_end, tally.ended_by_server
        );
        rounds.push(TrickleRound {
            calm,
            trickled,
            trickling_opened: opened,
            trickling_connect_failed: connect_failed,
            trickling_open_s: open_s,
            trickling: tally,
        });
    }
    let of = |f: fn(&TrickleRound) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let calm_p99 = of(|r| r.calm.latency.p99_ms);
    let trickled_p99 = of(|r| r.trickled.latency.p99_ms);
    TrickleOutcome {
        trickling_uploads: count,
        calm_files_per_s: of(|r| r.calm.files_per_s),
        trickled_files_per_s: of(|r| r.trickled.files_per_s),
        calm_p50_ms: of(|r| r.calm.latency.p50_ms),
        trickled_p50_ms: of(|r| r.trickled.latency.p50_ms),
        calm_p99_ms: calm_p99,
        trickled_p99_ms: trickled_p99,
        trickled_failed_files: rounds.iter().map(|r| r.trickled.failed_files).sum(),
        p99_ratio: (calm_p99 > 0.0).then(|| trickled_p99 / calm_p99),
        rounds,
    }
}

/// One alone/searched pair of the search shape.
#[derive(Clone, Debug, Serialize)]
pub struct SearchRound {
    pub alone: RunResult,
    pub searched: RunResult,
    pub searches: SearchTally,
}

/// The search shape: medians over rounds and the throughput ratio (goal: ≥ 0.8).
#[derive(Clone, Debug, Serialize)]
pub struct SearchOutcome {
    pub records: usize,
    pub search_clients: usize,
    pub rounds: Vec<SearchRound>,
    pub alone_files_per_s: f64,
    pub searched_files_per_s: f64,
    /// Median searched files/s / median alone files/s.
    pub ratio: Option<f64>,
    pub searches_per_s: f64,
    pub search_p50_ms: f64,
    pub search_p99_ms: f64,
    pub searches_refused_503: u64,
    pub searches_failed: u64,
    pub failed_files: u64,
}

/// The search shape on an index of `records` records, `rounds` times.
pub fn search_shape(target: &Target, spec: &HostileSpec, records: usize) -> SearchOutcome {
    let load = ingest_clients(spec);
    let mut rounds = Vec::new();
    for _ in 0..spec.rounds.max(1) {
        let alone = measure(target, &load, "hostile/ingest-alone");
        let searchers = Searchers::start(target.addr, spec.search_clients, records);
        thread::sleep(SEARCH_LEAD);
        let name = format!("hostile/ingest-search{}", spec.search_clients);
        let searched = measure(target, &load, &name);
        let searches = searchers.stop();
        eprintln!(
            "  searches: {} answered ({:.0}/s, p50 {:.1} ms, p99 {:.1} ms), {} refused (503), {} failed",
            searches.answered,
            searches.per_s,
            searches.latency.p50_ms,
            searches.latency.p99_ms,
            searches.refused_503,
            searches.failed
        );
        for error in &searches.error_samples {
            eprintln!("    search error: {error}");
        }
        rounds.push(SearchRound {
            alone,
            searched,
            searches,
        });
    }
    let of = |f: fn(&SearchRound) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let alone = of(|r| r.alone.files_per_s);
    let searched = of(|r| r.searched.files_per_s);
    SearchOutcome {
        records,
        search_clients: spec.search_clients,
        alone_files_per_s: alone,
        searched_files_per_s: searched,
        ratio: (alone > 0.0).then(|| searched / alone),
        searches_per_s: of(|r| r.searches.per_s),
        search_p50_ms: of(|r| r.searches.latency.p50_ms),
        search_p99_ms: of(|r| r.searches.latency.p99_ms),
        searches_refused_503: rounds.iter().map(|r| r.searches.refused_503).sum(),
        searches_failed: rounds.iter().map(|r| r.searches.failed).sum(),
        failed_files: rounds
            .iter()
            .map(|r| r.alone.failed_files + r.searched.failed_files)
            .sum(),
        rounds,
    }
}

/// The floods shape: baseline RSS, then one figure per cycle.
#[derive(Clone, Debug, Serialize)]
pub struct FloodOutcome {
    pub connections: usize,
    pub baseline_rss_mib: f64,
    pub baseline_load_average: String,
    pub cycles: Vec<FloodCycle>,
    /// RSS after the last cycle minus after the first: near 0 when memory levels off.
    pub last_minus_first_after_mib: f64,
}

/// `flood_cycles` cycles of `flood_connections` connections held `flood_hold_s`.
pub fn flood_shape(target: &Target, spec: &HostileSpec) -> FloodOutcome {
    let baseline_rss_mib = rss_mib(target.pid);
    let baseline_load_average = load_now();
    let hold = Duration::from_secs_f64(spec.flood_hold_s);
    let mut cycles = Vec::new();
    for cycle in 1..=spec.flood_cycles {
        let result = flood_cycle(target.addr, target.pid, cycle, spec.flood_connections, hold);
        println!(
            "hostile/flood-{cycle:<8} {} open ({} failed, {} slow) in {:.2} s; RSS held {:.1} MiB, after {:.1} MiB; upload after: {} in {:.1} ms  load {}",
            result.opened,
            result.connect_failed,
            result.connect_slow,
            result.open_s,
            result.rss_held_mib,
            result.rss_after_mib,
            result.upload_after_status,
            result.upload_after_ms,
            result.load_average
        );
        cycles.push(result);
    }
    let after = |c: Option<&FloodCycle>| c.map(|c| c.rss_after_mib).unwrap_or(0.0);
    FloodOutcome {
        connections: spec.flood_connections,
        baseline_rss_mib,
        baseline_load_average,
        last_minus_first_after_mib: after(cycles.last()) - after(cycles.first()),
        cycles,
    }
}

/// Everything the hostile group measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostileOutcome {
    pub spec: Option<HostileSpec>,
    pub trickle: Option<TrickleOutcome>,
    pub search: Option<SearchOutcome>,
    pub floods: Option<FloodOutcome>,
}

/// Prints the hostile group's summary table (Markdown).
pub fn print_summary(outcome: &HostileOutcome) {
    if outcome.trickle.is_none() && outcome.search.is_none() && outcome.floods.is_none() {
        return;
    }
    println!("\n### Hostile clients (medians over rounds)\n");
    println!("| shape | figure | this run | goal | |");
    println!("|---|---|---|---|---|");
    let verdict = |met: Option<bool>| match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "",
    };
    if let Some(t) = &outcome.trickle {
        println!(
            "| trickle | calm: files/s, p50, p99 | {:.0}, {:.2} ms, {:.2} ms | | |",
            t.calm_files_per_s, t.calm_p50_ms, t.calm_p99_ms
        );
        println!(
            "| trickle | beside {} trickling: files/s, p50, p99 (failed files) | {:.0}, {:.2} ms, \
             {:.2} ms ({}) | | |",
            t.trickling_uploads,
            t.trickled_files_per_s,
            t.trickled_p50_ms,
            t.trickled_p99_ms,
            t.trickled_failed_files
        );
        let met = t
            .p99_ratio
            .map(|r| r <= 2.0 && t.trickled_failed_files == 0);
        println!(
            "| trickle | p99 trickled / calm | {} | ≤ 2× | {} |",
            t.p99_ratio
                .map(|r| format!("{r:.2}×"))
                .unwrap_or("n/a".into()),
            verdict(met)
        );
    }
    if let Some(s) = &outcome.search {
        println!(
            "| search | ingest files/s alone → beside {} searchers ({} records) | {:.0} → {:.0} | | |",
            s.search_clients, s.records, s.alone_files_per_s, s.searched_files_per_s
        );
        let met = s.ratio.map(|r| r >= 0.8 && s.failed_files == 0);
        println!(
            "| search | ingest with searches / alone | {} | ≥ 80 % | {} |",
            s.ratio
                .map(|r| format!("{:.0} %", r * 100.0))
                .unwrap_or("n/a".into()),
            verdict(met)
        );
        println!(
            "| search | searches/s, p50, p99; refused (503); failed | {:.0}/s, {:.1} ms, {:.1} ms; \
             {}; {} | | |",
            s.searches_per_s,
            s.search_p50_ms,
            s.search_p99_ms,
            s.searches_refused_503,
            s.searches_failed
        );
    }
    if let Some(f) = &outcome.floods {
        let per_cycle: Vec<String> = f
            .cycles
            .iter()
            .map(|c| format!("{:.1}", c.rss_after_mib))
            .collect();
        println!(
            "| floods | RSS MiB: baseline; after each cycle of {} connections | {:.1}; {} | levels off | |",
            f.connections,
            f.baseline_rss_mib,
            per_cycle.join(", ")
        );
        println!(
            "| floods | RSS after last − after first cycle | {:+.1} MiB | ≈ 0 | |",
            f.last_minus_first_after_mib
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Search paths alternate search and listing, stay within the index, mix the case.
    #[test]
    fn search_paths_cover_the_index() {
        let paths: Vec<String> = (0..200).map(|n| search_path(n, 1, 1_000_000)).collect();
        assert!(paths[0].starts_with("/files/search?name="));
        assert!(paths[1].starts_with("/files?media_type=images&page="));
        assert!(paths.iter().any(|p| p.contains("IMG_")));
        assert!(paths.iter().any(|p| p.contains("img_")));
        for path in paths.iter().skip(1).step_by(2) {
            let page: u64 = path.rsplit('=').next().unwrap().parse().unwrap();
            assert!((1..=20_000).contains(&page), "{path}");
        }
        for path in paths.iter().step_by(2) {
            assert_eq!(path.len(), "/files/search?name=img_".len() + 6, "{path}");
        }
    }
}
