//! The S3-compatible API: a second listener (`RHINOBOX_S3_ADDR`) served by the same
//! cores as the native API.
//!
//! [s3s] does the protocol: SigV4 (header and presigned, `aws-chunked` bodies), routing of
//! path-style requests to operations, and the XML of inputs, outputs and errors. This
//! module maps operations onto the store. Its futures must be `Send` (s3s's trait), while
//! the store's io engines are per core and `!Send`: work that touches files runs as a
//! task on the serving core ([`on_core`]) and answers over a oneshot; bodies cross back as
//! `Send` streams fed by that task.
//!
//! What exists in this version: the bucket `media`, read-only — every file stored
//! through the native API under its path without the leading `storage/`
//! (`images/jpg/<hash12>_photo.jpg`), so that `aws s3 sync`/`rclone sync` back the whole
//! store up. ListBuckets, HeadBucket, GetBucketLocation, ListObjects (v1, v2: prefix,
//! delimiter, max-keys, marker / start-after / continuation token, `encoding-type=url`),
//! HeadObject and GetObject (Range, If-Match, If-None-Match, If-Modified-Since,
//! If-Unmodified-Since) on it; writes into it are AccessDenied. Other buckets do not
//! exist yet (NoSuchBucket; CreateBucket is NotImplemented).
//!
//! The ETag of a `media` object is `"<first 32 hex digits of its BLAKE3>-1"`: the native
//! store keeps no MD5, and the `-1` form is what S3 uses for multipart objects, so that
//! clients that compare an ETag with a local MD5 (rclone, aws-cli) do not take it for
//! one. `x-rhinobox-hash` carries the full BLAKE3 hash.

pub mod listing;

use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::HeaderValue;
use s3s::dto::{
    Bucket, BucketLocationConstraint, CommonPrefix, CopyObjectInput, CopyObjectOutput,
    CreateBucketInput, CreateBucketOutput, CreateMultipartUploadInput, CreateMultipartUploadOutput,
    DeleteBucketInput, DeleteBucketOutput, DeleteObjectInput, DeleteObjectOutput,
    DeleteObjectsInput, DeleteObjectsOutput, ETag, ETagCondition, GetBucketLocationInput,
    GetBucketLocationOutput, GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput,
    HeadObjectInput, HeadObjectOutput, ListBucketsInput, ListBucketsOutput, ListObjectsInput,
    ListObjectsOutput, ListObjectsV2Input, ListObjectsV2Output, Object, PutObjectInput,
    PutObjectOutput, Range, StreamingBlob, Timestamp, TimestampFormat,
};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use crate::api::files::{FileBody, OpenFile};
use crate::config::S3Config;
use crate::ingest::IngestContext;
use crate::server::Shared;
use crate::store::index::StoredFile;
use listing::{MAX_KEYS_MAX, PageBuilder, PageRequest};

/// The read-only bucket that shows the native store.
pub const MEDIA_BUCKET: &str = "media";

/// The S3 service of one core: s3s with our key pair in front of [`Front`].
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

impl Front {
    fn media_file(&self, bucket: &str, key: &str) -> S3Result<Arc<StoredFile>> {
        check_media(bucket)?;
        self.shared
            .store
            .metadata
            .index
            .get_by_path(&format!("storage/{key}"))
            .ok_or_else(|| s3_error!(NoSuchKey))
    }

    /// One page of `media`, computed on a scan thread.
    async fn media_page(
        &self,
        prefix: String,
        delimiter: String,
        after: String,
        max_keys: Option<i32>,
    ) -> S3Result<listing::Page<Arc<StoredFile>>> {
        let max_keys = max_keys.map_or(MAX_KEYS_MAX, |n| n.clamp(0, MAX_KEYS_MAX as i32) as usize);
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
    modified: SystemTime,
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
    let (size_bytes, modified) = (file.size_bytes, file.modified);
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
        modified,
        range,
    })
}

fn with_hash_header<T>(mut response: S3Response<T>, file: &StoredFile) -> S3Response<T> {
    if let Ok(value) = HeaderValue::from_str(&file.hash_hex()) {
        response.headers.insert("x-rhinobox-hash", value);
    }
    response
}

fn storage_created() -> SystemTime {
    UNIX_EPOCH
}

/// A write: AccessDenied in `media`, NoSuchBucket elsewhere (no other bucket exists yet).
fn refuse_write(bucket: &str) -> S3Error {
    if bucket == MEDIA_BUCKET {
        S3Error::with_message(
            S3ErrorCode::AccessDenied,
            "the bucket media is the native store, read-only: upload through /ingest/media",
        )
    } else {
        s3_error!(NoSuchBucket)
    }
}

#[async_trait::async_trait]
impl S3 for Front {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        if req.input.bucket == MEDIA_BUCKET {
            return Err(s3_error!(BucketAlreadyOwnedByYou));
        }
        Err(S3Error::with_message(
            S3ErrorCode::NotImplemented,
            "this version serves only the read-only bucket media",
        ))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        Err(refuse_write(&req.input.bucket))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        Err(refuse_write(&req.input.bucket))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        Err(refuse_write(&req.input.bucket))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        Err(refuse_write(&req.input.bucket))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        Err(refuse_write(&req.input.bucket))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        Err(refuse_write(&req.input.bucket))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let created = std::fs::metadata(&self.shared.store.blobs.storage_dir)
            .and_then(|m| m.created().or_else(|_| m.modified()))
            .unwrap_or_else(|_| storage_created());
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(vec![Bucket {
                creation_date: Some(Timestamp::from(created)),
                name: Some(MEDIA_BUCKET.to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        check_media(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        check_media(&req.input.bucket)?;
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
        check_media(&input.bucket)?;
        let after = match (&input.continuation_token, &input.start_after) {
            (Some(token), _) => token.clone(),
            (None, Some(start)) => start.clone(),
            (None, None) => String::new(),
        };
        let url = wants_url_encoding(input.encoding_type.as_ref());
        let page = self
            .media_page(
                input.prefix.clone().unwrap_or_default(),
                input.delimiter.clone().unwrap_or_default(),
                after,
                input.max_keys,
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
            contents: Some(
                page.keys
                    .into_iter()
                    .map(|(key, file)| object_of(key, &file, url))
                    .collect(),
            ),
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
        check_media(&input.bucket)?;
        let url = wants_url_encoding(input.encoding_type.as_ref());
        let delimiter = input.delimiter.clone().unwrap_or_default();
        let page = self
            .media_page(
                input.prefix.clone().unwrap_or_default(),
                delimiter.clone(),
                input.marker.clone().unwrap_or_default(),
                input.max_keys,
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
            contents: Some(
                page.keys
                    .into_iter()
                    .map(|(key, file)| object_of(key, &file, url))
                    .collect(),
            ),
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
        let file = self.media_file(&input.bucket, &input.key)?;
        let etag = etag_of(&file);
        let modified = file.uploaded_at_time();
        check_preconditions(
            input.if_match.as_ref(),
            input.if_unmodified_since.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            &etag,
            modified,
        )?;
        let output = HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(file.size as i64),
            content_type: Some(file.mime_type().to_string()),
            e_tag: Some(etag),
            last_modified: Some(Timestamp::from(modified)),
            ..Default::default()
        };
        Ok(with_hash_header(S3Response::new(output), &file))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let file = self.media_file(&input.bucket, &input.key)?;
        let etag = etag_of(&file);
        let modified = file.uploaded_at_time();
        check_preconditions(
            input.if_match.as_ref(),
            input.if_unmodified_since.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            &etag,
            modified,
        )?;
        let relative = input.key.clone();
        let range = input.range;
        let opened = on_core(move |ctx| open_range(ctx, relative, range)).await?;
        let content_length = opened.body.unsent_bytes() as i64;
        let content_range = opened.range.as_ref().map(|r| {
            format!(
                "bytes {}-{}/{}",
                r.start,
                r.end.saturating_sub(1),
                opened.size_bytes
            )
        });
        let _ = opened.modified;
        let output = GetObjectOutput {
            accept_ranges: Some("bytes".into()),
            body: Some(StreamingBlob::new(ObjectBody(std::sync::Mutex::new(
                opened.body,
            )))),
            content_length: Some(content_length),
            content_range,
            content_type: Some(file.mime_type().to_string()),
            e_tag: Some(etag),
            last_modified: Some(Timestamp::from(modified)),
            ..Default::default()
        };
        Ok(with_hash_header(S3Response::new(output), &file))
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
