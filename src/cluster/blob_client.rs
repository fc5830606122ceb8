//! The blob side of cluster mode: an S3 client for the blob cluster (SPEC §8; Ceph RGW,
//! Garage, MinIO, AWS S3), on the cluster runtime (plain multi-thread tokio, `Send`
//! futures). INTERFACE STUB: the bodies are being written; every call answers
//! `Unavailable` until then.

use std::net::SocketAddr;
use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;

use crate::client::sigv4::Credentials;

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
}

impl BlobClient {
    pub fn new(settings: BlobSettings) -> BlobClient {
        BlobClient {
            settings: std::sync::Arc::new(settings),
        }
    }

    pub fn settings(&self) -> &BlobSettings {
        &self.settings
    }

    /// HEAD of the bucket: reachable, keys accepted, bucket exists.
    pub async fn check_bucket(&self) -> Result<(), BlobError> {
        Err(stub())
    }

    /// PUT of one object from memory.
    pub async fn put(&self, _key: &str, _body: Bytes) -> Result<(), BlobError> {
        Err(stub())
    }

    /// PUT of one object from a complete local file of `size` bytes: one streamed PUT
    /// up to a threshold, a multipart upload above it (memory O(part), aborted on error).
    pub async fn put_file(&self, _key: &str, _path: &Path, _size: u64) -> Result<(), BlobError> {
        Err(stub())
    }

    /// GET of `length` bytes at `offset` (a Range request), streamed.
    pub async fn get(&self, _key: &str, _offset: u64, _length: u64) -> Result<BlobBody, BlobError> {
        Err(stub())
    }

    /// DELETE; a missing key is success.
    pub async fn delete(&self, _key: &str) -> Result<(), BlobError> {
        Err(stub())
    }

    /// ListObjectsV2 under `prefix`, after `start_after`, at most `max_keys`.
    pub async fn list(
        &self,
        _prefix: &str,
        _start_after: Option<&str>,
        _max_keys: usize,
    ) -> Result<ListPage, BlobError> {
        Err(stub())
    }
}

fn stub() -> BlobError {
    BlobError::Unavailable("blob client not written yet".into())
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
