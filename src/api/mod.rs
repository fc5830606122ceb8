//! The API surface beside ingest: errors as JSON, metrics, and the read/manage endpoints.

pub mod errors;
pub mod metrics;
