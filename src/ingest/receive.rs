//! Receiving one file: chunks → BLAKE3 + sniff head + write into `storage/.tmp/`.
//!
//! A file holds one job slot (SPEC §3 back-pressure) from its first byte until its tmp
//! file is written and closed. The last write and the close run as a task of their own,
//! so the parser moves on to the next part while the disk work finishes; the commit waits
//! for every such task first. The request's [`TmpFiles`] guard knows every tmp path before
//! the file can exist, so a failed or cancelled request leaves nothing in `.tmp`.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use tokio::task::JoinHandle;

use super::IngestContext;
use super::sniff::{self, Detected, SNIFF_BYTES};
use crate::api::errors::ApiError;

/// A file received in full; its tmp file is complete once `written` resolves.
#[derive(Debug)]
pub struct ReceivedFile {
    pub tmp_path: PathBuf,
    pub hash: [u8; 32],
    pub size: u64,
    pub detected: Detected,
    pub original_name: String,
    /// The task doing the last write and close of the tmp file.
    pub written: Option<JoinHandle<std::io::Result<u64>>>,
}

/// Where a file's bytes come from (a multipart part or a raw request body).
/// Used only on one core's local executor, so the future needs no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait ChunkSource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError>;
}

/// Tmp files of one request; removed on drop unless the request committed them.
///
/// A write task still running at drop time sees `cancelled` when it ends and removes its
/// own file, so no tmp file outlives a failed request whatever the interleaving.
pub struct TmpFiles {
    paths: Vec<PathBuf>,
    cancelled: Rc<Cell<bool>>,
}

impl TmpFiles {
    pub fn new() -> TmpFiles {
        TmpFiles {
            paths: Vec::new(),
            cancelled: Rc::new(Cell::new(false)),
        }
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
        if self.paths.is_empty() {
            return;
        }
        self.cancelled.set(true);
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
    let slot = acquire_job_slot(ctx).await?;
    let tmp_path = ctx.next_tmp_path();
    tmp_files.paths.push(tmp_path.clone());
    let mut writer = ctx.io.create_tmp(tmp_path.clone());
    let mut hasher = blake3::Hasher::new();
    let mut head: Vec<u8> = Vec::new();
    let mut size = 0u64;
    while let Some(chunk) = source.next_chunk().await? {
        hasher.update(&chunk);
        if head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        size += chunk.len() as u64;
        writer
            .write(&chunk)
            .await
            .map_err(|e| ApiError::storage("cannot write tmp file", &e))?;
    }
    let cancelled = tmp_files.cancelled.clone();
    let path = tmp_path.clone();
    let written = tokio::task::spawn_local(async move {
        let result = writer.finish().await;
        if cancelled.get() {
            let _ = std::fs::remove_file(&path);
        }
        drop(slot);
        result
    });
    let detected = sniff::detect(&head, part_content_type.as_deref(), &original_name);
    Ok(ReceivedFile {
        tmp_path,
        hash: *hasher.finalize().as_bytes(),
        size,
        detected,
        original_name,
        written: Some(written),
    })
}

/// Waits for the tmp files of a request to be complete; checks their sizes.
pub async fn wait_written(files: &mut [ReceivedFile]) -> Result<(), ApiError> {
    for file in files.iter_mut() {
        let Some(task) = file.written.take() else {
            continue;
        };
        let written = task
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| ApiError::storage("cannot write tmp file", &e))?;
        // Invariant: the bytes on disk are the bytes hashed.
        assert_eq!(
            written, file.size,
            "tmp file size differs from bytes received"
        );
    }
    Ok(())
}

async fn acquire_job_slot(
    ctx: &IngestContext,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let slots: Arc<tokio::sync::Semaphore> = ctx.job_slots.clone();
    match tokio::time::timeout(ctx.limits.job_slot_wait_max, slots.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) => Err(ApiError::overloaded("shutting down")),
        Err(_) => Err(ApiError::overloaded(format!(
            "overloaded: no job slot free within {} s (queue capacity {})",
            ctx.limits.job_slot_wait_max.as_secs(),
            ctx.limits.jobs_in_flight_max
        ))),
    }
}
