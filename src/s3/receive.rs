//! Receiving an S3 request body on the serving core: the same path as a native upload
//! (streamed, sniffed, BLAKE3-hashed, small bodies kept in memory until the commit, large
//! ones written to `storage/.tmp/` through the core's io engine), plus what S3 asks on
//! top: the MD5 (the ETag) and the checksums the client declared — `Content-MD5`,
//! `x-amz-checksum-*` headers, or the same in an `aws-chunked` trailer — verified before
//! anything is stored.

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::HeaderMap;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Md5};
use s3s::dto::{Checksum, StreamingBlob};
use s3s::{S3Error, S3ErrorCode, S3Result, TrailingHeaders, s3_error};

use crate::api::errors::ApiError;
use crate::ingest::IngestContext;
pub use crate::ingest::receive::Destination;
use crate::ingest::receive::{
    ChunkSource, Content, ReceivedFile, TmpFiles, receive_file, wait_written,
};

/// A body received in full and checked.
pub struct Received {
    pub file: ReceivedFile,
    pub md5: [u8; 16],
    /// The checksums computed (those the client declared), base64 as S3 writes them.
    pub checksums: Checksum,
    /// The body's chaining value as a subtree at the offset asked for (multipart parts).
    pub subtree: Option<(u64, blake3::hazmat::ChainingValue)>,
    /// The first bytes, when asked for (the sniff of a multipart object reads part 1's).
    pub head: Vec<u8>,
}

/// What [`receive`] computes beside the ingest path's BLAKE3.
#[derive(Default)]
pub struct Extra {
    /// A second hasher, told its input offset (see `s3::tree_hash`).
    pub subtree: Option<(u64, blake3::Hasher)>,
    /// Keep this many first bytes.
    pub head_bytes: usize,
    /// Refuse a body longer than this (EntityTooLarge) besides the upload limit: a part
    /// written at its place in a shared file must not run into the next part's range.
    pub body_bytes_max: Option<u64>,
}

/// What the client declared about the body.
#[derive(Default, Clone)]
pub struct Declared {
    pub content_md5: Option<String>,
    pub checksums: Checksum,
    /// Names of checksum trailers announced in `x-amz-trailer`.
    pub trailer: Option<String>,
}

impl Declared {
    pub fn from_headers(
        headers: &HeaderMap,
        content_md5: Option<String>,
        checksums: Checksum,
    ) -> Declared {
        let trailer = headers
            .get("x-amz-trailer")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        Declared {
            content_md5,
            checksums,
            trailer,
        }
    }

    /// A hasher computing every checksum declared (in a header or announced as trailer).
    fn hasher(&self) -> ChecksumHasher {
        let trailer = self.trailer.as_deref().unwrap_or("");
        let c = &self.checksums;
        let mut hasher = ChecksumHasher::default();
        if c.checksum_crc32.is_some() || trailer == "x-amz-checksum-crc32" {
            hasher.crc32 = Some(Default::default());
        }
        if c.checksum_crc32c.is_some() || trailer == "x-amz-checksum-crc32c" {
            hasher.crc32c = Some(Default::default());
        }
        if c.checksum_sha1.is_some() || trailer == "x-amz-checksum-sha1" {
            hasher.sha1 = Some(Default::default());
        }
        if c.checksum_sha256.is_some() || trailer == "x-amz-checksum-sha256" {
            hasher.sha256 = Some(Default::default());
        }
        if c.checksum_crc64nvme.is_some() || trailer == "x-amz-checksum-crc64nvme" {
            hasher.crc64nvme = Some(Default::default());
        }
        hasher
    }
}

/// The body as a chunk source for the ingest path, hashing MD5 and checksums on the way,
/// with the same idle timeout as a native upload.
struct BlobSource {
    body: StreamingBlob,
    md5: Md5,
    checksums: ChecksumHasher,
    extra: Extra,
    head: Vec<u8>,
    idle: std::time::Duration,
    seen_bytes: u64,
    limit_bytes: u64,
}

impl ChunkSource for BlobSource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            let next = match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => {
                    return Err(ApiError::new(
                        hyper::StatusCode::REQUEST_TIMEOUT,
                        format!("request body stalled for {} s", self.idle.as_secs()),
                    ));
                }
                Ok(next) => next,
            };
            match next {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ApiError::bad_request(format!("body read failed: {e}")));
                }
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => {
                    self.seen_bytes += chunk.len() as u64;
                    if self.seen_bytes > self.limit_bytes {
                        return Err(ApiError::too_large(self.limit_bytes));
                    }
                    self.md5.update(&chunk);
                    self.checksums.update(&chunk);
                    if let Some((_, hasher)) = &mut self.extra.subtree {
                        hasher.update(&chunk);
                    }
                    if self.head.len() < self.extra.head_bytes {
                        let take = (self.extra.head_bytes - self.head.len()).min(chunk.len());
                        self.head.extend_from_slice(&chunk[..take]);
                    }
                    return Ok(Some(chunk));
                }
            }
        }
    }
}

/// The S3 error of a failed ingest step.
pub fn s3_error_of(e: ApiError) -> S3Error {
    let code = match e.status.as_u16() {
        408 => S3ErrorCode::RequestTimeout,
        413 => S3ErrorCode::EntityTooLarge,
        503 => S3ErrorCode::SlowDown,
        400 => S3ErrorCode::IncompleteBody,
        _ => S3ErrorCode::InternalError,
    };
    let mut error = S3Error::with_message(code, e.message);
    if e.status.as_u16() == 507 {
        error.set_status_code(hyper::StatusCode::INSUFFICIENT_STORAGE);
    }
    error
}

/// A request body to receive, and what the request says of it.
pub struct Incoming<'a> {
    pub body: Option<StreamingBlob>,
    /// The name sniffing reads an extension from (the key's last segment).
    pub name: &'a str,
    pub content_type: Option<String>,
    pub declared: &'a Declared,
    pub trailers: Option<&'a TrailingHeaders>,
    pub extra: Extra,
    /// Where a large body goes (a multipart part at its place, or a tmp file of its own).
    pub destination: Destination,
}

/// Receives a body (on the core), then checks the declared digests. On error nothing is
/// kept: the tmp file, if any, is left to `tmp_files`.
pub async fn receive(
    ctx: &IngestContext,
    incoming: Incoming<'_>,
    tmp_files: &mut TmpFiles,
) -> S3Result<Received> {
    let Incoming {
        body,
        name,
        content_type,
        declared,
        trailers,
        extra,
        destination,
    } = incoming;
    let body = body.unwrap_or_else(|| StreamingBlob::from(s3s::Body::empty()));
    let mut source = BlobSource {
        body,
        md5: Md5::new(),
        checksums: declared.hasher(),
        head: Vec::new(),
        idle: ctx.limits.body_idle_timeout,
        seen_bytes: 0,
        limit_bytes: extra
            .body_bytes_max
            .unwrap_or(u64::MAX)
            .min(ctx.limits.upload_size_bytes_max),
        extra,
    };
    let name = name.to_string();
    let mut file = receive_file(
        ctx,
        &mut source,
        name,
        content_type,
        tmp_files,
        &destination,
    )
    .await
    .map_err(s3_error_of)?;
    wait_written(std::slice::from_mut(&mut file))
        .await
        .map_err(s3_error_of)?;
    let subtree = source
        .extra
        .subtree
        .as_ref()
        .map(|(offset, hasher)| (*offset, super::tree_hash::subtree_value(hasher)));
    let head = std::mem::take(&mut source.head);
    let md5 = source.md5.finalize();
    let checksums = source.checksums.finalize();
    check_md5(declared.content_md5.as_deref(), &md5)?;
    let from_trailer = trailers.and_then(|t| t.read(trailer_checksums));
    check_checksums(&declared.checksums, &checksums)?;
    if let Some(sent) = &from_trailer {
        check_checksums(sent, &checksums)?;
    }
    Ok(Received {
        file,
        md5,
        checksums,
        subtree,
        head,
    })
}

/// The bytes of a small received body still in memory, or `None` (it is in a tmp file).
pub fn memory_chunks(file: &ReceivedFile) -> Option<&[Bytes]> {
    match &file.content {
        Content::Memory { chunks, .. } => Some(chunks),
        Content::Tmp { .. } | Content::At { .. } => None,
    }
}

/// The tmp file of its own a received body is in, if it is in one.
pub fn tmp_path(file: &ReceivedFile) -> Option<&std::path::Path> {
    match &file.content {
        Content::Tmp { path, .. } => Some(path),
        Content::Memory { .. } | Content::At { .. } => None,
    }
}

fn check_md5(declared: Option<&str>, md5: &[u8; 16]) -> S3Result<()> {
    let Some(declared) = declared else {
        return Ok(());
    };
    let Ok(sent) = base64_simd::STANDARD.decode_to_vec(declared.trim()) else {
        return Err(s3_error!(InvalidDigest, "Content-MD5 is not base64"));
    };
    if sent.len() != 16 {
        return Err(s3_error!(InvalidDigest, "Content-MD5 is not 16 bytes"));
    }
    if sent != md5 {
        return Err(s3_error!(
            BadDigest,
            "the Content-MD5 you specified did not match what we received"
        ));
    }
    Ok(())
}

fn trailer_checksums(headers: &HeaderMap) -> Checksum {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    Checksum {
        checksum_crc32: get("x-amz-checksum-crc32"),
        checksum_crc32c: get("x-amz-checksum-crc32c"),
        checksum_crc64nvme: get("x-amz-checksum-crc64nvme"),
        checksum_sha1: get("x-amz-checksum-sha1"),
        checksum_sha256: get("x-amz-checksum-sha256"),
        ..Default::default()
    }
}

/// Every checksum the client sent must equal the one computed.
fn check_checksums(sent: &Checksum, computed: &Checksum) -> S3Result<()> {
    let pairs = [
        ("CRC32", &sent.checksum_crc32, &computed.checksum_crc32),
        ("CRC32C", &sent.checksum_crc32c, &computed.checksum_crc32c),
        (
            "CRC64NVME",
            &sent.checksum_crc64nvme,
            &computed.checksum_crc64nvme,
        ),
        ("SHA1", &sent.checksum_sha1, &computed.checksum_sha1),
        ("SHA256", &sent.checksum_sha256, &computed.checksum_sha256),
    ];
    for (name, sent, computed) in pairs {
        if let Some(sent) = sent
            && computed.as_deref() != Some(sent.as_str())
        {
            return Err(S3Error::with_message(
                S3ErrorCode::BadDigest,
                format!("the {name} checksum you specified did not match what we received"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_md5_is_checked() {
        let md5 = {
            let mut h = Md5::new();
            h.update(b"abc");
            h.finalize()
        };
        let good = base64_simd::STANDARD.encode_to_string(md5);
        assert!(check_md5(Some(&good), &md5).is_ok());
        assert!(check_md5(None, &md5).is_ok());
        let bad = base64_simd::STANDARD.encode_to_string([0u8; 16]);
        assert_eq!(
            check_md5(Some(&bad), &md5).unwrap_err().code(),
            &S3ErrorCode::BadDigest
        );
        assert_eq!(
            check_md5(Some("!!"), &md5).unwrap_err().code(),
            &S3ErrorCode::InvalidDigest
        );
    }

    #[test]
    fn a_sent_checksum_must_match() {
        let computed = Checksum {
            checksum_crc32: Some("NSRBwg==".into()),
            ..Default::default()
        };
        assert!(check_checksums(&computed.clone(), &computed).is_ok());
        let wrong = Checksum {
            checksum_crc32: Some("AAAAAA==".into()),
            ..Default::default()
        };
        assert!(check_checksums(&wrong, &computed).is_err());
        let other = Checksum {
            checksum_sha256: Some("x".into()),
            ..Default::default()
        };
        assert!(
            check_checksums(&other, &computed).is_err(),
            "a checksum not computed cannot match"
        );
    }
}
