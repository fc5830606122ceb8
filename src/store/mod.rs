//! The store: on-disk layout, dedup index, journal, durability and the io engines, and
//! the only module that changes them ([`protocol`]: put and delete).
//!
//! ```text
//! <data>/storage/<media_type>/<subtype>/[<category>/]<hash12>_<name>.<ext>
//!                               (a longer hash prefix when the name was taken)
//! <data>/storage/.tmp/          files being received; emptied at start
//! <data>/metadata/journal.ndjson append-only log: put, delete and place-intent lines
//! <data>/metadata/journal.synced the last completed sync point (torn tail vs damage)
//! <data>/metadata/journal-tail-<secs>.torn  bytes cut from a torn tail, kept
//! <data>/.lock                  flock held by the one daemon that owns this data dir
//! ```
//!
//! Pipeline of the store: [`Store::open`] takes the data dir lock and runs
//! [`recovery`] (sync, replay, clean up after the last run, [`compaction`]); then
//! [`protocol`] serves puts and deletes through the [`index`] (dedup, claims, leases),
//! the [`journal`] and [`durability`] (group commit on every data file system), with
//! file I/O through the core's [`io`] engine and `.tmp` guarded by [`tmp`].
//! [`failpoint`] injects errors in test builds.
//! Downloads open stored files beneath [`Store::storage_root`] (`storage/`, opened once)
//! with [`beneath::open_beneath`], which follows no symbolic link below `storage/`.
//! [`audit`] is the offline side: `rhinobox verify` and `rhinobox repair`.

pub mod audit;
pub mod beneath;
pub mod chronicle;
pub mod compaction;
pub mod durability;
pub mod failpoint;
pub mod index;
pub mod io;
pub mod journal;
pub mod protocol;
pub mod recovery;
pub mod stored;
pub mod tmp;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashSet;

use crate::config::Durability;
use durability::{GroupCommit, SyncUnavailable};
use index::Index;
use journal::Journal;

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
    pub storage_dir: PathBuf,
    pub tmp_dir: PathBuf,
    pub index: Index,
    journal: Arc<Journal>,
    pub durability: Durability,
    pub group_commit: GroupCommit,
    /// One directory per distinct file system of the data dir (synced at shutdown).
    sync_targets: Vec<File>,
    pub counters: Counters,
    /// `storage/` opened once as a directory: stored files are opened beneath it. It is
    /// `storage/` and not the data dir so that an operator may make `storage` itself a
    /// link to another disk; links below it are refused ([`beneath`]).
    pub(crate) storage_root: Arc<File>,
    /// Directories known to exist under storage/ (saves a mkdir per file).
    known_dirs: DashSet<PathBuf>,
    tmp_sequence: AtomicU64,
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
        let recovered = recovery::recover(
            &recovery::Layout {
                data_dir,
                storage_root: &storage_root,
                tmp_dir: &tmp_dir,
                journal_path: &metadata_dir.join("journal.ndjson"),
            },
            &index,
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
            storage_dir,
            tmp_dir,
            index,
            journal,
            durability,
            group_commit,
            sync_targets,
            counters: Counters::default(),
            storage_root: Arc::new(storage_root),
            known_dirs: DashSet::new(),
            tmp_sequence: AtomicU64::new(0),
            _lock: lock,
        };
        Ok((store, recovered.report))
    }

    /// Absolute path of a record path (`storage/...`, relative to the data dir).
    pub fn absolute(&self, relative: &str) -> PathBuf {
        self.data_dir.join(relative)
    }

    /// A tmp path unique within this process.
    pub fn next_tmp_path(&self) -> PathBuf {
        let n = self.tmp_sequence.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir.join(format!("{n}.part"))
    }

    /// `storage/`, open as a directory: the root for [`beneath::open_beneath`] of the
    /// part of a record path after `storage/`. Shared, so a blocking pool can hold it.
    pub fn storage_root(&self) -> &Arc<File> {
        &self.storage_root
    }

    /// True when `dir` was already created by this process.
    pub fn dir_known(&self, dir: &Path) -> bool {
        self.known_dirs.contains(dir)
    }

    /// The directory was found missing: the next file placed there creates it again.
    pub fn forget_dir(&self, dir: &Path) {
        self.known_dirs.remove(dir);
    }

    pub fn remember_dir(&self, dir: PathBuf) {
        // Bounded in practice by the number of categories in use.
        self.known_dirs.insert(dir);
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
        self.journal.sync()?;
        let point = self.journal.sync_point();
        durability::sync_all(&self.sync_targets)?;
        self.journal.record_clean_stop(point)
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
