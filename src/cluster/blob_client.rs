//! The blob side of cluster mode: an S3 client for the blob cluster (SPEC §8; Ceph RGW,
//! Garage, MinIO, AWS S3), on the cluster runtime (plain multi-thread tokio, `Send`
//! futures). Requests are HTTP/1.1 through hyper's connection API, path-style
//! (`/{bucket}/{key}`, each key segment URI-encoded), signed by `client::sigv4` in headers
//! with `UNSIGNED-PAYLOAD`; bodies sent from memory carry `Content-MD5`, so that the
//! cluster refuses one damaged on the way.
//!
//! **Pool.** A semaphore of `connections_max` permits bounds the open connections: a
//! request holds a permit from before it takes a connection until its answer was read to
//! the end (for a GET, until the caller read the [`BlobBody`] to its end), so busy plus
//! idle connections never exceed it, and a full pool makes callers wait, at most
//! `POOL_WAIT`. Idle connections are reused newest first after `ready()`; a closed one,
//! one idle over `IDLE_AGE_MAX`, or one whose answer was not read to its end is dropped.
//! A request that fails on a reused connection before its answer is sent once more on a
//! new one (the server may close an idle connection as we take it): every body can be
//! produced again.
//!
//! **Timeouts.** Every wait is bounded and ends in [`BlobError::Unavailable`] naming the
//! endpoint, the request and what failed: connect, answer head (which covers the upload of
//! a request body: S3 answers after the body), pool, and the small answers read into
//! memory. A GET's body streams to the caller, whose own limits bound it.
//!
//! **Files.** `put_file` streams a file of at most 64 MiB as one PUT, and a larger one as a
//! multipart upload of 16 MiB parts, 4 in flight: every request then stays short enough
//! for the answer-head timeout (a 1 GiB PUT would not be), and 4 streams fill a link one
//! would not. Any failure fails the upload (no part is retried) and aborts it, as does
//! dropping the future, so that the cluster frees the parts. File bodies are read in
//! chunks of 1 MiB on the blocking pool through a channel of one chunk: memory O(chunk)
//! per body.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONNECTION, CONTENT_LENGTH, ETAG, HOST, HeaderMap};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::timeout;

use crate::client::sigv4::{self, Credentials, Signing, UNSIGNED_PAYLOAD};

/// A live host on the cluster network connects in milliseconds; a dead one must not hang us.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Covers a PUT's body too (≤ 64 MiB, or a 16 MiB part): the link must carry ≥ 2.2 MB/s.
const ANSWER_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A cluster too slow for the load answers 503 rather than queue callers without bound.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// The rest of a small answer (an error, a listing, a multipart reply).
const ANSWER_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Under the servers' keep-alive timeouts (RGW 65 s, nginx 75 s, AWS ~20 s), so that a
/// reused connection is seldom one the server is closing.
const IDLE_AGE_MAX: Duration = Duration::from_secs(15);
/// Up to this, one PUT: a multipart upload would cost two more round trips for nothing.
const SINGLE_PUT_SIZE_MAX_BYTES: u64 = 64 << 20;
/// S3 wants ≥ 5 MiB; 16 makes the per-part request noise and 4 in flight still modest.
const PART_SIZE_BYTES: u64 = 16 << 20;
/// S3's limit on the parts of an upload: a file over 160 GiB gets larger parts.
const PARTS_MAX: u64 = 10_000;
/// Enough to fill a link one stream cannot, few enough to leave the pool to others.
const PARTS_IN_FLIGHT_MAX: usize = 4;
/// The read size of file bodies, and so (a channel of one) their memory.
const FILE_CHUNK_BYTES: u64 = 1 << 20;
/// A page of 1000 keys is ~350 KiB: what a broken server can make us hold.
const LIST_BODY_MAX_BYTES: usize = 16 << 20;
/// Error bodies and multipart replies are a few hundred bytes.
const ANSWER_BODY_MAX_BYTES: usize = 64 << 10;
/// S3's page size limit for ListObjectsV2.
const LIST_KEYS_MAX: usize = 1000;

/// Where the blob cluster is and how to sign for it: `s3://BUCKET?endpoint=URL&region=R`
/// plus the key pair.
#[derive(Clone, Debug)]
pub struct BlobSettings {
    pub bucket: String,
    /// `http://host:port` as given.
    pub endpoint: String,
    /// `host:port`, the Host header and the signed host.
    pub host: String,
    /// Resolved once at start.
    pub addr: SocketAddr,
    pub credentials: Credentials,
    /// Most open connections to the endpoint (a full pool makes callers wait).
    pub connections_max: usize,
}

/// A failed blob operation.
#[derive(Debug)]
pub enum BlobError {
    /// The cluster did not answer, or answered 5xx/503 SlowDown: retry later (503).
    Unavailable(String),
    /// The key is not there (404 NoSuchKey).
    NotFound,
    /// The cluster refused the request (4xx other than 404): a bug or a misconfiguration.
    Rejected { status: u16, message: String },
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobError::Unavailable(why) => write!(f, "blob cluster unavailable: {why}"),
            BlobError::NotFound => f.write_str("no such blob"),
            BlobError::Rejected { status, message } => {
                write!(f, "blob cluster refused the request ({status}): {message}")
            }
        }
    }
}

/// One key of a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

/// A page of a listing, and where the next one starts.
pub struct ListPage {
    pub keys: Vec<Listed>,
    /// `Some(last key)` when more keys follow.
    pub next_start_after: Option<String>,
}

/// A response body streamed from the cluster: `Send`, frames of `Bytes`, exactly the
/// length asked for (a short body is an error frame, never a silent truncation).
pub type BlobBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The client: cheap to clone (shared pool).
#[derive(Clone)]
pub struct BlobClient {
    settings: std::sync::Arc<BlobSettings>,
    pool: Arc<Pool>,
}

impl BlobClient {
    pub fn new(settings: BlobSettings) -> BlobClient {
        assert!(settings.connections_max > 0, "a pool without connections");
        let permits = Arc::new(Semaphore::new(settings.connections_max));
        let idle = Mutex::new(Vec::with_capacity(settings.connections_max));
        let pool = Arc::new(Pool { permits, idle });
        let settings = std::sync::Arc::new(settings);
        BlobClient { settings, pool }
    }

    pub fn settings(&self) -> &BlobSettings {
        &self.settings
    }

    /// HEAD of the bucket: reachable, keys accepted, bucket exists.
    pub async fn check_bucket(&self) -> Result<(), BlobError> {
        let call = Call::new(Method::HEAD, None);
        let answer = self.exchange(&call, ANSWER_BODY_MAX_BYTES).await?;
        let (bucket, endpoint) = (&self.settings.bucket, &self.settings.endpoint);
        let access_key = &self.settings.credentials.access_key;
        let message = match answer.status.as_u16() {
            200..=299 => return Ok(()),
            404 => format!("bucket {bucket:?} does not exist at {endpoint}"),
            403 => format!(
                "the keys (access key {access_key:?}) are refused for bucket {bucket:?} at \
                 {endpoint}: a wrong secret key, or no rights on the bucket"
            ),
            _ => return Err(self.status_error(&call, &answer)),
        };
        Err(rejected(answer.status.as_u16(), message))
    }

    /// PUT of one object from memory.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), BlobError> {
        let call = Call::new(Method::PUT, Some(key)).memory(body);
        self.exchange_ok(&call).await.map(drop)
    }

    /// PUT of one object from a complete local file of `size` bytes: one streamed PUT
    /// up to a threshold, a multipart upload above it (memory O(part), aborted on error).
    pub async fn put_file(&self, key: &str, path: &Path, size: u64) -> Result<(), BlobError> {
        let file = std::fs::File::open(path).map_err(|e| {
            BlobError::Unavailable(format!("the local file {} to send: {e}", path.display()))
        })?;
        let file = Arc::new(file);
        let Some(parts) = part_layout(size) else {
            let call = Call::new(Method::PUT, Some(key)).file(&file, 0, size);
            return self.exchange_ok(&call).await.map(drop);
        };
        let upload_id = self.create_upload(key).await?;
        let mut guard = AbortOnDrop(self.clone(), key.to_string(), Some(upload_id.clone()));
        let outcome = async {
            let etags = self.upload_parts(key, &upload_id, &file, parts).await?;
            self.complete_upload(key, &upload_id, &etags).await
        }
        .await;
        guard.2 = None;
        if let Err(error) = outcome {
            if let Err(abort) = self.abort_upload(key, &upload_id).await {
                crate::log_line!("rhinobox: blob {key}: abort of upload {upload_id}: {abort}");
            }
            return Err(error);
        }
        Ok(())
    }

    /// GET of `length` bytes at `offset` (a Range request), streamed.
    pub async fn get(&self, key: &str, offset: u64, length: u64) -> Result<BlobBody, BlobError> {
        if length == 0 {
            return Ok(Empty::new().map_err(|never| match never {}).boxed());
        }
        let Some(range) = range_header(offset, length) else {
            let message = format!("{key}: {length} bytes at {offset} overflow (not sent)");
            return Err(rejected(416, message));
        };
        let call = Call::new(Method::GET, Some(key)).header("range", range.clone());
        let (response, lease) = self.send(&call).await?;
        let status = response.status();
        if status != StatusCode::PARTIAL_CONTENT && (status != StatusCode::OK || offset != 0) {
            let answer = read_answer(response, lease, ANSWER_BODY_MAX_BYTES).await;
            let answer = answer.map_err(|why| self.unavailable(&call, why))?;
            return Err(self.status_error(&call, &answer));
        }
        let what = format!("{} {range}", self.describe(&call));
        let headers = response.headers();
        let sent = content_length(headers);
        if sent.is_some_and(|sent| sent != length) {
            let content_range = headers.get("content-range");
            let message = format!(
                "{what}: the cluster sends {sent:?} bytes (Content-Range {content_range:?})"
            );
            return Err(rejected(status.as_u16(), message));
        }
        let reusable = keeps_alive(headers);
        let inner = response.into_body();
        let (lease, received, done) = (Some(lease), 0, false);
        let body = CountedBody {
            inner,
            lease,
            reusable,
            expected: length,
            received,
            done,
            what,
        };
        Ok(BlobBody::new(body))
    }

    /// DELETE; a missing key is success.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let call = Call::new(Method::DELETE, Some(key));
        match self.exchange_ok(&call).await {
            Ok(_) | Err(BlobError::NotFound) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// ListObjectsV2 under `prefix`, after `start_after`, at most `max_keys`.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<ListPage, BlobError> {
        assert!(max_keys > 0, "a page of no keys has no next start");
        let mut call = Call::new(Method::GET, None)
            .query("list-type", "2")
            .query("max-keys", &max_keys.min(LIST_KEYS_MAX).to_string())
            .query("prefix", prefix);
        if let Some(after) = start_after {
            call = call.query("start-after", after);
        }
        let answer = self.exchange_ok_max(&call, LIST_BODY_MAX_BYTES).await?;
        let text = std::str::from_utf8(&answer.body)
            .map_err(|_| self.unavailable(&call, "the listing is not UTF-8"))?;
        parse_list(text).map_err(|why| self.unavailable(&call, format!("listing: {why}")))
    }

    /// CreateMultipartUpload: the upload id.
    async fn create_upload(&self, key: &str) -> Result<String, BlobError> {
        let call = Call::new(Method::POST, Some(key)).query("uploads", "");
        let answer = self.exchange_ok(&call).await?;
        element(&String::from_utf8_lossy(&answer.body), "UploadId")
            .and_then(|id| decode_entities(id).ok())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| self.unavailable(&call, "no <UploadId> in the answer"))
    }

    /// Every part, a few at a time; their (number, ETag) in part order.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        file: &Arc<std::fs::File>,
        parts: Vec<Part>,
    ) -> Result<Vec<(u32, String)>, BlobError> {
        let in_flight = PARTS_IN_FLIGHT_MAX.min(self.settings.connections_max);
        let upload = |part: Part| async move {
            let call = Call::new(Method::PUT, Some(key))
                .query("partNumber", &part.number.to_string())
                .query("uploadId", upload_id)
                .file(file, part.offset, part.length);
            let answer = self.exchange_ok(&call).await?;
            match answer.headers.get(ETAG).and_then(|v| v.to_str().ok()) {
                Some(etag) => Ok((part.number, etag.to_string())),
                None => Err(self.unavailable(&call, "no ETag on the part")),
            }
        };
        let stream = futures_util::stream::iter(parts).map(upload);
        let mut etags: Vec<_> = stream.buffer_unordered(in_flight).try_collect().await?;
        etags.sort_unstable_by_key(|(number, _)| *number);
        Ok(etags)
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[(u32, String)],
    ) -> Result<(), BlobError> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (number, etag) in etags {
            let etag = escape_xml(etag);
            xml += &format!("<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>");
        }
        xml += "</CompleteMultipartUpload>";
        let call = Call::new(Method::POST, Some(key))
            .query("uploadId", upload_id)
            .memory(Bytes::from(xml));
        let answer = self.exchange_ok(&call).await?;
        // S3 may answer 200 and then report a failure in the body (it sends the head early).
        if String::from_utf8_lossy(&answer.body).contains("<Error>") {
            let status = StatusCode::INTERNAL_SERVER_ERROR;
            return Err(self.status_error(&call, &Answer { status, ..answer }));
        }
        Ok(())
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), BlobError> {
        let call = Call::new(Method::DELETE, Some(key)).query("uploadId", upload_id);
        self.exchange_ok(&call).await.map(drop)
    }

    /// A request whose answer must be 2xx, read whole (small).
    async fn exchange_ok(&self, call: &Call<'_>) -> Result<Answer, BlobError> {
        self.exchange_ok_max(call, ANSWER_BODY_MAX_BYTES).await
    }

    async fn exchange_ok_max(&self, call: &Call<'_>, max: usize) -> Result<Answer, BlobError> {
        let answer = self.exchange(call, max).await?;
        if !answer.status.is_success() {
            return Err(self.status_error(call, &answer));
        }
        Ok(answer)
    }

    /// A request and its answer read into memory, at most `body_max_bytes`.
    async fn exchange(&self, call: &Call<'_>, body_max_bytes: usize) -> Result<Answer, BlobError> {
        let (response, lease) = self.send(call).await?;
        let answer = read_answer(response, lease, body_max_bytes).await;
        answer.map_err(|why| self.unavailable(call, why))
    }

    /// Sends a request on a pooled connection: the answer's head, and the lease that holds
    /// the connection until its body is read.
    async fn send(&self, call: &Call<'_>) -> Result<(Response<Incoming>, Lease), BlobError> {
        let permits = self.pool.permits.clone();
        let Ok(Ok(permit)) = timeout(POOL_WAIT, permits.acquire_owned()).await else {
            let max = self.settings.connections_max;
            let why = format!("no free connection of {max} within {POOL_WAIT:?}");
            return Err(self.unavailable(call, why));
        };
        let mut idle_allowed = true;
        loop {
            let idle = if idle_allowed {
                self.pool.take_idle().await
            } else {
                None
            };
            let reused = idle.is_some();
            let mut sender = match idle {
                Some(sender) => sender,
                None => self.connect(call).await?,
            };
            let request = self.request(call)?;
            match timeout(ANSWER_HEAD_TIMEOUT, sender.send_request(request)).await {
                Ok(Ok(response)) => {
                    let (pool, sender) = (self.pool.clone(), Some(sender));
                    let lease = Lease {
                        pool,
                        sender,
                        _permit: permit,
                    };
                    return Ok((response, lease));
                }
                // The server closed the idle connection as we took it: once more, on a new one.
                Ok(Err(error)) if reused && !error.is_user() => idle_allowed = false,
                Ok(Err(error)) => return Err(self.unavailable(call, error_chain(&error))),
                Err(_) => {
                    let why = format!("no answer within {ANSWER_HEAD_TIMEOUT:?}");
                    return Err(self.unavailable(call, why));
                }
            }
        }
    }

    async fn connect(&self, call: &Call<'_>) -> Result<Sender, BlobError> {
        let addr = self.settings.addr;
        let fail = |why: String| self.unavailable(call, format!("connect to {addr}: {why}"));
        let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(fail(error.to_string())),
            Err(_) => return Err(fail(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        };
        // Requests are small writes answered at once: Nagle would only add latency.
        stream
            .set_nodelay(true)
            .map_err(|e| fail(format!("TCP_NODELAY: {e}")))?;
        let handshake = http1::handshake(TokioIo::new(stream));
        let (sender, connection) = match timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(error)) => return Err(fail(error_chain(&error))),
            Err(_) => return Err(fail("no HTTP handshake in time".into())),
        };
        // The connection's errors reach the request on it; nothing more to do with them.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// The signed request of a call, with a new body.
    fn request(&self, call: &Call<'_>) -> Result<Request<RequestBody>, BlobError> {
        let settings = &self.settings;
        let path = object_path(&settings.bucket, call.key);
        let query = canonical_query(&call.query);
        let amz_date = sigv4::amz_date(SystemTime::now());
        let mut extra: Vec<(&str, &str)> = call.headers.iter().map(|(n, v)| (*n, &**v)).collect();
        extra.sort_unstable();
        let signing = Signing {
            method: call.method.as_str(),
            path: &path,
            query: &query,
            host: &settings.host,
            extra_headers: &extra,
            payload_hash: UNSIGNED_PAYLOAD,
            amz_date: &amz_date,
        };
        let signed = sigv4::sign(&settings.credentials, &signing);
        let target = if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        };
        let mut builder = Request::builder().method(call.method.clone()).uri(target);
        builder = builder.header(HOST, &settings.host);
        let signed = signed.iter().map(|(name, value)| (&**name, &**value));
        for (name, value) in extra.into_iter().chain(signed) {
            builder = builder.header(name, value);
        }
        if matches!(call.method, Method::PUT | Method::POST) {
            builder = builder.header(CONTENT_LENGTH, call.payload.length());
        }
        let body = call.payload.body();
        let what = || self.describe(call);
        (builder.body(body)).map_err(|e| rejected(400, format!("{}: not sent: {e}", what())))
    }

    /// A non-2xx answer's error, with S3's code and message: 404 → NotFound (but for a
    /// missing bucket: a misconfiguration), 5xx → Unavailable, other 4xx → Rejected.
    fn status_error(&self, call: &Call<'_>, answer: &Answer) -> BlobError {
        let (code, message) = s3_error(&answer.body);
        let status = answer.status;
        let text = match (&*code, &*message) {
            ("", "") => status.to_string(),
            (code, message) => format!("{status} {code}: {message}"),
        };
        match status.as_u16() {
            404 if code != "NoSuchBucket" => BlobError::NotFound,
            500.. => self.unavailable(call, text),
            status => {
                let message = format!("{}: {text}", self.describe(call));
                BlobError::Rejected { status, message }
            }
        }
    }

    fn unavailable(&self, call: &Call<'_>, why: impl std::fmt::Display) -> BlobError {
        let (endpoint, what) = (&self.settings.endpoint, self.describe(call));
        BlobError::Unavailable(format!("{endpoint}: {what}: {why}"))
    }

    /// `PUT /bucket/key?query`, for messages.
    fn describe(&self, call: &Call<'_>) -> String {
        let path = object_path(&self.settings.bucket, call.key);
        match canonical_query(&call.query) {
            query if query.is_empty() => format!("{} {path}", call.method),
            query => format!("{} {path}?{query}", call.method),
        }
    }
}

/// One request: what `BlobClient::request` signs and sends (again, on a retry).
struct Call<'a> {
    method: Method,
    /// `None`: the bucket itself.
    key: Option<&'a str>,
    /// Names and values as they are; encoded and sorted when signed.
    query: Vec<(&'static str, String)>,
    /// Lowercase names, all signed.
    headers: Vec<(&'static str, String)>,
    payload: Payload,
}

impl<'a> Call<'a> {
    fn new(method: Method, key: Option<&'a str>) -> Call<'a> {
        let (query, headers, payload) = (Vec::new(), Vec::new(), Payload::Empty);
        Call {
            method,
            key,
            query,
            headers,
            payload,
        }
    }

    fn query(mut self, name: &'static str, value: &str) -> Call<'a> {
        self.query.push((name, value.to_string()));
        self
    }

    fn header(mut self, name: &'static str, value: String) -> Call<'a> {
        self.headers.push((name, value));
        self
    }

    /// A body from memory, with its Content-MD5.
    fn memory(mut self, body: Bytes) -> Call<'a> {
        let md5 = base64_simd::STANDARD.encode_to_string(Md5::digest(&body).as_slice());
        self.payload = Payload::Memory(body);
        self.header("content-md5", md5)
    }

    fn file(mut self, file: &Arc<std::fs::File>, offset: u64, length: u64) -> Call<'a> {
        self.payload = Payload::File(file.clone(), offset, length);
        self
    }
}

/// A request body that can be produced again (for the retry on a new connection).
enum Payload {
    Empty,
    Memory(Bytes),
    /// A file's bytes at an offset, and their length.
    File(Arc<std::fs::File>, u64, u64),
}

impl Payload {
    fn length(&self) -> u64 {
        match self {
            Payload::Empty => 0,
            Payload::Memory(bytes) => bytes.len() as u64,
            Payload::File(_, _, length) => *length,
        }
    }

    fn body(&self) -> RequestBody {
        match self {
            Payload::Empty => Empty::new().map_err(|never| match never {}).boxed_unsync(),
            Payload::Memory(bytes) => Full::new(bytes.clone())
                .map_err(|never| match never {})
                .boxed_unsync(),
            Payload::File(file, offset, length) => file_body(file.clone(), *offset, *length),
        }
    }
}

type RequestBody = UnsyncBoxBody<Bytes, io::Error>;
type Sender = SendRequest<RequestBody>;

/// The connections: permits for the open ones, the idle ones with when they went idle.
struct Pool {
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<(Sender, Instant)>>,
}

impl Pool {
    /// The newest idle connection that is still usable, if any.
    async fn take_idle(&self) -> Option<Sender> {
        loop {
            let (mut sender, _) = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                idle.retain(|(sender, at)| !sender.is_closed() && at.elapsed() < IDLE_AGE_MAX);
                idle.pop()?
            };
            if let Ok(Ok(())) = timeout(CONNECT_TIMEOUT, sender.ready()).await {
                return Some(sender);
            }
        }
    }
}

/// A connection in use and its permit: back to the pool by `release`, closed on drop.
struct Lease {
    pool: Arc<Pool>,
    sender: Option<Sender>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// The answer was read to its end: the connection may carry another request.
    fn release(mut self) {
        if let Some(sender) = self.sender.take().filter(|sender| !sender.is_closed()) {
            let mut idle = self
                .pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            idle.push((sender, Instant::now()));
        }
        // The permit goes with `self`, after the connection is in the list.
    }
}

/// The client, key and upload id of an upload to abort (from a task) when `put_file` is
/// dropped in the middle of it.
struct AbortOnDrop(BlobClient, String, Option<String>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let (Some(upload_id), Ok(runtime)) = (self.2.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let (client, key) = (self.0.clone(), std::mem::take(&mut self.1));
        runtime.spawn(async move { client.abort_upload(&key, &upload_id).await });
    }
}

/// A small answer read into memory.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Reads an answer of at most `body_max_bytes`; the connection goes back to the pool.
async fn read_answer(
    response: Response<Incoming>,
    lease: Lease,
    max: usize,
) -> Result<Answer, String> {
    let (head, mut incoming) = response.into_parts();
    let mut body = Vec::new();
    let read = async {
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| format!("reading the answer: {}", error_chain(&e)))?;
            let data = frame.into_data().unwrap_or_default();
            if body.len() + data.len() > max {
                return Err(format!("the answer is over {max} bytes"));
            }
            body.extend_from_slice(&data);
        }
        Ok(())
    };
    match timeout(ANSWER_BODY_TIMEOUT, read).await {
        Ok(result) => result?,
        Err(_) => return Err(format!("the answer took over {ANSWER_BODY_TIMEOUT:?}")),
    }
    if keeps_alive(&head.headers) {
        lease.release();
    }
    Ok(Answer {
        status: head.status,
        headers: head.headers,
        body,
    })
}

/// A GET's body: passes the frames on, counts their bytes, ends in an error frame when the
/// stream carries fewer or more than `expected`, and releases the connection at its end.
struct CountedBody {
    inner: Incoming,
    lease: Option<Lease>,
    reusable: bool,
    expected: u64,
    received: u64,
    done: bool,
    /// `GET /bucket/key bytes=a-b`, for the error.
    what: String,
}

impl CountedBody {
    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        (self.done, self.lease) = (true, None);
        Poll::Ready(Some(Err(io::Error::other(format!("{}: {why}", self.what)))))
    }

    fn finish(&mut self) {
        self.done = true;
        if let Some(lease) = self.lease.take().filter(|_| self.reusable) {
            lease.release();
        }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let (received, expected) = (this.received, this.expected);
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                this.received += frame.data_ref().map_or(0, |data| data.len() as u64);
                if this.received > expected {
                    return this.fail(format!("{} bytes or more, not {expected}", this.received));
                }
                // The end known from Content-Length: a caller that stops here reuses too.
                if this.received == expected && this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => this.fail(error_chain(&error)),
            None if received < expected => this.fail(format!(
                "the body ended after {received} of {expected} bytes"
            )),
            None => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.expected.saturating_sub(self.received))
    }
}

/// A file's `length` bytes at `offset`, read in chunks on the blocking pool.
fn file_body(file: Arc<std::fs::File>, offset: u64, length: u64) -> RequestBody {
    let (sender, receiver) = mpsc::channel::<io::Result<Bytes>>(1);
    tokio::task::spawn_blocking(move || {
        let mut position = offset;
        while position < offset + length {
            let size = (offset + length - position).min(FILE_CHUNK_BYTES);
            let mut chunk = vec![0; size as usize];
            let read = file.read_exact_at(&mut chunk, position).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("reading the local file at {position}: {e}"),
                )
            });
            let failed = read.is_err();
            // A closed channel: the request ended (failed, or its connection went).
            if sender.blocking_send(read.map(|()| chunk.into())).is_err() || failed {
                return;
            }
            position += size;
        }
    });
    let chunks = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((chunk.map(Frame::data), receiver))
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// Parses `s3://BUCKET?endpoint=http://HOST:PORT&region=R` (region default us-east-1)
/// into bucket, endpoint, host and region. The error names what is wrong.
pub fn parse_blob_url(url: &str) -> Result<(String, String, String, String), String> {
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(format!("{url:?} does not start with s3://"));
    };
    let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
    let bucket = bucket.trim_end_matches('/');
    if bucket.len() < 3 || bucket.contains('/') {
        return Err(format!("{bucket:?} is not a bucket name"));
    }
    let mut endpoint = None;
    let mut region = "us-east-1".to_string();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "endpoint" => endpoint = Some(value.into_owned()),
            "region" => region = value.into_owned(),
            other => return Err(format!("unknown parameter {other:?} (endpoint, region)")),
        }
    }
    let Some(endpoint) = endpoint else {
        return Err("endpoint=http://HOST:PORT is missing".into());
    };
    let Some(host) = endpoint.strip_prefix("http://") else {
        return Err(format!(
            "endpoint {endpoint:?}: only http:// endpoints are supported (put a TLS proxy \
             on the node for https)"
        ));
    };
    let host = host.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!("endpoint {endpoint:?} is not http://HOST:PORT"));
    }
    Ok((
        bucket.to_string(),
        endpoint.clone(),
        host.to_string(),
        region,
    ))
}

/// One part of a multipart upload: its number (from 1) and its bytes of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Part {
    number: u32,
    offset: u64,
    length: u64,
}

/// The parts of a file of `size` bytes, or `None` when it goes up as one PUT.
fn part_layout(size: u64) -> Option<Vec<Part>> {
    if size <= SINGLE_PUT_SIZE_MAX_BYTES {
        return None;
    }
    // Whole MiB, and large enough that PARTS_MAX parts hold the file.
    let mib = 1 << 20;
    let part_size = PART_SIZE_BYTES.max(size.div_ceil(PARTS_MAX).div_ceil(mib) * mib);
    let parts = (0..size.div_ceil(part_size)).map(|index| {
        let offset = index * part_size;
        let number = u32::try_from(index + 1).expect("at most PARTS_MAX parts");
        Part {
            number,
            offset,
            length: part_size.min(size - offset),
        }
    });
    Some(parts.collect())
}

/// `bytes=first-last` of `length` (> 0) bytes at `offset`; `None` when it is empty or
/// overflows.
fn range_header(offset: u64, length: u64) -> Option<String> {
    let last = offset.checked_add(length.checked_sub(1)?)?;
    Some(format!("bytes={offset}-{last}"))
}

/// `/bucket` or `/bucket/key`, each key segment URI-encoded, the `/`s kept.
fn object_path(bucket: &str, key: Option<&str>) -> String {
    let mut path = format!("/{}", sigv4::encode_segment(bucket));
    if let Some(key) = key {
        for segment in key.split('/') {
            path.push('/');
            path.push_str(&sigv4::encode_segment(segment));
        }
    }
    path
}

/// SigV4's canonical query string: names and values encoded, sorted, `name=value`.
fn canonical_query(pairs: &[(&str, String)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(name, value)| (sigv4::encode_segment(name), sigv4::encode_segment(value)))
        .collect();
    encoded.sort_unstable();
    let pairs: Vec<String> = encoded.iter().map(|(n, v)| format!("{n}={v}")).collect();
    pairs.join("&")
}

fn rejected(status: u16, message: String) -> BlobError {
    BlobError::Rejected { status, message }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Whether the server keeps the connection open after this answer.
fn keeps_alive(headers: &HeaderMap) -> bool {
    !headers.get_all(CONNECTION).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.eq_ignore_ascii_case("close"))
    })
}

/// An error and its sources, `a: b: c` (hyper's own text leaves the cause out).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The keys of a ListObjectsV2 answer, and the next start when it is truncated.
fn parse_list(xml: &str) -> Result<ListPage, String> {
    const OPEN: &str = "<Contents>";
    const CLOSE: &str = "</Contents>";
    let mut keys = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(OPEN) {
        let entry = &rest[start + OPEN.len()..];
        let end = entry.find(CLOSE).ok_or("a <Contents> is not closed")?;
        keys.push(parse_listed(&entry[..end])?);
        rest = &entry[end + CLOSE.len()..];
    }
    let next_start_after = match element(xml, "IsTruncated") {
        Some("true") => match keys.last() {
            Some(last) => Some(last.key.clone()),
            None => return Err("a truncated page without keys".into()),
        },
        Some("false") => None,
        other => return Err(format!("<IsTruncated> is {other:?}")),
    };
    Ok(ListPage {
        keys,
        next_start_after,
    })
}

fn parse_listed(entry: &str) -> Result<Listed, String> {
    let field = |name: &str| element(entry, name).ok_or(format!("a <Contents> without <{name}>"));
    let key = decode_entities(field("Key")?)?;
    let size = field("Size")?;
    let size = size
        .parse()
        .map_err(|_| format!("{key}: <Size> {size:?}"))?;
    let modified = field("LastModified")?;
    let last_modified = humantime::parse_rfc3339(modified)
        .map_err(|e| format!("{key}: <LastModified> {modified:?}: {e}"))?;
    Ok(Listed {
        key,
        size,
        last_modified,
    })
}

/// The text of the first `<name>…</name>` in `xml`, as it is (entities not decoded).
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..start + end])
}

/// XML text with its entities decoded: the five named ones and `&#N;` / `&#xH;`.
fn decode_entities(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after
            .find(';')
            .ok_or_else(|| format!("an unended entity in {text:?}"))?;
        let decoded = match &after[..end] {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            entity => entity
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        out.push(decoded.ok_or_else(|| format!("an unknown entity in {text:?}"))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn escape_xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// S3's `<Code>` and `<Message>` of an error body, empty when absent.
fn s3_error(body: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(body);
    let field = |name: &str| {
        let raw = element(&text, name).unwrap_or("");
        decode_entities(raw).unwrap_or_else(|_| raw.to_string())
    };
    (field("Code"), field("Message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn part_layout_of_the_thresholds() {
        assert_eq!(part_layout(0), None);
        assert_eq!(part_layout(64 * MIB), None);
        let parts = part_layout(64 * MIB + 1).expect("multipart above 64 MiB");
        assert_eq!(parts.len(), 5);
        assert_eq!(
            parts[4],
            Part {
                number: 5,
                offset: 64 * MIB,
                length: 1
            }
        );
        let parts = part_layout(100 * MIB).expect("multipart");
        let lengths: Vec<u64> = parts.iter().map(|p| p.length / MIB).collect();
        assert_eq!(lengths, [16, 16, 16, 16, 16, 16, 4]);
        for (index, part) in parts.iter().enumerate() {
            assert_eq!(part.number as usize, index + 1);
            assert_eq!(part.offset, index as u64 * 16 * MIB);
        }
        // 200 GiB: larger parts, never more than S3's 10 000.
        let parts = part_layout(200 << 30).expect("multipart");
        assert!(parts.len() as u64 <= PARTS_MAX);
        assert_eq!(parts.iter().map(|p| p.length).sum::<u64>(), 200 << 30);
    }

    #[test]
    fn range_headers() {
        assert_eq!(range_header(0, 10).as_deref(), Some("bytes=0-9"));
        assert_eq!(range_header(5, 1).as_deref(), Some("bytes=5-5"));
        assert_eq!(range_header(7, 0), None);
        assert_eq!(range_header(u64::MAX, 2), None);
    }

    #[test]
    fn paths_and_queries_are_encoded_for_signing() {
        assert_eq!(object_path("b", Some("a b/c+d/é")), "/b/a%20b/c%2Bd/%C3%A9");
        assert_eq!(object_path("b", None), "/b");
        let query = [
            ("uploadId", "2~x/y".to_string()),
            ("partNumber", "3".to_string()),
        ];
        assert_eq!(canonical_query(&query), "partNumber=3&uploadId=2~x%2Fy");
        assert_eq!(canonical_query(&[("uploads", String::new())]), "uploads=");
    }

    #[test]
    fn listing_with_entities_and_truncation() {
        let xml = "<?xml version=\"1.0\"?><ListBucketResult><Name>b</Name>\
            <Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>\
            <IsTruncated>true</IsTruncated>\
            <Contents><Key>p/a&amp;b &lt;&gt; &quot;&apos;&#233;&#x41;</Key>\
            <LastModified>2026-12-02T10:00:00.000Z</LastModified><ETag>&quot;x&quot;</ETag>\
            <Size>12</Size><StorageClass>STANDARD</StorageClass></Contents>\
            <Contents><Key>p/z</Key><LastModified>2026-12-02T10:00:01.250Z</LastModified>\
            <Size>0</Size></Contents></ListBucketResult>";
        let page = parse_list(xml).expect("parses");
        assert_eq!(page.keys.len(), 2);
        assert_eq!(page.keys[0].key, "p/a&b <> \"'éA");
        assert_eq!(page.keys[0].size, 12);
        let at = humantime::parse_rfc3339("2026-12-02T10:00:00Z").expect("a date");
        assert_eq!(page.keys[0].last_modified, at);
        assert_eq!(page.keys[1].last_modified, at + Duration::from_millis(1250));
        assert_eq!(page.next_start_after.as_deref(), Some("p/z"));

        let last = "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
        let page = parse_list(last).expect("parses");
        assert!(page.keys.is_empty() && page.next_start_after.is_none());
        let broken = "<IsTruncated>false</IsTruncated><Contents><Key>a</Key><Size>x</Size>";
        assert!(parse_list(broken).is_err());
        assert!(parse_list("<IsTruncated>true</IsTruncated>").is_err());
        assert!(decode_entities("a &bogus; b").is_err());
    }

    #[test]
    fn error_bodies() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
            <Message>a &amp; b</Message></Error>";
        let (code, message) = s3_error(body);
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("SignatureDoesNotMatch", "a & b")
        );
        assert_eq!(s3_error(b""), (String::new(), String::new()));
    }

    /// The cluster runtime is multi-threaded: every operation's future must be `Send`.
    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let client = BlobClient::new(BlobSettings {
            bucket: "bucket".into(),
            endpoint: "http://127.0.0.1:9".into(),
            host: "127.0.0.1:9".into(),
            addr: "127.0.0.1:9".parse().expect("an address"),
            credentials: Credentials {
                access_key: "a".into(),
                secret_key: "s".into(),
                region: "us-east-1".into(),
            },
            connections_max: 2,
        });
        send(&client.check_bucket());
        send(&client.put("k", Bytes::new()));
        send(&client.put_file("k", Path::new("/nonexistent"), 1));
        send(&client.get("k", 0, 1));
        send(&client.delete("k"));
        send(&client.list("p", None, 1));
        fn sync_body<T: Send + Sync>() {}
        sync_body::<CountedBody>();
    }
}
