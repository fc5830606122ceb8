//! Cluster mode (SPEC §8): metadata in PostgreSQL, blobs in an S3-compatible cluster.

pub mod blob_client;
