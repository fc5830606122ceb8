//! Cluster mode (SPEC §8): many rhinobox nodes on two existing engines — the records, the
//! dedup decision, listings and totals in PostgreSQL ([`metadata`]), the bytes in an
//! S3-compatible cluster ([`blob_client`]). A node keeps nothing another node needs: its
//! data dir holds only `.tmp` (bodies being received) and its lock.
//!
//! Each node runs the same ingest pipeline (parse, sniff, hash, name) on its io_uring
//! cores; the store's put and delete hand the result to this module, which runs on a
//! runtime of its own ([`Cluster::run`]: a small multi-thread tokio runtime, so that
//! PostgreSQL's and the S3 client's `Send` futures never run on a serving core). The
//! protocols are in [`protocol`] (put, delete, read), [`packer`] (small files grouped
//! into packs) and [`reclaim`] (space of deleted and never-committed blobs), each with its
//! invariants and crash points.

pub mod blob_client;
pub mod metadata;
pub mod packer;
pub mod protocol;
pub mod reclaim;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use blob_client::{BlobClient, BlobError, BlobSettings};
use metadata::{MetadataError, PgMetadata};

/// The cluster-mode settings (SPEC §2: RHINOBOX_METADATA_URL, RHINOBOX_BLOB_URL and the
/// blob key pair), validated.
#[derive(Clone)]
pub struct ClusterSettings {
    /// `postgres://user:password@host:port/db` (never printed: see [`metadata::redact`]).
    pub metadata_url: String,
    pub blob: BlobSettings,
    /// How long an object without a record may exist before reclaim removes it, and how
    /// long an emptied object stays readable; also the bound on one upload's time from
    /// its first blob write to its commit (half of it; see [`reclaim`]).
    pub reclaim_grace: Duration,
    /// Pause between two reclaim passes of this node.
    pub reclaim_interval: Duration,
}

// The metadata URL carries a password: debug output shows it redacted.
impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("metadata_url", &metadata::redact(&self.metadata_url))
            .field("blob", &self.blob)
            .field("reclaim_grace", &self.reclaim_grace)
            .field("reclaim_interval", &self.reclaim_interval)
            .finish()
    }
}

/// Connections to PostgreSQL per node: a pack commit, a lookup or a delete holds one for
/// a few round trips; 16 keep every core and the packer busy without loading the server.
const METADATA_CONNECTIONS_MAX: usize = 16;
/// Threads of the cluster runtime: the clients' work is parsing and copying; two threads
/// keep one slow call from delaying the rest.
const RUNTIME_THREADS: usize = 2;

/// Why a cluster operation did not happen.
#[derive(Clone, Debug)]
pub enum ClusterError {
    /// An engine did not answer (down, overloaded, network): nothing was acknowledged;
    /// the client may retry (503 with Retry-After).
    Unavailable(String),
    /// An engine refused the request: a misconfiguration or a bug (500).
    Failed(String),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::Unavailable(why) | ClusterError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<MetadataError> for ClusterError {
    fn from(e: MetadataError) -> ClusterError {
        match e {
            MetadataError::Unavailable(_) => ClusterError::Unavailable(e.to_string()),
            MetadataError::Failed(_) => ClusterError::Failed(e.to_string()),
        }
    }
}

impl From<BlobError> for ClusterError {
    fn from(e: BlobError) -> ClusterError {
        match e {
            BlobError::Unavailable(_) => ClusterError::Unavailable(e.to_string()),
            BlobError::NotFound | BlobError::Rejected { .. } => ClusterError::Failed(e.to_string()),
        }
    }
}

impl From<ClusterError> for std::io::Error {
    /// An unavailable engine is `NotConnected` (the API answers 503), a refusal `Other`.
    fn from(e: ClusterError) -> std::io::Error {
        match e {
            ClusterError::Unavailable(why) => {
                std::io::Error::new(std::io::ErrorKind::NotConnected, why)
            }
            ClusterError::Failed(why) => std::io::Error::other(why),
        }
    }
}

/// One node's handle on the cluster: the runtime its clients run on, the clients, the
/// packer's queue.
pub struct Cluster {
    runtime: tokio::runtime::Runtime,
    pub metadata: Arc<PgMetadata>,
    pub blobs: BlobClient,
    pub settings: ClusterSettings,
    packer: packer::Packer,
    /// Random at start; with `next_object` it makes every object key of this process
    /// unique (see [`protocol`]: keys are never reused).
    node_nonce: u64,
    next_object: AtomicU64,
}

impl Cluster {
    /// Starts the runtime, checks both engines once, starts the packer and the reclaim
    /// task. An engine that is down at start is not fatal (requests answer 503 until it
    /// is back); a malformed URL or rejected credentials are.
    pub fn start(settings: ClusterSettings) -> Result<(Cluster, Vec<String>), String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("rhinobox-cluster")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the cluster runtime: {e}"))?;
        let node_nonce = random_u64();
        let metadata = Arc::new(
            PgMetadata::new(
                &settings.metadata_url,
                METADATA_CONNECTIONS_MAX,
                (node_nonce % 1024) as i32,
            )
            .map_err(|e| format!("RHINOBOX_METADATA_URL/--metadata-url: {e}"))?,
        );
        let blobs = BlobClient::new(settings.blob.clone());
        let mut warnings = Vec::new();
        let checked = runtime.block_on(async {
            let pg = metadata.check().await;
            let s3 = blobs.check_bucket().await;
            (pg, s3)
        });
        match checked.0 {
            Ok(()) => {}
            Err(MetadataError::Unavailable(why)) => warnings.push(format!(
                "PostgreSQL at {} is not reachable now ({why}); requests answer 503 until it is",
                metadata::redact(&settings.metadata_url)
            )),
            Err(e) => return Err(format!("RHINOBOX_METADATA_URL/--metadata-url: {e}")),
        }
        match checked.1 {
            Ok(()) => {}
            Err(BlobError::Unavailable(why)) => warnings.push(format!(
                "the blob cluster at {} is not reachable now ({why}); requests answer 503 \
                 until it is",
                settings.blob.endpoint
            )),
            Err(e) => {
                return Err(format!(
                    "RHINOBOX_BLOB_URL/--blob-url (bucket {}): {e}",
                    settings.blob.bucket
                ));
            }
        }
        let cluster = Cluster {
            packer: packer::Packer::new(),
            runtime,
            metadata,
            blobs,
            settings,
            node_nonce,
            next_object: AtomicU64::new(0),
        };
        Ok((cluster, warnings))
    }

    /// Starts the background tasks that need the cluster shared: the packer's loop and
    /// the reclaim passes.
    pub fn start_tasks(self: &Arc<Cluster>) {
        let cluster = self.clone();
        self.runtime
            .spawn(async move { cluster.packer.run(&cluster).await });
        let cluster = self.clone();
        self.runtime
            .spawn(async move { reclaim::run(&cluster).await });
    }

    /// Runs `work` on the cluster runtime and waits for it from any runtime (a serving
    /// core awaits the answer without blocking its thread).
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, ClusterError>> + Send + 'static,
    ) -> Result<T, ClusterError> {
        self.runtime
            .spawn(work)
            .await
            .map_err(|e| ClusterError::Failed(format!("cluster task failed: {e}")))?
    }

    /// Puts the files of one request (`protocol::put`): through the packer when all are
    /// small (in memory), else as one batch of its own.
    pub async fn put(
        self: &Arc<Cluster>,
        items: Vec<protocol::Item>,
    ) -> Result<Vec<protocol::Outcome>, ClusterError> {
        let all_small = items
            .iter()
            .all(|item| matches!(item.content, protocol::Content::Memory(_)));
        if all_small {
            return self.packer.put(items).await;
        }
        let cluster = self.clone();
        self.run(async move { protocol::put(&cluster, items).await })
            .await
    }

    /// A key no other object of any node ever had: `<kind>/<hh>/<hash hex>-<nonce>`.
    pub fn object_key(&self, kind: &str, hash: &blake3::Hash) -> String {
        let n = self.next_object.fetch_add(1, Ordering::Relaxed);
        let hex = hash.to_hex();
        format!(
            "{kind}/{}/{}-{:016x}{:08x}",
            &hex[..2],
            hex,
            self.node_nonce,
            n
        )
    }
}

/// 64 random bits from the kernel (getrandom), falling back on the time and the pid.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        return u64::from_le_bytes(bytes);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    now ^ (u64::from(std::process::id()) << 32)
}
