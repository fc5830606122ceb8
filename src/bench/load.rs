//! The load drivers: client threads with one keep-alive connection each.
//!
//! Closed loop (default): each client sends its next request as soon as the previous
//! answer is in; this finds the maximum throughput. Open loop (`rate`): request `i` of the
//! run is due at `start + i / rate`, spread round-robin over the clients, and its latency
//! is measured from that due time, not from when it was actually sent, so a stalled
//! server is charged for the requests it delayed (no coordinated omission).
//!
//! A run: every client prepares its requests, sends its warm-up requests (checked, not
//! timed), and waits at a barrier; the driver samples the server's `/proc` figures and
//! this process's CPU time, releases the clients, and samples again when the last one
//! is done. Every answer is checked; a failed request counts its files as errors, the
//! first messages are kept, and the connection is reopened.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::client::{Connection, Multipart, Response};

use super::stats::Latency;
use super::target::{self, Endpoint, Mode, ProcSample};
use super::workload::{Body, Expected, Prepared, Workload};

/// Error messages kept per run; the rest are only counted.
const ERROR_SAMPLES_MAX: usize = 5;
/// Delay between releasing the clients and the first due time of an open-loop run.
const OPEN_LOOP_LEAD: Duration = Duration::from_millis(5);

/// One run of one load shape against one endpoint.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub clients: usize,
    pub warmup_per_client: usize,
    pub requests_per_client: usize,
    pub workload: Workload,
    /// Open loop: requests per second over all clients.
    pub rate: Option<f64>,
    /// Bound on connecting and on every read and write of a request (default: the
    /// client's [`crate::client::http::TIMEOUT_DEFAULT`]); a server that stalls shows as
    /// failed requests, not as a hung run.
    pub request_timeout: Option<Duration>,
    /// Bound on the measured part of the run: a client sends no request after this much
    /// time; the requests it did not send count as failed (with one error message).
    pub run_time_max: Option<Duration>,
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    pub requests: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub failed_requests: u64,
    pub failed_files: u64,
    pub error_samples: Vec<String>,
    pub duplicates_seen: u64,
    /// Files acknowledged by a server whose answer carries no hashes (nginx).
    pub unverified_files: u64,
    pub duration: Duration,
    pub latency: Latency,
    pub client_cpu_s: f64,
    pub server_before: Option<ProcSample>,
    pub server_after: Option<ProcSample>,
}

#[derive(Default)]
struct ClientTally {
    latencies_ns: Vec<u64>,
    requests: u64,
    files: u64,
    file_bytes: u64,
    failed_requests: u64,
    failed_files: u64,
    errors: Vec<String>,
    duplicates_seen: u64,
    unverified_files: u64,
    finished: Option<Instant>,
}

/// Live counters for the progress line.
#[derive(Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub failed: AtomicU64,
}

/// Runs `spec` against `endpoint`; `server_pid` is sampled when given.
pub fn run(
    endpoint: &Endpoint,
    server_pid: Option<u32>,
    spec: &LoadSpec,
    label: &str,
) -> LoadOutcome {
    let clients = spec.clients.max(1);
    let ready = Arc::new(Barrier::new(clients + 1));
    let go = Arc::new(Barrier::new(clients + 1));
    let start_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let progress = Arc::new(Progress::default());
    let handles: Vec<_> = (0..clients)
        .map(|client| {
            let (endpoint, spec) = (endpoint.clone(), spec.clone());
            let (ready, go, start_at, progress) = (
                ready.clone(),
                go.clone(),
                start_at.clone(),
                progress.clone(),
            );
            std::thread::Builder::new()
                .name(format!("bench-client-{client}"))
                .spawn(move || {
                    client_main(&endpoint, &spec, client, &ready, &go, &start_at, &progress)
                })
                .expect("spawning a client thread")
        })
        .collect();
    ready.wait();
    if let Some(pid) = server_pid {
        target::reset_peak(pid);
    }
    let server_before = server_pid.and_then(target::sample);
    let client_cpu_before = target::self_cpu_s();
    let started = Instant::now()
        + if spec.rate.is_some() {
            OPEN_LOOP_LEAD
        } else {
            Duration::ZERO
        };
    *start_at.lock().expect("start lock") = Some(started);
    let done = Arc::new(AtomicBool::new(false));
    let reporter = spawn_progress(label.to_string(), progress.clone(), done.clone());
    go.wait();
    let tallies: Vec<ClientTally> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread panicked"))
        .collect();
    let finished = tallies
        .iter()
        .filter_map(|t| t.finished)
        .max()
        .unwrap_or(started);
    let client_cpu_s = target::self_cpu_s() - client_cpu_before;
    let server_after = server_pid.and_then(target::sample);
    done.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    merge(
        tallies,
        finished.saturating_duration_since(started),
        client_cpu_s,
        server_before,
        server_after,
    )
}

fn merge(
    tallies: Vec<ClientTally>,
    duration: Duration,
    client_cpu_s: f64,
    server_before: Option<ProcSample>,
    server_after: Option<ProcSample>,
) -> LoadOutcome {
    let mut outcome = LoadOutcome {
        duration,
        client_cpu_s,
        server_before,
        server_after,
        ..LoadOutcome::default()
    };
    let mut latencies = Vec::new();
    for tally in tallies {
        latencies.extend_from_slice(&tally.latencies_ns);
        outcome.requests += tally.requests;
        outcome.files += tally.files;
        outcome.file_bytes += tally.file_bytes;
        outcome.failed_requests += tally.failed_requests;
        outcome.failed_files += tally.failed_files;
        outcome.duplicates_seen += tally.duplicates_seen;
        outcome.unverified_files += tally.unverified_files;
        for error in tally.errors {
            if outcome.error_samples.len() < ERROR_SAMPLES_MAX {
                outcome.error_samples.push(error);
            }
        }
    }
    outcome.latency = Latency::from_ns(&mut latencies);
    outcome
}

fn spawn_progress(
    label: String,
    progress: Arc<Progress>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut last_report = started;
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if last_report.elapsed() >= Duration::from_secs(3) {
                last_report = Instant::now();
                let files = progress.files.load(Ordering::Relaxed);
                let elapsed = started.elapsed().as_secs_f64();
                eprintln!(
                    "  … {label}: {files} files in {elapsed:.0} s ({:.0} files/s), {} failed",
                    files as f64 / elapsed,
                    progress.failed.load(Ordering::Relaxed)
                );
            }
        }
    })
}

fn client_main(
    endpoint: &Endpoint,
    spec: &LoadSpec,
    client: usize,
    ready: &Barrier,
    go: &Barrier,
    start_at: &Mutex<Option<Instant>>,
    progress: &Progress,
) -> ClientTally {
    let warmup = spec.warmup_per_client;
    let total = warmup + spec.requests_per_client;
    let requests: Vec<Prepared> = (0..total)
        .map(|request| spec.workload.prepare(client, request, warmup))
        .collect();
    let timeout = spec.request_timeout;
    let mut connection = connect(endpoint, timeout).ok();
    let mut tally = ClientTally::default();
    for prepared in &requests[..warmup] {
        if let Err(error) = send_checked(&mut connection, endpoint, timeout, prepared) {
            tally.errors.push(format!("warm-up: {error}"));
        }
    }
    ready.wait();
    go.wait();
    let started = start_at
        .lock()
        .expect("start lock")
        .expect("start set before release");
    tally.latencies_ns.reserve(spec.requests_per_client);
    let stop_at = spec.run_time_max.map(|max| started + max);
    for (index, prepared) in requests[warmup..].iter().enumerate() {
        if stop_at.is_some_and(|stop_at| Instant::now() >= stop_at) {
            count_unsent(&mut tally, &requests[warmup + index..]);
            break;
        }
        let due = spec.rate.map(|rate| {
            let global = index * spec.clients + client;
            started + Duration::from_secs_f64(global as f64 / rate)
        });
        if let Some(due) = due {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let sent = due.unwrap_or_else(Instant::now);
        let result = send_checked(&mut connection, endpoint, timeout, prepared);
        tally.latencies_ns.push(sent.elapsed().as_nanos() as u64);
        tally.requests += 1;
        let files = prepared.expected.len() as u64;
        match result {
            Ok(checked) => {
                tally.files += files;
                tally.file_bytes += prepared.file_bytes;
                tally.duplicates_seen += checked.duplicates;
                tally.unverified_files += checked.unverified;
                progress.files.fetch_add(files, Ordering::Relaxed);
            }
            Err(error) => {
                tally.failed_requests += 1;
                tally.failed_files += files;
                progress.failed.fetch_add(files, Ordering::Relaxed);
                if tally.errors.len() < ERROR_SAMPLES_MAX {
                    tally.errors.push(error);
                }
            }
        }
    }
    tally.finished = Some(Instant::now());
    tally
}

/// Counts requests a client did not send before the run's time limit as failed.
fn count_unsent(tally: &mut ClientTally, unsent: &[Prepared]) {
    let files: u64 = unsent.iter().map(|p| p.expected.len() as u64).sum();
    tally.failed_requests += unsent.len() as u64;
    tally.failed_files += files;
    if tally.errors.len() < ERROR_SAMPLES_MAX {
        let message = format!("run time limit reached: {} requests not sent", unsent.len());
        tally.errors.push(message);
    }
}

fn connect(endpoint: &Endpoint, timeout: Option<Duration>) -> std::io::Result<Connection> {
    match timeout {
        Some(timeout) => Connection::connect_timeout(endpoint.addr, timeout),
        None => Connection::connect(endpoint.addr),
    }
}

struct Checked {
    duplicates: u64,
    unverified: u64,
}

/// Sends one request (reconnecting when needed) and checks the answer.
fn send_checked(
    connection: &mut Option<Connection>,
    endpoint: &Endpoint,
    timeout: Option<Duration>,
    prepared: &Prepared,
) -> Result<Checked, String> {
    if connection.as_ref().is_none_or(|c| c.is_closed()) {
        *connection = Some(connect(endpoint, timeout).map_err(|e| format!("connect: {e}"))?);
    }
    let open = connection.as_mut().expect("connected above");
    let response = send(open, endpoint, prepared).map_err(|e| {
        *connection = None;
        // A socket timeout reads as EAGAIN ("Resource temporarily unavailable").
        match (e.kind(), timeout) {
            (ErrorKind::WouldBlock | ErrorKind::TimedOut, Some(timeout)) => {
                format!("request: timed out (nothing for {timeout:?})")
            }
            _ => format!("request: {e}"),
        }
    })?;
    check(endpoint.mode, &response, &prepared.expected)
}

fn send(
    connection: &mut Connection,
    endpoint: &Endpoint,
    prepared: &Prepared,
) -> std::io::Result<Response> {
    match &prepared.body {
        Body::Multipart(content_type, body) => connection.request(
            "POST",
            &endpoint.path,
            &[("Content-Type", content_type)],
            body,
        ),
        Body::MultipartFramedLater(spec, bytes) => {
            let (content_type, length, reader) = Multipart::new().finish_streaming(
                "file",
                &spec.name,
                spec.kind.expected_mime(),
                &bytes[..],
                bytes.len() as u64,
            );
            connection.request_streaming(
                "POST",
                &endpoint.path,
                &[("Content-Type", &content_type)],
                reader,
                length,
            )
        }
        Body::Raw(name, bytes) if endpoint.mode == Mode::S3Put => {
            super::s3::put_object(connection, endpoint, name, bytes)
        }
        Body::Get(name) => super::s3::get_object(connection, endpoint, name),
        Body::Raw(name, bytes) => {
            let path = format!("{}{name}", endpoint.path);
            connection.request(
                "PUT",
                &path,
                &[("Content-Type", "application/octet-stream")],
                bytes,
            )
        }
    }
}

/// Status 200 (PUT: any 2xx), one `stored` entry per file in order, each hash equal to
/// the BLAKE3 of what was sent and `duplicate` as planned. A PUT answer without JSON
/// (a plain file server) passes unverified. S3: see [`super::s3::check`].
fn check(mode: Mode, response: &Response, expected: &[Expected]) -> Result<Checked, String> {
    let ok_status = match mode {
        Mode::Post => response.status == 200,
        Mode::Put => (200..300).contains(&response.status),
        Mode::S3Put | Mode::S3Get => {
            let verified = super::s3::check(mode, response, &expected[0].hash)?;
            return Ok(Checked {
                duplicates: 0,
                unverified: u64::from(!verified),
            });
        }
    };
    if !ok_status {
        return Err(format!(
            "status {}: {}",
            response.status,
            clip(&response.text())
        ));
    }
    let json = match (mode, response.try_json()) {
        (_, Ok(json)) if json.get("stored").is_some() => json,
        (Mode::Put | Mode::S3Put | Mode::S3Get, _) => {
            return Ok(Checked {
                duplicates: 0,
                unverified: expected.len() as u64,
            });
        }
        (Mode::Post, _) => {
            return Err(format!(
                "answer without `stored`: {}",
                clip(&response.text())
            ));
        }
    };
    let stored = json["stored"]
        .as_array()
        .ok_or("`stored` is not an array")?;
    if stored.len() != expected.len() {
        return Err(format!(
            "{} entries for {} files",
            stored.len(),
            expected.len()
        ));
    }
    let mut duplicates = 0;
    for (position, (entry, want)) in stored.iter().zip(expected).enumerate() {
        let hash = entry["hash"].as_str().unwrap_or_default();
        if hash != want.hash {
            return Err(format!(
                "entry {position}: hash {hash:?}, sent {}",
                want.hash
            ));
        }
        let duplicate = entry["duplicate"].as_bool();
        if duplicate == Some(true) {
            duplicates += 1;
        }
        if let (Some(want), Some(got)) = (want.duplicate, duplicate)
            && want != got
        {
            return Err(format!("entry {position}: duplicate {got}, planned {want}"));
        }
    }
    Ok(Checked {
        duplicates,
        unverified: 0,
    })
}

fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}
