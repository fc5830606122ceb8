//! The S3 mode: the harness against any S3 server (this daemon's S3 listener, s3s-fs,
//! MinIO, ...), side by side with `--compare-s3-url`.
//!
//! Shapes (`--scenarios s3` = all four, or one by name):
//! - `s3:put`: PutObject of distinct 4 KiB objects, 8 clients, through the closed-loop
//!   driver of [`super::load`] (mode [`Mode::S3Put`]).
//! - `s3:get`: the same objects put first (not measured), then GetObject of each, 8
//!   clients, every body checked against the BLAKE3 of what was put.
//! - `s3:get-large`: one PutObject of a large object (1 GiB by default, streamed), then
//!   one GetObject of it, compared byte by byte as it arrives (never held twice).
//! - `s3:multipart`: CreateMultipartUpload, UploadPart of 8 MiB parts with several in
//!   flight (one connection each), CompleteMultipartUpload; then, outside the clock, a
//!   HEAD and a GET that check the object byte by byte.
//!
//! Every request is path-style (`/bucket/key`) and signed with SigV4 in the Authorization
//! header ([`crate::client::sigv4`]) with `x-amz-content-sha256: UNSIGNED-PAYLOAD`: the
//! client does not hash bodies with SHA-256, as SDKs do over TLS, so the figures are the
//! server's and not the client's hashing. Integrity comes from reading back instead. A
//! PutObject answer carrying `x-rhinobox-hash` is checked against the BLAKE3 of the body.
//! Large payloads are generated before the clock starts; the bucket is created when HEAD
//! says it is absent.
//!
//! S3 answers are XML; only the UploadId of CreateMultipartUpload and the Code of an error
//! are read, each by a bounded substring search ([`xml_text`]): an XML parser would be a
//! dependency for two fields whose content S3 defines as plain text.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::client::payload::{MediaKind, payload};
use crate::client::sigv4::{self, Credentials, Signing, UNSIGNED_PAYLOAD};
use crate::client::{Connection, Response, blake3_hex};

use super::load::{self, LoadOutcome, LoadSpec};
use super::report::{RunLabels, RunResult};
use super::scenarios::Options;
use super::stats::{Latency, median};
use super::target::{self, Endpoint, Mode, ProcSample};
use super::workload::{Sizes, Workload, fresh_nonce};

/// Size of one UploadPart: 8 MiB, what aws-cli and boto3 use by default.
pub const PART_SIZE_BYTES: u64 = 8 << 20;
/// S3 allows at most 10,000 parts in one upload.
const PARTS_MAX: u64 = 10_000;
/// Only this much of an XML answer is searched: S3's answers that we read are far
/// smaller; anything longer is not what we asked for.
const XML_SEARCHED_BYTES_MAX: usize = 64 * 1024;
/// Longest element text taken from XML (an UploadId, an error Code).
const XML_TEXT_BYTES_MAX: usize = 1024;
/// Small objects: clients, warm-up and measured requests per client (times --scale).
const SMALL_CLIENTS: usize = 8;
const SMALL_WARMUP_PER_CLIENT: usize = 50;
const SMALL_REQUESTS_PER_CLIENT: usize = 1000;
const SMALL_OBJECT_BYTES: u64 = 4096;
/// The shapes of `--scenarios s3`, in the order they run.
pub const SHAPES: &[&str] = &["put", "get", "get-large", "multipart"];

/// One S3 server to measure: its URL and key pair.
#[derive(Clone, Debug)]
pub struct S3Target {
    pub url: String,
    pub credentials: Credentials,
}

/// What the S3 shapes need beyond the common options.
#[derive(Clone, Debug)]
pub struct S3Options {
    /// Target A (`--s3-url`); the shapes are skipped without it.
    pub a: Option<S3Target>,
    /// Target B (`--compare-s3-url`).
    pub b: Option<S3Target>,
    /// The bucket used on every target, created when absent.
    pub bucket: String,
    /// Size of the object of `get-large` and `multipart`.
    pub large_bytes: u64,
    /// UploadPart requests in flight in `multipart`.
    pub parts_in_flight: usize,
}

/// A server as the shapes see it.
struct Server {
    label: &'static str,
    addr: SocketAddr,
    pid: Option<u32>,
    desc: String,
    credentials: Credentials,
}

impl Server {
    fn endpoint(&self, bucket: &str, mode: Mode) -> Endpoint {
        Endpoint::s3(self.addr, bucket, self.credentials.clone(), mode)
    }
}

/// Runs one shape (`put`, `get`, `get-large`, `multipart`) on target A, and B when given,
/// interleaved over `rounds`; returns the runs, and an error for each that could not run.
pub fn run_shape(options: &Options, shape: &str) -> (Vec<RunResult>, Vec<String>) {
    let mut errors = Vec::new();
    if !SHAPES.contains(&shape) {
        errors.push(format!("unknown S3 shape {shape:?} (skipped)"));
        return (Vec::new(), errors);
    }
    let servers = match servers(options) {
        Ok(servers) => servers,
        Err(error) => return (Vec::new(), vec![format!("s3:{shape}: {error}")]),
    };
    // Rounds follow the targets configured, not those ready: with B given, each shape
    // runs `rounds` times on whichever target could run it.
    let rounds = if servers.len() > 1 {
        options.rounds.max(1)
    } else {
        1
    };
    let bucket = &options.s3.bucket;
    let mut ready = Vec::new();
    for server in servers {
        match ensure_bucket(&server, bucket) {
            Ok(()) => ready.push(server),
            Err(e) => errors.push(format!("s3:{shape}: target {}: {e}", server.label)),
        }
    }
    let mut runs = Vec::new();
    for _ in 0..rounds {
        for server in &ready {
            let result = match shape {
                "put" => put_small(options, server).map(|run| vec![run]),
                "get" => get_small(options, server).map(|run| vec![run]),
                "get-large" => put_get_large(options, server),
                _ => multipart(options, server).map(|run| vec![run]),
            };
            match result {
                Ok(done) => {
                    for run in done {
                        println!("{}", run.line());
                        runs.push(run);
                    }
                }
                Err(e) => errors.push(format!("s3:{shape}: target {}: {e}", server.label)),
            }
        }
    }
    (runs, errors)
}

fn servers(options: &Options) -> Result<Vec<Server>, String> {
    let s3 = &options.s3;
    let Some(a) = &s3.a else {
        return Err("needs --s3-url (and the keys); skipped".into());
    };
    let mut servers = vec![server("A", a, options.pid)?];
    if let Some(b) = &s3.b {
        servers.push(server("B", b, options.compare_pid)?);
    }
    Ok(servers)
}

fn server(label: &'static str, target: &S3Target, pid: Option<u32>) -> Result<Server, String> {
    let endpoint = Endpoint::parse(&target.url, Mode::S3Get)?;
    Ok(Server {
        label,
        addr: endpoint.addr,
        pid,
        desc: format!("S3 {}", target.url),
        credentials: target.credentials.clone(),
    })
}

/// HEAD /bucket; on 404, PUT /bucket (CreateBucket).
fn ensure_bucket(server: &Server, bucket: &str) -> Result<(), String> {
    let path = format!("/{}", sigv4::encode_segment(bucket));
    let mut connection = Connection::connect(server.addr).map_err(|e| format!("connect: {e}"))?;
    let head = signed_request(&mut connection, server, "HEAD", &path, "", &[])
        .map_err(|e| format!("HeadBucket: {e}"))?;
    match head.status {
        200 => return Ok(()),
        404 => {}
        status => return Err(format!("HeadBucket {bucket}: status {status}")),
    }
    let create = signed_request(&mut connection, server, "PUT", &path, "", &[])
        .map_err(|e| format!("CreateBucket: {e}"))?;
    match create.status {
        200 => Ok(()),
        status => Err(format!(
            "CreateBucket {bucket}: status {status} {}",
            error_code(&create)
        )),
    }
}

/// The headers that sign a request to `server` now: `x-amz-date`,
/// `x-amz-content-sha256: UNSIGNED-PAYLOAD` and `authorization`.
fn sign(
    credentials: &Credentials,
    addr: SocketAddr,
    method: &str,
    path: &str,
    query: &str,
) -> [(String, String); 3] {
    let host = addr.to_string();
    let amz_date = sigv4::amz_date(SystemTime::now());
    sigv4::sign(
        credentials,
        &Signing {
            method,
            path,
            query,
            host: &host,
            extra_headers: &[],
            payload_hash: UNSIGNED_PAYLOAD,
            amz_date: &amz_date,
        },
    )
}

/// A signed request with the whole body in memory. `query` is canonical (sorted,
/// encoded; `uploads=` for a bare `?uploads`) and sent as it is.
fn signed_request(
    connection: &mut Connection,
    server: &Server,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> io::Result<Response> {
    let signed = sign(&server.credentials, server.addr, method, path, query);
    let target = with_query(path, query);
    connection.request(method, &target, &header_refs(&signed, &[]), body)
}

fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

fn header_refs<'a>(
    signed: &'a [(String, String); 3],
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    signed
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain(more.iter().copied())
        .collect()
}

/// PutObject of `bytes` as key `name` (the load driver's [`Mode::S3Put`]).
pub fn put_object(
    connection: &mut Connection,
    endpoint: &Endpoint,
    name: &str,
    bytes: &[u8],
) -> io::Result<Response> {
    let credentials = endpoint.credentials.as_ref().expect("an S3 endpoint");
    let path = format!("{}{}", endpoint.path, encode_key(name));
    let signed = sign(credentials, endpoint.addr, "PUT", &path, "");
    let headers = header_refs(&signed, &[("Content-Type", "application/octet-stream")]);
    connection.request("PUT", &path, &headers, bytes)
}

/// GetObject of key `name` (the load driver's [`Mode::S3Get`]).
pub fn get_object(
    connection: &mut Connection,
    endpoint: &Endpoint,
    name: &str,
) -> io::Result<Response> {
    let credentials = endpoint.credentials.as_ref().expect("an S3 endpoint");
    let path = format!("{}{}", endpoint.path, encode_key(name));
    let signed = sign(credentials, endpoint.addr, "GET", &path, "");
    connection.request("GET", &path, &header_refs(&signed, &[]), b"")
}

/// Checks the answer of a PutObject or GetObject: status 200; a GetObject body must have
/// the BLAKE3 `expected_hash`; a PutObject answer's `x-rhinobox-hash`, when there is one,
/// too. Returns whether the content was verified.
pub fn check(mode: Mode, response: &Response, expected_hash: &str) -> Result<bool, String> {
    if response.status != 200 {
        return Err(format!(
            "status {} {}",
            response.status,
            error_code(response)
        ));
    }
    match mode {
        Mode::S3Get => {
            let got = blake3_hex(&response.body);
            if got != expected_hash {
                return Err(format!(
                    "body of {} bytes has BLAKE3 {got}, put {expected_hash}",
                    response.body.len()
                ));
            }
            Ok(true)
        }
        _ => match response.header("x-rhinobox-hash") {
            Some(hash) if hash == expected_hash => Ok(true),
            Some(hash) => Err(format!("x-rhinobox-hash {hash}, put {expected_hash}")),
            None => Ok(false),
        },
    }
}

/// The small-object load: 8 clients, distinct 4 KiB objects.
fn small_spec(options: &Options, mode: Mode, nonce: u64) -> LoadSpec {
    let requests = (SMALL_REQUESTS_PER_CLIENT as f64 * options.scale).round() as usize;
    LoadSpec {
        clients: SMALL_CLIENTS,
        warmup_per_client: SMALL_WARMUP_PER_CLIENT,
        requests_per_client: requests.max(1),
        workload: Workload {
            files_per_request: 1,
            sizes: Sizes::Fixed(SMALL_OBJECT_BYTES),
            duplicate_ratio: 0.0,
            nonce,
            mode,
        },
        rate: None,
        request_timeout: None,
        run_time_max: None,
    }
}

fn labels(scenario: &str, server: &Server, mode: Mode, clients: usize, size: u64) -> RunLabels {
    RunLabels {
        scenario: scenario.to_string(),
        target: server.label.to_string(),
        target_desc: server.desc.clone(),
        mode,
        clients,
        files_per_request: 1,
        file_size: Sizes::Fixed(size).label(),
        duplicate_ratio: 0.0,
        rate_per_s: None,
        durability: None,
    }
}

fn put_small(options: &Options, server: &Server) -> Result<RunResult, String> {
    let spec = small_spec(options, Mode::S3Put, fresh_nonce());
    let endpoint = server.endpoint(&options.s3.bucket, Mode::S3Put);
    let scenario = "s3/put-4KiB-c8";
    let outcome = load::run(&endpoint, server.pid, &spec, scenario);
    let labels = labels(
        scenario,
        server,
        Mode::S3Put,
        spec.clients,
        SMALL_OBJECT_BYTES,
    );
    Ok(RunResult::new(labels, outcome))
}

/// Puts the objects first (a run of `s3:put`'s shape, not reported), then gets each.
fn get_small(options: &Options, server: &Server) -> Result<RunResult, String> {
    let nonce = fresh_nonce();
    let bucket = &options.s3.bucket;
    let fill_spec = small_spec(options, Mode::S3Put, nonce);
    let fill = load::run(
        &server.endpoint(bucket, Mode::S3Put),
        None,
        &fill_spec,
        "s3/get (putting the objects)",
    );
    if fill.failed_files > 0 {
        return Err(format!(
            "putting the objects to get: {} failed, e.g. {:?}",
            fill.failed_files,
            fill.error_samples.first()
        ));
    }
    let spec = small_spec(options, Mode::S3Get, nonce);
    let scenario = "s3/get-4KiB-c8";
    let outcome = load::run(
        &server.endpoint(bucket, Mode::S3Get),
        server.pid,
        &spec,
        scenario,
    );
    let labels = labels(
        scenario,
        server,
        Mode::S3Get,
        spec.clients,
        SMALL_OBJECT_BYTES,
    );
    Ok(RunResult::new(labels, outcome))
}

/// What one timed single-object operation measured, for [`RunResult`].
struct Timed {
    requests: u64,
    latencies_ns: Vec<u64>,
    duration: Duration,
    client_cpu_s: f64,
    server_before: Option<ProcSample>,
    server_after: Option<ProcSample>,
}

/// Runs `work` between two samples of the server (its peak reset first) and of this
/// process's CPU time.
fn timed<T>(
    pid: Option<u32>,
    work: impl FnOnce() -> Result<T, String>,
) -> (Result<T, String>, Timed) {
    if let Some(pid) = pid {
        target::reset_peak(pid);
    }
    let server_before = pid.and_then(target::sample);
    let cpu_before = target::self_cpu_s();
    let started = Instant::now();
    let result = work();
    let duration = started.elapsed();
    let timed = Timed {
        requests: 0,
        latencies_ns: Vec::new(),
        duration,
        client_cpu_s: target::self_cpu_s() - cpu_before,
        server_before,
        server_after: pid.and_then(target::sample),
    };
    (result, timed)
}

/// A run of one large object: `bytes` moved once when `ok`, else one failed file.
fn large_outcome(mut timed: Timed, error: Option<String>, bytes: u64) -> LoadOutcome {
    let ok = error.is_none();
    LoadOutcome {
        requests: timed.requests,
        files: u64::from(ok),
        file_bytes: if ok { bytes } else { 0 },
        failed_requests: u64::from(!ok),
        failed_files: u64::from(!ok),
        error_samples: error.into_iter().collect(),
        duration: timed.duration,
        latency: Latency::from_ns(&mut timed.latencies_ns),
        client_cpu_s: timed.client_cpu_s,
        server_before: timed.server_before,
        server_after: timed.server_after,
        ..LoadOutcome::default()
    }
}

/// The large object of a run: fresh bytes each time, so that a deduplicating server
/// stores each run's object anew.
fn large_object(options: &Options) -> (String, Vec<u8>) {
    let nonce = fresh_nonce();
    let bytes = payload(MediaKind::Mp4, options.s3.large_bytes, nonce);
    (format!("large-{nonce:016x}.mp4"), bytes)
}

fn object_path(bucket: &str, key: &str) -> String {
    format!("/{}/{}", sigv4::encode_segment(bucket), encode_key(key))
}

/// A key as a path: each `/`-separated segment URI-encoded, the `/` kept.
fn encode_key(key: &str) -> String {
    key.split('/')
        .map(sigv4::encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// One PutObject of the large object (streamed from memory), then one GetObject of it,
/// compared as it arrives; two runs. The object is deleted afterwards.
fn put_get_large(options: &Options, server: &Server) -> Result<Vec<RunResult>, String> {
    let (key, bytes) = large_object(options);
    let size = bytes.len() as u64;
    let label = Sizes::Fixed(size).label();
    let path = object_path(&options.s3.bucket, &key);
    let mut connection = Connection::connect(server.addr).map_err(|e| format!("connect: {e}"))?;
    let (put, mut put_timed) = timed(server.pid, || {
        let signed = sign(&server.credentials, server.addr, "PUT", &path, "");
        let headers = header_refs(&signed, &[("Content-Type", "video/mp4")]);
        let response = connection
            .request_streaming("PUT", &path, &headers, &bytes[..], size)
            .map_err(|e| format!("PutObject: {e}"))?;
        expect_ok("PutObject", &response)
    });
    put_timed.requests = 1;
    put_timed
        .latencies_ns
        .push(put_timed.duration.as_nanos() as u64);
    let put_error = put.err();
    let put_failed = put_error.is_some();
    let put_run = RunResult::new(
        labels(&format!("s3/put-{label}"), server, Mode::S3Put, 1, size),
        large_outcome(put_timed, put_error, size),
    );
    if put_failed {
        return Ok(vec![put_run]);
    }
    let (got, mut get_timed) = timed(server.pid, || {
        get_compared(&mut connection, server, &path, &bytes)
    });
    get_timed.requests = 1;
    get_timed
        .latencies_ns
        .push(get_timed.duration.as_nanos() as u64);
    let get_run = RunResult::new(
        labels(&format!("s3/get-{label}"), server, Mode::S3Get, 1, size),
        large_outcome(get_timed, got.err(), size),
    );
    delete_quietly(server, &path);
    Ok(vec![put_run, get_run])
}

fn expect_ok(operation: &str, response: &Response) -> Result<(), String> {
    match response.status {
        200 => Ok(()),
        status => Err(format!(
            "{operation}: status {status} {}",
            error_code(response)
        )),
    }
}

/// GetObject of `path`, its body compared with `expected` as it arrives.
fn get_compared(
    connection: &mut Connection,
    server: &Server,
    path: &str,
    expected: &[u8],
) -> Result<(), String> {
    let signed = sign(&server.credentials, server.addr, "GET", path, "");
    let mut sink = CompareSink::new(expected);
    let response = connection
        .request_into("GET", path, &header_refs(&signed, &[]), &mut sink)
        .map_err(|e| format!("GetObject: {e}"))?;
    if response.status != 200 {
        return Err(format!("GetObject: status {}", response.status));
    }
    sink.verdict()
}

/// DeleteObject, best effort: a leftover object only costs the target's disk.
fn delete_quietly(server: &Server, path: &str) {
    if let Ok(mut connection) = Connection::connect(server.addr) {
        let _ = signed_request(&mut connection, server, "DELETE", path, "", &[]);
    }
}

/// The multipart upload of the large object, timed from CreateMultipartUpload to the
/// answer of CompleteMultipartUpload; then checked (HEAD, GET compared) and deleted.
fn multipart(options: &Options, server: &Server) -> Result<RunResult, String> {
    let (key, bytes) = large_object(options);
    let size = bytes.len() as u64;
    let parts = size.div_ceil(PART_SIZE_BYTES);
    if parts > PARTS_MAX {
        return Err(format!(
            "{size} bytes need {parts} parts, S3 allows {PARTS_MAX}"
        ));
    }
    let path = object_path(&options.s3.bucket, &key);
    let in_flight = options.s3.parts_in_flight.clamp(1, parts as usize);
    let latencies = Mutex::new(Vec::new());
    let (uploaded, mut timed) = timed(server.pid, || {
        upload_multipart(server, &path, &bytes, in_flight, &latencies)
    });
    timed.latencies_ns = latencies.into_inner().expect("latency lock");
    timed.requests = timed.latencies_ns.len() as u64 + 2;
    let checked = uploaded.and_then(|()| check_large(server, &path, &bytes));
    let scenario = format!(
        "s3/multipart-{}-{}MiB-x{in_flight}",
        Sizes::Fixed(size).label(),
        PART_SIZE_BYTES >> 20
    );
    delete_quietly(server, &path);
    Ok(RunResult::new(
        labels(&scenario, server, Mode::S3Put, in_flight, size),
        large_outcome(timed, checked.err(), size),
    ))
}

/// Create, the parts (`in_flight` connections taking part numbers in turn), Complete.
/// Each UploadPart's latency goes into `latencies`. Aborts the upload on failure.
fn upload_multipart(
    server: &Server,
    path: &str,
    bytes: &[u8],
    in_flight: usize,
    latencies: &Mutex<Vec<u64>>,
) -> Result<(), String> {
    let mut connection = Connection::connect(server.addr).map_err(|e| format!("connect: {e}"))?;
    let created = signed_request(&mut connection, server, "POST", path, "uploads=", &[])
        .map_err(|e| format!("CreateMultipartUpload: {e}"))?;
    expect_ok("CreateMultipartUpload", &created)?;
    let upload_id = xml_text(&created.body, "UploadId")
        .ok_or_else(|| format!("CreateMultipartUpload: no UploadId in {:?}", created.text()))?;
    let id_query = format!("uploadId={}", sigv4::encode_segment(&upload_id));
    let result =
        upload_parts(server, path, &upload_id, bytes, in_flight, latencies).and_then(|etags| {
            let body = complete_body(&etags);
            let completed = signed_request(
                &mut connection,
                server,
                "POST",
                path,
                &id_query,
                body.as_bytes(),
            )
            .map_err(|e| format!("CompleteMultipartUpload: {e}"))?;
            expect_ok("CompleteMultipartUpload", &completed)?;
            // S3 may answer 200 and put the error in the body (a failure after the
            // headers went out), so the body must be the result, not an Error.
            match xml_text(&completed.body, "Code") {
                Some(code) => Err(format!("CompleteMultipartUpload: error {code}")),
                None => Ok(()),
            }
        });
    if result.is_err()
        && let Ok(mut connection) = Connection::connect(server.addr)
    {
        let _ = signed_request(&mut connection, server, "DELETE", path, &id_query, &[]);
    }
    result
}

/// UploadPart of every part; returns the ETags by part number (1-based, in order).
fn upload_parts(
    server: &Server,
    path: &str,
    upload_id: &str,
    bytes: &[u8],
    in_flight: usize,
    latencies: &Mutex<Vec<u64>>,
) -> Result<Vec<String>, String> {
    let parts: Vec<&[u8]> = bytes.chunks(PART_SIZE_BYTES as usize).collect();
    let etags: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; parts.len()]);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..in_flight {
            scope.spawn(|| {
                let outcome = part_worker(
                    server,
                    path,
                    upload_id,
                    &parts,
                    &next,
                    &failed,
                    |n, etag, ns| {
                        etags.lock().expect("etag lock")[n] = Some(etag);
                        latencies.lock().expect("latency lock").push(ns);
                    },
                );
                if let Err(error) = outcome {
                    failed.store(true, Ordering::Relaxed);
                    first_error.lock().expect("error lock").get_or_insert(error);
                }
            });
        }
    });
    if let Some(error) = first_error.into_inner().expect("error lock") {
        return Err(error);
    }
    Ok(etags
        .into_inner()
        .expect("etag lock")
        .into_iter()
        .map(|etag| etag.expect("every part uploaded when none failed"))
        .collect())
}

/// One connection's share of the parts: takes the next part number until none is left
/// or another worker failed.
fn part_worker(
    server: &Server,
    path: &str,
    upload_id: &str,
    parts: &[&[u8]],
    next: &AtomicUsize,
    failed: &AtomicBool,
    mut done: impl FnMut(usize, String, u64),
) -> Result<(), String> {
    let mut connection = Connection::connect(server.addr).map_err(|e| format!("connect: {e}"))?;
    let encoded_id = sigv4::encode_segment(upload_id);
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= parts.len() || failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let part = parts[index];
        // Canonical order: partNumber sorts before uploadId.
        let query = format!("partNumber={}&uploadId={encoded_id}", index + 1);
        let started = Instant::now();
        let signed = sign(&server.credentials, server.addr, "PUT", path, &query);
        let response = connection
            .request_streaming(
                "PUT",
                &with_query(path, &query),
                &header_refs(&signed, &[]),
                part,
                part.len() as u64,
            )
            .map_err(|e| format!("UploadPart {}: {e}", index + 1))?;
        expect_ok(&format!("UploadPart {}", index + 1), &response)?;
        let etag = response
            .header("etag")
            .ok_or_else(|| format!("UploadPart {}: no ETag", index + 1))?;
        done(index, etag.to_string(), started.elapsed().as_nanos() as u64);
    }
}

/// After a multipart upload: HEAD says the whole size, GET brings every byte back.
fn check_large(server: &Server, path: &str, expected: &[u8]) -> Result<(), String> {
    let mut connection = Connection::connect(server.addr).map_err(|e| format!("connect: {e}"))?;
    let head = signed_request(&mut connection, server, "HEAD", path, "", &[])
        .map_err(|e| format!("HeadObject: {e}"))?;
    expect_ok("HeadObject", &head)?;
    let length = head.header("content-length").unwrap_or_default();
    if length != expected.len().to_string() {
        return Err(format!(
            "HeadObject: Content-Length {length:?}, uploaded {}",
            expected.len()
        ));
    }
    get_compared(&mut connection, server, path, expected)
}

/// The body of CompleteMultipartUpload: every part's number and ETag, in order.
pub fn complete_body(etags: &[String]) -> String {
    let mut body = String::from("<CompleteMultipartUpload>");
    for (index, etag) in etags.iter().enumerate() {
        body.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
            index + 1,
            xml_escape(etag)
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    body
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The text of the first `<tag>…</tag>` in the first 64 KiB of `xml`, entities of XML's
/// five predefined kinds decoded; `None` when absent, empty, longer than 1 KiB or not
/// UTF-8. Enough for elements whose content is plain text (UploadId, Code); no
/// attributes, namespaces prefixes or CDATA, which S3 does not use there.
pub fn xml_text(xml: &[u8], tag: &str) -> Option<String> {
    let searched = &xml[..xml.len().min(XML_SEARCHED_BYTES_MAX)];
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = memchr::memmem::find(searched, open.as_bytes())? + open.len();
    let length = memchr::memmem::find(&searched[start..], close.as_bytes())?;
    if length == 0 || length > XML_TEXT_BYTES_MAX {
        return None;
    }
    let text = std::str::from_utf8(&searched[start..start + length]).ok()?;
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// The S3 error Code of an answer, or its status text when the body has none.
fn error_code(response: &Response) -> String {
    xml_text(&response.body, "Code").unwrap_or_else(|| {
        let text = response.text();
        text.chars().take(120).collect()
    })
}

/// A sink that compares what is written with `expected`, from its start.
struct CompareSink<'a> {
    expected: &'a [u8],
    position: usize,
    first_mismatch: Option<usize>,
}

impl<'a> CompareSink<'a> {
    fn new(expected: &'a [u8]) -> CompareSink<'a> {
        CompareSink {
            expected,
            position: 0,
            first_mismatch: None,
        }
    }

    fn verdict(&self) -> Result<(), String> {
        match self.first_mismatch {
            Some(at) => Err(format!(
                "GetObject: body differs from what was put at byte {at}"
            )),
            None if self.position != self.expected.len() => Err(format!(
                "GetObject: {} bytes, put {}",
                self.position,
                self.expected.len()
            )),
            None => Ok(()),
        }
    }
}

impl Write for CompareSink<'_> {
    fn write(&mut self, piece: &[u8]) -> io::Result<usize> {
        // Bytes past the expected end only count (the verdict compares lengths).
        let want = self.expected.get(self.position..).unwrap_or_default();
        let common = want.len().min(piece.len());
        if self.first_mismatch.is_none() && want[..common] != piece[..common] {
            let offset = (0..common).find(|&i| want[i] != piece[i]).unwrap_or(0);
            self.first_mismatch = Some(self.position + offset);
        }
        self.position += piece.len();
        Ok(piece.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Prints the S3 runs: medians over rounds per scenario and target, throughput in MB/s
/// (10^6 bytes), the server's peak RSS (the highest of the rounds).
pub fn print_summary(runs: &[RunResult]) {
    let keys: Vec<(&str, &str)> = runs
        .iter()
        .filter(|r| r.scenario.starts_with("s3/"))
        .map(|r| (r.scenario.as_str(), r.target.as_str()))
        .collect();
    if keys.is_empty() {
        return;
    }
    println!("\n### S3 (medians over rounds; MB = 10^6 bytes)\n");
    println!(
        "| scenario | target | rounds | objects/s | MB/s | p50 ms | p99 ms \
         | peak RSS MiB | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut seen = Vec::new();
    for key in keys {
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let of: Vec<&RunResult> = runs
            .iter()
            .filter(|r| (r.scenario.as_str(), r.target.as_str()) == key)
            .collect();
        let med = |f: fn(&RunResult) -> f64| median(&of.iter().map(|r| f(r)).collect::<Vec<_>>());
        let peak = of
            .iter()
            .filter_map(|r| r.server_rss_peak_mib)
            .fold(None, |max: Option<f64>, v| {
                Some(max.map_or(v, |m| m.max(v)))
            });
        let objects_per_s = med(|r| r.files_per_s);
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {} |",
            key.0,
            key.1,
            of.len(),
            if objects_per_s < 10.0 {
                format!("{objects_per_s:.2}")
            } else {
                format!("{objects_per_s:.0}")
            },
            med(|r| r.mib_per_s * 1.048_576),
            med(|r| r.latency.p50_ms),
            med(|r| r.latency.p99_ms),
            peak.map(|p| format!("{p:.1}")).unwrap_or("-".into()),
            of.iter().map(|r| r.failed_files).sum::<u64>()
        );
    }
    println!(
        "\np50/p99: per request; for multipart per UploadPart, for one large object the one \
         request (MB/s counts from Create to Complete)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The UploadId of an InitiateMultipartUploadResult as AWS documents it, and as
    /// s3s-fs answers (a UUID); entities are decoded; absent, empty, too long and cut-off
    /// elements give nothing.
    #[test]
    fn upload_id_from_xml() {
        let aws = br#"<?xml version="1.0" encoding="UTF-8"?>
<InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>example-bucket</Bucket><Key>example-object</Key>
  <UploadId>VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA</UploadId>
</InitiateMultipartUploadResult>"#;
        assert_eq!(
            xml_text(aws, "UploadId").as_deref(),
            Some("VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA")
        );
        assert_eq!(xml_text(aws, "Bucket").as_deref(), Some("example-bucket"));
        let escaped = b"<UploadId>a&amp;b&lt;c</UploadId>";
        assert_eq!(xml_text(escaped, "UploadId").as_deref(), Some("a&b<c"));
        assert_eq!(
            xml_text(b"<Error><Code>NoSuchUpload</Code></Error>", "UploadId"),
            None
        );
        assert_eq!(xml_text(b"<UploadId></UploadId>", "UploadId"), None);
        assert_eq!(xml_text(b"<UploadId>cut off", "UploadId"), None);
        let long = format!(
            "<UploadId>{}</UploadId>",
            "x".repeat(XML_TEXT_BYTES_MAX + 1)
        );
        assert_eq!(xml_text(long.as_bytes(), "UploadId"), None);
        let late = format!(
            "{}<UploadId>x</UploadId>",
            " ".repeat(XML_SEARCHED_BYTES_MAX)
        );
        assert_eq!(xml_text(late.as_bytes(), "UploadId"), None);
    }

    /// Parts numbered from 1 in order, ETags (quotes included) escaped, the shape the S3
    /// documentation gives for CompleteMultipartUpload.
    #[test]
    fn complete_body_lists_parts_in_order() {
        let etags = vec!["\"a54357aff0\"".to_string(), "\"0c78\"".to_string()];
        assert_eq!(
            complete_body(&etags),
            "<CompleteMultipartUpload>\
             <Part><PartNumber>1</PartNumber><ETag>&quot;a54357aff0&quot;</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>&quot;0c78&quot;</ETag></Part>\
             </CompleteMultipartUpload>"
        );
        assert_eq!(
            complete_body(&[]),
            "<CompleteMultipartUpload></CompleteMultipartUpload>"
        );
    }

    /// The sink finds a changed byte, a short body and a long one.
    #[test]
    fn compare_sink_checks_every_byte() {
        let expected: Vec<u8> = (0..=255).collect();
        let mut sink = CompareSink::new(&expected);
        sink.write_all(&expected[..100]).unwrap();
        sink.write_all(&expected[100..]).unwrap();
        assert!(sink.verdict().is_ok());
        let mut changed = expected.clone();
        changed[200] ^= 1;
        let mut sink = CompareSink::new(&expected);
        sink.write_all(&changed).unwrap();
        assert!(sink.verdict().unwrap_err().contains("byte 200"));
        let mut sink = CompareSink::new(&expected);
        sink.write_all(&expected[..10]).unwrap();
        assert!(sink.verdict().is_err());
        let mut sink = CompareSink::new(&expected[..10]);
        sink.write_all(&expected[..11]).unwrap();
        assert!(sink.verdict().is_err());
    }
}
