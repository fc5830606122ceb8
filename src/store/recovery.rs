//! Start-up recovery: what the store does before it trusts anything it reads.
//!
//! 1. Sync every file system of the data dir: after a kill -9 the page cache still holds
//!    writes that never reached the disk; syncing first makes what is read below what a
//!    later power cut keeps.
//! 2. Replay the journal into the index. The sync marker (`journal.synced`) says up to
//!    where the journal was synced: a bad line before that point is damage and refuses
//!    the start (exit 2, pointing to `rhinobox repair`); from the first bad line after it
//!    the rest is a torn tail, cut with a warning after its bytes are set aside in
//!    `metadata/journal-tail-<unix seconds>.torn`.
//! 3. Empty `storage/.tmp/`.
//! 4. Re-check what was in flight: the operations logged at or after the marker's
//!    `resolved_before` (see `store::protocol`), and only those — the cost is bounded by
//!    the work in flight at the crash, not by the files stored:
//!    - a `place` intent whose file (under any hash-prefix length) exists without a
//!      record naming it: a stray from a put that never committed → removed;
//!    - a `delete` line whose file still exists and no record names: removed;
//!    - a `put` record whose file is missing, not of the recorded size or not of the
//!      recorded BLAKE3 (durability `none` after a power cut: the record reached the
//!      disk, the data did not — zeros under the right size) → the record is deleted
//!      with a `delete` line and what is left of the file removed.
//!
//!    Each removal is one warning line on stderr.
//!    With durability `none` after a stop that was not clean, the whole of `storage/` is
//!    walked for strays as well: without a sync between them, an intent and the rename
//!    after it reach the disk in any order (cost: the files stored).
//! 5. Sync again and record a marker with nothing in flight.
//! 6. Compact the journal when dead lines dominate it (`store::compaction`).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::OpenError;
use super::beneath;
use super::blobs::{NAME_PREFIX_HEX_LENGTHS, OBJECTS_DIR, below_storage, object_path, with_prefix};
use super::compaction;
use super::durability;
use super::index::{Index, parse_hash};
use super::journal::{
    EntryView, Journal, JournalEntry, NamedEntry, ReplayError, Stop, encode_line,
};
use super::objects::Objects;
use crate::config::Durability;

/// What start-up found, for the start-up log line.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// `put` and `delete` records replayed (intents not counted).
    pub records_replayed: usize,
    pub torn_tail_bytes: u64,
    pub tmp_files_removed: usize,
    /// Operations logged after the last marker, re-checked on disk.
    pub in_flight_checked: usize,
    pub strays_removed: usize,
    /// Records whose file was missing or short (deleted from the journal).
    pub records_lost: usize,
    /// Set when the journal was rewritten at this start.
    pub compacted: Option<compaction::Compacted>,
}

/// Where recovery works.
pub struct Layout<'a> {
    pub data_dir: &'a Path,
    /// `storage/`, open: stored files are reached beneath it without following links.
    pub storage_root: &'a File,
    pub tmp_dir: &'a Path,
    pub journal_path: &'a Path,
}

/// The opened journal and what recovery did.
pub struct Recovered {
    pub journal: Journal,
    pub report: OpenReport,
}

/// An operation logged after the marker's `resolved_before`.
enum Logged {
    Place {
        hash: String,
        path: String,
    },
    Delete {
        path: String,
    },
    Put {
        hash: String,
        path: String,
    },
    /// A `blob_place` or `blob_remove`: the blob must go unless a key names the hash.
    Blob {
        hash: String,
    },
    /// An `object` line: its blob must be whole.
    Object {
        bucket: String,
        key: String,
        hash: String,
    },
}

/// Steps 1–5 of the module docs; `index` is filled by the replay.
pub fn recover(
    layout: &Layout<'_>,
    index: &Index,
    objects: &Objects,
    sync_targets: &[File],
    durability: Durability,
) -> Result<Recovered, OpenError> {
    durability::sync_all(sync_targets)
        .map_err(|e| OpenError(format!("cannot sync the data dir before reading it: {e}")))?;
    let unclean = Journal::last_stop(layout.journal_path) != Some(Stop::Clean);
    let resolved_before = Journal::recorded_point(layout.journal_path)
        .map(|p| p.resolved_before)
        .unwrap_or(0);
    remove_compaction_leftover(layout.journal_path)?;
    let mut logged: Vec<Logged> = Vec::new();
    let mut records = 0usize;
    let (journal, replay, _) = Journal::open(layout.journal_path, |offset, entry| {
        records += usize::from(!is_intent(&entry));
        if offset >= resolved_before
            && let Some(op) = logged_of(&entry)
        {
            logged.push(op);
        }
        apply(index, objects, entry);
    })
    .map_err(|e| open_error(layout, e))?;
    if replay.torn_tail_bytes > 0 {
        crate::log_line!(
            "rhinobox: warning: journal had a torn tail of {} bytes ({} checked-out lines in \
             it) written after its last sync; cut, and set aside in metadata/journal-tail-*.torn",
            replay.torn_tail_bytes,
            replay.torn_tail_valid_lines
        );
    }
    let tmp_files_removed = empty_dir(layout.tmp_dir)
        .map_err(|e| OpenError(format!("cannot empty {}: {e}", layout.tmp_dir.display())))?;
    let mut report = OpenReport {
        records_replayed: records,
        torn_tail_bytes: replay.torn_tail_bytes,
        tmp_files_removed,
        in_flight_checked: logged.len(),
        ..OpenReport::default()
    };
    let mut repairs = recheck(layout.storage_root, index, objects, &logged, &mut report)
        .map_err(|e| OpenError(format!("cannot clean up after the last run: {e}")))?;
    if durability == Durability::None && unclean {
        let storage = layout.data_dir.join("storage");
        walk_for_strays(&storage, index, &mut report, &mut repairs)
            .and_then(|()| walk_objects(&storage, objects, &mut report, &mut repairs))
            .map_err(|e| OpenError(format!("cannot look for stray files: {e}")))?;
    }
    if !repairs.is_empty() {
        journal
            .append(&repairs)
            .and_then(|()| journal.sync())
            .map_err(|e| OpenError(format!("cannot append to the journal: {e}")))?;
    }
    durability::sync_all(sync_targets)
        .map_err(|e| OpenError(format!("cannot sync the data dir: {e}")))?;
    let point = journal.sync_point();
    journal
        .record_synced(point)
        .and_then(|()| journal.flush_marker())
        .map_err(|e| OpenError(format!("cannot write the journal's sync marker: {e}")))?;
    let lines_total = replay.records + repairs.iter().filter(|&&b| b == b'\n').count();
    let journal = if compaction::is_due(lines_total, index.len() + objects.live_lines()) {
        let started = std::time::Instant::now();
        let (journal, done) =
            compaction::compact(layout.journal_path, journal, index, objects, lines_total)
                .map_err(|e| OpenError(format!("cannot compact the journal: {e}")))?;
        crate::log_line!(
            "rhinobox: journal compacted: {} lines to {} ({} bytes) in {:.0} ms",
            done.lines_before,
            done.lines_after,
            done.bytes_after,
            started.elapsed().as_secs_f64() * 1e3
        );
        report.compacted = Some(done);
        journal
    } else {
        journal
    };
    Ok(Recovered { journal, report })
}

fn open_error(layout: &Layout<'_>, error: ReplayError) -> OpenError {
    let hint = match error {
        ReplayError::Corrupt { .. } | ReplayError::Shorter { .. } => format!(
            "; `rhinobox repair --data-dir {}` sets damaged lines aside",
            layout.data_dir.display()
        ),
        ReplayError::Io(_) => String::new(),
    };
    OpenError(format!("{}: {error}{hint}", layout.journal_path.display()))
}

fn is_intent(entry: &EntryView<'_>) -> bool {
    matches!(
        entry,
        EntryView::Place { .. }
            | EntryView::Named(NamedEntry::BlobPlace { .. } | NamedEntry::BlobRemove { .. })
    )
}

fn logged_of(entry: &EntryView<'_>) -> Option<Logged> {
    Some(match entry {
        EntryView::Put(record) => Logged::Put {
            hash: record.hash.to_string(),
            path: record.path.to_string(),
        },
        EntryView::Delete { path, .. } => Logged::Delete {
            path: path.to_string(),
        },
        EntryView::Place { hash, path } => Logged::Place {
            hash: hash.to_string(),
            path: path.to_string(),
        },
        EntryView::Named(NamedEntry::BlobPlace { hash } | NamedEntry::BlobRemove { hash }) => {
            Logged::Blob { hash: hash.clone() }
        }
        EntryView::Named(NamedEntry::Object(record)) => Logged::Object {
            bucket: record.bucket.clone(),
            key: record.key.clone(),
            hash: record.hash.clone(),
        },
        EntryView::Named(_) => return None,
    })
}

fn apply(index: &Index, objects: &Objects, entry: EntryView<'_>) {
    match entry {
        EntryView::Put(record) => {
            let inserted = parse_hash(&record.hash).and_then(|hash| index.insert(&hash, &record));
            if inserted.is_none() {
                crate::log_line!(
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
        EntryView::Named(named) => objects.apply(&named),
    }
}

/// Step 4: returns the journal lines to append (deletes of lost records).
fn recheck(
    root: &File,
    index: &Index,
    objects: &Objects,
    logged: &[Logged],
    report: &mut OpenReport,
) -> io::Result<Vec<u8>> {
    let mut lines = Vec::new();
    let mut blobs_checked: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for op in logged {
        match op {
            Logged::Blob { hash } => {
                if parse_hash(hash).is_some_and(|h| objects.refs(&h) == 0) && hash.len() == 64 {
                    let path = object_path(hash);
                    let relative = below_storage(&path);
                    if beneath::metadata_beneath(root, &relative).is_ok() {
                        remove_present(root, &relative)?;
                        crate::log_line!(
                            "rhinobox: warning: removed stray object content {path} (placed \
                             or released when the last run ended)"
                        );
                        report.strays_removed += 1;
                    }
                }
            }
            Logged::Object { bucket, key, hash } => {
                let Some(record) = objects.get(bucket, key) else {
                    continue;
                };
                if record.hash != *hash || !blobs_checked.insert(hash.as_str()) {
                    continue;
                }
                let Some(h) = parse_hash(hash) else { continue };
                let path = object_path(hash);
                let relative = below_storage(&path);
                if content_matches(root, &relative, record.size, &h) {
                    continue;
                }
                crate::log_line!(
                    "rhinobox: warning: the content of S3 objects of hash {hash} is missing or \
                     damaged after the last run; the objects naming it are deleted"
                );
                report.records_lost += forget_objects_of(objects, &h, &mut lines);
                remove_present(root, &relative)?;
            }
            Logged::Place { hash, path } => {
                for len in NAME_PREFIX_HEX_LENGTHS {
                    if hash.len() < len {
                        break;
                    }
                    let candidate = with_prefix(path, hash, len);
                    report.strays_removed += remove_stray(root, index, &candidate)?;
                }
            }
            Logged::Delete { path } => {
                report.strays_removed += remove_stray(root, index, path)?;
            }
            Logged::Put { hash, path } => {
                let Some(file) = parse_hash(hash).and_then(|h| index.get(&h)) else {
                    continue;
                };
                if file.path() != *path {
                    continue;
                }
                let relative = below_storage(path);
                if content_matches(root, &relative, file.size, &file.hash) {
                    continue;
                }
                crate::log_line!(
                    "rhinobox: warning: {path} is missing, or not the {} bytes recorded, after \
                     the last run; its record is deleted",
                    file.size
                );
                let entry = JournalEntry::Delete {
                    hash: hash.clone(),
                    path: path.clone(),
                    deleted_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                        .to_string(),
                };
                encode_line(&entry, &mut lines);
                index.remove(&file.hash);
                remove_present(root, &relative)?;
                report.records_lost += 1;
            }
        }
    }
    Ok(lines)
}

/// True when the file at `relative` is a regular file of `size` bytes whose BLAKE3 is
/// `hash`. Start-up re-hashes only the files of records logged after the marker: a power
/// cut can keep a record and the file's size while the data blocks never reached the disk
/// (zeros), which a size check misses.
fn content_matches(root: &File, relative: &Path, size: u64, hash: &[u8; 32]) -> bool {
    use std::io::Read;
    let Ok(mut file) = beneath::open_beneath(root, relative, libc::O_RDONLY) else {
        return false;
    };
    match file.metadata() {
        Ok(meta) if meta.is_file() && meta.len() == size => {}
        _ => return false,
    }
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buffer[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    hasher.finalize().as_bytes() == hash
}

/// Deletes every key naming `hash` (its blob is lost), appending `object_delete` lines.
fn forget_objects_of(objects: &Objects, hash: &[u8; 32], lines: &mut Vec<u8>) -> usize {
    let hex = blake3::Hash::from_bytes(*hash).to_hex();
    let mut keys = Vec::new();
    for bucket in objects.buckets() {
        objects.scan_from(&bucket.name, "", |record| {
            if record.hash == hex.as_str() {
                keys.push((record.bucket.clone(), record.key.clone()));
            }
            true
        });
    }
    for (bucket, key) in &keys {
        objects.forget(bucket, key);
        let entry = JournalEntry::ObjectDelete {
            bucket: bucket.clone(),
            key: key.clone(),
        };
        encode_line(&entry, lines);
    }
    keys.len()
}

/// Durability `none`, unclean stop: the `.objects/` part of the walk. A blob no key names
/// is removed; a key whose blob is missing or not of its size is deleted.
fn walk_objects(
    storage: &Path,
    objects: &Objects,
    report: &mut OpenReport,
    lines: &mut Vec<u8>,
) -> io::Result<()> {
    let dir = storage.join(OBJECTS_DIR);
    let mut present: std::collections::HashSet<[u8; 32]> = std::collections::HashSet::new();
    let expected: std::collections::HashMap<[u8; 32], u64> = objects.hashes().into_iter().collect();
    if dir.is_dir() {
        for shard in std::fs::read_dir(&dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name();
                let hash = name.to_str().and_then(parse_hash);
                let size = entry.metadata()?.len();
                match hash.and_then(|h| expected.get(&h).map(|s| (h, *s))) {
                    Some((h, s)) if s == size && entry.file_type()?.is_file() => {
                        present.insert(h);
                    }
                    _ => {
                        remove_present_path(&entry.path())?;
                        crate::log_line!(
                            "rhinobox: warning: removed stray object content {} (durability \
                             none, unclean stop)",
                            entry.path().display()
                        );
                        report.strays_removed += 1;
                    }
                }
            }
        }
    }
    for hash in expected.keys() {
        if !present.contains(hash) {
            report.records_lost += forget_objects_of(objects, hash, lines);
        }
    }
    Ok(())
}

/// Durability `none` after a stop that was not clean: renames may have reached the disk
/// while the intents logged before them did not (nothing orders two files without a
/// sync), so the in-flight re-check cannot see every stray. Walks all of `storage/`
/// (cost: the files stored) and removes every file no record names. The same holds for a
/// delete: its unlink can reach the disk while its line does not, leaving a record older
/// than the marker without a file; so every record whose file the walk did not find (of
/// its size) is deleted too, its `delete` line appended to `lines`.
fn walk_for_strays(
    root: &Path,
    index: &Index,
    report: &mut OpenReport,
    lines: &mut Vec<u8>,
) -> io::Result<()> {
    let mut present: std::collections::HashSet<[u8; 32]> =
        std::collections::HashSet::with_capacity(index.len());
    let mut pending: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), "storage".into())];
    while let Some((dir, record_dir)) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if record_dir == "storage" && (name == ".tmp" || name == OBJECTS_DIR) {
                continue;
            }
            let record_path = format!("{record_dir}/{name}");
            let kind = entry.file_type()?;
            let indexed = index.get_by_path(&record_path);
            if kind.is_dir() {
                pending.push((entry.path(), record_path));
            } else if let Some(file) = indexed {
                if kind.is_file() && entry.metadata()?.len() == file.size {
                    present.insert(file.hash);
                }
            } else {
                remove_present_path(&entry.path())?;
                crate::log_line!(
                    "rhinobox: warning: removed stray file {record_path} (durability none, \
                     unclean stop)"
                );
                report.strays_removed += 1;
            }
        }
    }
    let mut lost = Vec::new();
    index.for_each_oldest_first(|file| {
        if !present.contains(&file.hash) {
            lost.push(file.clone());
        }
    });
    for file in lost {
        let path = file.path();
        crate::log_line!(
            "rhinobox: warning: {path} is missing, or not the {} bytes recorded (durability \
             none, unclean stop); its record is deleted",
            file.size
        );
        let entry = JournalEntry::Delete {
            hash: file.hash_hex(),
            path: path.clone(),
            deleted_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        encode_line(&entry, lines);
        index.remove(&file.hash);
        remove_present_path(&root.join(below_storage(&path)))?;
        report.records_lost += 1;
    }
    Ok(())
}

fn remove_present_path(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes `path` when it exists and no record names it; 1 when removed.
fn remove_stray(root: &File, index: &Index, path: &str) -> io::Result<usize> {
    if index.get_by_path(path).is_some()
        || !path.starts_with("storage/")
        || path.starts_with(&format!("storage/{OBJECTS_DIR}/"))
    {
        return Ok(0);
    }
    let relative = below_storage(path);
    if beneath::metadata_beneath(root, &relative).is_err() {
        return Ok(0);
    }
    remove_present(root, &relative)?;
    crate::log_line!(
        "rhinobox: warning: removed stray file {path} (placed or deleted when the last run ended)"
    );
    Ok(1)
}

/// A compaction that crashed before its rename left its new file: the old journal is
/// whole, the leftover is dropped.
fn remove_compaction_leftover(journal_path: &Path) -> Result<(), OpenError> {
    let leftover = compaction::leftover_path(journal_path);
    match std::fs::remove_file(&leftover) {
        Ok(()) => {
            crate::log_line!(
                "rhinobox: warning: removed {} (a compaction interrupted before it finished)",
                leftover.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OpenError(format!(
            "cannot remove {}: {e}",
            leftover.display()
        ))),
    }
}

fn remove_present(root: &File, relative: &Path) -> io::Result<()> {
    match beneath::remove_beneath(root, relative) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn empty_dir(dir: &Path) -> io::Result<usize> {
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
