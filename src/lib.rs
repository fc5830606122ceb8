//! rhinobox: a media ingest storage daemon on io_uring.
//!
//! # Layout
//!
//! Data flows one way, and the modules read like the pipeline:
//!
//! - [`config`]: every knob (env var, flag, default, unit) and the [`config::Limits`].
//! - [`server`]: the front acceptor, one pinned runtime per core, HTTP routing, shutdown.
//! - [`ingest`]: multipart stream → sniff → hash → write to `.tmp` → dedup → commit → journal.
//! - [`store`]: on-disk layout, the io engines (uring | threads), the dedup index, the
//!   journal and its replay at start-up, group commit (durability); [`store::audit`] is
//!   the offline `rhinobox verify` / `rhinobox repair`.
//! - [`api`]: errors as JSON, read/manage endpoints, metrics.
//! - [`client`]: a small blocking HTTP/1.1 client, multipart encoder and media payload
//!   generator shared by the benchmark harness and the integration tests.

pub mod api;
pub mod bench;
pub mod client;
pub mod config;
pub mod ingest;
pub mod server;
pub mod store;
