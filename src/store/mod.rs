//! The store: on-disk layout, dedup index, journal, durability and the io engines.
//!
//! ```text
//! <data>/storage/<media_type>/<subtype>/[<category>/]<hash12>_<name>.<ext>
//! <data>/storage/.tmp/          files being received; emptied at start
//! <data>/metadata/journal.ndjson append-only log, one record per stored file or delete
//! <data>/.lock                  flock held by the one daemon that owns this data dir
//! ```
//!
//! [`Store::open`] takes the data dir lock, empties `.tmp`, replays the journal into the
//! index and starts the group-commit thread. Everything here is shared by all cores.
//! [`audit`] is the offline side: `rhinobox verify` and `rhinobox repair`.

pub mod audit;
pub mod chronicle;
pub mod durability;
pub mod index;
pub mod io;
pub mod journal;
pub mod stored;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashSet;

use crate::config::Durability;
use durability::GroupCommit;
use index::{Index, parse_hash};
use journal::{EntryView, Journal};

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
    pub journal: Journal,
    pub durability: Durability,
    pub group_commit: GroupCommit,
    pub counters: Counters,
    /// Directories known to exist under storage/ (saves a mkdir per file).
    known_dirs: DashSet<PathBuf>,
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

/// What start-up found, for the start-up log line.
pub struct OpenReport {
    pub records_replayed: usize,
    pub torn_tail_bytes: u64,
    pub tmp_files_removed: usize,
}

impl Store {
    pub fn open(data_dir: &Path, durability: Durability) -> Result<(Store, OpenReport), OpenError> {
        let storage_dir = data_dir.join("storage");
        let tmp_dir = storage_dir.join(".tmp");
        let metadata_dir = data_dir.join("metadata");
        for dir in [data_dir, &storage_dir, &tmp_dir, &metadata_dir] {
            std::fs::create_dir_all(dir).map_err(|e| {
                OpenError(format!(
                    "RHINOBOX_DATA_DIR/--data-dir: cannot create {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let lock = lock_data_dir(data_dir)?;
        let tmp_files_removed = empty_dir(&tmp_dir)
            .map_err(|e| OpenError(format!("cannot empty {}: {e}", tmp_dir.display())))?;
        let index = Index::new();
        let journal_path = metadata_dir.join("journal.ndjson");
        let (journal, replay) = Journal::open(&journal_path, |entry| apply(&index, entry))
            .map_err(|e| OpenError(format!("{}: {e}", journal_path.display())))?;
        let records_replayed = replay.records;
        let group_commit = GroupCommit::start(data_dir)
            .map_err(|e| OpenError(format!("cannot start the sync thread: {e}")))?;
        let store = Store {
            data_dir: data_dir.to_path_buf(),
            storage_dir,
            tmp_dir,
            index,
            journal,
            durability,
            group_commit,
            counters: Counters::default(),
            known_dirs: DashSet::new(),
            _lock: lock,
        };
        let report = OpenReport {
            records_replayed,
            torn_tail_bytes: replay.torn_tail_bytes,
            tmp_files_removed,
        };
        Ok((store, report))
    }

    /// Absolute path of a record path (`storage/...`, relative to the data dir).
    pub fn absolute(&self, relative: &str) -> PathBuf {
        self.data_dir.join(relative)
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
    pub async fn make_durable(&self) {
        if self.durability == Durability::Batch {
            self.group_commit.barrier().await;
        }
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

fn apply(index: &Index, entry: EntryView<'_>) {
    match entry {
        EntryView::Put(record) => {
            let inserted = parse_hash(&record.hash).and_then(|hash| index.insert(&hash, &record));
            if inserted.is_none() {
                eprintln!(
                    "rhinobox: warning: journal record for {:?} has an unreadable hash or time; skipped",
                    record.path
                );
            }
        }
        EntryView::Place { .. } => {}
        EntryView::Delete { hash, .. } => {
            if let Some(hash) = parse_hash(&hash) {
                index.remove(&hash);
            }
        }
    }
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

fn empty_dir(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
        removed += 1;
    }
    Ok(removed)
}
