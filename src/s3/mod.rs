//! The S3-compatible API: a second listener (`RHINOBOX_S3_ADDR`) served by the same
//! cores as the native API.
//!
//! [s3s] does the protocol: SigV4 (header and presigned, `aws-chunked` bodies), routing of
//! path-style requests to operations, and the XML of inputs, outputs and errors. This
//! module maps operations onto the store. Its futures must be `Send` (s3s's trait), while
//! the store's io engines are per core and `!Send`: work that touches files runs as a
//! task on the serving core (`on_core`) and answers over a oneshot; bodies cross back as
//! `Send` streams fed by that task.
//!
//! Buckets:
//! - `media`, read-only: every file stored through the native API under its path without
//!   the leading `storage/` (`images/jpg/<hash12>_photo.jpg`), so that `aws s3 sync` /
//!   `rclone sync` back the whole store up. Writes into it are AccessDenied. Its ETag is
//!   `"<first 32 hex digits of the BLAKE3>-1"`: the native store keeps no MD5, and the
//!   `-1` form (S3's multipart form) keeps clients that compare an ETag with a local MD5
//!   (rclone, aws-cli) from taking it for one.
//! - user buckets (CreateBucket, DeleteBucket when empty): keys → objects kept by the
//!   store's metadata side ([`crate::store::objects`], journal lines `bucket`, `object`,
//!   ...), content by BLAKE3 in `storage/.objects/` shared with native files and with other
//!   keys ([`crate::store::object_protocol`]). ETag = MD5 of the bytes (`<md5 of the part
//!   MD5s>-N` for multipart), Content-Type and `x-amz-meta-*` kept as sent.
//!
//! Operations: ListBuckets, CreateBucket, HeadBucket, GetBucketLocation, DeleteBucket,
//! PutObject (`If-None-Match: *`; Content-MD5 and `x-amz-checksum-*`, in a header or an
//! `aws-chunked` trailer, verified: [`receive`]), GetObject and HeadObject (Range,
//! If-Match, If-None-Match, If-(Un)Modified-Since), CopyObject (metadata COPY or REPLACE;
//! from `media` too), DeleteObject, DeleteObjects, ListObjects v1/v2 (prefix, delimiter,
//! max-keys, marker / start-after / continuation token, `encoding-type=url`), multipart
//! upload ([`multipart`]: Create, UploadPart, Complete, Abort, ListParts,
//! ListMultipartUploads). `x-rhinobox-hash` carries the full BLAKE3 on HEAD, GET, PUT and
//! Complete. Every body goes through the native ingest path (job slots, memory budget,
//! idle timeout, size limit), so S3 uploads are bounded like native ones.

pub mod listing;
pub mod multipart;
pub mod receive;
pub mod tree_hash;

use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::HeaderValue;
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, Bucket, BucketLocationConstraint,
    Checksum, CommonPrefix, CompleteMultipartUploadInput, CompleteMultipartUploadOutput,
    CopyObjectInput, CopyObjectOutput, CopyObjectResult, CopySource, CreateBucketInput,
    CreateBucketOutput, CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteBucketInput,
    DeleteBucketOutput, DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput,
    DeleteObjectsOutput, DeletedObject, ETag, ETagCondition, GetBucketLocationInput,
    GetBucketLocationOutput, GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput,
    HeadObjectInput, HeadObjectOutput, ListBucketsInput, ListBucketsOutput,
    ListMultipartUploadsInput, ListMultipartUploadsOutput, ListObjectsInput, ListObjectsOutput,
    ListObjectsV2Input, ListObjectsV2Output, ListPartsInput, ListPartsOutput, MultipartUpload,
    Object, PutObjectInput, PutObjectOutput, Range, StreamingBlob, Timestamp, TimestampFormat,
    UploadPartInput, UploadPartOutput,
};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use std::collections::BTreeMap;

use crate::api::files::{FileBody, OpenFile};
use crate::config::S3Config;
use crate::ingest::IngestContext;
use crate::ingest::receive::TmpFiles;
use crate::ingest::sniff::SNIFF_BYTES;
use crate::server::Shared;
use crate::store::index::StoredFile;
use crate::store::journal::ObjectRecord;
use crate::store::object_protocol::{IfAbsent, ObjectError, ObjectSource};
use listing::{MAX_KEYS_MAX, PageBuilder, PageRequest};
use multipart::{Part, Upload, Uploads};
use receive::Declared;

/// The read-only bucket that shows the native store.
pub const MEDIA_BUCKET: &str = "media";

/// The S3 service of one core: s3s with our key pair in front of `Front`.
pub fn service(shared: Arc<Shared>, config: &S3Config) -> S3Service {
    let mut builder = S3ServiceBuilder::new(Front {
        shared,
        region: config.region.clone(),
    });
    builder.set_auth(s3s::auth::SimpleAuth::from_single(
        config.access_key.clone(),
        config.secret_key.clone(),
    ));
    builder.build()
}

/// The operations, on the store.
struct Front {
    shared: Arc<Shared>,
    region: String,
}

/// What a GET or HEAD needs of an object, from either kind of bucket.
struct Facts {
    etag: ETag,
    modified: SystemTime,
    size: u64,
    content_type: String,
    hash_hex: String,
    /// Below `storage/`.
    relative: String,
    metadata: Option<s3s::dto::Metadata>,
}

impl Facts {
    fn of_media(file: &StoredFile) -> Facts {
        let path = file.path();
        Facts {
            etag: etag_of(file),
            modified: file.uploaded_at_time(),
            size: file.size,
            content_type: file.mime_type().to_string(),
            hash_hex: file.hash_hex(),
            relative: path.strip_prefix("storage/").unwrap_or(&path).to_string(),
            metadata: None,
        }
    }

    fn of_object(record: &ObjectRecord) -> Facts {
        Facts {
            etag: ETag::Strong(record.etag.clone()),
            modified: time_of(&record.last_modified),
            size: record.size,
            content_type: record.content_type.clone(),
            hash_hex: record.hash.clone(),
            relative: crate::store::blobs::object_path(&record.hash)
                .strip_prefix("storage/")
                .unwrap_or_default()
                .to_string(),
            metadata: (!record.meta.is_empty()).then(|| {
                record
                    .meta
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
        }
    }
}

fn time_of(rfc3339: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(rfc3339).unwrap_or(UNIX_EPOCH)
}

/// The uploads in progress, shared by every core's service (one registry per process).
static UPLOADS: std::sync::LazyLock<Uploads> = std::sync::LazyLock::new(Uploads::default);

/// Multipart assemblies running at once (each a thread reading and writing whole parts).
static ASSEMBLIES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

impl Front {
    fn objects(&self) -> &crate::store::objects::Objects {
        &self.shared.store.metadata.objects
    }

    /// The object under `bucket`/`key`, of either kind of bucket.
    fn find(&self, bucket: &str, key: &str) -> S3Result<Facts> {
        if bucket == MEDIA_BUCKET {
            return self.media_file(bucket, key).map(|f| Facts::of_media(&f));
        }
        self.user_bucket(bucket)?;
        self.objects()
            .get(bucket, key)
            .map(|r| Facts::of_object(&r))
            .ok_or_else(|| s3_error!(NoSuchKey))
    }

    fn user_bucket(&self, bucket: &str) -> S3Result<()> {
        if self.objects().bucket_exists(bucket) {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    fn media_file(&self, bucket: &str, key: &str) -> S3Result<Arc<StoredFile>> {
        check_media(bucket)?;
        self.shared
            .store
            .metadata
            .index
            .get_by_path(&format!("storage/{key}"))
            .ok_or_else(|| s3_error!(NoSuchKey))
    }

    /// One page of a listing, of either kind of bucket.
    async fn page(
        &self,
        bucket: &str,
        prefix: String,
        delimiter: String,
        after: String,
        max_keys: Option<i32>,
        url: bool,
    ) -> S3Result<listing::Page<Object>> {
        let max_keys = max_keys.map_or(MAX_KEYS_MAX, |n| n.clamp(0, MAX_KEYS_MAX as i32) as usize);
        if bucket == MEDIA_BUCKET {
            let page = self.media_page(prefix, delimiter, after, max_keys).await?;
            return Ok(map_page(page, |key, file| object_of(key, &file, url)));
        }
        let mut page = PageBuilder::new(PageRequest {
            prefix: &prefix,
            delimiter: &delimiter,
            after: &after,
            max_keys,
        });
        // Keys come in order: start at the later of the prefix and the marker, skip past
        // each common prefix, stop when the page is full or the prefix is passed.
        let mut from = if prefix.as_str() > after.as_str() {
            (prefix.clone(), true)
        } else {
            (after.clone(), false)
        };
        'batches: loop {
            let bound = match &from {
                (key, true) => std::ops::Bound::Included(key.as_str()),
                (key, false) => std::ops::Bound::Excluded(key.as_str()),
            };
            let batch = self
                .objects()
                .range(bucket, bound, LIST_BATCH)
                .ok_or_else(|| s3_error!(NoSuchBucket))?;
            let Some(last) = batch.last() else {
                break;
            };
            let mut next = (last.key.clone(), false);
            for record in &batch {
                if !record.key.starts_with(&prefix) {
                    break 'batches;
                }
                page.offer(&record.key, || {
                    object_of_record(record.key.clone(), record, url)
                });
                if page.is_full() {
                    break 'batches;
                }
                if let Some(common) = page.rolled_up(&record.key)
                    && let Some(past) = PageBuilder::<Object>::past_common_prefix(common)
                {
                    next = (past, true);
                    break;
                }
            }
            from = next;
        }
        Ok(page.finish())
    }

    /// One page of `media`, computed on a scan thread.
    async fn media_page(
        &self,
        prefix: String,
        delimiter: String,
        after: String,
        max_keys: usize,
    ) -> S3Result<listing::Page<Arc<StoredFile>>> {
        let store = self.shared.store.clone();
        self.shared
            .scans
            .run(move || {
                let mut page = PageBuilder::new(PageRequest {
                    prefix: &prefix,
                    delimiter: &delimiter,
                    after: &after,
                    max_keys,
                });
                store.metadata.index.for_each_oldest_first(|file| {
                    let path = file.path();
                    if let Some(key) = path.strip_prefix("storage/") {
                        page.offer(key, || file.clone());
                    }
                });
                page.finish()
            })
            .await
            .map_err(|e| S3Error::with_message(S3ErrorCode::SlowDown, e.message))
    }
}

/// Deletes of one DeleteObjects request in flight at once.
const DELETES_AT_ONCE: usize = 16;

/// Records read per lock of a bucket while listing.
const LIST_BATCH: usize = 1000;

fn map_page<T, U>(page: listing::Page<T>, f: impl Fn(String, T) -> U) -> listing::Page<U> {
    listing::Page {
        keys: page
            .keys
            .into_iter()
            .map(|(k, v)| (k.clone(), f(k, v)))
            .collect(),
        common_prefixes: page.common_prefixes,
        truncated: page.truncated,
        last: page.last,
    }
}

fn object_of_record(key: String, record: &ObjectRecord, url_encoded: bool) -> Object {
    Object {
        e_tag: Some(ETag::Strong(record.etag.clone())),
        key: Some(encode_key(key, url_encoded)),
        last_modified: Some(Timestamp::from(time_of(&record.last_modified))),
        size: Some(record.size as i64),
        ..Default::default()
    }
}

/// S3's bucket naming rules (the DNS-compatible ones every SDK assumes).
fn check_bucket_name(name: &str) -> S3Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ends_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if (3..=63).contains(&name.len())
        && ok_chars
        && ends_ok(name.as_bytes().first())
        && ends_ok(name.as_bytes().last())
        && !name.contains("..")
    {
        Ok(())
    } else {
        Err(s3_error!(
            InvalidBucketName,
            "bucket names are 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"
        ))
    }
}

/// Keys are 1 to 1,024 bytes of UTF-8.
fn check_key(key: &str) -> S3Result<()> {
    match key.len() {
        0 => Err(s3_error!(InvalidArgument, "the key is empty")),
        1..=1024 => Ok(()),
        _ => Err(s3_error!(KeyTooLongError)),
    }
}

/// The S3 error of a failed store operation.
fn object_error(e: ObjectError) -> S3Error {
    match e {
        ObjectError::NoSuchBucket => s3_error!(NoSuchBucket),
        ObjectError::NoSuchKey => s3_error!(NoSuchKey),
        ObjectError::PreconditionFailed => s3_error!(PreconditionFailed),
        ObjectError::BucketExists => s3_error!(BucketAlreadyOwnedByYou),
        ObjectError::BucketNotEmpty => s3_error!(BucketNotEmpty),
        ObjectError::Busy => s3_error!(SlowDown, "another operation on the same content is slow"),
        ObjectError::Store(e) => receive::s3_error_of(crate::api::errors::ApiError::from_store(e)),
    }
}

fn if_absent_of(condition: Option<&ETagCondition>) -> S3Result<IfAbsent> {
    match condition {
        None => Ok(IfAbsent::No),
        Some(ETagCondition::Any) => Ok(IfAbsent::Yes),
        Some(ETagCondition::ETag(_)) => Err(s3_error!(
            NotImplemented,
            "If-None-Match on a write takes only *"
        )),
    }
}

fn meta_of(metadata: Option<s3s::dto::Metadata>) -> BTreeMap<String, String> {
    metadata
        .map(|m| m.into_iter().collect())
        .unwrap_or_default()
}

/// The last part of a key: the name sniffing reads an extension from.
fn leaf_of(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The digests a PutObject or UploadPart declares: the two inputs are different types
/// with the same fields.
macro_rules! declared {
    ($headers:expr, $input:ident) => {
        Declared::from_headers(
            &$headers,
            $input.content_md5,
            Checksum {
                checksum_crc32: $input.checksum_crc32,
                checksum_crc32c: $input.checksum_crc32c,
                checksum_crc64nvme: $input.checksum_crc64nvme,
                checksum_sha1: $input.checksum_sha1,
                checksum_sha256: $input.checksum_sha256,
                ..Default::default()
            },
        )
    };
}

/// A PutObject or UploadPart answer with its ETag and the checksums computed, echoed as
/// S3 does.
macro_rules! answer_with_checksums {
    ($output:ident, $etag:expr, $checksums:expr) => {{
        let checksums: Checksum = $checksums;
        $output {
            e_tag: Some(ETag::Strong($etag)),
            checksum_crc32: checksums.checksum_crc32,
            checksum_crc32c: checksums.checksum_crc32c,
            checksum_crc64nvme: checksums.checksum_crc64nvme,
            checksum_sha1: checksums.checksum_sha1,
            checksum_sha256: checksums.checksum_sha256,
            ..Default::default()
        }
    }};
}

fn check_media(bucket: &str) -> S3Result<()> {
    if bucket == MEDIA_BUCKET {
        Ok(())
    } else {
        Err(s3_error!(NoSuchBucket))
    }
}

/// The ETag of a stored file (see the module docs).
fn etag_of(file: &StoredFile) -> ETag {
    ETag::Strong(format!("{}-1", &file.hash_hex()[..32]))
}

fn object_of(key: String, file: &StoredFile, url_encoded: bool) -> Object {
    Object {
        e_tag: Some(etag_of(file)),
        key: Some(encode_key(key, url_encoded)),
        last_modified: Some(Timestamp::from(file.uploaded_at_time())),
        size: Some(file.size as i64),
        ..Default::default()
    }
}

/// Keys as `encoding-type=url` asks (aws-cli always does): percent-encoded but for `/`.
fn encode_key(key: String, url_encoded: bool) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    if url_encoded {
        percent_encoding::utf8_percent_encode(&key, KEEP).to_string()
    } else {
        key
    }
}

fn wants_url_encoding(encoding: Option<&s3s::dto::EncodingType>) -> bool {
    encoding.is_some_and(|e| e.as_str() == s3s::dto::EncodingType::URL)
}

fn unix_seconds_of(time: &Timestamp) -> u64 {
    let mut text = Vec::new();
    if time
        .format(TimestampFormat::EpochSeconds, &mut text)
        .is_err()
    {
        return 0;
    }
    let text = String::from_utf8_lossy(&text);
    text.split('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn etag_matches(condition: &ETagCondition, etag: &ETag) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(wanted) => wanted.value() == etag.value(),
    }
}

/// The preconditions of a GET or HEAD, in the order RFC 9110 §13.2.2 evaluates them.
fn check_preconditions(
    if_match: Option<&ETagCondition>,
    if_unmodified_since: Option<&Timestamp>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    etag: &ETag,
    modified: SystemTime,
) -> S3Result<()> {
    let modified_s = unix_seconds(modified);
    if let Some(condition) = if_match {
        if !etag_matches(condition, etag) {
            return Err(s3_error!(PreconditionFailed));
        }
    } else if let Some(since) = if_unmodified_since
        && modified_s > unix_seconds_of(since)
    {
        return Err(s3_error!(PreconditionFailed));
    }
    if let Some(condition) = if_none_match {
        if etag_matches(condition, etag) {
            return Err(s3_error!(NotModified));
        }
    } else if let Some(since) = if_modified_since
        && modified_s <= unix_seconds_of(since)
    {
        return Err(s3_error!(NotModified));
    }
    Ok(())
}

/// Runs `work` as a task on the serving core (the io engine's handles are `!Send`) and
/// waits for its answer.
async fn on_core<T, F, Fut>(work: F) -> S3Result<T>
where
    T: Send + 'static,
    F: FnOnce(Rc<IngestContext>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = S3Result<T>> + 'static,
{
    let (sender, receiver) = tokio::sync::oneshot::channel();
    tokio::task::spawn_local(async move {
        let answer = match crate::server::core::context() {
            Some(ctx) => work(ctx).await,
            None => Err(s3_error!(InternalError, "S3 request outside a core")),
        };
        let _ = sender.send(answer);
    });
    receiver
        .await
        .map_err(|_| s3_error!(InternalError, "the core task stopped"))?
}

/// An object's bytes, read on the core, streamed to s3s (which needs `Send + Sync`).
struct ObjectBody(std::sync::Mutex<FileBody>);

impl futures_util::Stream for ObjectBody {
    type Item = Result<Bytes, s3s::StdError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut body = self.0.lock().unwrap_or_else(|p| p.into_inner());
        body.poll_chunk(cx)
            .map(|chunk| chunk.map(|r| r.map_err(s3s::StdError::from)))
    }
}

impl ByteStream for ObjectBody {
    fn remaining_length(&self) -> RemainingLength {
        let body = self.0.lock().unwrap_or_else(|p| p.into_inner());
        RemainingLength::new_exact(body.unsent_bytes() as usize)
    }
}

/// What a GET opened: the body (of the range asked for) and the file's facts.
struct Opened {
    body: FileBody,
    size_bytes: u64,
    range: Option<std::ops::Range<u64>>,
}

async fn open_range(
    ctx: Rc<IngestContext>,
    relative: String,
    range: Option<Range>,
) -> S3Result<Opened> {
    let file = OpenFile::open(&ctx, Path::new(&relative))
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => s3_error!(NoSuchKey),
            _ => S3Error::with_message(S3ErrorCode::InternalError, format!("cannot open: {e}")),
        })?;
    let size_bytes = file.size_bytes;
    let range = match range {
        None => None,
        Some(range) => Some(
            range
                .check(size_bytes)
                .map_err(|_| s3_error!(InvalidRange))?,
        ),
    };
    let (offset, length) = match &range {
        Some(r) => (r.start, r.end - r.start),
        None => (0, size_bytes),
    };
    Ok(Opened {
        body: file.into_body(offset, length),
        size_bytes,
        range,
    })
}

fn with_hash<T>(mut response: S3Response<T>, hash_hex: &str) -> S3Response<T> {
    if let Ok(value) = HeaderValue::from_str(hash_hex) {
        response.headers.insert("x-rhinobox-hash", value);
    }
    response
}

fn storage_created() -> SystemTime {
    UNIX_EPOCH
}

/// A write into `media`: AccessDenied.
fn refuse_media_write() -> S3Error {
    S3Error::with_message(
        S3ErrorCode::AccessDenied,
        "the bucket media is the native store, read-only: upload through /ingest/media",
    )
}

fn refuse_media(bucket: &str) -> S3Result<()> {
    if bucket == MEDIA_BUCKET {
        Err(refuse_media_write())
    } else {
        Ok(())
    }
}

/// The record of a new object.
fn new_record(
    bucket: String,
    key: String,
    hash: &[u8; 32],
    size: u64,
    etag: String,
    content_type: String,
    meta: BTreeMap<String, String>,
) -> ObjectRecord {
    ObjectRecord {
        bucket,
        key,
        hash: blake3::Hash::from_bytes(*hash).to_hex().to_string(),
        size,
        etag,
        content_type,
        meta,
        // Milliseconds, as S3 lists them: `aws s3 sync` uploads a file again when its
        // mtime is later than the object's time, and a time cut to the second is earlier
        // than the mtime of a file written in the same second.
        last_modified: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    }
}

#[async_trait::async_trait]
impl S3 for Front {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket;
        if bucket == MEDIA_BUCKET {
            return Err(s3_error!(BucketAlreadyOwnedByYou));
        }
        check_bucket_name(&bucket)?;
        let name = bucket.clone();
        on_core(
            move |ctx| async move { ctx.store.create_bucket(&name).await.map_err(object_error) },
        )
        .await?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        refuse_media(&bucket)?;
        on_core(
            move |ctx| async move { ctx.store.delete_bucket(&bucket).await.map_err(object_error) },
        )
        .await?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        refuse_media(&input.bucket)?;
        check_key(&input.key)?;
        self.user_bucket(&input.bucket)?;
        let if_absent = if_absent_of(input.if_none_match.as_ref())?;
        let declared = declared!(req.headers, input);
        let trailers = req.trailing_headers;
        let (bucket, key, body) = (input.bucket, input.key, input.body);
        let (content_type, meta) = (input.content_type, meta_of(input.metadata));
        let (stored, checksums) = on_core(move |ctx| async move {
            let mut tmp_files = TmpFiles::new(ctx.reaper.clone());
            let incoming = receive::Incoming {
                body,
                name: leaf_of(&key),
                content_type: content_type.clone(),
                declared: &declared,
                trailers: trailers.as_ref(),
                extra: receive::Extra::default(),
                destination: receive::Destination::OwnTmp,
            };
            let received = receive::receive(&ctx, incoming, &mut tmp_files).await?;
            let file = &received.file;
            let record = new_record(
                bucket,
                key,
                &file.hash,
                file.size,
                multipart::hex(&received.md5),
                content_type.unwrap_or_else(|| file.detected.mime_type.clone()),
                meta,
            );
            let source = match receive::memory_chunks(file) {
                Some(chunks) => ObjectSource::Memory(chunks),
                None => ObjectSource::Tmp(receive::tmp_path(file).expect("not in memory")),
            };
            let stored = ctx
                .store
                .put_object(&ctx.io, record, file.hash, source, if_absent)
                .await
                .map_err(object_error)?;
            Ok((stored, received.checksums))
        })
        .await?;
        let output = answer_with_checksums!(PutObjectOutput, stored.etag.clone(), checksums);
        Ok(with_hash(S3Response::new(output), &stored.hash))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        refuse_media(&input.bucket)?;
        check_key(&input.key)?;
        self.user_bucket(&input.bucket)?;
        let CopySource::Bucket {
            bucket: source_bucket,
            key: source_key,
            ..
        } = &input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "copies from access points"));
        };
        let source = self.find(source_bucket, source_key)?;
        check_preconditions(
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            &source.etag,
            source.modified,
        )
        .map_err(|e| match e.code() {
            S3ErrorCode::NotModified => s3_error!(PreconditionFailed),
            _ => e,
        })?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == s3s::dto::MetadataDirective::REPLACE);
        if !replace && **source_bucket == *input.bucket && **source_key == *input.key {
            return Err(s3_error!(
                InvalidRequest,
                "this copy request is illegal because it is trying to copy an object to \
                 itself without changing the object's metadata"
            ));
        }
        let (content_type, meta) = if replace {
            let content_type = input
                .content_type
                .unwrap_or_else(|| "binary/octet-stream".to_string());
            (content_type, meta_of(input.metadata))
        } else {
            let meta = source.metadata.clone().map(|m| m.into_iter().collect());
            (source.content_type.clone(), meta.unwrap_or_default())
        };
        let hash = crate::store::index::parse_hash(&source.hash_hex)
            .ok_or_else(|| s3_error!(InternalError, "unreadable source hash"))?;
        let record = new_record(
            input.bucket,
            input.key,
            &hash,
            source.size,
            source.etag.value().to_string(),
            content_type,
            meta,
        );
        let stored = on_core(move |ctx| async move {
            ctx.store
                .put_object(&ctx.io, record, hash, ObjectSource::Stored, IfAbsent::No)
                .await
                .map_err(object_error)
        })
        .await?;
        let output = CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(stored.etag.clone())),
                last_modified: Some(Timestamp::from(time_of(&stored.last_modified))),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        refuse_media(&input.bucket)?;
        self.user_bucket(&input.bucket)?;
        let (bucket, key) = (input.bucket, input.key);
        on_core(move |ctx| async move {
            ctx.store
                .delete_object(&ctx.io, &bucket, &key)
                .await
                .map_err(object_error)
        })
        .await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        refuse_media(&input.bucket)?;
        self.user_bucket(&input.bucket)?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let keys: Vec<String> = input.delete.objects.into_iter().map(|o| o.key).collect();
        if keys.len() > 1000 {
            return Err(s3_error!(MalformedXML, "at most 1,000 keys per request"));
        }
        let bucket = input.bucket;
        // Deletes of different keys share group commits: a few run at once, answered in
        // request order.
        let results = on_core(move |ctx| async move {
            use futures_util::StreamExt;
            let (ctx, bucket) = (&ctx, &bucket);
            let results: Vec<(String, S3Result<()>)> = futures_util::stream::iter(keys)
                .map(|key| async move {
                    let result = ctx.store.delete_object(&ctx.io, bucket, &key).await;
                    (key, result.map(|_| ()).map_err(object_error))
                })
                .buffered(DELETES_AT_ONCE)
                .collect()
                .await;
            Ok(results)
        })
        .await?;
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for (key, result) in results {
            match result {
                Ok(()) if !quiet => deleted.push(DeletedObject {
                    key: Some(key),
                    ..Default::default()
                }),
                Ok(()) => {}
                Err(e) => errors.push(s3s::dto::Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(key),
                    message: e.message().map(str::to_string),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        refuse_media(&input.bucket)?;
        check_key(&input.key)?;
        self.user_bucket(&input.bucket)?;
        let upload_id = UPLOADS.create(Upload {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            content_type: input.content_type,
            meta: meta_of(input.metadata),
            initiated: SystemTime::now(),
            parts: BTreeMap::new(),
            assembly: None,
        })?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        UPLOADS.check(&input.upload_id, &input.bucket, &input.key)?;
        if !(1..=multipart::PARTS_MAX).contains(&input.part_number) {
            return Err(s3_error!(InvalidArgument, "part numbers are 1 to 10,000"));
        }
        let declared = declared!(req.headers, input);
        let trailers = req.trailing_headers;
        let (upload_id, number, body) = (input.upload_id, input.part_number, input.body);
        let declared_bytes = input.content_length.map(|len| len as u64);
        let extra = receive::Extra {
            subtree: declared_bytes.and_then(|len| tree_hash::part_hasher(number, len)),
            head_bytes: if number == 1 { SNIFF_BYTES } else { 0 },
            body_bytes_max: None,
        };
        let (etag, checksums) = on_core(move |ctx| async move {
            let mut tmp_files = TmpFiles::new(ctx.reaper.clone());
            // The part's range of the assembly file, held until the part is registered
            // (or has failed): no other request writes it meanwhile, and Complete does
            // not take the file for the object while it is held.
            let reserved =
                UPLOADS.reserve(&upload_id, number, declared_bytes, || ctx.next_tmp_path())?;
            let (destination, body_bytes_max) = match &reserved {
                Some(r) => (
                    receive::Destination::At {
                        path: r.assembly.path.clone(),
                        offset: r.offset(),
                    },
                    Some(r.assembly.part_bytes),
                ),
                None => (receive::Destination::OwnTmp, None),
            };
            let incoming = receive::Incoming {
                body,
                name: "part",
                content_type: None,
                declared: &declared,
                trailers: trailers.as_ref(),
                extra: receive::Extra {
                    body_bytes_max,
                    ..extra
                },
                destination,
            };
            let received = receive::receive(&ctx, incoming, &mut tmp_files).await?;
            let place = match (&reserved, receive::memory_chunks(&received.file)) {
                (Some(_), _) => multipart::Place::Assembly,
                (None, Some(chunks)) => {
                    let path = ctx.store.blobs.next_tmp_path();
                    tmp_files.add(path.clone());
                    ctx.store
                        .blobs
                        .write_tmp(&ctx.io, &path, chunks)
                        .await
                        .map_err(|e| {
                            receive::s3_error_of(crate::api::errors::ApiError::storage(
                                "cannot write tmp file",
                                &e,
                            ))
                        })?;
                    multipart::Place::Own(path)
                }
                (None, None) => multipart::Place::Own(
                    receive::tmp_path(&received.file)
                        .expect("not in memory")
                        .to_path_buf(),
                ),
            };
            let part = Part {
                place,
                size: received.file.size,
                md5: received.md5,
                hash: received.file.hash,
                // A subtree value is only good for a part of the size it assumed.
                subtree: received
                    .subtree
                    .filter(|_| tree_hash::is_subtree_size(received.file.size)),
                head: received.head,
                last_modified: SystemTime::now(),
            };
            let etag = part.etag();
            // The part file now belongs to the upload.
            tmp_files.disarm();
            let outcome = UPLOADS.add_part(&upload_id, number, part);
            drop(reserved);
            match outcome {
                Ok(replaced) => {
                    if let Some(file) = replaced.as_ref().and_then(Part::own_file) {
                        let _ = std::fs::remove_file(file);
                    }
                }
                Err(place) => {
                    if let multipart::Place::Own(file) = place {
                        let _ = std::fs::remove_file(file);
                    }
                    return Err(s3_error!(NoSuchUpload));
                }
            }
            Ok((etag, received.checksums))
        })
        .await?;
        Ok(S3Response::new(answer_with_checksums!(
            UploadPartOutput,
            etag,
            checksums
        )))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let if_absent = if_absent_of(input.if_none_match.as_ref())?;
        let listed: Vec<(i32, String)> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let etag = p.e_tag.map(|e| e.value().to_string()).unwrap_or_default();
                (p.part_number.unwrap_or(0), etag)
            })
            .collect();
        let (bucket, key, upload_id) = (input.bucket, input.key, input.upload_id);
        let upload = UPLOADS.take(&upload_id, &bucket, &key)?;
        let checked = multipart::chosen_parts(&upload, &listed).map(|parts| {
            let plan = multipart::Plan::of(&upload, &parts, &listed);
            (plan, multipart::multipart_etag(&parts))
        });
        let (plan, etag) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                UPLOADS.put_back(upload_id, upload);
                return Err(e);
            }
        };
        if if_absent == IfAbsent::Yes && self.objects().get(&bucket, &key).is_some() {
            UPLOADS.put_back(upload_id, upload);
            return Err(s3_error!(PreconditionFailed));
        }
        let content_type = upload.content_type.clone();
        let meta = upload.meta.clone();
        let (record_bucket, record_key) = (bucket.clone(), key.clone());
        let result = on_core(move |ctx| async move {
            let mut tmp_files = TmpFiles::new(ctx.reaper.clone());
            let tmp = ctx.store.blobs.next_tmp_path();
            tmp_files.add(tmp.clone());
            let _slot = ASSEMBLIES
                .acquire()
                .await
                .map_err(|_| s3_error!(ServiceUnavailable))?;
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let target = tmp.clone();
            std::thread::Builder::new()
                .name("rhinobox-assemble".into())
                .spawn(move || {
                    let _ = sender.send(plan.assemble(&target));
                })
                .map_err(|e| s3_error!(InternalError, "cannot start an assembly: {e}"))?;
            let (hash, size, head) = receiver
                .await
                .map_err(|_| s3_error!(InternalError, "the assembly stopped"))?
                .map_err(|e| {
                    receive::s3_error_of(crate::api::errors::ApiError::storage(
                        "cannot assemble the parts",
                        &e,
                    ))
                })?;
            let detected =
                crate::ingest::sniff::detect(&head, content_type.as_deref(), leaf_of(&record_key));
            let record = new_record(
                record_bucket,
                record_key,
                &hash,
                size,
                etag,
                content_type.unwrap_or(detected.mime_type),
                meta,
            );
            ctx.store
                .put_object(&ctx.io, record, hash, ObjectSource::Tmp(&tmp), if_absent)
                .await
                .map_err(object_error)
        })
        .await;
        match result {
            Ok(stored) => {
                // The assembly file, if any, goes with `upload` (the object keeps its own
                // name of those bytes).
                for file in upload.parts.values().filter_map(Part::own_file) {
                    let _ = std::fs::remove_file(file);
                }
                let output = CompleteMultipartUploadOutput {
                    bucket: Some(bucket.clone()),
                    key: Some(key.clone()),
                    e_tag: Some(ETag::Strong(stored.etag.clone())),
                    location: Some(format!("/{bucket}/{key}")),
                    ..Default::default()
                };
                Ok(with_hash(S3Response::new(output), &stored.hash))
            }
            Err(e) => {
                // The parts are whole still: the client may complete again.
                UPLOADS.put_back(upload_id, upload);
                Err(e)
            }
        }
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        let upload = UPLOADS.take(&input.upload_id, &input.bucket, &input.key)?;
        // The assembly file goes with the last reference to it (a part still being
        // written holds one).
        for file in upload.parts.values().filter_map(Part::own_file) {
            let _ = std::fs::remove_file(file);
        }
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let all = UPLOADS.parts(&input.upload_id, &input.bucket, &input.key)?;
        let marker: i32 = input.part_number_marker.unwrap_or(0);
        let max_parts = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
        let after: Vec<_> = all.into_iter().filter(|(n, ..)| *n > marker).collect();
        let truncated = after.len() > max_parts;
        let page: Vec<_> = after.into_iter().take(max_parts).collect();
        let next = page.last().map(|(n, ..)| *n);
        let parts = page
            .into_iter()
            .map(|(number, size, etag, modified)| s3s::dto::Part {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(Timestamp::from(modified)),
                part_number: Some(number),
                size: Some(size as i64),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max_parts as i32),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: if truncated { next } else { None },
            is_truncated: Some(truncated),
            parts: Some(parts),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        refuse_media(&input.bucket)?;
        self.user_bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let key_marker = input.key_marker.clone().unwrap_or_default();
        let max_uploads = input.max_uploads.unwrap_or(1000).clamp(0, 1000) as usize;
        let listed: Vec<_> = UPLOADS
            .list(&input.bucket, &prefix)
            .into_iter()
            .filter(|u| u.key > key_marker)
            .collect();
        let truncated = listed.len() > max_uploads;
        let page: Vec<_> = listed.into_iter().take(max_uploads).collect();
        let next_key_marker = page.last().map(|u| u.key.clone()).filter(|_| truncated);
        let next_upload_id_marker = page
            .last()
            .map(|u| u.upload_id.clone())
            .filter(|_| truncated);
        let uploads = page
            .into_iter()
            .map(|u| MultipartUpload {
                initiated: Some(Timestamp::from(u.initiated)),
                key: Some(u.key),
                upload_id: Some(u.upload_id),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            max_uploads: Some(max_uploads as i32),
            is_truncated: Some(truncated),
            next_key_marker,
            next_upload_id_marker,
            uploads: Some(uploads),
            ..Default::default()
        }))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let created = std::fs::metadata(&self.shared.store.blobs.storage_dir)
            .and_then(|m| m.created().or_else(|_| m.modified()))
            .unwrap_or_else(|_| storage_created());
        let mut buckets = vec![Bucket {
            creation_date: Some(Timestamp::from(created)),
            name: Some(MEDIA_BUCKET.to_string()),
            ..Default::default()
        }];
        for bucket in self.objects().buckets() {
            buckets.push(Bucket {
                creation_date: Some(Timestamp::from(time_of(&bucket.created_at))),
                name: Some(bucket.name),
                ..Default::default()
            });
        }
        buckets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let bucket = &req.input.bucket;
        if bucket != MEDIA_BUCKET {
            self.user_bucket(bucket)?;
        }
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let bucket = &req.input.bucket;
        if bucket != MEDIA_BUCKET {
            self.user_bucket(bucket)?;
        }
        // us-east-1 is the empty constraint, as S3 answers it.
        let location_constraint = (self.region != "us-east-1")
            .then(|| BucketLocationConstraint::from(self.region.clone()));
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint,
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let after = match (&input.continuation_token, &input.start_after) {
            (Some(token), _) => token.clone(),
            (None, Some(start)) => start.clone(),
            (None, None) => String::new(),
        };
        let url = wants_url_encoding(input.encoding_type.as_ref());
        let page = self
            .page(
                &input.bucket,
                input.prefix.clone().unwrap_or_default(),
                input.delimiter.clone().unwrap_or_default(),
                after,
                input.max_keys,
                url,
            )
            .await?;
        let key_count = (page.keys.len() + page.common_prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix.map(|p| encode_key(p, url)),
            delimiter: input.delimiter.map(|d| encode_key(d, url)),
            max_keys: Some(input.max_keys.unwrap_or(MAX_KEYS_MAX as i32)),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after.map(|s| encode_key(s, url)),
            is_truncated: Some(page.truncated),
            next_continuation_token: if page.truncated { page.last } else { None },
            contents: Some(page.keys.into_iter().map(|(_, o)| o).collect()),
            common_prefixes: Some(common_prefixes(page.common_prefixes, url)),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let url = wants_url_encoding(input.encoding_type.as_ref());
        let delimiter = input.delimiter.clone().unwrap_or_default();
        let page = self
            .page(
                &input.bucket,
                input.prefix.clone().unwrap_or_default(),
                delimiter.clone(),
                input.marker.clone().unwrap_or_default(),
                input.max_keys,
                url,
            )
            .await?;
        // v1 gives NextMarker only with a delimiter; clients use the last key otherwise.
        let next_marker = (page.truncated && !delimiter.is_empty())
            .then(|| page.last.clone())
            .flatten()
            .map(|m| encode_key(m, url));
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: input.prefix.map(|p| encode_key(p, url)),
            marker: input.marker.map(|m| encode_key(m, url)),
            delimiter: input.delimiter.map(|d| encode_key(d, url)),
            max_keys: Some(input.max_keys.unwrap_or(MAX_KEYS_MAX as i32)),
            is_truncated: Some(page.truncated),
            next_marker,
            contents: Some(page.keys.into_iter().map(|(_, o)| o).collect()),
            common_prefixes: Some(common_prefixes(page.common_prefixes, url)),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let facts = self.find(&input.bucket, &input.key)?;
        check_preconditions(
            input.if_match.as_ref(),
            input.if_unmodified_since.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            &facts.etag,
            facts.modified,
        )?;
        let output = HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(facts.size as i64),
            content_type: Some(facts.content_type.clone()),
            e_tag: Some(facts.etag.clone()),
            last_modified: Some(Timestamp::from(facts.modified)),
            metadata: facts.metadata.clone(),
            ..Default::default()
        };
        Ok(with_hash(S3Response::new(output), &facts.hash_hex))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        // An overwrite or delete may remove the content between the lookup and the open:
        // look again once, so a key that holds an object is never answered NoSuchKey.
        let mut attempts = 0;
        let (facts, opened) = loop {
            attempts += 1;
            let facts = self.find(&input.bucket, &input.key)?;
            check_preconditions(
                input.if_match.as_ref(),
                input.if_unmodified_since.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                &facts.etag,
                facts.modified,
            )?;
            let relative = facts.relative.clone();
            let range = input.range;
            match on_core(move |ctx| open_range(ctx, relative, range)).await {
                Ok(opened) => break (facts, opened),
                Err(e) if attempts < 3 && *e.code() == S3ErrorCode::NoSuchKey => continue,
                Err(e) => return Err(e),
            }
        };
        let content_length = opened.body.unsent_bytes() as i64;
        let content_range = opened.range.as_ref().map(|r| {
            format!(
                "bytes {}-{}/{}",
                r.start,
                r.end.saturating_sub(1),
                opened.size_bytes
            )
        });
        let output = GetObjectOutput {
            accept_ranges: Some("bytes".into()),
            body: Some(StreamingBlob::new(ObjectBody(std::sync::Mutex::new(
                opened.body,
            )))),
            content_length: Some(content_length),
            content_range,
            content_type: Some(facts.content_type.clone()),
            e_tag: Some(facts.etag.clone()),
            last_modified: Some(Timestamp::from(facts.modified)),
            metadata: facts.metadata.clone(),
            ..Default::default()
        };
        Ok(with_hash(S3Response::new(output), &facts.hash_hex))
    }
}

fn common_prefixes(prefixes: Vec<String>, url: bool) -> Vec<CommonPrefix> {
    prefixes
        .into_iter()
        .map(|p| CommonPrefix {
            prefix: Some(encode_key(p, url)),
        })
        .collect()
}
