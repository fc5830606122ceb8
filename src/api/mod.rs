//! The API surface beside ingest: errors as JSON, metrics, and the read/manage endpoints.
//!
//! - [`files`]: `GET|HEAD /files/download` and `/files/stream` (bytes, ranges, 304s).
//! - [`manage`]: metadata, delete, list, search and statistics, answered from the index.

pub mod errors;
pub mod files;
pub mod manage;
pub mod metrics;
pub mod query;
pub mod scans;
