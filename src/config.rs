//! Configuration: every knob of the daemon, with its env var, flag, default and unit.
//!
//! Every setting has an environment variable and a command-line flag; the flag wins
//! (clap reads the env var only when the flag is absent). [`Config::from_args`] parses and
//! validates; any error is reported by `main` as `rhinobox: error: ...` with exit code 2.
//! [`Limits`] gathers every bound the server enforces, so that they live in one place.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

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

    /// Bind address; `:PORT` means all interfaces.
    #[arg(long, env = "RHINOBOX_ADDR", default_value = ":8090")]
    pub addr: String,

    /// Storage root (holds storage/ and metadata/).
    #[arg(long, env = "RHINOBOX_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Largest request body in MiB; larger bodies get 413.
    #[arg(long, env = "RHINOBOX_MAX_UPLOAD_MB", default_value = "512")]
    pub max_upload_mb: String,

    /// Number of pinned io runtimes (threads); 0 = one per CPU core.
    #[arg(long, env = "RHINOBOX_WORKERS", default_value = "0")]
    pub workers: String,

    /// Files in flight over all requests (job slots); a full queue pauses reading bodies
    /// and answers 503 after 5 s without a free slot.
    #[arg(long, env = "RHINOBOX_QUEUE_CAPACITY", default_value = "10000")]
    pub queue_capacity: String,

    /// `none` (page cache only) or `batch` (group commit: data, directory and journal
    /// synced before the reply).
    #[arg(long, env = "RHINOBOX_DURABILITY", default_value = "batch")]
    pub durability: String,

    /// When set, every endpoint but /healthz needs `Authorization: Bearer <token>`.
    #[arg(long, env = "RHINOBOX_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// `auto`, `uring` (io_uring, registered buffers) or `threads` (blocking I/O pool).
    #[arg(long, env = "RHINOBOX_IO_ENGINE", default_value = "auto")]
    pub io_engine: String,

    /// Seconds to finish in-flight requests after SIGTERM/SIGINT before exiting.
    #[arg(long, env = "RHINOBOX_SHUTDOWN_TIMEOUT_S", default_value = "30")]
    pub shutdown_timeout_s: String,

    /// Most concurrent client connections; further connections wait in the kernel backlog.
    #[arg(long, env = "RHINOBOX_MAX_CONNECTIONS", default_value = "4096")]
    pub max_connections: String,

    /// Most parts (files and fields) in one multipart request; more gets 400.
    #[arg(long, env = "RHINOBOX_MAX_PARTS", default_value = "10000")]
    pub max_parts: String,

    /// Files at least this large (KiB) are written with O_DIRECT from aligned registered
    /// buffers; smaller ones through the page cache.
    #[arg(long, env = "RHINOBOX_DIRECT_IO_MIN_KB", default_value = "1024")]
    pub direct_io_min_kb: String,
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
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub workers: usize,
    pub durability: Durability,
    pub io_engine: IoEngine,
    pub api_token: Option<String>,
    pub limits: Limits,
}

/// A configuration error: names the setting and what was wrong.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn parse_number<T: std::str::FromStr>(value: &str, setting: &str) -> Result<T, ConfigError> {
    value.trim().parse::<T>().map_err(|_| {
        ConfigError(format!(
            "{setting}: expected a non-negative integer, got {value:?}"
        ))
    })
}

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

/// Parses `:PORT`, `HOST:PORT` or `[V6]:PORT` into one socket address.
pub fn parse_addr(value: &str) -> Result<SocketAddr, ConfigError> {
    let bad = || {
        ConfigError(format!(
            "RHINOBOX_ADDR/--addr: cannot parse address {value:?}"
        ))
    };
    let full = if value.starts_with(':') {
        format!("0.0.0.0{value}")
    } else {
        value.to_string()
    };
    if let Ok(addr) = full.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // Host names such as `localhost:8090` resolve through the system resolver.
    let (_, port) = full.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    full.to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

impl Config {
    /// Parses the command line (and env vars) into a validated configuration.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let upload_mb: u64 = parse_number(
            &args.max_upload_mb,
            "RHINOBOX_MAX_UPLOAD_MB/--max-upload-mb",
        )?;
        let workers: usize = parse_number(&args.workers, "RHINOBOX_WORKERS/--workers")?;
        let queue: usize = parse_number(
            &args.queue_capacity,
            "RHINOBOX_QUEUE_CAPACITY/--queue-capacity",
        )?;
        let shutdown_s: u64 = parse_number(
            &args.shutdown_timeout_s,
            "RHINOBOX_SHUTDOWN_TIMEOUT_S/--shutdown-timeout-s",
        )?;
        let connections: usize = parse_number(
            &args.max_connections,
            "RHINOBOX_MAX_CONNECTIONS/--max-connections",
        )?;
        let parts: usize = parse_number(&args.max_parts, "RHINOBOX_MAX_PARTS/--max-parts")?;
        let direct_kb: u64 = parse_number(
            &args.direct_io_min_kb,
            "RHINOBOX_DIRECT_IO_MIN_KB/--direct-io-min-kb",
        )?;
        let durability = parse_enum(&args.durability, "RHINOBOX_DURABILITY/--durability")?;
        let io_engine = parse_enum(&args.io_engine, "RHINOBOX_IO_ENGINE/--io-engine")?;
        let addr = parse_addr(&args.addr)?;
        if upload_mb == 0 {
            return Err(ConfigError(
                "RHINOBOX_MAX_UPLOAD_MB/--max-upload-mb: must be at least 1".into(),
            ));
        }
        if queue == 0 {
            return Err(ConfigError(
                "RHINOBOX_QUEUE_CAPACITY/--queue-capacity: must be at least 1".into(),
            ));
        }
        if connections == 0 || parts == 0 {
            return Err(ConfigError(
                "RHINOBOX_MAX_CONNECTIONS and RHINOBOX_MAX_PARTS must be at least 1".into(),
            ));
        }
        let cores = core_affinity::get_core_ids()
            .map(|c| c.len())
            .unwrap_or(1)
            .max(1);
        let workers = if workers == 0 { cores } else { workers };
        if workers > 1024 {
            return Err(ConfigError(format!(
                "RHINOBOX_WORKERS/--workers: {workers} is more than 1024"
            )));
        }
        let token = args.api_token.filter(|t| !t.is_empty());
        let limits = Limits {
            upload_size_bytes_max: upload_mb.saturating_mul(1024 * 1024),
            parts_per_request_max: parts,
            jobs_in_flight_max: queue,
            job_slot_wait_max: Duration::from_secs(5),
            connections_max: connections,
            header_size_bytes_max: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            field_size_bytes_max: 64 * 1024,
            multipart_preamble_bytes_max: 16 * 1024,
            part_head_bytes_max: 16 * 1024,
            part_headers_max: 16,
            file_name_bytes_max: 4096,
            shutdown_timeout: Duration::from_secs(shutdown_s),
            io_small_buffer_bytes: 64 * 1024,
            io_small_buffers_per_core: 32,
            io_large_buffer_bytes: 1024 * 1024,
            io_large_buffers_per_core: 4,
            direct_io_bytes_min: direct_kb.saturating_mul(1024),
            io_threads_per_core: 16,
            io_buffer_wait_max: Duration::from_secs(5),
            io_buffer_hold_max: Duration::from_millis(100),
            memory_files_bytes_per_core_max: 32 * 1024 * 1024,
        };
        Ok(Config {
            addr,
            data_dir: args.data_dir,
            workers,
            durability,
            io_engine,
            api_token: token,
            limits,
        })
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
            "0.0.0.0:8090".parse().unwrap()
        );
        assert_eq!(
            parse_addr("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(parse_addr("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert!(parse_addr("nonsense").is_err());
        assert!(parse_addr(":99999").is_err());
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
