//! `GET|HEAD /files/download` and `GET|HEAD /files/stream`: a stored file's bytes.
//!
//! In: `?hash=<64 hex>` or `?path=storage/...`, and the request's conditional and range
//! headers. Out: the whole file (200), one byte range (206), 304 when the client's copy is
//! current, 416 for an unsatisfiable range. Both endpoints serve the same representation
//! with the same headers; `download` says `attachment`, `stream` says `inline`.
//!
//! - The body is read through the core's io engine (io_uring reads, or the blocking pool)
//!   in chunks of [`DOWNLOAD_CHUNK_BYTES`] by a task on the serving core, one chunk read
//!   ahead while the previous one is written to the socket: a download holds at most
//!   three chunks, whatever its size.
//! - The file is opened once per response, so a delete that unlinks it mid-download does
//!   not cut the response short (the inode lives until the descriptor is closed).
//! - Every stored file, named by `hash=` or `path=`, is opened beneath `storage/` with
//!   [`open_beneath`]: a symbolic link anywhere below `storage/` (a directory or the file
//!   itself) is never followed, and the kernel checks this in the open itself, so no link
//!   swapped in between a check and the open slips through.
//! - `path=` is checked before the disk is touched (after percent-decoding it must start
//!   with `storage/` and hold no empty, `.` or `..` segment and no NUL → 400), then opened:
//!   a link on the way is the client's bad path (400), a missing file or one that is not
//!   a regular file is 404, and so is a path that opens but is not in the index.
//! - `hash=` names a record. The daemon never makes a link, so one on the record's path
//!   was planted and what it points to is not the stored file: the answer is 404 with a
//!   message naming the link (the stored file cannot be served, and no other bytes ever
//!   are), plus a warning line on stderr for the operator. Not 400: the request is fine;
//!   not 500: no daemon operation failed, and a client can do nothing about it either way.
//! - Range handling follows RFC 9110 §14 for a single range: `bytes=a-b`, `a-` and `-n`.
//!   A header with several ranges, another unit or bad syntax is ignored (200, the whole
//!   file), as §14.2 allows; a syntactically valid range that starts at or beyond the end
//!   (any range of an empty file) is 416 with `Content-Range: bytes */size`. Range only
//!   applies to GET (§14.2); `If-Range` with the ETag or the exact Last-Modified date
//!   keeps the range, anything else sends the whole file.
//! - Preconditions per RFC 9110 §13.2.2: `If-None-Match` (weak comparison, `*`), and only
//!   when it is absent `If-Modified-Since`; a match is 304 with the validators, no body.

use std::fs::Metadata;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::sync::mpsc;

use crate::api::errors::{ApiError, Body, full_body};
use crate::api::query::query_param;
use crate::ingest::IngestContext;
use crate::store::beneath::{is_link_refused, open_beneath};
use crate::store::index::{StoredFile, parse_hash};
use crate::store::io::{BlockingPool, CoreIo};

/// Bytes read from disk per body frame. Large enough that a 1 GiB download is 4096 reads
/// (syscall and io_uring overhead vanish), small enough that a thousand concurrent
/// downloads hold at most 3 × 256 KiB each.
pub const DOWNLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// Which endpoint asked: they differ only in the Content-Disposition type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileEndpoint {
    Download,
    Stream,
}

impl FileEndpoint {
    fn disposition(self) -> &'static str {
        match self {
            FileEndpoint::Download => "attachment",
            FileEndpoint::Stream => "inline",
        }
    }
}

/// Serves `GET|HEAD /files/download` and `/files/stream`.
pub async fn serve_file(
    ctx: &IngestContext,
    request: &Request<Incoming>,
    endpoint: FileEndpoint,
) -> Result<Response<Body>, ApiError> {
    if let Some(cluster) = &ctx.store.cluster {
        let located = cluster_lookup(ctx, cluster, request).await?;
        let record = located.record.clone();
        let size = record.size;
        let last_modified = last_modified_of(&record.uploaded_at, UNIX_EPOCH);
        let source = Source::Cluster(cluster.clone(), Box::new(located));
        return respond(request, endpoint, &record, size, last_modified, source).await;
    }
    let (file, opened) = select_and_open(ctx, request).await?;
    let record = file.record();
    if opened.size_bytes != record.size {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "stored file changed on disk: {} bytes, the record says {}",
                opened.size_bytes, record.size
            ),
        ));
    }
    let last_modified = last_modified_of(&record.uploaded_at, opened.modified);
    let size = opened.size_bytes;
    let source = Source::Local(opened.reader);
    respond(request, endpoint, &record, size, last_modified, source).await
}

/// Where the bytes of a response come from.
enum Source {
    /// A file of this node, opened.
    Local(FileReader),
    /// An object range in the blob cluster.
    Cluster(
        Arc<crate::cluster::Cluster>,
        Box<crate::cluster::metadata::Located>,
    ),
}

/// The response for a stored file of `size` bytes: validators, conditionals, range, body.
async fn respond(
    request: &Request<Incoming>,
    endpoint: FileEndpoint,
    record: &crate::store::journal::FileRecord,
    size: u64,
    last_modified: SystemTime,
    source: Source,
) -> Result<Response<Body>, ApiError> {
    let validators = Validators {
        etag: format!("\"{}\"", record.hash),
        last_modified_s: unix_seconds(last_modified),
    };
    let is_get = request.method() == Method::GET;
    let selection = select(request.headers(), &validators, size, is_get);
    let mut builder = Response::builder()
        .header(header::ETAG, &validators.etag)
        .header(
            header::LAST_MODIFIED,
            httpdate::fmt_http_date(last_modified),
        )
        .header("X-File-Hash", &record.hash)
        .header(header::ACCEPT_RANGES, "bytes");
    let (start, length) = match selection {
        Selection::NotModified => {
            let response = builder
                .status(StatusCode::NOT_MODIFIED)
                .body(full_body(Bytes::new()))
                .expect("valid headers");
            return Ok(response);
        }
        Selection::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range not satisfiable: the file has {size} bytes"),
            )
            .into_response();
            let content_range = format!("bytes */{size}");
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&content_range).expect("digits are a valid header"),
            );
            return Ok(response);
        }
        Selection::Full => {
            builder = builder.status(StatusCode::OK);
            (0, size)
        }
        Selection::Partial { start, end } => {
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            (start, end - start + 1)
        }
    };
    let fallback_name = leaf_name(&record.path);
    builder = builder
        .header(header::CONTENT_TYPE, content_type(&record.mime_type))
        .header(header::CONTENT_LENGTH, length)
        .header(
            header::CONTENT_DISPOSITION,
            content_disposition(endpoint.disposition(), &record.original_name, fallback_name),
        )
        // Uploaded bytes are untrusted: never let a browser run them as a page of ours.
        .header("X-Content-Type-Options", "nosniff")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox",
        );
    let body = if is_get && length > 0 {
        match source {
            Source::Local(reader) => FileBody::spawn(reader, start, length).boxed_unsync(),
            Source::Cluster(cluster, located) => {
                let cluster_ = cluster.clone();
                cluster
                    .run(async move {
                        crate::cluster::protocol::read(&cluster_, &located, start, length).await
                    })
                    .await
                    .map_err(ApiError::from_cluster)?
                    .boxed_unsync()
            }
        }
    } else {
        full_body(Bytes::new())
    };
    Ok(builder.body(body).expect("valid headers"))
}

/// Cluster mode: the record named by `?hash=` or `?path=`, from PostgreSQL.
pub async fn cluster_lookup(
    ctx: &IngestContext,
    cluster: &Arc<crate::cluster::Cluster>,
    request: &Request<Incoming>,
) -> Result<crate::cluster::metadata::Located, ApiError> {
    enum Key {
        Hash(crate::store::index::Hash),
        Path(String),
    }
    let _ = ctx;
    let key = match (query_param(request, "hash"), query_param(request, "path")) {
        (Some(hex), None) => Key::Hash(parse_hash(&hex).ok_or_else(|| {
            ApiError::bad_request("invalid hash: expected 64 hexadecimal digits (BLAKE3)")
        })?),
        (None, Some(path)) => {
            check_path(&path)?;
            Key::Path(path)
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give either hash or path, not both"));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "missing query parameter hash or path",
            ));
        }
    };
    let cluster_ = cluster.clone();
    let (found, named) = cluster
        .run(async move {
            match key {
                Key::Hash(hash) => {
                    let hex = blake3::Hash::from_bytes(hash).to_hex().to_string();
                    Ok((
                        cluster_.metadata.by_hash(&hash).await?,
                        format!("hash {hex}"),
                    ))
                }
                Key::Path(path) => {
                    let found = cluster_.metadata.by_path(&path).await?;
                    Ok((found, path))
                }
            }
        })
        .await
        .map_err(ApiError::from_cluster)?;
    found.ok_or_else(|| ApiError::not_found(format!("no stored file with {named}")))
}

/// The stored file named by `?hash=` or `?path=` (exactly one of them), opened.
async fn select_and_open(
    ctx: &IngestContext,
    request: &Request<Incoming>,
) -> Result<(Arc<StoredFile>, OpenFile), ApiError> {
    match (query_param(request, "hash"), query_param(request, "path")) {
        (Some(hash), None) => {
            let file = lookup_hash(ctx, &hash)?;
            let path = &file.record().path;
            // Record paths all start with `storage/`; one that does not is not on disk.
            let relative = path.strip_prefix("storage/").unwrap_or("");
            let opened = OpenFile::open(ctx, Path::new(relative))
                .await
                .map_err(|e| hash_open_error(path, &e))?;
            Ok((file, opened))
        }
        (None, Some(path)) => {
            // The open comes first: a link on the way is a 400 even for a path that is not
            // stored, as before.
            let relative = check_path(&path)?;
            let opened = OpenFile::open(ctx, relative)
                .await
                .map_err(|e| path_open_error(&e))?;
            let file = ctx
                .store
                .metadata
                .index
                .get_by_path(&path)
                .ok_or_else(|| ApiError::not_found(format!("no stored file at {path}")))?;
            Ok((file, opened))
        }
        (Some(_), Some(_)) => Err(ApiError::bad_request("give either hash or path, not both")),
        (None, None) => Err(ApiError::bad_request(
            "missing query parameter hash or path",
        )),
    }
}

/// The stored file of a hex hash; 400 when malformed, 404 when not stored.
pub fn lookup_hash(ctx: &IngestContext, hex: &str) -> Result<Arc<StoredFile>, ApiError> {
    let hash = parse_hash(hex).ok_or_else(|| {
        ApiError::bad_request("invalid hash: expected 64 hexadecimal digits (BLAKE3)")
    })?;
    ctx.store
        .metadata
        .index
        .get(&hash)
        .ok_or_else(|| ApiError::not_found(format!("no stored file with hash {hex}")))
}

/// Checks a `path=` value (already percent-decoded); returns the part below `storage/`.
/// Pure: nothing on disk is touched.
pub fn check_path(path: &str) -> Result<&Path, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("invalid path {path:?}: {why}"));
    if path.starts_with('/') {
        return Err(bad("absolute paths are not allowed"));
    }
    if path.contains('\0') || path.contains('\\') {
        return Err(bad("NUL and backslash are not allowed"));
    }
    let rest = match path.strip_prefix("storage") {
        Some("") | Some("/") => return Err(bad("names no file")),
        Some(rest) => rest.strip_prefix('/'),
        None => None,
    };
    let Some(rest) = rest else {
        return Err(bad("must start with storage/"));
    };
    for segment in rest.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(bad("empty, '.' and '..' segments are not allowed"));
        }
    }
    Ok(Path::new(rest))
}

fn is_missing(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR)
    )
}

/// A `path=` open that failed: a link on the way is the client's bad path.
fn path_open_error(error: &io::Error) -> ApiError {
    if is_link_refused(error) {
        ApiError::bad_request(
            "invalid path: symbolic links are not followed out of the storage tree",
        )
    } else if is_missing(error) {
        ApiError::not_found("no stored file at this path")
    } else {
        ApiError::storage("cannot open stored file", error)
    }
}

/// A `hash=` open that failed: a link on the way is 404 and a warning (module docs).
fn hash_open_error(path: &str, error: &io::Error) -> ApiError {
    if is_link_refused(error) {
        crate::log_line!(
            "rhinobox: warning: {path} is reached through a symbolic link below storage/; \
             not followed, the download is answered 404"
        );
        ApiError::not_found(format!(
            "stored file {path} cannot be served: its path goes through a symbolic link, \
             which is not followed"
        ))
    } else if is_missing(error) {
        ApiError::not_found("stored file is missing on disk")
    } else {
        ApiError::storage("cannot open stored file", error)
    }
}

/// An open stored file, read through the core's engine.
enum FileReader {
    Uring(tokio_uring::fs::File),
    Threads {
        file: Arc<std::fs::File>,
        pool: BlockingPool,
    },
}

/// A stored file opened on this core; its body may be read from another thread.
pub struct OpenFile {
    reader: FileReader,
    pub size_bytes: u64,
    pub modified: SystemTime,
}

impl OpenFile {
    /// Opens `relative` (below `storage/`) read-only beneath the store's root; a link on
    /// the way is refused ([`is_link_refused`]), a non-regular file is refused as missing.
    pub async fn open(ctx: &IngestContext, relative: &Path) -> io::Result<OpenFile> {
        let root = ctx.store.blobs.root();
        let (file, metadata) = match &ctx.io {
            // A blocking open on the core thread: tokio-uring has no openat2 with resolve
            // rules, and opening a local file is short, as creating one is (store::io does
            // that on the core thread too); a FIFO cannot make it wait (`open_regular`).
            CoreIo::Uring(_) => open_regular(root, relative)?,
            CoreIo::Threads(threads) => {
                let (root, relative) = (root.clone(), relative.to_path_buf());
                threads
                    .pool
                    .run(move || open_regular(&root, &relative))
                    .await?
            }
        };
        let reader = match &ctx.io {
            CoreIo::Uring(_) => FileReader::Uring(tokio_uring::fs::File::from_std(file)),
            CoreIo::Threads(threads) => FileReader::Threads {
                file: Arc::new(file),
                pool: threads.pool.clone(),
            },
        };
        Ok(OpenFile {
            reader,
            size_bytes: metadata.len(),
            modified: metadata.modified().unwrap_or(UNIX_EPOCH),
        })
    }
}

impl OpenFile {
    /// The body of `length` bytes from `offset`, fed by a task on this core.
    pub fn into_body(self, offset: u64, length: u64) -> FileBody {
        FileBody::spawn(self.reader, offset, length)
    }
}

/// Opens a stored file read-only beneath `root` and checks that it is a regular file.
/// Blocking. `O_NONBLOCK` keeps the open of a FIFO planted in the tree from waiting for a
/// writer (on the core thread that would freeze the core); it is cleared again once the
/// file is known to be regular, so reads behave as they always do.
fn open_regular(root: &std::fs::File, relative: &Path) -> io::Result<(std::fs::File, Metadata)> {
    let file = open_beneath(root, relative, libc::O_RDONLY | libc::O_NONBLOCK)?;
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    // F_SETFL replaces the status flags: 0 clears O_NONBLOCK, the only one we set.
    // SAFETY: fcntl on a descriptor we own; F_SETFL reads no memory of ours.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((file, metadata))
}

impl FileReader {
    /// Reads exactly `len` bytes at `offset`; fewer means the file shrank (an error).
    async fn read_exact_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let buffer = match self {
            FileReader::Uring(file) => {
                let (result, mut buffer) = file.read_at(Vec::with_capacity(len), offset).await;
                result?;
                // Short reads only happen at the end of the file or on a signal.
                while buffer.len() < len {
                    let want = len - buffer.len();
                    let at = offset + buffer.len() as u64;
                    let (result, more) = file.read_at(Vec::with_capacity(want), at).await;
                    if result? == 0 {
                        break;
                    }
                    buffer.extend_from_slice(&more);
                }
                buffer
            }
            FileReader::Threads { file, pool } => {
                let file = file.clone();
                pool.run(move || read_exact_blocking(&file, offset, len))
                    .await?
            }
        };
        if buffer.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stored file shrank while being sent",
            ));
        }
        Ok(Bytes::from(buffer))
    }
}

fn read_exact_blocking(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = file.read_at(&mut buffer[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buffer.truncate(done);
    Ok(buffer)
}

/// Sends `length` bytes of an open file from `offset` into `chunks`, one chunk at a time.
/// A slot is reserved before each read, so at most one chunk waits in the channel while
/// hyper writes the previous one: the read of chunk k+1 overlaps the send of chunk k, and
/// a download never holds more than three chunks. A dropped body (client gone) ends it.
async fn pump(
    reader: FileReader,
    mut offset: u64,
    mut remaining: u64,
    chunks: mpsc::Sender<io::Result<Bytes>>,
) {
    while remaining > 0 {
        let Ok(slot) = chunks.reserve().await else {
            return;
        };
        let len = remaining.min(DOWNLOAD_CHUNK_BYTES as u64) as usize;
        let result = reader.read_exact_at(offset, len).await;
        let failed = result.is_err();
        slot.send(result);
        if failed {
            return;
        }
        offset += len as u64;
        remaining -= len as u64;
    }
}

/// A response body fed by `pump`, which runs as a task on the serving core (the io
/// engine's handles are !Send; the body must be Send). Its size hint is exact, so hyper
/// frames it with Content-Length and the access log counts the bytes.
pub struct FileBody {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    unsent_bytes: u64,
}

impl FileBody {
    /// Starts the pump task on this core and returns the body it feeds.
    fn spawn(reader: FileReader, offset: u64, length: u64) -> FileBody {
        let (sender, chunks) = mpsc::channel(1);
        tokio::task::spawn_local(pump(reader, offset, length, sender));
        FileBody {
            chunks,
            unsent_bytes: length,
        }
    }
}

impl FileBody {
    /// Bytes not sent yet.
    pub fn unsent_bytes(&self) -> u64 {
        self.unsent_bytes
    }

    /// The next chunk; `None` at the end. A reader that stopped early is an error.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        match hyper::body::Body::poll_frame(Pin::new(self), cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(frame.into_data().ok().map(Ok)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        if this.unsent_bytes == 0 {
            return Poll::Ready(None);
        }
        let received = match this.chunks.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(received) => received,
        };
        match received {
            Some(Ok(chunk)) => {
                this.unsent_bytes -= chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Some(Err(error)) => {
                this.unsent_bytes = 0;
                Poll::Ready(Some(Err(error)))
            }
            None => {
                this.unsent_bytes = 0;
                Poll::Ready(Some(Err(io::Error::other("file reader stopped"))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.unsent_bytes == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.unsent_bytes)
    }
}

/// The validators of the representation.
pub struct Validators {
    /// The quoted hash.
    pub etag: String,
    /// Last-Modified in whole seconds since the epoch (HTTP dates have no fractions).
    pub last_modified_s: u64,
}

/// What to send, decided from the request headers.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection {
    NotModified,
    Full,
    /// Inclusive byte positions.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// Applies If-None-Match / If-Modified-Since, then Range with If-Range (RFC 9110 §13.2.2).
pub fn select(headers: &HeaderMap, validators: &Validators, size: u64, is_get: bool) -> Selection {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(if_none_match) = text(header::IF_NONE_MATCH) {
        if etag_list_matches_weak(if_none_match, &validators.etag) {
            return Selection::NotModified;
        }
    } else if let Some(since) = text(header::IF_MODIFIED_SINCE) {
        let not_newer = httpdate::parse_http_date(since)
            .is_ok_and(|since| validators.last_modified_s <= unix_seconds(since));
        if not_newer {
            return Selection::NotModified;
        }
    }
    let Some(range) = text(header::RANGE).filter(|_| is_get) else {
        return Selection::Full;
    };
    if let Some(if_range) = text(header::IF_RANGE)
        && !if_range_matches(if_range, validators)
    {
        return Selection::Full;
    }
    match parse_range(range, size) {
        RangeSpec::Ignored => Selection::Full,
        RangeSpec::Unsatisfiable => Selection::Unsatisfiable,
        RangeSpec::Bytes { start, end } => Selection::Partial { start, end },
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `If-None-Match`: `*` or a list of entity tags, compared weakly.
fn etag_list_matches_weak(list: &str, etag: &str) -> bool {
    list.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// `If-Range`: an entity tag compared strongly, or exactly the Last-Modified date.
fn if_range_matches(value: &str, validators: &Validators) -> bool {
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        return value == validators.etag;
    }
    httpdate::parse_http_date(value)
        .is_ok_and(|date| unix_seconds(date) == validators.last_modified_s)
}

/// A parsed `Range` header against a representation of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// Not a single valid byte range: serve the whole file.
    Ignored,
    Unsatisfiable,
    /// Inclusive positions, clamped to the file.
    Bytes {
        start: u64,
        end: u64,
    },
}

/// Parses a single `bytes=` range (RFC 9110 §14.1.2).
pub fn parse_range(value: &str, size: u64) -> RangeSpec {
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return RangeSpec::Ignored;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeSpec::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeSpec::Ignored;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Digits beyond u64 are still a valid position, just past any end.
        Some(s.parse().unwrap_or(u64::MAX))
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // `-n`: the last n bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 || size == 0 {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Bytes {
                    start: size - suffix.min(size),
                    end: size - 1,
                }
            }
        }
        // `a-`: from a to the end.
        (false, Some(start), None) if last.trim().is_empty() => {
            if start >= size {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Bytes {
                    start,
                    end: size - 1,
                }
            }
        }
        // `a-b`.
        (false, Some(start), Some(end)) if start <= end => {
            if start >= size {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Bytes {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
        _ => RangeSpec::Ignored,
    }
}

/// Last-Modified: the upload time of the record, else the file's mtime.
fn last_modified_of(uploaded_at: &str, mtime: SystemTime) -> SystemTime {
    humantime::parse_rfc3339_weak(uploaded_at).unwrap_or(mtime)
}

/// The record's MIME type when it is a clean header value, else octet-stream.
fn content_type(mime_type: &str) -> HeaderValue {
    let clean =
        !mime_type.is_empty() && mime_type.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    match HeaderValue::from_str(mime_type) {
        Ok(value) if clean => value,
        _ => HeaderValue::from_static("application/octet-stream"),
    }
}

/// The leaf of a record path: the name the file has on disk.
fn leaf_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// RFC 5987 `attr-char`: what may stay unescaped in `filename*`.
const ATTR_CHAR_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `attachment; filename="..."` with quotes and backslashes escaped and anything outside
/// printable ASCII replaced by `_`; when that lost something, also the exact name as
/// `filename*=UTF-8''...` (RFC 6266 §4.3, RFC 5987). An empty name uses `fallback`.
pub fn content_disposition(kind: &str, name: &str, fallback: &str) -> HeaderValue {
    let name = if name.is_empty() { fallback } else { name };
    let mut ascii = String::with_capacity(name.len() + 2);
    let mut lossy = false;
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                ascii.push('\\');
                ascii.push(c);
            }
            ' '..='~' => ascii.push(c),
            _ => {
                ascii.push('_');
                lossy = true;
            }
        }
    }
    let mut value = format!("{kind}; filename=\"{ascii}\"");
    if lossy {
        value.push_str("; filename*=UTF-8''");
        value.extend(utf8_percent_encode(name, ATTR_CHAR_ESCAPES));
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Every form of a single range, clamped or refused per RFC 9110 §14.1.2.
    #[test]
    fn range_forms() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-0", 10), Bytes { start: 0, end: 0 });
        assert_eq!(parse_range("bytes=9-9", 10), Bytes { start: 9, end: 9 });
        assert_eq!(parse_range("bytes=2-100", 10), Bytes { start: 2, end: 9 });
        assert_eq!(parse_range("bytes=4-", 10), Bytes { start: 4, end: 9 });
        assert_eq!(parse_range("bytes=-3", 10), Bytes { start: 7, end: 9 });
        assert_eq!(parse_range("bytes=-30", 10), Bytes { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 10),
            Unsatisfiable
        );
        assert_eq!(parse_range("bytes=5-3", 10), Ignored);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Ignored);
        assert_eq!(parse_range("items=0-1", 10), Ignored);
        assert_eq!(parse_range("bytes=a-b", 10), Ignored);
        assert_eq!(parse_range("bytes=-", 10), Ignored);
        assert_eq!(parse_range("bytes 0-1", 10), Ignored);
    }

    /// Syntax checks of `path=` reject traversal before anything touches the disk.
    #[test]
    fn path_checks() {
        assert!(check_path("storage/images/png/abc_x.png").is_ok());
        for bad in [
            "/etc/passwd",
            "storage/../metadata/journal.ndjson",
            "storage/./x",
            "storage//x",
            "storage/x/",
            "metadata/journal.ndjson",
            "storage",
            "storage/",
            "storagex/y",
            "storage/a\0b",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Names are quoted safely, and non-ASCII names also travel RFC 5987-encoded.
    #[test]
    fn disposition_quoting() {
        let v = |name: &str| {
            content_disposition("attachment", name, "f.bin")
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(v("a.jpg"), "attachment; filename=\"a.jpg\"");
        assert_eq!(v("a\"b\\c.jpg"), "attachment; filename=\"a\\\"b\\\\c.jpg\"");
        assert_eq!(
            v("été.png"),
            "attachment; filename=\"_t_.png\"; filename*=UTF-8''%C3%A9t%C3%A9.png"
        );
        assert_eq!(
            v("a\r\nb"),
            "attachment; filename=\"a__b\"; filename*=UTF-8''a%0D%0Ab"
        );
        assert_eq!(v(""), "attachment; filename=\"f.bin\"");
    }

    /// 304 wins over ranges; If-Range with another tag sends the whole file.
    #[test]
    fn preconditions() {
        let validators = Validators {
            etag: "\"abc\"".into(),
            last_modified_s: 1_000_000,
        };
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            map
        };
        let date = |s: u64| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s));
        let s = |h: &HeaderMap| select(h, &validators, 10, true);
        assert_eq!(
            s(&headers(&[("if-none-match", "\"abc\"")])),
            Selection::NotModified
        );
        assert_eq!(
            s(&headers(&[("if-none-match", "W/\"abc\"")])),
            Selection::NotModified
        );
        assert_eq!(
            s(&headers(&[("if-none-match", "\"x\", *")])),
            Selection::NotModified
        );
        assert_eq!(s(&headers(&[("if-none-match", "\"x\"")])), Selection::Full);
        let later = date(1_000_001);
        assert_eq!(
            s(&headers(&[("if-modified-since", &later)])),
            Selection::NotModified
        );
        let earlier = date(999_999);
        assert_eq!(
            s(&headers(&[("if-modified-since", &earlier)])),
            Selection::Full
        );
        // If-None-Match present: If-Modified-Since is not looked at.
        let both = headers(&[("if-none-match", "\"x\""), ("if-modified-since", &later)]);
        assert_eq!(s(&both), Selection::Full);
        let ranged =
            |if_range: &str| s(&headers(&[("range", "bytes=0-1"), ("if-range", if_range)]));
        assert_eq!(ranged("\"abc\""), Selection::Partial { start: 0, end: 1 });
        assert_eq!(ranged("W/\"abc\""), Selection::Full);
        assert_eq!(
            ranged(&date(1_000_000)),
            Selection::Partial { start: 0, end: 1 }
        );
        assert_eq!(ranged(&date(999_999)), Selection::Full);
        let head = select(&headers(&[("range", "bytes=0-1")]), &validators, 10, false);
        assert_eq!(head, Selection::Full);
    }
}
