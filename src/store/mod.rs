//! The store: on-disk layout, dedup index, journal, durability and the io engines, and
//! the only module that changes them ([`protocol`]: put and delete; [`object_protocol`]:
//! the same for S3 buckets and objects).
//!
//! ```text
//! <data>/storage/<media_type>/<subtype>/[<category>/]<hash12>_<name>.<ext>
//!                               (a longer hash prefix when the name was taken)
//! <data>/storage/.tmp/          files being received; emptied at start
//! <data>/storage/.objects/<hh>/<hash>  S3 object content, one file per BLAKE3
//! <data>/metadata/journal.ndjson append-only log: put, delete and place-intent lines;
//!                               bucket, object, object_delete and blob intents (S3)
//! <data>/metadata/journal.synced the last completed sync point (torn tail vs damage)
//! <data>/metadata/journal-tail-<secs>.torn  bytes cut from a torn tail, kept
//! <data>/.lock                  flock held by the one daemon that owns this data dir
//! ```
//!
//! Two sides behind the protocols: the [`metadata`] side (the [`index`] — dedup, claims,
//! leases, listings — and the [`journal`] it is rebuilt from) and the [`blobs`] side (the
//! tree of stored files and `.tmp`). [`protocol`] is the only code that drives both, in
//! the order its safety argument gives, around one [`durability`] barrier (group commit
//! on the journal and every data file system). Each side names what another backend
//! (PostgreSQL, an S3-compatible cluster) has to provide to take its place.
//!
//! Pipeline of the store: [`Store::open`] takes the data dir lock and runs
//! [`recovery`] (sync, replay, clean up after the last run, [`compaction`]); then
//! [`protocol`] serves puts and deletes, with file I/O through the core's [`io`] engine
//! and `.tmp` guarded by [`tmp`]. [`failpoint`] injects errors in test builds.
//! Downloads open stored files beneath [`blobs::Blobs::root`] (`storage/`, opened once)
//! with [`beneath::open_beneath`], which follows no symbolic link below `storage/`.
//! [`audit`] is the offline side: `rhinobox verify` and `rhinobox repair`.

pub mod audit;
pub mod beneath;
pub mod blobs;
pub mod chronicle;
pub mod compaction;
pub mod durability;
pub mod failpoint;
pub mod index;
pub mod io;
pub mod journal;
pub mod metadata;
pub mod object_protocol;
pub mod objects;
pub mod protocol;
pub mod recovery;
pub mod stored;
pub mod tmp;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Durability;
use blobs::Blobs;
use durability::{GroupCommit, SyncUnavailable};
use index::Index;
use metadata::Metadata;

pub use protocol::{PutItem, Staged, StoreError, Stored};
pub use recovery::OpenReport;

/// Counters since start-up (metrics and /statistics).
#[derive(Default)]
pub struct Counters {
    pub files_ingested_total: AtomicU64,
    pub bytes_ingested_total: AtomicU64,
    pub duplicates_total: AtomicU64,
    pub bytes_deduplicated_total: AtomicU64,
}

pub struct Store {
    pub data_dir: PathBuf,
    /// What is stored: the index and the journal.
    pub metadata: Metadata,
    /// The stored bytes: the tree under `storage/` and `.tmp`.
    pub blobs: Blobs,
    pub durability: Durability,
    pub group_commit: GroupCommit,
    /// One directory per distinct file system of the data dir (synced at shutdown).
    sync_targets: Vec<File>,
    pub counters: Counters,
    /// Cluster mode (SPEC §8): records in PostgreSQL, bytes in an S3 cluster; puts,
    /// deletes and reads go there, and this node's own tree holds only `.tmp`.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Held for the life of the process: one daemon per data dir.
    _lock: File,
}

/// Why the store could not open; each names what to fix.
#[derive(Debug)]
pub struct OpenError(pub String);

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Store {
    /// Opens the data dir: lock, sync, replay, recovery (`store::recovery`), then starts
    /// the sync thread.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<(Store, OpenReport), OpenError> {
        let storage_dir = data_dir.join("storage");
        let tmp_dir = storage_dir.join(".tmp");
        let metadata_dir = data_dir.join("metadata");
        for dir in [data_dir, &storage_dir, &tmp_dir, &metadata_dir] {
            std::fs::create_dir_all(dir).map_err(|e| create_dir_error(dir, e))?;
        }
        let lock = lock_data_dir(data_dir)?;
        let storage_root = open_directory(&storage_dir)?;
        let sync_targets =
            durability::distinct_file_systems(&[data_dir, &storage_dir, &tmp_dir, &metadata_dir])
                .map_err(|e| OpenError(format!("cannot open the data dir to sync it: {e}")))?;
        let index = Index::new();
        let objects = objects::Objects::new();
        let recovered = recovery::recover(
            &recovery::Layout {
                data_dir,
                storage_root: &storage_root,
                tmp_dir: &tmp_dir,
                journal_path: &metadata_dir.join("journal.ndjson"),
            },
            &index,
            &objects,
            &sync_targets,
            durability,
        )?;
        let journal = Arc::new(recovered.journal);
        let group_commit = GroupCommit::start(
            durability::distinct_file_systems(&[data_dir, &storage_dir, &tmp_dir, &metadata_dir])
                .map_err(|e| OpenError(format!("cannot open the data dir to sync it: {e}")))?,
            journal.clone(),
        )
        .map_err(|e| OpenError(format!("cannot start the sync thread: {e}")))?;
        let store = Store {
            data_dir: data_dir.to_path_buf(),
            metadata: Metadata::new(index, objects, journal),
            blobs: Blobs::new(data_dir, storage_dir, tmp_dir, storage_root),
            durability,
            group_commit,
            sync_targets,
            counters: Counters::default(),
            cluster: None,
            _lock: lock,
        };
        Ok((store, recovered.report))
    }

    /// Waits until writes done so far are on stable storage (durability `batch`).
    pub async fn make_durable(&self) -> Result<(), SyncUnavailable> {
        if self.durability == Durability::Batch {
            self.group_commit.barrier().await?;
        }
        Ok(())
    }

    /// Final flush at shutdown, whatever the durability mode: the journal, every file
    /// system of the data dir, and the sync marker.
    pub fn sync_at_exit(&self) -> std::io::Result<()> {
        let journal = self.metadata.journal();
        journal.sync()?;
        let point = journal.sync_point();
        durability::sync_all(&self.sync_targets)?;
        journal.record_clean_stop(point)
    }

    pub fn count_ingested(&self, bytes: u64) {
        self.counters
            .files_ingested_total
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_ingested_total
            .fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn count_duplicate(&self, bytes: u64) {
        self.counters
            .duplicates_total
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_deduplicated_total
            .fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Names the data dir setting and the fix: `File exists` alone does not say that the
/// path given (or one inside it) is a regular file.
fn create_dir_error(dir: &Path, e: std::io::Error) -> OpenError {
    let exists_as_file = dir.exists() && !dir.is_dir();
    OpenError(if exists_as_file {
        format!(
            "RHINOBOX_DATA_DIR/--data-dir: {} exists and is not a directory; give the path of \
             a directory (it is created when missing)",
            dir.display()
        )
    } else {
        format!(
            "RHINOBOX_DATA_DIR/--data-dir: cannot create {}: {e}; give a path where this user \
             can create directories",
            dir.display()
        )
    })
}

fn lock_data_dir(data_dir: &Path) -> Result<File, OpenError> {
    let path = data_dir.join(".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            OpenError(format!(
                "RHINOBOX_DATA_DIR/--data-dir: {} is not writable: {e}",
                data_dir.display()
            ))
        })?;
    // SAFETY: flock on a descriptor we own; it touches no user memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(OpenError(format!(
            "RHINOBOX_DATA_DIR/--data-dir: {} is in use by another rhinobox process",
            data_dir.display()
        )));
    }
    Ok(file)
}
fn open_directory(dir: &Path) -> Result<File, OpenError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| OpenError(format!("cannot open {}: {e}", dir.display())))
}
