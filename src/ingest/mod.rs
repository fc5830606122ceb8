//! Ingest: the request handlers of `POST /ingest/media` and `PUT /ingest/media/{name}`.
//!
//! Pipeline, one module per stage, data flowing one way:
//! [`request`] (the body, bounded in size and idle time) → [`multipart`] (the form's
//! framing, sans IO) → [`receive`] (per file: BLAKE3, sniff head, memory or `.tmp` through
//! the core's io engine) → [`sniff`] (MIME and media type) → [`naming`] (decoded and
//! sanitized names) → [`commit`] (dedup, final names, journal, sync).

pub mod commit;
pub mod multipart;
pub mod naming;
pub mod receive;
pub mod request;
pub mod sniff;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::store::Store;
use crate::store::io::CoreIo;
use crate::store::tmp::Reaper;
use receive::MemoryBudget;

/// Per-core counters shown by /stats (written by the core, read by any core).
#[derive(Default)]
pub struct CoreCounters {
    /// Files newly stored by this core since start.
    pub files: std::sync::atomic::AtomicU64,
}

/// Everything a core's ingest handlers need. One per core runtime (!Send).
pub struct IngestContext {
    pub core_id: usize,
    pub store: Arc<Store>,
    pub io: CoreIo,
    pub limits: Arc<Limits>,
    /// Job slots, shared by all cores: bounds files in flight.
    pub job_slots: Arc<Semaphore>,
    pub stats: Arc<CoreCounters>,
    /// Small files kept in memory until commit, bounded per core.
    pub memory_files: Rc<MemoryBudget>,
    /// Removes the tmp files of failed requests off the core.
    pub reaper: Reaper,
}

impl IngestContext {
    pub fn new(
        core_id: usize,
        store: Arc<Store>,
        io: CoreIo,
        limits: Arc<Limits>,
        job_slots: Arc<Semaphore>,
        stats: Arc<CoreCounters>,
        reaper: Reaper,
    ) -> IngestContext {
        IngestContext {
            core_id,
            store,
            io,
            memory_files: MemoryBudget::new(limits.memory_files_bytes_per_core_max),
            limits,
            job_slots,
            stats,
            reaper,
        }
    }

    /// A tmp path unique within this process.
    pub fn next_tmp_path(&self) -> PathBuf {
        self.store.blobs.next_tmp_path()
    }
}
