//! Hostile and slow clients: trickling uploads, slowloris heads, thousands of idle
//! connections, a part header that never ends, a panic reachable from a query, a body that
//! holds its final boundary but is cut short, a flood of parts, errors from the HTTP layer,
//! and a start as an ordinary user under the usual `ulimit -l`.
//!
//! Raw `std::net::TcpStream`s give byte-level control where the client must misbehave.
//! Every loop is bounded in count and time, every thread is joined, only loopback is used.
//! Each test collects what it observed in [`Findings`] and fails at the end with the full
//! list, so one run shows every way a daemon falls short (latencies, statuses, RSS). The
//! tests of this target run one at a time ([`serial`]): several of them assert latencies
//! and memory, which a neighbour flooding the same two cores would distort.

mod common;

use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rhinobox::client::{MediaKind, Multipart, Response};

/// How long a normal request may take while hostile clients are connected.
const NORMAL_REPLY_MAX: Duration = Duration::from_secs(3);
/// How long an upload beside a part flood may take (up to 3.7 s was
/// measured on a defective daemon).
const BESIDE_FLOOD_REPLY_MAX: Duration = Duration::from_secs(1);
/// A malformed body must be refused early, within a second; this leaves room
/// for a loaded CI host while still far below the 58 s measured on the defective daemon.
const EARLY_REFUSAL_MAX: Duration = Duration::from_secs(3);
/// Growth of the daemon's resident memory allowed for one hostile request.
const RSS_GROWTH_MAX_KIB: u64 = 16 * 1024;
/// Size of the never-ending part header and of the never-ending preamble.
const BOMB_BYTES: u64 = 300 * 1024 * 1024;
/// Hostile connections per daemon core in the trickling test (about 70 once pinned
/// every io buffer of a core).
const TRICKLING_PER_CORE: usize = 70;
/// Cores the trickling daemon runs.
const TRICKLING_CORES: usize = 2;
/// Content-Length a trickling upload announces and never sends.
const TRICKLING_DECLARED_BYTES: u64 = 100_000_000;
/// What a trickling upload sends at once: most send a little, every fifth enough to get
/// past the small io buffer (64 KiB) into the large ones.
const TRICKLING_FIRST_SMALL_BYTES: usize = 1000;
const TRICKLING_FIRST_LARGE_BYTES: usize = 200 * 1024;
/// Pause between two bytes of one trickling client.
const TRICKLE_INTERVAL: Duration = Duration::from_millis(1000);
/// Slowloris connections, each sending its request head one byte per interval.
const SLOWLORIS_CONNECTIONS: usize = 200;
/// Idle connections that send nothing.
const IDLE_CONNECTIONS: usize = 2000;
/// Threads opening them, as a burst of clients reconnecting at once would.
const IDLE_CONNECTORS: usize = 4;
/// A loopback connect takes microseconds; one that takes longer than this had its SYN
/// dropped (a full listen backlog) and waited for the 1 s retransmission.
const CONNECT_MAX: Duration = Duration::from_millis(500);
/// Parts of the flood: one more than the default `--max-parts`.
const FLOOD_PARTS: usize = 10_001;
/// Clients sending the flood at the same time.
const FLOOD_CLIENTS: usize = 2;
/// How long a daemon may take to exit after SIGTERM when nothing is in flight; far below
/// the `--shutdown-timeout-s 20` it runs with.
const PROMPT_EXIT_MAX: Duration = Duration::from_secs(5);
/// Bounded wait for counters (connections, tmp files) to settle.
const SETTLE_MAX: Duration = Duration::from_secs(5);

/// One test at a time in this target: see the module comment.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a test expected and saw; fails the test at the end with every unmet expectation.
struct Findings {
    test: &'static str,
    failures: Vec<String>,
}

impl Findings {
    fn new(test: &'static str) -> Findings {
        Findings {
            test,
            failures: Vec::new(),
        }
    }

    /// Records one expectation and what was observed.
    fn check(&mut self, ok: bool, observed: impl Into<String>) {
        let observed = observed.into();
        let verdict = if ok { "ok" } else { "FAILED" };
        eprintln!("[{}] {verdict}: {observed}", self.test);
        if !ok {
            self.failures.push(observed);
        }
    }

    /// Prints an observation that is not an expectation.
    fn note(&self, observed: impl AsRef<str>) {
        eprintln!("[{}] note: {}", self.test, observed.as_ref());
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{}: {} expectation(s) failed:\n - {}",
            self.test,
            self.failures.len(),
            self.failures.join("\n - ")
        );
    }
}

/// One request's outcome and how long it took.
struct Timed {
    result: io::Result<Response>,
    elapsed: Duration,
}

impl Timed {
    fn status(&self) -> Option<u16> {
        self.result.as_ref().ok().map(|response| response.status)
    }

    fn describe(&self) -> String {
        match &self.result {
            Ok(response) => format!("{} in {:.0?}", response.status, self.elapsed),
            Err(error) => format!("no reply ({error}) after {:.1?}", self.elapsed),
        }
    }

    /// A 200 within `max`.
    fn ok_within(&self, max: Duration) -> bool {
        self.status() == Some(200) && self.elapsed <= max
    }
}

/// Time left until `deadline`; an error once it has passed.
fn time_left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(ErrorKind::TimedOut, "deadline passed"));
    }
    Ok(left)
}

/// Writes `bytes` before `deadline`. A write the daemon refuses (it answered early and
/// closed) ends the writing quietly: the caller reads that answer next.
fn write_before(stream: &mut TcpStream, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        stream.set_write_timeout(Some(time_left(deadline)?))?;
        match stream.write(&bytes[sent..]) {
            Ok(0) => return Ok(()),
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                time_left(deadline)?;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Sends one request on a fresh connection and reads the reply, all within `timeout`.
fn timed_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Timed {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut message = format!("{method} {path} HTTP/1.1\r\nHost: rhinobox\r\n");
    for (name, value) in headers {
        message.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        message.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    message.push_str("\r\n");
    let mut message = message.into_bytes();
    message.extend_from_slice(body);
    let result = raw_connect(addr).and_then(|mut stream| {
        write_before(&mut stream, &message, deadline)?;
        read_raw_response(&mut stream, deadline)
    });
    Timed {
        result,
        elapsed: started.elapsed(),
    }
}

/// POSTs one file as multipart/form-data, bounded by `timeout`.
fn timed_post(addr: SocketAddr, file: &TestFile, timeout: Duration) -> Timed {
    let (content_type, body) = form_of(std::slice::from_ref(file)).finish();
    let headers = [("Content-Type", content_type.as_str())];
    timed_request(addr, "POST", "/ingest/media", &headers, &body, timeout)
}

/// PUTs one file as the raw body, bounded by `timeout`.
fn timed_put(addr: SocketAddr, file: &TestFile, timeout: Duration) -> Timed {
    let path = format!("/ingest/media/{}", file.name);
    let headers = [("Content-Type", file.kind.expected_mime())];
    timed_request(addr, "PUT", &path, &headers, &file.bytes, timeout)
}

/// Runs uploads side by side, one thread and one fresh connection each, and returns their
/// outcomes in order; each is bounded by `timeout`, so the whole call is too.
fn uploads_in_parallel(
    addr: SocketAddr,
    files: Vec<TestFile>,
    put: bool,
    timeout: Duration,
) -> Vec<Timed> {
    let threads: Vec<_> = files
        .into_iter()
        .map(|file| {
            thread::spawn(move || {
                if put {
                    timed_put(addr, &file, timeout)
                } else {
                    timed_post(addr, &file, timeout)
                }
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| thread.join().expect("upload thread"))
        .collect()
}

/// A normal client's uploads: two 4 KiB images and two 5 MiB videos (two of each so that
/// consecutive connections reach both cores of a two-core daemon).
fn normal_files(seed: u64) -> Vec<TestFile> {
    vec![
        TestFile::new(MediaKind::Jpeg, 4096, seed),
        TestFile::new(MediaKind::Jpeg, 4096, seed + 1),
        TestFile::new(MediaKind::Mp4, 5 * 1024 * 1024, seed + 2),
        TestFile::new(MediaKind::Mp4, 5 * 1024 * 1024, seed + 3),
    ]
}

/// Checks that every normal upload got its 200 within `max`.
fn check_normal_uploads(findings: &mut Findings, outcomes: &[Timed], files: &[TestFile]) {
    for (outcome, file) in outcomes.iter().zip(files) {
        findings.check(
            outcome.ok_within(NORMAL_REPLY_MAX),
            format!(
                "normal upload of {} bytes: {} (want 200 within {NORMAL_REPLY_MAX:?})",
                file.bytes.len(),
                outcome.describe()
            ),
        );
    }
}

/// Why `response` is not a JSON error `{"error": "..."}` with `status`; None when it is.
fn json_error_problem(response: &Response, status: u16) -> Option<String> {
    let text: String = response.text().chars().take(200).collect();
    if response.status != status {
        return Some(format!(
            "status {} (want {status}), body {text:?}",
            response.status
        ));
    }
    match response.try_json() {
        Ok(body) if body["error"].is_string() => None,
        Ok(body) => Some(format!("{status} but no error string in {body}")),
        Err(_) => Some(format!("{status} with a body that is not JSON: {text:?}")),
    }
}

/// Describes a timed reply that should be a JSON error with `status`.
fn check_json_error(findings: &mut Findings, what: &str, outcome: &Timed, status: u16) {
    let problem = match &outcome.result {
        Ok(response) => json_error_problem(response, status),
        Err(error) => Some(format!("no reply: {error}")),
    };
    let ok = problem.is_none();
    let detail = problem.unwrap_or_else(|| format!("{status} JSON error"));
    findings.check(
        ok,
        format!("{what}: {detail} after {:.1?}", outcome.elapsed),
    );
}

/// GET with a bounded wait; for polling counters while hostile clients are connected.
fn get_bounded(daemon: &Daemon, path: &str) -> io::Result<Response> {
    timed_request(daemon.addr, "GET", path, &[], b"", SETTLE_MAX).result
}

/// Live connections over all cores, not counting the one asking.
fn other_connections(daemon: &Daemon) -> Option<u64> {
    let stats = get_bounded(daemon, "/stats").ok()?.try_json().ok()?;
    let live: u64 = stats["per_core"]
        .as_array()?
        .iter()
        .map(|core| core["connections"].as_u64().unwrap_or(0))
        .sum();
    Some(live.saturating_sub(1))
}

/// Polls `/stats` (bounded) until at most `max` other connections are live; returns the
/// last count seen (None when `/stats` did not answer).
fn wait_connections_at_most(daemon: &Daemon, max: u64, timeout: Duration) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = other_connections(daemon);
        if seen.is_some_and(|n| n <= max) || Instant::now() > deadline {
            return seen;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A field of `/proc/<pid>/status` in KiB (VmRSS, VmHWM).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// Resets the peak RSS (VmHWM) of a process to its current RSS (`clear_refs` value 5);
/// false when the kernel refused, and then the caller falls back to sampling.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), b"5").is_ok()
}

/// Non-empty lines over the journal files: one per record.
/// `put` records in the journal (the `place` intent logged before each is not counted).
fn journal_records(daemon: &Daemon) -> usize {
    daemon
        .journal_files()
        .iter()
        .map(|path| {
            let text = std::fs::read(path).unwrap_or_default();
            text.split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b"{\"op\":\"put\""))
                .count()
        })
        .sum()
}

/// Checks that nothing of a refused request was stored: `storage/.tmp` empty (bounded
/// wait), every file under `storage/` one that `others` accepts (another client's), and
/// `/statistics` files and the journal's records counting exactly those.
fn check_nothing_stored(
    findings: &mut Findings,
    daemon: &Daemon,
    others: impl Fn(&Path) -> bool,
    records_before: usize,
) {
    let deadline = Instant::now() + SETTLE_MAX;
    while !tmp_files(&daemon.data_dir).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let tmp = tmp_files(&daemon.data_dir);
    findings.check(
        tmp.is_empty(),
        format!("files left in storage/.tmp: {}", tmp.len()),
    );
    let (expected, stored): (Vec<PathBuf>, Vec<PathBuf>) = stored_files(&daemon.data_dir)
        .into_iter()
        .partition(|path| others(path));
    findings.check(
        stored.is_empty(),
        format!(
            "files of the refused request under storage/: {} {:?}",
            stored.len(),
            stored.iter().take(3).collect::<Vec<_>>()
        ),
    );
    let files_expected = expected.len() as u64;
    let statistics = get_bounded(daemon, "/statistics")
        .ok()
        .and_then(|r| r.try_json().ok());
    let files = statistics.as_ref().and_then(|s| s["files"].as_u64());
    findings.check(
        files == Some(files_expected),
        format!("/statistics files: {files:?} (want {files_expected})"),
    );
    let records = journal_records(daemon);
    let records_expected = records_before + expected.len();
    findings.check(
        records == records_expected,
        format!("journal records: {records} (want {records_expected})"),
    );
}

/// Connects a raw socket to the daemon, Nagle off.
fn raw_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, SETTLE_MAX)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(SETTLE_MAX))?;
    stream.set_write_timeout(Some(SETTLE_MAX))?;
    Ok(stream)
}

/// Writes what the socket takes right now without blocking; returns the bytes taken.
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

/// Reads one HTTP/1.1 response from a raw socket before `deadline` (head bounded to
/// 64 KiB, body to 1 MiB; framed by Content-Length or by the end of the connection).
fn read_raw_response(stream: &mut TcpStream, deadline: Instant) -> io::Result<Response> {
    const HEAD_BYTES_MAX: usize = 64 * 1024;
    const BODY_BYTES_MAX: u64 = 1024 * 1024;
    let mut data = Vec::new();
    let mut buffer = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if data.len() > HEAD_BYTES_MAX {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "response head too long",
            ));
        }
        stream.set_read_timeout(Some(time_left(deadline)?))?;
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        data.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, format!("bad head {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let mut response = Response {
        status,
        headers,
        body: data[head_end + 4..].to_vec(),
    };
    let length = response
        .header("content-length")
        .and_then(|value| value.parse::<u64>().ok());
    let want = length.unwrap_or(BODY_BYTES_MAX).min(BODY_BYTES_MAX);
    while (response.body.len() as u64) < want {
        stream.set_read_timeout(Some(time_left(deadline)?))?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => response.body.extend_from_slice(&buffer[..n]),
            Err(e) => return Err(e),
        }
    }
    Ok(response)
}

/// A background thread writing one byte to each of its sockets every [`TRICKLE_INTERVAL`]
/// (non-blocking: a socket that takes nothing is skipped), until stopped or `max_run`.
struct Trickler {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<usize>>,
}

impl Trickler {
    fn start(streams: Vec<TcpStream>, byte_at: fn(u64) -> u8, max_run: Duration) -> Trickler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut streams = streams;
            let deadline = Instant::now() + max_run;
            let mut round = 0u64;
            let mut bytes_sent = 0;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                for stream in &mut streams {
                    bytes_sent += write_nonblocking(stream, &[byte_at(round)]);
                }
                round += 1;
                let next = Instant::now() + TRICKLE_INTERVAL;
                while Instant::now() < next && !flag.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            // The sockets close here, when the test is done with them.
            bytes_sent
        });
        Trickler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread, closes its sockets, returns how many bytes it trickled.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|thread| thread.join().expect("trickler"))
            .unwrap_or(0)
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

/// Opens the trickling uploads: each sends its head (multipart POST or PUT, a large
/// Content-Length) and a first chunk, then is left non-blocking for the trickler.
fn open_trickling_uploads(addr: SocketAddr, put: bool, count: usize) -> Vec<TcpStream> {
    let boundary = "trickleBoundary0123456789";
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream = raw_connect(addr).expect("connect a trickling upload");
        let (head, part_head) = if put {
            let head = format!(
                "PUT /ingest/media/trickle{i}.bin HTTP/1.1\r\nHost: x\r\n\
Content-Type: application/octet-stream\r\nContent-Length: {TRICKLING_DECLARED_BYTES}\r\n\r\n"
            );
            (head, String::new())
        } else {
            let head = format!(
                "POST /ingest/media HTTP/1.1\r\nHost: x\r\n\
Content-Type: multipart/form-data; boundary={boundary}\r\n\
Content-Length: {TRICKLING_DECLARED_BYTES}\r\n\r\n"
            );
            let part_head = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
filename=\"trickle{i}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            );
            (head, part_head)
        };
        stream
            .write_all(head.as_bytes())
            .expect("send a trickling head");
        stream.set_nonblocking(true).expect("non-blocking");
        let first = if i % 5 == 0 {
            TRICKLING_FIRST_LARGE_BYTES
        } else {
            TRICKLING_FIRST_SMALL_BYTES
        };
        let mut chunk = part_head.into_bytes();
        chunk.resize(chunk.len() + first, b'x');
        write_nonblocking(&mut stream, &chunk);
        streams.push(stream);
    }
    streams
}

/// The trickling test for one request form (multipart POST or PUT).
fn trickling_uploads_do_not_delay_others(test: &'static str, put: bool) {
    let _serial = serial();
    let mut findings = Findings::new(test);
    let workers = TRICKLING_CORES.to_string();
    let daemon = Daemon::builder().args(&["--workers", &workers]).start();
    let count = TRICKLING_PER_CORE * TRICKLING_CORES;
    let opened = Instant::now();
    let streams = open_trickling_uploads(daemon.addr, put, count);
    let trickler = Trickler::start(streams, |_| b'x', Duration::from_secs(30));
    findings.note(format!(
        "{count} trickling uploads opened in {:.1?}",
        opened.elapsed()
    ));
    // Let the daemon take in what they sent, so they hold whatever they are going to hold.
    thread::sleep(Duration::from_millis(1500));
    let files = normal_files(if put { 7100 } else { 7000 });
    let outcomes = uploads_in_parallel(daemon.addr, files.clone(), put, NORMAL_REPLY_MAX);
    check_normal_uploads(&mut findings, &outcomes, &files);
    let trickled = trickler.stop();
    findings.note(format!("bytes trickled: {trickled}"));
    findings.finish();
}

/// Trickling multipart uploads (a client waiting on the network holds no shared
/// resource). How: `--workers 2`, 140 connections (70 per core) each POST a multipart head
/// with a 100 MB Content-Length and 1000 bytes of the file (every fifth 200 KiB, past the
/// small io buffer), then one byte per second. A normal client's 4 KiB and 5 MiB uploads
/// (two of each, so both cores are tried) must each get 200 within 3 s.
#[test]
fn trickling_multipart_uploads_do_not_delay_other_uploads() {
    trickling_uploads_do_not_delay_others(
        "trickling_multipart_uploads_do_not_delay_other_uploads",
        false,
    );
}

/// The same as the multipart trickling test with raw PUT bodies (`PUT /ingest/media/...`,
/// 100 MB Content-Length, trickled), and the normal uploads sent as PUT too.
#[test]
fn trickling_put_uploads_do_not_delay_other_uploads() {
    trickling_uploads_do_not_delay_others("trickling_put_uploads_do_not_delay_other_uploads", true);
}

/// Slowloris heads (no slow request delays other clients). How: 200 connections
/// send the head of an upload one byte per second and never finish it; meanwhile a normal
/// client's 4 KiB and 5 MiB uploads each get 200 within 3 s, and `/healthz` answers.
#[test]
fn slowloris_heads_do_not_delay_other_uploads() {
    let _serial = serial();
    let mut findings = Findings::new("slowloris_heads_do_not_delay_other_uploads");
    let daemon = Daemon::start();
    let streams: Vec<TcpStream> = (0..SLOWLORIS_CONNECTIONS)
        .map(|_| {
            let stream = raw_connect(daemon.addr).expect("connect a slowloris client");
            stream.set_nonblocking(true).expect("non-blocking");
            stream
        })
        .collect();
    const HEAD: &[u8] = b"POST /ingest/media HTTP/1.1\r\nHost: slowloris\r\nContent-Type: \
multipart/form-data; boundary=B\r\nContent-Length: 100000000\r\nX-Padding: aaaaaaaaaaaaaaaa";
    let trickler = Trickler::start(
        streams,
        |round| HEAD[(round as usize).min(HEAD.len() - 1)],
        Duration::from_secs(30),
    );
    thread::sleep(Duration::from_millis(2500));
    let files = normal_files(7200);
    let outcomes = uploads_in_parallel(daemon.addr, files.clone(), false, NORMAL_REPLY_MAX);
    check_normal_uploads(&mut findings, &outcomes, &files);
    let health = timed_request(daemon.addr, "GET", "/healthz", &[], b"", NORMAL_REPLY_MAX);
    findings.check(
        health.ok_within(NORMAL_REPLY_MAX),
        format!("/healthz beside slowloris: {}", health.describe()),
    );
    let trickled = trickler.stop();
    findings.note(format!("head bytes trickled: {trickled}"));
    findings.finish();
}

/// Raises this test process's soft RLIMIT_NOFILE to at least `want` (bounded by the hard
/// limit); returns the soft limit in force afterwards. The daemon is another process and
/// keeps the limit it started with.
fn raise_open_files_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

/// What one connecting thread of the idle-connections test opened.
struct IdleOpened {
    streams: Vec<TcpStream>,
    errors: Vec<String>,
    slowest: Duration,
    /// Connects slower than [`CONNECT_MAX`].
    slow: usize,
}

/// Opens `count` connections one after the other (at most 10 errors), timing each.
fn open_idle_connections(addr: SocketAddr, count: usize) -> IdleOpened {
    let mut opened = IdleOpened {
        streams: Vec::with_capacity(count),
        errors: Vec::new(),
        slowest: Duration::ZERO,
        slow: 0,
    };
    for _ in 0..count {
        let connecting = Instant::now();
        match raw_connect(addr) {
            Ok(stream) => opened.streams.push(stream),
            Err(error) => opened.errors.push(error.to_string()),
        }
        let took = connecting.elapsed();
        opened.slowest = opened.slowest.max(took);
        opened.slow += usize::from(took > CONNECT_MAX);
        if opened.errors.len() >= 10 {
            break;
        }
    }
    opened
}

/// 2,000 idle connections (connections that wait hold nothing others need; a wait
/// for a connection slot is bounded). How: open 2,000 connections that send nothing, from
/// four threads at once; none may take over 0.5 s to connect (a burst must not overflow the listen
/// backlog, which drops SYNs and costs each such client a 1 s, 3 s, 7 s... retry); a
/// normal 4 KiB upload and the download of a stored file each succeed within 3 s; after
/// the 2,000 close, `/stats` counts no other live connection within 5 s. The daemon's RSS
/// before, with and after the connections is printed (to see where it levels,
/// ~65 MB once; not asserted here).
#[test]
fn idle_connections_do_not_block_and_are_released() {
    let _serial = serial();
    let mut findings = Findings::new("idle_connections_do_not_block_and_are_released");
    let daemon = Daemon::start();
    let stored = daemon.upload_ok(&[TestFile::new(MediaKind::Png, 3000, 7300)]);
    let hash = stored[0]["hash"].as_str().unwrap().to_string();
    let open_files = raise_open_files_limit(IDLE_CONNECTIONS as u64 + 512);
    findings.note(format!(
        "test process RLIMIT_NOFILE soft limit: {open_files}"
    ));
    let rss_before = rss_kib(daemon.pid());
    let opened = Instant::now();
    let connectors: Vec<_> = (0..IDLE_CONNECTORS)
        .map(|_| {
            let addr = daemon.addr;
            thread::spawn(move || open_idle_connections(addr, IDLE_CONNECTIONS / IDLE_CONNECTORS))
        })
        .collect();
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    let mut connect_errors = Vec::new();
    let mut connect_slowest = Duration::ZERO;
    let mut connects_slow = 0;
    for connector in connectors {
        let opened = connector.join().expect("connector thread");
        idle.extend(opened.streams);
        connect_errors.extend(opened.errors);
        connect_slowest = connect_slowest.max(opened.slowest);
        connects_slow += opened.slow;
    }
    findings.check(
        idle.len() == IDLE_CONNECTIONS,
        format!(
            "idle connections opened: {} in {:.1?}, errors {connect_errors:?}",
            idle.len(),
            opened.elapsed()
        ),
    );
    findings.check(
        connects_slow == 0,
        format!(
            "connects slower than {CONNECT_MAX:?}: {connects_slow}, slowest {connect_slowest:.2?} \
(a dropped SYN costs 1 s: the listen backlog overflowed)"
        ),
    );
    let held = wait_connections_at_most(&daemon, u64::MAX, SETTLE_MAX);
    findings.note(format!(
        "live connections with the idle ones open: {held:?}"
    ));
    let upload = timed_post(
        daemon.addr,
        &TestFile::new(MediaKind::Jpeg, 4096, 7301),
        NORMAL_REPLY_MAX,
    );
    findings.check(
        upload.ok_within(NORMAL_REPLY_MAX),
        format!(
            "4 KiB upload beside {} idle connections: {}",
            idle.len(),
            upload.describe()
        ),
    );
    let path = format!("/files/download?hash={hash}");
    let download = timed_request(daemon.addr, "GET", &path, &[], b"", NORMAL_REPLY_MAX);
    let bytes_ok = download
        .result
        .as_ref()
        .is_ok_and(|response| response.body.len() == 3000);
    findings.check(
        download.ok_within(NORMAL_REPLY_MAX) && bytes_ok,
        format!(
            "download beside the idle connections: {}",
            download.describe()
        ),
    );
    let rss_with = rss_kib(daemon.pid());
    drop(idle);
    let left = wait_connections_at_most(&daemon, 0, SETTLE_MAX);
    findings.check(
        left == Some(0),
        format!("other live connections {SETTLE_MAX:?} after closing them: {left:?}"),
    );
    findings.note(format!(
        "daemon RSS: {rss_before} KiB before, {rss_with} KiB with the idle connections, \
{} KiB after closing them",
        rss_kib(daemon.pid())
    ));
    findings.finish();
}

/// Sends `prefix` and then `BOMB_BYTES` of `a` as the body of a multipart POST declaring
/// `boundary=B`, reads the reply on another thread's socket clone, stops sending as soon
/// as a reply (or a close) comes, and checks: a 400 JSON error within
/// [`EARLY_REFUSAL_MAX`], and the daemon's peak RSS under the request at most
/// [`RSS_GROWTH_MAX_KIB`] above its RSS before.
fn bomb_is_refused_early_and_small(test: &'static str, prefix: &[u8]) {
    let _serial = serial();
    let mut findings = Findings::new(test);
    let daemon = Daemon::start();
    // One ordinary request first, so the connection machinery is warm when measured.
    assert_eq!(daemon.get("/healthz").status, 200);
    let pid = daemon.pid();
    let rss_before = rss_kib(pid);
    let peak_resettable = reset_peak_rss(pid);
    let mut stream = raw_connect(daemon.addr).expect("connect");
    let length = prefix.len() as u64 + BOMB_BYTES;
    let head = format!(
        "POST /ingest/media HTTP/1.1\r\nHost: x\r\n\
Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {length}\r\n\r\n"
    );
    let mut writer = stream.try_clone().expect("clone the socket");
    writer
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_writer = stop.clone();
    let started = Instant::now();
    let prefix = prefix.to_vec();
    let sender = thread::spawn(move || -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0u64;
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&prefix).is_err() {
            return 0;
        }
        while sent < BOMB_BYTES && !stop_writer.load(Ordering::Relaxed) {
            if Instant::now() > deadline {
                break;
            }
            let want = (BOMB_BYTES - sent).min(chunk.len() as u64) as usize;
            match writer.write(&chunk[..want]) {
                Ok(0) => break,
                Ok(n) => sent += n as u64,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        sent
    });
    let mut peak_sampled = rss_before;
    let reply = read_raw_response(&mut stream, started + EARLY_REFUSAL_MAX);
    let elapsed = started.elapsed();
    peak_sampled = peak_sampled.max(rss_kib(pid));
    stop.store(true, Ordering::Relaxed);
    let _ = stream.shutdown(Shutdown::Both);
    let sent = sender.join().expect("sender thread");
    let peak = if peak_resettable {
        proc_status_kib(pid, "VmHWM").max(peak_sampled)
    } else {
        peak_sampled
    };
    let outcome = Timed {
        result: reply,
        elapsed,
    };
    check_json_error(&mut findings, "reply to the bomb", &outcome, 400);
    findings.check(
        outcome.result.is_ok() && elapsed <= EARLY_REFUSAL_MAX,
        format!(
            "answered after {elapsed:.2?} having sent {} MiB (want within {EARLY_REFUSAL_MAX:?})",
            sent / (1024 * 1024)
        ),
    );
    let growth = peak.saturating_sub(rss_before);
    findings.check(
        growth <= RSS_GROWTH_MAX_KIB,
        format!(
            "daemon RSS {rss_before} KiB before, peak {peak} KiB: grew {} MiB (want < {} MiB; \
peak from {})",
            growth / 1024,
            RSS_GROWTH_MAX_KIB / 1024,
            if peak_resettable { "VmHWM" } else { "samples" }
        ),
    );
    let health = timed_request(daemon.addr, "GET", "/healthz", &[], b"", SETTLE_MAX);
    findings.check(
        health.status() == Some(200),
        format!("/healthz afterwards: {}", health.describe()),
    );
    findings.finish();
}

/// The part-header bomb (a part header that never ends is a 400, early; memory
/// does not grow with what a client sends). How: one POST, `boundary=B`, body `--B\r\nX: `
/// then 300 MiB of `a`, streamed and stopped as soon as the daemon answers: a 400 JSON
/// error within 3 s, and the daemon's peak RSS (VmHWM, reset before) less than 16 MiB
/// above its RSS before.
#[test]
fn part_header_bomb_is_400_early_with_bounded_memory() {
    bomb_is_refused_early_and_small(
        "part_header_bomb_is_400_early_with_bounded_memory",
        b"--B\r\nX: ",
    );
}

/// A multipart preamble that never reaches a boundary (the preamble is bounded).
/// How: as the part-header bomb, the body being 300 MiB of `a` with no `--B` at all: a 400
/// JSON error within 3 s, peak RSS growth under 16 MiB.
#[test]
fn endless_preamble_is_400_early_with_bounded_memory() {
    bomb_is_refused_early_and_small("endless_preamble_is_400_early_with_bounded_memory", b"");
}

/// A search that panicked the handler (once: `split_at` inside a UTF-8 character;
/// no panic is reachable from input, counters released). How: `GET /files/search?from=
/// 2026-01-15T1234567%C3%A912345` must be a 400 JSON error; once the client closed,
/// `/stats` counts no other live connection (bounded poll); the daemon still serves; and
/// with `--shutdown-timeout-s 20` SIGTERM makes it exit 0 within 5 s (a leaked connection
/// count makes it wait the full timeout).
#[test]
fn search_with_split_utf8_is_400_and_releases_its_connection() {
    let _serial = serial();
    let mut findings = Findings::new("search_with_split_utf8_is_400_and_releases_its_connection");
    let mut daemon = Daemon::builder()
        .args(&["--shutdown-timeout-s", "20"])
        .start();
    let path = "/files/search?from=2026-01-15T1234567%C3%A912345";
    let outcome = timed_request(daemon.addr, "GET", path, &[], b"", SETTLE_MAX);
    check_json_error(
        &mut findings,
        "search with a split UTF-8 date",
        &outcome,
        400,
    );
    let left = wait_connections_at_most(&daemon, 0, SETTLE_MAX);
    findings.check(
        left == Some(0),
        format!("other live connections after the client closed: {left:?} (want 0)"),
    );
    let health = timed_request(daemon.addr, "GET", "/healthz", &[], b"", SETTLE_MAX);
    findings.check(
        health.status() == Some(200),
        format!("/healthz afterwards: {}", health.describe()),
    );
    let signalled = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon.try_wait_exit(PROMPT_EXIT_MAX + Duration::from_secs(1));
    let took = signalled.elapsed();
    findings.check(
        status.is_some_and(|s| s.success()) && took <= PROMPT_EXIT_MAX,
        format!(
            "exit after SIGTERM: {status:?} after {took:.1?} (want exit 0 within \
{PROMPT_EXIT_MAX:?}; killed when still running)"
        ),
    );
    findings.finish();
}

/// How the client of [`truncated_but_terminated`] ends its side.
#[derive(Clone, Copy, Debug)]
enum ClientEnd {
    /// `shutdown(SHUT_WR)` and wait for the reply.
    HalfClose,
    /// SO_LINGER 0 and close: the daemon sees a reset.
    Reset,
}

/// Sets SO_LINGER to 0 so that closing the socket sends a reset.
fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a live struct of the
    // size we pass.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "setsockopt(SO_LINGER)");
}

/// Sends a complete multipart body (final boundary included) under a Content-Length 1000
/// bytes larger, waits, ends the client side as `end` says, and checks that nothing was
/// stored (and, for a half-close, that the reply is a 400 JSON error).
fn truncated_but_terminated(test: &'static str, end: ClientEnd) {
    let _serial = serial();
    let mut findings = Findings::new(test);
    let daemon = Daemon::start();
    let records_before = journal_records(&daemon);
    let file = TestFile::new(MediaKind::Png, 3000, 7400);
    let (content_type, body) = form_of(std::slice::from_ref(&file)).finish();
    let head = format!(
        "POST /ingest/media HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
Content-Length: {}\r\n\r\n",
        body.len() + 1000
    );
    let mut stream = raw_connect(daemon.addr).expect("connect");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    // Time for a daemon that commits at the final boundary to do so.
    thread::sleep(Duration::from_millis(500));
    match end {
        ClientEnd::HalfClose => {
            stream.shutdown(Shutdown::Write).unwrap();
            let started = Instant::now();
            let reply = read_raw_response(&mut stream, started + SETTLE_MAX);
            let outcome = Timed {
                result: reply,
                elapsed: started.elapsed(),
            };
            check_json_error(&mut findings, "reply to the short body", &outcome, 400);
            drop(stream);
        }
        ClientEnd::Reset => {
            set_linger_zero(&stream);
            drop(stream);
        }
    }
    let left = wait_connections_at_most(&daemon, 0, SETTLE_MAX);
    findings.note(format!("other live connections afterwards: {left:?}"));
    check_nothing_stored(&mut findings, &daemon, |_| false, records_before);
    findings.finish();
}

/// A body that holds its final boundary but is shorter than its Content-Length, the
/// client then half-closing (commit only at the end of the body; a body cut
/// short is a 400 and stores nothing). How: a one-file multipart body, complete, sent
/// under a Content-Length 1000 bytes larger; after 0.5 s `shutdown(SHUT_WR)`. The reply
/// must be a 400 JSON error; nothing under `storage/` (`.tmp` empty), `/statistics` files
/// 0, no journal record.
#[test]
fn terminated_body_cut_short_by_half_close_stores_nothing() {
    truncated_but_terminated(
        "terminated_body_cut_short_by_half_close_stores_nothing",
        ClientEnd::HalfClose,
    );
}

/// The same short body, the client resetting the connection instead (SO_LINGER 0, close):
/// nothing under `storage/` (`.tmp` empty), `/statistics` files 0, no journal record.
#[test]
fn terminated_body_cut_short_by_reset_stores_nothing() {
    truncated_but_terminated(
        "terminated_body_cut_short_by_reset_stores_nothing",
        ClientEnd::Reset,
    );
}

/// The part flood: 10,001 tiny file parts with the default `--max-parts` of 10,000
/// (cheap to refuse, nobody else delayed). How: `--workers 1`, so the floods and the
/// other client share the core; two clients send the flood at the same time while another
/// uploads a 4 KiB file again and again on fresh connections. Each flood gets a 400 JSON
/// error within 3 s; every upload that overlaps the floods gets 200 within 1 s;
/// afterwards `storage/.tmp` is empty and only the other client's files are stored.
#[test]
fn part_flood_is_refused_cheaply_without_delaying_others() {
    let _serial = serial();
    let mut findings = Findings::new("part_flood_is_refused_cheaply_without_delaying_others");
    let daemon = Daemon::builder().args(&["--workers", "1"]).start();
    let records_before = journal_records(&daemon);
    let mut form = Multipart::new();
    for i in 0..FLOOD_PARTS {
        let bytes = format!("flood part {i:05}");
        let name = format!("p{i}.bin");
        form = form.file("file", &name, "application/octet-stream", bytes.as_bytes());
    }
    let (content_type, body) = form.finish();
    findings.note(format!("flood body: {} bytes", body.len()));

    let addr = daemon.addr;
    let flood_done = Arc::new(AtomicBool::new(false));
    let done_flag = flood_done.clone();
    let prober = thread::spawn(move || -> Vec<(bool, Timed)> {
        // (overlapped the flood, outcome); bounded in count and time.
        let started = Instant::now();
        let mut probes = Vec::new();
        let mut after_flood = 0;
        for seed in 0..500u64 {
            if after_flood >= 2 || started.elapsed() > Duration::from_secs(30) {
                break;
            }
            let during = !done_flag.load(Ordering::Relaxed);
            let file = TestFile::new(MediaKind::Jpeg, 4096, 7500 + seed);
            let outcome = timed_post(addr, &file, SETTLE_MAX);
            let during = during || !done_flag.load(Ordering::Relaxed);
            if !during {
                after_flood += 1;
            }
            probes.push((during, outcome));
            thread::sleep(Duration::from_millis(20));
        }
        probes
    });
    thread::sleep(Duration::from_millis(100));
    let body = Arc::new(body);
    let floods: Vec<_> = (0..FLOOD_CLIENTS)
        .map(|_| {
            let (body, content_type) = (body.clone(), content_type.clone());
            thread::spawn(move || {
                let headers = [("Content-Type", content_type.as_str())];
                let timeout = Duration::from_secs(30);
                timed_request(addr, "POST", "/ingest/media", &headers, &body, timeout)
            })
        })
        .collect();
    let floods: Vec<Timed> = floods
        .into_iter()
        .map(|flood| flood.join().expect("flood thread"))
        .collect();
    flood_done.store(true, Ordering::Relaxed);
    let probes = prober.join().expect("prober thread");

    for flood in &floods {
        check_json_error(&mut findings, "reply to the flood", flood, 400);
        findings.check(
            flood.result.is_ok() && flood.elapsed <= EARLY_REFUSAL_MAX,
            format!(
                "flood refused after {:.2?} (want within {EARLY_REFUSAL_MAX:?})",
                flood.elapsed
            ),
        );
    }
    let during: Vec<&Timed> = probes.iter().filter(|p| p.0).map(|p| &p.1).collect();
    let worst = during.iter().map(|t| t.elapsed).max().unwrap_or_default();
    let all_ok = during.iter().all(|t| t.ok_within(BESIDE_FLOOD_REPLY_MAX));
    let failed: Vec<String> = during
        .iter()
        .filter(|t| !t.ok_within(BESIDE_FLOOD_REPLY_MAX))
        .map(|t| t.describe())
        .take(5)
        .collect();
    findings.check(
        !during.is_empty() && all_ok,
        format!(
            "{} uploads beside the flood, slowest {worst:.2?} (want 200 within \
{BESIDE_FLOOD_REPLY_MAX:?}); off: {failed:?}",
            during.len()
        ),
    );
    // The other client's files are the JPEGs; the flood's parts are `p<i>.bin`.
    let probe_file = |path: &Path| path.extension().is_some_and(|ext| ext == "jpg");
    check_nothing_stored(&mut findings, &daemon, probe_file, records_before);
    findings.finish();
}

/// Sends `request` as raw bytes (a failed write is ignored: the daemon may refuse early
/// and close) and reads one reply, bounded.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Timed {
    let started = Instant::now();
    let deadline = started + SETTLE_MAX;
    let result = raw_connect(addr).and_then(|mut stream| {
        write_before(&mut stream, request, deadline)?;
        read_raw_response(&mut stream, deadline)
    });
    Timed {
        result,
        elapsed: started.elapsed(),
    }
}

/// Errors of the HTTP layer are JSON too (errors are always JSON; hyper once
/// answered these with an empty body). How: raw requests with a bad request line,
/// conflicting Content-Length headers, a header line without a colon, a URL over 64 KiB,
/// and 101 headers; each must get its status (400, 400, 400, 414, 431) with
/// `Content-Type: application/json` and a body `{"error": "..."}`.
#[test]
fn http_layer_errors_are_json() {
    let _serial = serial();
    let mut findings = Findings::new("http_layer_errors_are_json");
    let daemon = Daemon::start();
    let long_url = format!(
        "GET /healthz?x={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let mut many_headers = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..101 {
        many_headers.push_str(&format!("X-Header-{i}: v\r\n"));
    }
    many_headers.push_str("\r\n");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "bad request line",
            b"NOT A REQUEST LINE\r\n\r\n".to_vec(),
            400,
        ),
        (
            "conflicting Content-Length",
            b"POST /ingest/media HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
Content-Length: 6\r\n\r\nhello!"
                .to_vec(),
            400,
        ),
        (
            "header line without a colon",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n".to_vec(),
            400,
        ),
        ("URL over 64 KiB", long_url.into_bytes(), 414),
        ("101 headers", many_headers.into_bytes(), 431),
    ];
    for (what, request, status) in cases {
        let outcome = raw_exchange(daemon.addr, &request);
        check_json_error(&mut findings, what, &outcome, status);
        let content_type = outcome
            .result
            .as_ref()
            .ok()
            .and_then(|r| r.header("content-type").map(str::to_string));
        findings.check(
            content_type
                .as_deref()
                .is_some_and(|t| t.starts_with("application/json")),
            format!("{what}: Content-Type {content_type:?} (want application/json)"),
        );
    }
    let health = timed_request(daemon.addr, "GET", "/healthz", &[], b"", SETTLE_MAX);
    findings.check(
        health.status() == Some(200),
        format!("/healthz afterwards: {}", health.describe()),
    );
    findings.finish();
}

/// The uid and gid of `nobody`, an ordinary user without capabilities.
const NOBODY: u32 = 65534;
/// The usual `ulimit -l` of an ordinary user: 8 MiB.
const MEMLOCK_BYTES: u64 = 8 * 1024 * 1024;

/// A temporary directory owned by `nobody`, with the data dir to be created inside it.
fn nobody_data_dir() -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::Builder::new()
        .prefix("rhinobox-nobody")
        .tempdir()
        .unwrap();
    chown(temp.path(), NOBODY);
    let data = temp.path().join("data");
    (temp, data)
}

fn chown(path: &Path, id: u32) {
    let path_c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: chown(2) on a NUL-terminated path we own.
    let result = unsafe { libc::chown(path_c.as_ptr(), id, id) };
    assert_eq!(result, 0, "chown {}", path.display());
}

/// Starts the daemon as `nobody` under `ulimit -l 8192` with these flags, uploads a file
/// and downloads it; records each step.
fn start_as_nobody(findings: &mut Findings, flags: &[&str]) {
    let (_temp, data_dir) = nobody_data_dir();
    let memlock = format!("--memlock={MEMLOCK_BYTES}:{MEMLOCK_BYTES}");
    let reuid = format!("--reuid={NOBODY}");
    let regid = format!("--regid={NOBODY}");
    let prefix = [
        "prlimit",
        memlock.as_str(),
        "setpriv",
        reuid.as_str(),
        regid.as_str(),
        "--clear-groups",
    ];
    let started = Daemon::builder()
        .prefix(&prefix)
        .data_dir(&data_dir)
        .args(flags)
        .try_start();
    let daemon = match started {
        Ok(daemon) => daemon,
        Err(message) => {
            let log: Vec<&str> = message.lines().filter(|l| l.contains("stderr")).collect();
            let head = message.lines().next().unwrap_or_default();
            findings.check(false, format!("start {flags:?}: {head}; {log:?}"));
            return;
        }
    };
    let warnings: Vec<String> = daemon
        .stderr_lines()
        .into_iter()
        .filter(|line| line.contains("warning"))
        .collect();
    findings.check(
        warnings.len() <= 1,
        format!("start {flags:?}: started, warnings {warnings:?} (at most one)"),
    );
    let file = TestFile::new(MediaKind::Jpeg, 5000, 7600);
    let upload = timed_post(daemon.addr, &file, SETTLE_MAX);
    findings.check(
        upload.status() == Some(200),
        format!("upload {flags:?}: {}", upload.describe()),
    );
    let path = format!("/files/download?hash={}", file.hash());
    let download = timed_request(daemon.addr, "GET", &path, &[], b"", SETTLE_MAX);
    let same = download
        .result
        .as_ref()
        .is_ok_and(|response| response.body == file.bytes);
    findings.check(
        download.status() == Some(200) && same,
        format!(
            "download {flags:?}: {}, same bytes {same}",
            download.describe()
        ),
    );
}

/// A start as an ordinary user (the defaults start as a non-root user with the
/// usual `ulimit -l` of 8 MiB). How: as root (CI runs as root; skipped with a printed
/// reason otherwise), run the daemon as uid/gid 65534 (`setpriv`) under `prlimit
/// --memlock=8388608:8388608`, with a data dir owned by 65534, `--io-engine auto`, with
/// `--workers 2` and with the default workers (and `--io-engine threads` in the threads
/// twin): each start must succeed with at most one warning line, accept an upload and
/// serve its download.
#[test]
fn starts_as_ordinary_user_with_usual_memlock_limit() {
    let _serial = serial();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to start the daemon as uid 65534 (setpriv)");
        return;
    }
    let mut findings = Findings::new("starts_as_ordinary_user_with_usual_memlock_limit");
    let mut cases: Vec<Vec<&str>> = vec![
        vec!["--io-engine", "auto", "--workers", "2"],
        vec!["--io-engine", "auto"],
    ];
    if io_engine() == "threads" {
        cases.push(vec!["--io-engine", "threads"]);
    }
    for flags in &cases {
        start_as_nobody(&mut findings, flags);
    }
    findings.finish();
}

/// An upload that pauses mid-file (past the hold limit of an io buffer, so the buffer is
/// written out and given back at an unaligned offset) is stored with exactly its bytes:
/// PUT and multipart, a large file (O_DIRECT before and after the pauses) and a small one.
#[test]
fn uploads_that_pause_mid_file_are_stored_exactly() {
    let _serial = serial();
    let daemon = Daemon::builder().args(&["--workers", "1"]).start();
    for (size, seed) in [(3 * 1024 * 1024 + 12_345u64, 71u64), (150_000, 72)] {
        let file = TestFile::named("paused.mp4", MediaKind::Mp4, size, seed);
        for multipart in [false, true] {
            let (head, body) = if multipart {
                let form = form_of(std::slice::from_ref(&file));
                let boundary = form.boundary().to_string();
                let (_, body) = form.finish();
                let head = format!(
                    "POST /ingest/media HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; \
                     boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                (head, body)
            } else {
                let head = format!(
                    "PUT /ingest/media/paused.mp4 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                    file.bytes.len()
                );
                (head, file.bytes.clone())
            };
            let mut stream = TcpStream::connect(daemon.addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            stream.write_all(head.as_bytes()).unwrap();
            // Pieces with pauses past the 100 ms hold limit at unaligned offsets.
            let cuts = [body.len() / 2 + 7, body.len() / 2 + 70_001, body.len() - 3];
            let mut sent = 0;
            for cut in cuts.into_iter().chain([body.len()]) {
                stream.write_all(&body[sent..cut]).unwrap();
                sent = cut;
                std::thread::sleep(Duration::from_millis(250));
            }
            let mut reply = Vec::new();
            let mut reader = std::io::BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(
                line.starts_with("HTTP/1.1 200"),
                "{size} {multipart}: {line}"
            );
            let mut length = 0usize;
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            reply.resize(length, 0);
            reader.read_exact(&mut reply).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&reply).unwrap();
            assert_eq!(json["stored"][0]["hash"], file.hash().as_str(), "{json}");
            let stored =
                std::fs::read(daemon.disk_path(json["stored"][0]["path"].as_str().unwrap()))
                    .unwrap();
            assert_eq!(stored.len() as u64, size);
            assert_eq!(rhinobox::client::blake3_hex(&stored), file.hash());
            // The second round stores the same content: remove it to store it again.
            let deleted = daemon.request("DELETE", &format!("/files/{}", file.hash()), &[], &[]);
            assert_eq!(deleted.status, 200, "{}", deleted.text());
        }
    }
}
