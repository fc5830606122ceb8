//! Receiving one file: chunks → BLAKE3 + sniff head + write into `storage/.tmp/`.
//!
//! A file holds one job slot (SPEC §3 back-pressure) while it streams; the slot is freed
//! as soon as the file is in `.tmp`. The tmp path is registered with the request's
//! [`TmpFiles`] guard before the first byte is written, so any failure or cancellation
//! removes it.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;

use super::IngestContext;
use super::sniff::{self, Detected, SNIFF_BYTES};
use crate::api::errors::ApiError;

/// A file fully written into `.tmp`, not yet committed.
#[derive(Debug)]
pub struct ReceivedFile {
    pub tmp_path: PathBuf,
    pub hash: [u8; 32],
    pub size: u64,
    pub detected: Detected,
    pub original_name: String,
}

/// Where a file's bytes come from (a multipart part or a raw request body).
/// Used only on one core's local executor, so the future needs no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait ChunkSource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError>;
}

/// Tmp files of one request; removed on drop unless the request committed them.
pub struct TmpFiles {
    paths: Vec<PathBuf>,
}

impl TmpFiles {
    pub fn new() -> TmpFiles {
        TmpFiles { paths: Vec::new() }
    }

    fn add(&mut self, path: PathBuf) {
        self.paths.push(path);
    }

    /// The files were renamed or removed by the commit: nothing left to clean.
    pub fn disarm(&mut self) {
        self.paths.clear();
    }
}

impl Default for TmpFiles {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TmpFiles {
    fn drop(&mut self) {
        // Rare path (failed or cancelled request): a blocking unlink is fine here.
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Streams one file into `.tmp`, hashing and sniffing it on the way.
pub async fn receive_file(
    ctx: &IngestContext,
    source: &mut impl ChunkSource,
    original_name: String,
    part_content_type: Option<String>,
    tmp_files: &mut TmpFiles,
) -> Result<ReceivedFile, ApiError> {
    let _slot = acquire_job_slot(ctx).await?;
    let tmp_path = ctx.next_tmp_path();
    let mut writer = ctx
        .io
        .create_tmp(tmp_path.clone())
        .await
        .map_err(|e| ApiError::storage("cannot create tmp file", &e))?;
    tmp_files.add(tmp_path.clone());
    let mut hasher = blake3::Hasher::new();
    let mut head: Vec<u8> = Vec::new();
    while let Some(chunk) = source.next_chunk().await? {
        hasher.update(&chunk);
        if head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        writer
            .write(&chunk)
            .await
            .map_err(|e| ApiError::storage("cannot write tmp file", &e))?;
    }
    let size = writer
        .finish()
        .await
        .map_err(|e| ApiError::storage("cannot write tmp file", &e))?;
    let detected = sniff::detect(&head, part_content_type.as_deref(), &original_name);
    Ok(ReceivedFile {
        tmp_path,
        hash: *hasher.finalize().as_bytes(),
        size,
        detected,
        original_name,
    })
}

async fn acquire_job_slot(
    ctx: &IngestContext,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let slots: Arc<tokio::sync::Semaphore> = ctx.job_slots.clone();
    match tokio::time::timeout(ctx.limits.job_slot_wait_max, slots.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) => Err(ApiError::overloaded("shutting down")),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "overloaded: no job slot free within {} s (queue capacity {})",
                ctx.limits.job_slot_wait_max.as_secs(),
                ctx.limits.jobs_in_flight_max
            ),
        )),
    }
}
