//! The end-to-end benchmark harness behind `rhinobox-bench`.
//!
//! A load generator made of blocking client threads (one keep-alive connection each),
//! pointed at any server that speaks `POST /ingest/media` or plain `PUT`, or at a daemon
//! it starts itself on a fresh data dir so that it can read the daemon's memory and CPU
//! time from `/proc`. Everything a run sends is generated before the clock starts, and
//! every answer is checked against what was sent (status, one entry per file, BLAKE3).
//!
//! - [`target`]: base URLs, starting and stopping a daemon, `/proc` samples.
//! - [`workload`]: what a request carries: media payloads, sizes, duplicates.
//! - [`load`]: the closed-loop and open-loop (`--rate`) drivers and response checks.
//! - [`stats`]: latency percentiles.
//! - [`ceiling`]: the same file-system work without HTTP, the reference for "% of what
//!   the file system allows".
//! - [`index_scale`]: a journal of a million records written through the library, and
//!   the daemon's start-up time and memory on it.
//! - [`hostile`]: normal clients beside trickling uploads, searches over a large index,
//!   and connection floods.
//! - [`s3`]: PutObject, GetObject and multipart uploads through any S3 server, signed
//!   with the client's own SigV4.
//! - [`report`]: one result per run, the reference table (the Go RhinoBox's
//!   targets and figures), the targets table, JSON.
//! - [`scenarios`]: the suites that tie the rest together.

pub mod ceiling;
pub mod hostile;
pub mod index_scale;
pub mod load;
pub mod report;
pub mod s3;
pub mod scenarios;
pub mod stats;
pub mod target;
pub mod workload;
