//! rhinobox: a media ingest storage daemon on io_uring.
//!
//! # Layout
//!
//! Data flows one way, and the modules read like the pipeline:
//!
//! - [`config`]: every knob (env var, flag, default, unit) and the [`config::Limits`].
//! - [`server`]: the front acceptor, one pinned runtime per core, HTTP routing, shutdown.
//! - [`ingest`]: multipart stream → sniff → hash → stage in memory or `.tmp` → commit
//!   (builds the records, calls the store's put).
//! - [`store`]: the put and delete protocols (`store::protocol`; for S3 buckets and
//!   objects `store::object_protocol`) over two sides — the metadata side
//!   (`store::metadata`: the dedup index, the S3 objects of `store::objects`, and the
//!   journal) and the blob side (`store::blobs`: the tree under `storage/`, `.objects`,
//!   `.tmp`) — with the io engines (uring | threads), start-up recovery and compaction,
//!   group commit (durability); [`store::audit`] is the offline `rhinobox verify` /
//!   `rhinobox repair`.
//! - [`api`]: errors as JSON, read/manage endpoints, metrics.
//! - [`s3`]: the S3-compatible API on a second listener (s3s: SigV4, XML), served by the
//!   same cores: bodies received through the ingest path with their digests checked
//!   (`s3::receive`), multipart uploads (`s3::multipart`, `s3::tree_hash`), user buckets
//!   on the store's object protocol, and the read-only bucket `media` over the native
//!   store.
//! - [`web`]: the web page at `/` (embedded HTML, CSS, JavaScript on the public API).
//! - [`client`]: a small blocking HTTP/1.1 client, multipart encoder and media payload
//!   generator shared by the benchmark harness and the integration tests.

/// One line on stderr, the daemon's log. Unlike `eprintln!`, a failing stderr (a full
/// disk behind it, a closed pipe) is ignored instead of panicking: a log line must never
/// take a request, or the fail-stop path, down with it.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod api;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod config;
pub mod ingest;
pub mod s3;
pub mod server;
pub mod store;
pub mod web;
