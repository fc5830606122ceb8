//! Receiving one file: chunks → BLAKE3 + sniff head → memory or a file in `storage/.tmp/`.
//!
//! A file holds one job slot (back-pressure) from its first byte until it is in
//! memory or its tmp file is written and closed.
//!
//! Shared resources are held only while bytes flow:
//! - chunks are first *staged* in memory (the chunks themselves, no copy) until a small
//!   io buffer's worth has arrived or the file ends; only then is a writer started, and it
//!   takes an io buffer to copy them into;
//! - while the writer holds a buffer and the client sends nothing for
//!   [`Limits::io_buffer_hold_max`], the buffer is written out and given back, and staging
//!   starts again. A trickling upload therefore holds at most one small buffer's worth of
//!   its own memory and no io buffer.
//!
//! A file that ends while still staged stays in memory (a [`MemoryLease`] on the core's
//! budget for such files) until the commit, which writes it only when its content is new:
//! duplicates never touch the disk, and a request refused before its end (a flood of tiny
//! parts, a bad part, a client gone) wrote nothing and leaves nothing to clean up. When the
//! budget is spent, the file goes through `.tmp` at once, as a large one does.
//!
//! The last write and the close of a tmp file run as a task of their own, so the parser
//! moves on to the next part while the disk work finishes; the commit waits for every such
//! task first. A caller may instead name a range of a file it owns ([`Destination::At`]:
//! a multipart part at its place); such a file is never the guard's to remove. The
//! request's [`TmpFiles`] guard knows every tmp path before the file can
//! exist, so a failed or cancelled request leaves nothing in `.tmp`; a handful are removed
//! before the reply, more on the [`Reaper`](crate::store::tmp::Reaper) thread, never stalling the core.
//!
//! [`Limits::io_buffer_hold_max`]: crate::config::Limits::io_buffer_hold_max

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
use crate::store::io::FileWriter;
pub use crate::store::tmp::TmpFiles;

/// Where a received file's bytes are until the commit places them.
#[derive(Debug)]
pub enum Content {
    /// In memory (a small file): written to a tmp file at commit when its content is new.
    Memory {
        chunks: Vec<Bytes>,
        _lease: MemoryLease,
    },
    /// In a tmp file, complete once `written` resolves; renamed at commit.
    Tmp {
        path: PathBuf,
        written: Option<JoinHandle<std::io::Result<u64>>>,
    },
    /// At an offset in a file the caller owns ([`Destination::At`]), complete once
    /// `written` resolves.
    At {
        path: PathBuf,
        offset: u64,
        written: Option<JoinHandle<std::io::Result<u64>>>,
    },
}

/// Where a received file's bytes go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A small file stays in memory (while the core's budget allows), a large one goes to
    /// a new tmp file of its own, registered with the request's [`TmpFiles`]: the native
    /// ingest and S3 PutObject.
    OwnTmp,
    /// From `offset` on in the file at `path`, which others write too (a multipart
    /// upload's assembly file, see `s3::multipart`). Never kept in memory, whatever its
    /// size: the caller asked for the bytes at their place, and writing a short body there
    /// at once is simpler than writing it from memory later. The file is not the
    /// request's: the [`TmpFiles`] guard does not know it and a failure leaves it (with
    /// garbage in the range) to its owner.
    At { path: PathBuf, offset: u64 },
}

/// A file received in full.
#[derive(Debug)]
pub struct ReceivedFile {
    pub hash: [u8; 32],
    pub size: u64,
    pub detected: Detected,
    pub original_name: String,
    pub content: Content,
}

/// Where a file's bytes come from (a multipart part or a raw request body).
/// Used only on one core's local executor, so the future needs no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait ChunkSource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError>;
}

/// The core's budget for files kept in memory until commit (bytes, per core).
#[derive(Debug)]
pub struct MemoryBudget {
    in_use_bytes: Cell<usize>,
    max_bytes: usize,
}

impl MemoryBudget {
    pub fn new(max_bytes: usize) -> Rc<MemoryBudget> {
        Rc::new(MemoryBudget {
            in_use_bytes: Cell::new(0),
            max_bytes,
        })
    }

    /// A lease of `bytes`, or `None` when the budget cannot hold them (never waits).
    pub fn try_lease(self: &Rc<Self>, bytes: usize) -> Option<MemoryLease> {
        let in_use = self.in_use_bytes.get();
        if in_use + bytes > self.max_bytes {
            return None;
        }
        self.in_use_bytes.set(in_use + bytes);
        Some(MemoryLease {
            budget: self.clone(),
            bytes,
        })
    }

    pub fn in_use_bytes(&self) -> usize {
        self.in_use_bytes.get()
    }
}

/// Bytes of a [`MemoryBudget`] held by one in-memory file; returned on drop.
#[derive(Debug)]
pub struct MemoryLease {
    budget: Rc<MemoryBudget>,
    bytes: usize,
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        let budget = &self.budget;
        budget
            .in_use_bytes
            .set(budget.in_use_bytes.get() - self.bytes);
    }
}

/// Chunks waiting for a writer (no io buffer held meanwhile).
#[derive(Default)]
struct Staged {
    chunks: Vec<Bytes>,
    bytes: usize,
}

impl Staged {
    async fn write_into(&mut self, writer: &mut FileWriter) -> std::io::Result<()> {
        for chunk in self.chunks.drain(..) {
            writer.write(&chunk).await?;
        }
        self.bytes = 0;
        Ok(())
    }
}

/// The next chunk; when it keeps the writer's io buffer waiting longer than the hold
/// limit, the buffer is written out and given back first.
async fn next_chunk_releasing(
    ctx: &IngestContext,
    source: &mut impl ChunkSource,
    writer: Option<&mut FileWriter>,
) -> Result<Option<Bytes>, ApiError> {
    let Some((writer, taken_at)) =
        writer.and_then(|w| w.buffer_taken_at().map(|taken_at| (w, taken_at)))
    else {
        return source.next_chunk().await;
    };
    let next = source.next_chunk();
    tokio::pin!(next);
    // A chunk already buffered needs no timer (the common case of a fast upload).
    if let Some(chunk) = futures_util::FutureExt::now_or_never(next.as_mut()) {
        return chunk;
    }
    let deadline = tokio::time::Instant::from_std(taken_at + ctx.limits.io_buffer_hold_max);
    tokio::select! {
        biased;
        chunk = &mut next => chunk,
        () = tokio::time::sleep_until(deadline) => {
            writer
                .release()
                .await
                .map_err(|e| ApiError::storage("cannot write tmp file", &e))?;
            next.await
        }
    }
}

/// What [`receive_file`] streamed in.
struct Streamed {
    hasher: blake3::Hasher,
    head: Vec<u8>,
    size: u64,
    staged: Staged,
    writer: Option<(PathBuf, FileWriter)>,
}

/// Streams one file in, hashing and sniffing it on the way, to `destination`.
pub async fn receive_file(
    ctx: &IngestContext,
    source: &mut impl ChunkSource,
    original_name: String,
    part_content_type: Option<String>,
    tmp_files: &mut TmpFiles,
    destination: &Destination,
) -> Result<ReceivedFile, ApiError> {
    let slot = acquire_job_slot(ctx).await?;
    let write_error = |e: std::io::Error| ApiError::storage("cannot write tmp file", &e);
    let mut streamed = Streamed {
        hasher: blake3::Hasher::new(),
        head: Vec::new(),
        size: 0,
        staged: Staged::default(),
        writer: None,
    };
    if let Err(e) = stream_in(ctx, source, tmp_files, destination, &mut streamed).await {
        // A file shared with other writers must see no write of this one after the
        // failure is reported: its owner may use the file as soon as this range is free.
        if let (Destination::At { .. }, Some((_, writer))) = (destination, streamed.writer) {
            writer.abandon().await;
        }
        return Err(e);
    }
    let Streamed {
        hasher,
        head,
        size,
        mut staged,
        writer,
    } = streamed;
    let detected = sniff::detect(&head, part_content_type.as_deref(), &original_name);
    let hash = *hasher.finalize().as_bytes();
    let lease = match (writer.as_ref(), destination) {
        (None, Destination::OwnTmp) => ctx.memory_files.try_lease(staged.bytes),
        _ => None,
    };
    let content = match (writer, lease) {
        (None, Some(lease)) => {
            drop(slot);
            Content::Memory {
                chunks: staged.chunks,
                _lease: lease,
            }
        }
        (writer, _) => {
            let (path, mut w) = writer.unwrap_or_else(|| start_writer(ctx, tmp_files, destination));
            if let Err(e) = staged.write_into(&mut w).await {
                if let Destination::At { .. } = destination {
                    w.abandon().await;
                }
                return Err(write_error(e));
            }
            let cancelled = tmp_files.cancelled();
            let owned = matches!(destination, Destination::OwnTmp);
            let task_path = path.clone();
            let written = tokio::task::spawn_local(async move {
                let result = w.finish().await;
                if owned && cancelled.get() {
                    let _ = std::fs::remove_file(&task_path);
                }
                drop(slot);
                result
            });
            match destination {
                Destination::OwnTmp => Content::Tmp {
                    path,
                    written: Some(written),
                },
                Destination::At { offset, .. } => Content::At {
                    path,
                    offset: *offset,
                    written: Some(written),
                },
            }
        }
    };
    Ok(ReceivedFile {
        hash,
        size,
        detected,
        original_name,
        content,
    })
}

/// The chunks of `source` into `streamed`: hashed, the head kept, staged in memory until
/// a small buffer's worth, then through a writer to `destination`.
async fn stream_in(
    ctx: &IngestContext,
    source: &mut impl ChunkSource,
    tmp_files: &mut TmpFiles,
    destination: &Destination,
    streamed: &mut Streamed,
) -> Result<(), ApiError> {
    let write_error = |e: std::io::Error| ApiError::storage("cannot write tmp file", &e);
    let stage_bytes_max = ctx.limits.io_small_buffer_bytes;
    let Streamed {
        hasher,
        head,
        size,
        staged,
        writer,
    } = streamed;
    while let Some(chunk) =
        next_chunk_releasing(ctx, source, writer.as_mut().map(|(_, w)| w)).await?
    {
        hasher.update(&chunk);
        if head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        *size += chunk.len() as u64;
        let holds_buffer = writer
            .as_ref()
            .is_some_and(|(_, w)| w.buffer_taken_at().is_some());
        if !holds_buffer && staged.bytes + chunk.len() <= stage_bytes_max {
            staged.bytes += chunk.len();
            staged.chunks.push(chunk);
            continue;
        }
        let (_, w) = writer.get_or_insert_with(|| start_writer(ctx, tmp_files, destination));
        staged.write_into(w).await.map_err(write_error)?;
        w.write(&chunk).await.map_err(write_error)?;
    }
    Ok(())
}

/// A writer to `destination`; a new tmp path is registered with `tmp_files` first.
fn start_writer(
    ctx: &IngestContext,
    tmp_files: &mut TmpFiles,
    destination: &Destination,
) -> (PathBuf, FileWriter) {
    match destination {
        Destination::OwnTmp => {
            let path = ctx.next_tmp_path();
            tmp_files.add(path.clone());
            let writer = ctx.io.create_new(path.clone());
            (path, writer)
        }
        Destination::At { path, offset } => (path.clone(), ctx.io.write_at(path.clone(), *offset)),
    }
}

/// Waits for the tmp files of a request to be complete; checks their sizes.
pub async fn wait_written(files: &mut [ReceivedFile]) -> Result<(), ApiError> {
    for file in files.iter_mut() {
        let written = match &mut file.content {
            Content::Tmp { written, .. } | Content::At { written, .. } => written,
            Content::Memory { .. } => continue,
        };
        let Some(task) = written.take() else {
            continue;
        };
        let written = task
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| ApiError::storage("cannot write tmp file", &e))?;
        // Invariant: the bytes on disk are the bytes hashed (writers count the bytes they
        // wrote, not the offset they ended at, so this holds for `Content::At` too).
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
