//! Configuration: every knob of the daemon, with its env var, flag, default and unit.
//!
//! Every setting has an environment variable and a command-line flag; the flag wins
//! (clap reads the env var only when the flag is absent). [`Config::from_args`] parses and
//! validates; any error is reported by `main` as `rhinobox: error: ...` with exit code 2.
//! [`Limits`] gathers every bound the server enforces, so that they live in one place.

use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Parser, Subcommand, ValueEnum};

/// What a 200 reply promises about stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// Acknowledged from the page cache, synced in the background once a second: fastest;
    /// a power loss can lose about the last second of replied files (never corrupts).
    None,
    /// Group commit: file data, directory entries and journal records are synced before the
    /// reply, one sync shared by all requests that wait at the same moment.
    Batch,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Batch => "batch",
        }
    }
}

/// How file I/O is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IoEngine {
    /// io_uring when it works here, else `threads` with one warning line.
    Auto,
    /// io_uring with registered buffers; start fails when io_uring is unavailable.
    Uring,
    /// Blocking file I/O on a bounded thread pool (io_uring blocked by seccomp, sysctl, memlock).
    Threads,
}

impl IoEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            IoEngine::Auto => "auto",
            IoEngine::Uring => "uring",
            IoEngine::Threads => "threads",
        }
    }
}

/// rhinobox: media ingest storage daemon (io_uring, BLAKE3 dedup, append-only journal).
///
/// Without a command it runs the daemon. Every option can also be set through the
/// environment variable shown; the flag wins.
#[derive(Parser, Debug, Clone)]
#[command(name = "rhinobox", version, about, long_about = None)]
pub struct Args {
    /// An offline admin command instead of the daemon (the daemon must be stopped).
    #[command(subcommand)]
    pub command: Option<AdminCommand>,

    /// Bind address; `:PORT` means every IPv4 and IPv6 address (IPv4 only on a host
    /// without IPv6), `HOST:PORT` or `[V6]:PORT` that one address.
    #[arg(long, env = "RHINOBOX_ADDR", default_value = ":8090")]
    pub addr: String,

    /// Storage root (holds storage/ and metadata/).
    #[arg(long, env = "RHINOBOX_DATA_DIR", default_value = "./data", value_parser = any_path())]
    pub data_dir: PathBuf,

    /// Largest request body in MiB; larger bodies get 413.
    #[arg(
        long,
        env = "RHINOBOX_MAX_UPLOAD_MB",
        default_value = "512",
        allow_negative_numbers = true
    )]
    pub max_upload_mb: String,

    /// Number of pinned io runtimes (threads); 0 = one per CPU core.
    #[arg(
        long,
        env = "RHINOBOX_WORKERS",
        default_value = "0",
        allow_negative_numbers = true
    )]
    pub workers: String,

    /// Files in flight over all requests (job slots); a full queue pauses reading bodies
    /// and answers 503 after 5 s without a free slot.
    #[arg(
        long,
        env = "RHINOBOX_QUEUE_CAPACITY",
        default_value = "10000",
        allow_negative_numbers = true
    )]
    pub queue_capacity: String,

    /// `none` (page cache only) or `batch` (group commit: data, directory and journal
    /// synced before the reply).
    #[arg(long, env = "RHINOBOX_DURABILITY", default_value = "batch")]
    pub durability: String,

    /// When set, every endpoint but /healthz needs `Authorization: Bearer <token>`.
    #[arg(long, env = "RHINOBOX_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// File holding the API token (one trailing newline is stripped), so that the token
    /// stays out of `ps` and the environment; instead of --api-token.
    #[arg(long, env = "RHINOBOX_API_TOKEN_FILE", value_parser = any_path())]
    pub api_token_file: Option<PathBuf>,

    /// Listener of the S3-compatible API, same forms as --addr; unset = no S3 API.
    #[arg(long, env = "RHINOBOX_S3_ADDR")]
    pub s3_addr: Option<String>,

    /// The S3 access key id clients sign with (required with --s3-addr).
    #[arg(long, env = "RHINOBOX_S3_ACCESS_KEY")]
    pub s3_access_key: Option<String>,

    /// The S3 secret key (required with --s3-addr, or --s3-secret-key-file).
    #[arg(long, env = "RHINOBOX_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,

    /// File holding the S3 secret key (one trailing newline is stripped); instead of
    /// --s3-secret-key.
    #[arg(long, env = "RHINOBOX_S3_SECRET_KEY_FILE", value_parser = any_path())]
    pub s3_secret_key_file: Option<PathBuf>,

    /// Region of the S3 API, as clients put it in their SigV4 signatures.
    #[arg(long, env = "RHINOBOX_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// Cluster mode's metadata: `postgres://user:password@host:port/db` (SPEC §8); unset =
    /// the local journal. Needs --blob-url as well.
    #[arg(long, env = "RHINOBOX_METADATA_URL", hide_env_values = true)]
    pub metadata_url: Option<String>,

    /// File holding the metadata URL (it carries a password); instead of --metadata-url.
    #[arg(long, env = "RHINOBOX_METADATA_URL_FILE", value_parser = any_path())]
    pub metadata_url_file: Option<PathBuf>,

    /// Cluster mode's blobs: `s3://BUCKET?endpoint=http://HOST:PORT&region=R` (SPEC §8);
    /// unset = the local tree. Needs --metadata-url as well.
    #[arg(long, env = "RHINOBOX_BLOB_URL")]
    pub blob_url: Option<String>,

    /// Access key id for --blob-url.
    #[arg(long, env = "RHINOBOX_BLOB_ACCESS_KEY")]
    pub blob_access_key: Option<String>,

    /// Secret key for --blob-url (or --blob-secret-key-file).
    #[arg(long, env = "RHINOBOX_BLOB_SECRET_KEY", hide_env_values = true)]
    pub blob_secret_key: Option<String>,

    /// File holding the blob secret key; instead of --blob-secret-key.
    #[arg(long, env = "RHINOBOX_BLOB_SECRET_KEY_FILE", value_parser = any_path())]
    pub blob_secret_key_file: Option<PathBuf>,

    /// Seconds an uncommitted or emptied blob is kept before reclaim removes it (cluster
    /// mode). Also bounds one upload: it must commit within half of it.
    #[arg(long, env = "RHINOBOX_RECLAIM_GRACE_S", default_value = "3600")]
    pub reclaim_grace_s: String,

    /// Seconds between two reclaim passes of a node (cluster mode).
    #[arg(long, env = "RHINOBOX_RECLAIM_INTERVAL_S", default_value = "60")]
    pub reclaim_interval_s: String,

    /// `auto`, `uring` (io_uring, registered buffers) or `threads` (blocking I/O pool).
    #[arg(long, env = "RHINOBOX_IO_ENGINE", default_value = "auto")]
    pub io_engine: String,

    /// Seconds to finish in-flight requests after SIGTERM/SIGINT before exiting.
    #[arg(
        long,
        env = "RHINOBOX_SHUTDOWN_TIMEOUT_S",
        default_value = "30",
        allow_negative_numbers = true
    )]
    pub shutdown_timeout_s: String,

    /// Most concurrent client connections; further connections wait in the kernel backlog.
    #[arg(
        long,
        env = "RHINOBOX_MAX_CONNECTIONS",
        default_value = "4096",
        allow_negative_numbers = true
    )]
    pub max_connections: String,

    /// Most parts (files and fields) in one multipart request; more gets 400.
    #[arg(
        long,
        env = "RHINOBOX_MAX_PARTS",
        default_value = "10000",
        allow_negative_numbers = true
    )]
    pub max_parts: String,

    /// Files at least this large (KiB) are written with O_DIRECT from aligned registered
    /// buffers; smaller ones through the page cache.
    #[arg(
        long,
        env = "RHINOBOX_DIRECT_IO_MIN_KB",
        default_value = "1024",
        allow_negative_numbers = true
    )]
    pub direct_io_min_kb: String,
}

/// A path value, empty included: clap's own path parser refuses an empty one with a
/// message that names only the flag, so the empty case is left to [`Config::from_args`],
/// whose message names the env var too.
fn any_path() -> impl TypedValueParser<Value = PathBuf> {
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

/// The offline admin commands. Each holds the data dir lock for its whole run, so it
/// refuses (exit 2) while a daemon serves that data dir, and a daemon cannot start under it.
#[derive(Subcommand, Debug, Clone)]
pub enum AdminCommand {
    /// Re-hash every stored file against the journal and list what is wrong (read-only).
    ///
    /// Prints one line per finding on stdout (`missing PATH`, `damaged PATH (expected
    /// HASH, found ...)`, `stray PATH`, `damaged-journal-line N (byte OFFSET)`; `tmp PATH`
    /// lines are only informative) and a summary line. Exit status: 0 when clean, 1 when
    /// anything is wrong, 2 when it cannot run.
    Verify(AdminArgs),
    /// Make the store consistent again: what `verify` finds is set aside, rebuilt or removed.
    ///
    /// Damaged journal lines go to `metadata/damaged-<UTC time>.ndjson` and the journal is
    /// rewritten without them; records are rebuilt from stray `<hash12>_<name>.<ext>` files
    /// whose content matches their name; a record whose file is missing gets a delete line;
    /// a record whose file is damaged gets a delete line and its file is moved to
    /// `<data-dir>/damaged-<UTC time>/`; other strays are removed. Each step is printed.
    /// Exit status: 0 when the store is consistent afterwards, 1 when a step failed, 2 when
    /// it cannot run.
    Repair(AdminArgs),
}

impl AdminCommand {
    /// The data dir the command works on: its own `--data-dir`, else the daemon's
    /// (`--data-dir` before the command, `RHINOBOX_DATA_DIR`, `./data`).
    pub fn data_dir(&self, args: &Args) -> PathBuf {
        let (AdminCommand::Verify(own) | AdminCommand::Repair(own)) = self;
        own.data_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.clone())
    }
}

/// Options of the admin commands.
#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    /// Storage root to work on [default: the daemon's: RHINOBOX_DATA_DIR, else ./data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Every bound the server enforces, with its unit and reason.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body. Bigger bodies are refused with 413 before or while reading.
    pub upload_size_bytes_max: u64,
    /// Parts in one multipart request (files + fields): bounds per-request bookkeeping.
    pub parts_per_request_max: usize,
    /// Files in flight over all requests (job slots): a full queue pauses reading bodies.
    pub jobs_in_flight_max: usize,
    /// How long a file waits for a job slot before the request fails with 503.
    pub job_slot_wait_max: Duration,
    /// Concurrent connections; the acceptor takes a permit before `accept`.
    pub connections_max: usize,
    /// Bytes of one request head (request line + headers); hyper's read buffer cap.
    pub header_size_bytes_max: usize,
    /// Time to receive a complete request head, also bounding idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// Longest pause between two body chunks before the request fails (slow-loris bodies).
    pub body_idle_timeout: Duration,
    /// Longest multipart field value (`category`, `comment`) in bytes.
    pub field_size_bytes_max: usize,
    /// Bytes of a multipart preamble (before the first boundary) and of its epilogue (after
    /// the last): clients send none; a body without a boundary fails here, early.
    pub multipart_preamble_bytes_max: usize,
    /// Bytes of one part's header block: a part header that never ends is a 400 as soon
    /// as it passes this, with no more than this (plus one chunk) held.
    pub part_head_bytes_max: usize,
    /// Header lines in one part (browsers and curl send two or three).
    pub part_headers_max: usize,
    /// Longest file name accepted from a client before sanitizing (bytes).
    pub file_name_bytes_max: usize,
    /// Bounded time to drain in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// Small registered buffer: every file starts in one, so a small file is one write.
    pub io_small_buffer_bytes: usize,
    /// Small buffers per core; an upload holds one from its first byte to its first write.
    pub io_small_buffers_per_core: usize,
    /// Large registered buffer: the rest of a file beyond the small buffer, written with
    /// O_DIRECT once the file is large.
    pub io_large_buffer_bytes: usize,
    /// Large buffers per core; a large upload uses up to three (one filling, two writing).
    pub io_large_buffers_per_core: usize,
    /// Files this size or larger go through O_DIRECT.
    pub direct_io_bytes_min: u64,
    /// Threads of the blocking I/O pool of the `threads` engine, per core.
    pub io_threads_per_core: usize,
    /// Longest wait for an io buffer (registered buffer or `threads` permit); then 503.
    pub io_buffer_wait_max: Duration,
    /// Longest time a writer keeps an io buffer while its client sends nothing: then the
    /// buffer is written out and given back, so slow clients cannot pin the pool.
    pub io_buffer_hold_max: Duration,
    /// Bytes of small files a core keeps in memory until their commit (no tmp file);
    /// beyond this, small files go through `.tmp` like large ones.
    pub memory_files_bytes_per_core_max: usize,
}

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen: `[::]:PORT` for the `:PORT` form.
    pub addr: SocketAddr,
    /// The address was given as `:PORT`: every IPv4 and IPv6 address (one dual-stack
    /// socket), IPv4 only when the host has no IPv6.
    pub addr_every_interface: bool,
    pub data_dir: PathBuf,
    pub workers: usize,
    pub durability: Durability,
    pub io_engine: IoEngine,
    pub api_token: Option<String>,
    /// The S3-compatible API, when RHINOBOX_S3_ADDR is set.
    pub s3: Option<S3Config>,
    /// Cluster mode (SPEC §8), when RHINOBOX_METADATA_URL and RHINOBOX_BLOB_URL are set.
    pub cluster: Option<crate::cluster::ClusterSettings>,
    pub limits: Limits,
    /// Settings that are allowed but most likely a mistake: `main` prints each as one
    /// `rhinobox: warning:` line before the start.
    pub warnings: Vec<String>,
}

/// The S3 listener and the one key pair it accepts.
#[derive(Clone)]
pub struct S3Config {
    pub addr: SocketAddr,
    /// Given as `:PORT` (see [`Config::addr_every_interface`]).
    pub addr_every_interface: bool,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

// The secret stays out of debug output.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("addr", &self.addr)
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

const RECLAIM_GRACE_S: NumberSetting = NumberSetting {
    names: "RHINOBOX_RECLAIM_GRACE_S/--reclaim-grace-s",
    what: "a whole number of seconds",
    min: 2,
    max: 30 * 24 * 3600,
};
const RECLAIM_INTERVAL_S: NumberSetting = NumberSetting {
    names: "RHINOBOX_RECLAIM_INTERVAL_S/--reclaim-interval-s",
    what: "a whole number of seconds",
    min: 1,
    max: 24 * 3600,
};
/// Connections per node to the blob cluster: a pack PUT or a read holds one; 64 keep
/// packs, large uploads (4 parts each) and downloads going at once.
const BLOB_CONNECTIONS_MAX: usize = 64;

/// Cluster mode: both URLs and the blob key pair, or none of them.
fn parse_cluster(args: &Args) -> Result<Option<crate::cluster::ClusterSettings>, ConfigError> {
    let metadata_url = SecretSetting {
        value_names: "RHINOBOX_METADATA_URL/--metadata-url",
        file_names: "RHINOBOX_METADATA_URL_FILE/--metadata-url-file",
    }
    .resolve(args.metadata_url.clone(), args.metadata_url_file.as_deref())?;
    let blob_secret = SecretSetting {
        value_names: "RHINOBOX_BLOB_SECRET_KEY/--blob-secret-key",
        file_names: "RHINOBOX_BLOB_SECRET_KEY_FILE/--blob-secret-key-file",
    }
    .resolve(
        args.blob_secret_key.clone(),
        args.blob_secret_key_file.as_deref(),
    )?;
    let (metadata_url, blob_url) = match (metadata_url, &args.blob_url) {
        (None, None) => return Ok(None),
        (Some(m), Some(b)) => (m, b.clone()),
        (Some(_), None) | (None, Some(_)) => {
            return Err(ConfigError(
                "RHINOBOX_METADATA_URL/--metadata-url and RHINOBOX_BLOB_URL/--blob-url:                  cluster mode needs both (PostgreSQL for the records, an S3 cluster for                  the blobs); one without the other is not supported yet"
                    .into(),
            ));
        }
    };
    if !metadata_url.starts_with("postgres://") && !metadata_url.starts_with("postgresql://") {
        return Err(ConfigError(
            "RHINOBOX_METADATA_URL/--metadata-url: expected postgres://USER:PASSWORD@HOST:PORT/DB"
                .into(),
        ));
    }
    let (bucket, endpoint, host, region) =
        crate::cluster::blob_client::parse_blob_url(&blob_url)
            .map_err(|why| ConfigError(format!("RHINOBOX_BLOB_URL/--blob-url: {why}")))?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&host)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            ConfigError(format!(
                "RHINOBOX_BLOB_URL/--blob-url: cannot resolve the endpoint {host:?} (give                  HOST:PORT)"
            ))
        })?;
    let access_key = match args.blob_access_key.as_deref().map(str::trim) {
        Some(key) if !key.is_empty() => key.to_string(),
        _ => {
            return Err(ConfigError(
                "RHINOBOX_BLOB_ACCESS_KEY/--blob-access-key: required with RHINOBOX_BLOB_URL"
                    .into(),
            ));
        }
    };
    let Some(secret_key) = blob_secret else {
        return Err(ConfigError(
            "RHINOBOX_BLOB_SECRET_KEY/--blob-secret-key: required with RHINOBOX_BLOB_URL;              set it, or RHINOBOX_BLOB_SECRET_KEY_FILE/--blob-secret-key-file"
                .into(),
        ));
    };
    let grace_s = RECLAIM_GRACE_S.parse(&args.reclaim_grace_s)?;
    let interval_s = RECLAIM_INTERVAL_S.parse(&args.reclaim_interval_s)?;
    Ok(Some(crate::cluster::ClusterSettings {
        metadata_url,
        blob: crate::cluster::blob_client::BlobSettings {
            bucket,
            endpoint,
            host,
            addr,
            credentials: crate::client::sigv4::Credentials {
                access_key,
                secret_key,
                region,
            },
            connections_max: BLOB_CONNECTIONS_MAX,
        },
        reclaim_grace: Duration::from_secs(grace_s),
        reclaim_interval: Duration::from_secs(interval_s),
    }))
}

/// The S3 settings: all of addr, access key and secret, or none (a key without the
/// listener is only a warning: it changes nothing).
fn parse_s3(
    args: &Args,
    main_addr: SocketAddr,
    warnings: &mut Vec<String>,
) -> Result<Option<S3Config>, ConfigError> {
    let secret_key = SecretSetting {
        value_names: "RHINOBOX_S3_SECRET_KEY/--s3-secret-key",
        file_names: "RHINOBOX_S3_SECRET_KEY_FILE/--s3-secret-key-file",
    }
    .resolve(
        args.s3_secret_key.clone(),
        args.s3_secret_key_file.as_deref(),
    )?;
    let Some(addr) = &args.s3_addr else {
        if args.s3_access_key.is_some() || secret_key.is_some() {
            warnings.push(
                "RHINOBOX_S3_ACCESS_KEY/RHINOBOX_S3_SECRET_KEY are set but RHINOBOX_S3_ADDR/\
                 --s3-addr is not: the S3 API is off"
                    .into(),
            );
        }
        return Ok(None);
    };
    let (addr, addr_every_interface) = parse_listen_addr(addr, "RHINOBOX_S3_ADDR/--s3-addr")?;
    if addr.port() != 0 && addr.port() == main_addr.port() {
        return Err(ConfigError(format!(
            "RHINOBOX_S3_ADDR/--s3-addr: port {} is the port of RHINOBOX_ADDR/--addr; give \
             the S3 API a port of its own",
            addr.port()
        )));
    }
    let access_key = match args.s3_access_key.as_deref().map(str::trim) {
        Some(key) if !key.is_empty() => key.to_string(),
        _ => {
            return Err(ConfigError(
                "RHINOBOX_S3_ACCESS_KEY/--s3-access-key: required with RHINOBOX_S3_ADDR/\
                 --s3-addr; set the access key id that clients sign with"
                    .into(),
            ));
        }
    };
    let Some(secret_key) = secret_key else {
        return Err(ConfigError(
            "RHINOBOX_S3_SECRET_KEY/--s3-secret-key: required with RHINOBOX_S3_ADDR/--s3-addr; \
             set it, or RHINOBOX_S3_SECRET_KEY_FILE/--s3-secret-key-file"
                .into(),
        ));
    };
    let region = args.s3_region.trim();
    let region_ok = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !region_ok {
        return Err(ConfigError(format!(
            "RHINOBOX_S3_REGION/--s3-region: {region:?} is not a region name; use letters, \
             digits and '-' (default us-east-1)"
        )));
    }
    Ok(Some(S3Config {
        addr,
        addr_every_interface,
        access_key,
        secret_key,
        region: region.to_string(),
    }))
}

/// A configuration error: names the setting and what was wrong.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Largest `--max-upload-mb`: 1 TiB. Bodies are streamed to disk, so memory does not bound
/// it, but a larger limit is a typo rather than a plan (and MiB × 2^20 must fit in u64).
const UPLOAD_MB_MAX: u64 = 1 << 20;
/// Workers per CPU core at most. Every worker is a pinned thread with its own io ring,
/// about 6 MiB of registered buffers and, on the threads engine, its own I/O threads:
/// beyond one per core they add memory and no throughput (1000 workers on 2 cores took
/// 6.2 GB of RSS). Four per core still lets a benchmark show what oversubscription costs.
const WORKERS_PER_CORE_MAX: u64 = 4;
/// Most job slots: every file in flight can hold an open tmp file, so more slots than the
/// largest possible open-file limit (`fs.nr_open`, 2^20 by default) can never be used.
const QUEUE_CAPACITY_MAX: u64 = 1 << 20;
/// Most connections: each is a file descriptor (`fs.nr_open`, 2^20 by default).
const CONNECTIONS_MAX: u64 = 1 << 20;
/// Most parts in one request: bounds that request's bookkeeping (an entry per file part).
const PARTS_MAX: u64 = 1 << 20;
/// Longest shutdown drain: one day. Longer is a typo, and the drain deadline (now + the
/// timeout) must not overflow.
const SHUTDOWN_TIMEOUT_S_MAX: u64 = 24 * 3600;
/// Largest O_DIRECT threshold: 1 TiB in KiB, as large as the largest upload (which turns
/// O_DIRECT off).
const DIRECT_IO_MIN_KB_MAX: u64 = 1 << 30;

/// A numeric setting: the names every message gives it, and the range it accepts.
struct NumberSetting {
    /// `RHINOBOX_X/--x`.
    names: &'static str,
    /// What a value counts, for messages: `a whole number of MiB`.
    what: &'static str,
    min: u64,
    max: u64,
}

impl NumberSetting {
    /// Negative, fractional, garbage, empty and out-of-range values all get one message
    /// that names the setting and the range, which is the fix.
    fn parse(&self, value: &str) -> Result<u64, ConfigError> {
        value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (self.min..=self.max).contains(n))
            .ok_or_else(|| {
                ConfigError(format!(
                    "{}: expected {} from {} to {}, got {value:?}",
                    self.names, self.what, self.min, self.max
                ))
            })
    }
}

const UPLOAD_MB: NumberSetting = NumberSetting {
    names: "RHINOBOX_MAX_UPLOAD_MB/--max-upload-mb",
    what: "a whole number of MiB",
    min: 1,
    max: UPLOAD_MB_MAX,
};
const QUEUE_CAPACITY: NumberSetting = NumberSetting {
    names: "RHINOBOX_QUEUE_CAPACITY/--queue-capacity",
    what: "a whole number of job slots",
    min: 1,
    max: QUEUE_CAPACITY_MAX,
};
const SHUTDOWN_TIMEOUT_S: NumberSetting = NumberSetting {
    names: "RHINOBOX_SHUTDOWN_TIMEOUT_S/--shutdown-timeout-s",
    what: "a whole number of seconds",
    min: 0,
    max: SHUTDOWN_TIMEOUT_S_MAX,
};
const MAX_CONNECTIONS: NumberSetting = NumberSetting {
    names: "RHINOBOX_MAX_CONNECTIONS/--max-connections",
    what: "a whole number of connections",
    min: 1,
    max: CONNECTIONS_MAX,
};
const MAX_PARTS: NumberSetting = NumberSetting {
    names: "RHINOBOX_MAX_PARTS/--max-parts",
    what: "a whole number of parts",
    min: 1,
    max: PARTS_MAX,
};
const DIRECT_IO_MIN_KB: NumberSetting = NumberSetting {
    names: "RHINOBOX_DIRECT_IO_MIN_KB/--direct-io-min-kb",
    what: "a whole number of KiB",
    min: 0,
    max: DIRECT_IO_MIN_KB_MAX,
};

fn parse_enum<T: ValueEnum>(value: &str, setting: &str) -> Result<T, ConfigError> {
    T::from_str(value.trim(), true).map_err(|_| {
        let allowed: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        ConfigError(format!(
            "{setting}: unknown value {value:?} (expected one of: {})",
            allowed.join(", ")
        ))
    })
}

/// Parses `:PORT` (every interface: `[::]:PORT`, dual-stack), `HOST:PORT` or `[V6]:PORT`
/// into one socket address; the flag says whether it was the `:PORT` form.
pub fn parse_addr(value: &str) -> Result<(SocketAddr, bool), ConfigError> {
    parse_listen_addr(value, "RHINOBOX_ADDR/--addr")
}

/// [`parse_addr`] for the setting `names` (the S3 listener has its own).
fn parse_listen_addr(value: &str, names: &str) -> Result<(SocketAddr, bool), ConfigError> {
    let bad = || {
        ConfigError(format!(
            "{names}: cannot parse address {value:?}; expected :PORT (every \
             interface), HOST:PORT or [IPV6]:PORT, with PORT from 0 to 65535"
        ))
    };
    let value = value.trim();
    if let Some(port) = value.strip_prefix(':') {
        let port = port.parse::<u16>().map_err(|_| bad())?;
        return Ok((
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            true,
        ));
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok((addr, false));
    }
    // Host names such as `localhost:8090` resolve through the system resolver.
    let (_, port) = value.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let addr = value
        .to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)?;
    Ok((addr, false))
}

/// A secret setting and the file setting next to it, so a secret can stay out of `ps`
/// and the environment (`--api-token` / `--api-token-file`; the S3 and blob secret keys
/// use the same pair).
pub struct SecretSetting {
    /// `RHINOBOX_X/--x`, the secret itself.
    pub value_names: &'static str,
    /// `RHINOBOX_X_FILE/--x-file`, a file that holds it.
    pub file_names: &'static str,
}

/// Largest secret file read: a secret is one line; a larger file is the wrong file (or a
/// device that never ends).
const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

impl SecretSetting {
    /// The secret from the value or from the file (never both), None when neither is set.
    pub fn resolve(
        &self,
        value: Option<String>,
        file: Option<&Path>,
    ) -> Result<Option<String>, ConfigError> {
        match (value, file) {
            (Some(_), Some(_)) => Err(ConfigError(format!(
                "{} and {} are both set; set only one of them",
                self.value_names, self.file_names
            ))),
            (Some(value), None) => check_secret(value, self.value_names, "the value").map(Some),
            (None, Some(path)) => self.read(path).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The file's content without one trailing newline (`\n` or `\r\n`).
    fn read(&self, path: &Path) -> Result<String, ConfigError> {
        let names = self.file_names;
        if path.as_os_str().is_empty() {
            return Err(ConfigError(format!(
                "{names}: empty; give the path of a file that holds the secret"
            )));
        }
        let unreadable = |e: std::io::Error| {
            ConfigError(format!(
                "{names}: cannot read {}: {e}; give a file this user can read that holds \
                 the secret",
                path.display()
            ))
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(SECRET_FILE_BYTES_MAX + 1).read_to_end(&mut bytes))
            .map_err(unreadable)?;
        if bytes.len() as u64 > SECRET_FILE_BYTES_MAX {
            return Err(ConfigError(format!(
                "{names}: {} is larger than {} KiB; a secret file holds one line",
                path.display(),
                SECRET_FILE_BYTES_MAX / 1024
            )));
        }
        let text = String::from_utf8_lossy(&bytes);
        let secret = match text.strip_suffix('\n') {
            Some(line) => line.strip_suffix('\r').unwrap_or(line),
            None => &*text,
        };
        check_secret(secret.to_string(), names, &path.display().to_string())
    }
}

/// A secret is one word of visible ASCII: an empty one would silently turn protection
/// off; a space or control character is nearly always a copy-and-paste accident (a
/// trailing space, a CR, a second line), and the token is compared with the header's
/// value trimmed and as visible ASCII, so such a secret could never be presented.
fn check_secret(secret: String, names: &str, source: &str) -> Result<String, ConfigError> {
    if secret.is_empty() {
        return Err(ConfigError(format!(
            "{names}: {source} is empty; give a secret, or unset the setting to run without one"
        )));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError(format!(
            "{names}: {source} holds a space, a control or a non-ASCII character (only one \
             trailing newline is stripped from a file); a secret is one word of visible ASCII"
        )));
    }
    Ok(secret)
}

/// The CPU cores this process may run on (at least one).
fn cpu_cores() -> usize {
    core_affinity::get_core_ids()
        .map(|c| c.len())
        .unwrap_or(1)
        .max(1)
}

/// Workers: `0` is one per core; more than [`WORKERS_PER_CORE_MAX`] per core is refused,
/// more than one per core is warned about.
fn parse_workers(
    value: &str,
    cores: usize,
    warnings: &mut Vec<String>,
) -> Result<usize, ConfigError> {
    let max = cores as u64 * WORKERS_PER_CORE_MAX;
    let setting = NumberSetting {
        names: "RHINOBOX_WORKERS/--workers",
        what: "a whole number (0 = one per CPU core)",
        min: 0,
        max,
    };
    let workers = match value.trim().parse::<u64>() {
        Ok(workers) if workers > max => {
            return Err(ConfigError(format!(
                "RHINOBOX_WORKERS/--workers: {workers} is more than {WORKERS_PER_CORE_MAX} per \
                 CPU core (this host has {cores}); each worker is a pinned thread with its own \
                 io ring and buffers, so extra ones only cost memory: use 0 (one per core) or \
                 at most {max}"
            )));
        }
        _ => setting.parse(value)?,
    };
    if workers as usize > cores {
        warnings.push(format!(
            "RHINOBOX_WORKERS/--workers {workers} is more than the {cores} CPU cores: workers \
             share cores, which costs memory and adds no throughput (0 = one per core)"
        ));
    }
    Ok(if workers == 0 {
        cores
    } else {
        workers as usize
    })
}

/// An empty data dir would put `storage/` and `metadata/` into the working directory.
fn check_data_dir(data_dir: &Path) -> Result<(), ConfigError> {
    if data_dir.as_os_str().is_empty() {
        return Err(ConfigError(
            "RHINOBOX_DATA_DIR/--data-dir: empty; give the storage root (default ./data)".into(),
        ));
    }
    Ok(())
}

impl Config {
    /// Parses the command line (and env vars) into a validated configuration.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let upload_mb = UPLOAD_MB.parse(&args.max_upload_mb)?;
        let queue = QUEUE_CAPACITY.parse(&args.queue_capacity)?;
        let shutdown_s = SHUTDOWN_TIMEOUT_S.parse(&args.shutdown_timeout_s)?;
        let connections = MAX_CONNECTIONS.parse(&args.max_connections)?;
        let parts = MAX_PARTS.parse(&args.max_parts)?;
        let direct_kb = DIRECT_IO_MIN_KB.parse(&args.direct_io_min_kb)?;
        let workers = parse_workers(&args.workers, cpu_cores(), &mut warnings)?;
        let durability = parse_enum(&args.durability, "RHINOBOX_DURABILITY/--durability")?;
        let io_engine = parse_enum(&args.io_engine, "RHINOBOX_IO_ENGINE/--io-engine")?;
        let (addr, addr_every_interface) = parse_addr(&args.addr)?;
        check_data_dir(&args.data_dir)?;
        let api_token = SecretSetting {
            value_names: "RHINOBOX_API_TOKEN/--api-token",
            file_names: "RHINOBOX_API_TOKEN_FILE/--api-token-file",
        }
        .resolve(args.api_token.clone(), args.api_token_file.as_deref())?;
        let s3 = parse_s3(&args, addr, &mut warnings)?;
        let cluster = parse_cluster(&args)?;
        if cluster.is_some() && s3.is_some() {
            return Err(ConfigError(
                "RHINOBOX_S3_ADDR/--s3-addr: the S3 API does not run in cluster mode yet \
                 (RHINOBOX_METADATA_URL and RHINOBOX_BLOB_URL are set); unset one of them"
                    .into(),
            ));
        }
        let mut limits = Limits::with_defaults();
        limits.upload_size_bytes_max = upload_mb * 1024 * 1024;
        limits.parts_per_request_max = parts as usize;
        limits.jobs_in_flight_max = queue as usize;
        limits.connections_max = connections as usize;
        limits.shutdown_timeout = Duration::from_secs(shutdown_s);
        limits.direct_io_bytes_min = direct_kb * 1024;
        Ok(Config {
            addr,
            addr_every_interface,
            data_dir: args.data_dir,
            workers,
            durability,
            io_engine,
            api_token,
            s3,
            cluster,
            limits,
            warnings,
        })
    }
}

impl Limits {
    /// The built-in bounds, with the settable ones at their defaults.
    pub fn with_defaults() -> Limits {
        Limits {
            upload_size_bytes_max: 512 * 1024 * 1024,
            parts_per_request_max: 10_000,
            jobs_in_flight_max: 10_000,
            job_slot_wait_max: Duration::from_secs(5),
            connections_max: 4096,
            header_size_bytes_max: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            field_size_bytes_max: 64 * 1024,
            multipart_preamble_bytes_max: 16 * 1024,
            part_head_bytes_max: 16 * 1024,
            part_headers_max: 16,
            file_name_bytes_max: 4096,
            shutdown_timeout: Duration::from_secs(30),
            io_small_buffer_bytes: 64 * 1024,
            io_small_buffers_per_core: 32,
            io_large_buffer_bytes: 1024 * 1024,
            io_large_buffers_per_core: 4,
            direct_io_bytes_min: 1024 * 1024,
            io_threads_per_core: 16,
            io_buffer_wait_max: Duration::from_secs(5),
            io_buffer_hold_max: Duration::from_millis(100),
            memory_files_bytes_per_core_max: 32 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `:PORT` binds every interface, explicit hosts parse, garbage is an error.
    #[test]
    fn addr_forms() {
        assert_eq!(
            parse_addr(":8090").unwrap(),
            ("[::]:8090".parse().unwrap(), true)
        );
        assert_eq!(
            parse_addr("127.0.0.1:0").unwrap(),
            ("127.0.0.1:0".parse().unwrap(), false)
        );
        assert_eq!(
            parse_addr("[::1]:80").unwrap(),
            ("[::1]:80".parse().unwrap(), false)
        );
        assert!(parse_addr("").is_err());
        assert!(parse_addr(":").is_err());
        assert!(parse_addr("nonsense").is_err());
        assert!(parse_addr(":99999").is_err());
    }

    /// Numbers: garbage, negative, empty and out-of-range values give the range.
    #[test]
    fn number_errors_give_the_range() {
        assert_eq!(UPLOAD_MB.parse(" 512 ").unwrap(), 512);
        for bad in ["-1", "0", "", "1.5", "99999999999999999999", "1048577"] {
            let err = UPLOAD_MB.parse(bad).unwrap_err();
            assert!(err.0.contains("from 1 to 1048576"), "{bad}: {}", err.0);
        }
    }

    /// Workers: 0 is one per core, up to 4 per core accepted (warned above one per core).
    #[test]
    fn workers_bounded_by_cores() {
        let mut warnings = Vec::new();
        assert_eq!(parse_workers("0", 2, &mut warnings).unwrap(), 2);
        assert_eq!(parse_workers("2", 2, &mut warnings).unwrap(), 2);
        assert!(warnings.is_empty());
        assert_eq!(parse_workers("8", 2, &mut warnings).unwrap(), 8);
        assert_eq!(warnings.len(), 1);
        let err = parse_workers("9", 2, &mut warnings).unwrap_err();
        assert!(err.0.contains("at most 8"), "{}", err.0);
    }

    /// A secret file loses one trailing newline (LF or CRLF), not more; empty, blank and
    /// two-line files are refused, as is a value and a file at once.
    #[test]
    fn secret_files() {
        let setting = SecretSetting {
            value_names: "RHINOBOX_X/--x",
            file_names: "RHINOBOX_X_FILE/--x-file",
        };
        let dir = tempfile::tempdir().unwrap();
        let read = |content: &str| {
            let path = dir.path().join("secret");
            std::fs::write(&path, content).unwrap();
            setting.resolve(None, Some(&path))
        };
        assert_eq!(read("abc\n").unwrap().as_deref(), Some("abc"));
        assert_eq!(read("abc\r\n").unwrap().as_deref(), Some("abc"));
        assert_eq!(read("abc").unwrap().as_deref(), Some("abc"));
        for bad in ["", "\n", "abc\n\n", "a\nb\n", " abc\n"] {
            let err = read(bad).unwrap_err();
            assert!(
                err.0.contains("RHINOBOX_X_FILE/--x-file"),
                "{bad:?}: {}",
                err.0
            );
        }
        let both = setting.resolve(Some("a".into()), Some(dir.path()));
        assert!(both.unwrap_err().0.contains("only one"));
        assert_eq!(setting.resolve(None, None).unwrap(), None);
    }

    /// Unknown enum values name the setting in the error.
    #[test]
    fn enum_errors_name_the_setting() {
        let err =
            parse_enum::<Durability>("maybe", "RHINOBOX_DURABILITY/--durability").unwrap_err();
        assert!(err.0.contains("RHINOBOX_DURABILITY"), "{}", err.0);
        assert_eq!(
            parse_enum::<IoEngine>("URING", "x").unwrap(),
            IoEngine::Uring
        );
    }
}
