//! Journal compaction: rewriting the journal as one `put` line per file stored now, so
//! that start-up time and journal size follow the files stored, not the history.
//!
//! Runs at start-up, after recovery, when the dead lines (deleted files' `put`s, `delete`s,
//! `place` intents) are both more than the live ones and at least
//! [`COMPACTION_DEAD_LINES_MIN`] (a small journal is not worth a rewrite). Nothing is in
//! flight then, and no request runs.
//!
//! Steps, each crash-safe:
//! 1. write `journal.ndjson.compact` (oldest file first, so listings keep their order)
//!    and fsync it — a crash leaves the old journal and marker whole; the next start
//!    removes the leftover;
//! 2. empty the sync marker durably — a crash here leaves the old journal with no marker,
//!    judged by the marker-less rule (it was synced at this start, so it has no torn
//!    tail);
//! 3. rename the new file over `journal.ndjson` and fsync `metadata/` — the rename is
//!    atomic: either journal is whole;
//! 4. write a marker saying the whole new journal is synced.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::index::Index;
use super::journal::{FileRecord, Journal, JournalEntry, encode_line};
use super::objects::Objects;

/// Dead journal lines below which the journal is never rewritten.
pub const COMPACTION_DEAD_LINES_MIN: usize = 10_000;

/// What a compaction did (for the start-up log).
#[derive(Debug, Default)]
pub struct Compacted {
    pub lines_before: usize,
    pub lines_after: usize,
    pub bytes_after: u64,
}

/// The leftover of a compaction that crashed before its rename.
pub fn leftover_path(journal_path: &Path) -> PathBuf {
    journal_path.with_extension("ndjson.compact")
}

/// True when `lines_total` journal lines hold `live` files and the dead dominate.
pub fn is_due(lines_total: usize, live: usize) -> bool {
    let dead = lines_total.saturating_sub(live);
    dead >= COMPACTION_DEAD_LINES_MIN && dead > live
}

/// Rewrites the journal at `journal_path` from `index` (steps 1–4); returns the journal
/// reopened on the new file.
pub fn compact(
    journal_path: &Path,
    journal: Journal,
    index: &Index,
    objects: &Objects,
    lines_before: usize,
) -> io::Result<(Journal, Compacted)> {
    let new_path = leftover_path(journal_path);
    let (lines_after, bytes_after) = write_live(&new_path, index, objects)?;
    journal.forget_marker()?;
    drop(journal);
    std::fs::rename(&new_path, journal_path)?;
    if let Some(dir) = journal_path.parent() {
        File::open(dir)?.sync_all()?;
    }
    let journal = Journal::adopt(journal_path)?;
    let report = Compacted {
        lines_before,
        lines_after,
        bytes_after,
    };
    Ok((journal, report))
}

/// Step 1: one `put` line per stored file, oldest first, then one `bucket` line per S3
/// bucket and one `object` line per key; synced.
fn write_live(path: &Path, index: &Index, objects: &Objects) -> io::Result<(usize, u64)> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(1024);
    let mut lines = 0usize;
    let mut bytes = 0u64;
    let mut failed: Option<io::Error> = None;
    index.for_each_oldest_first(|stored| {
        if failed.is_some() {
            return;
        }
        line.clear();
        let record: FileRecord = stored.record();
        encode_line(&JournalEntry::Put(record), &mut line);
        match out.write_all(&line) {
            Ok(()) => {
                lines += 1;
                bytes += line.len() as u64;
            }
            Err(e) => failed = Some(e),
        }
    });
    let mut write = |entry: JournalEntry| {
        if failed.is_some() {
            return;
        }
        line.clear();
        encode_line(&entry, &mut line);
        match out.write_all(&line) {
            Ok(()) => {
                lines += 1;
                bytes += line.len() as u64;
            }
            Err(e) => failed = Some(e),
        }
    };
    objects.for_each_line(&mut write);
    if let Some(e) = failed {
        return Err(e);
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((lines, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dead lines must both pass the minimum and outnumber the live files.
    #[test]
    fn due_only_when_dead_lines_dominate() {
        assert!(!is_due(100, 10));
        assert!(!is_due(
            COMPACTION_DEAD_LINES_MIN + 10,
            COMPACTION_DEAD_LINES_MIN
        ));
        assert!(is_due(
            3 * COMPACTION_DEAD_LINES_MIN,
            COMPACTION_DEAD_LINES_MIN
        ));
        assert!(!is_due(5, 5));
    }
}
