//! The index at scale: a journal of N valid records, written through the daemon's own
//! encoder ([`crate::store::journal::encode_line`]), then the daemon started on it.
//!
//! Measured: time from spawn to the listening line (journal replay and index build),
//! resident memory right after start and its peak, and that the daemon reports N files.
//! With dead records (files stored and deleted again, `--index-dead-records`) the first
//! start also compacts the journal; a second start then measures the compacted journal.
//! The records name files that do not exist on disk: replay reads only the journal, and
//! a sync marker covering the whole journal says nothing was in flight (so start-up does
//! not re-check the files of the last records).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::client::http::request_once;
use crate::store::journal::{FileRecord, JournalEntry, SyncPoint, encode_line, write_marker_file};

use super::target::{self, Daemon, DaemonSpec};

/// What an index-at-scale run measured.
#[derive(Clone, Debug, Serialize)]
pub struct IndexOutcome {
    pub records: usize,
    pub journal_bytes: u64,
    pub journal_write_s: f64,
    pub ready_s: f64,
    pub rss_after_start_mib: f64,
    pub hwm_after_start_mib: f64,
    pub bytes_per_record: f64,
    pub files_reported: u64,
    /// Journal lines that were dead (puts of deleted files and their deletes).
    pub dead_lines: usize,
    /// The second start (after the first one's compaction, if it compacted).
    pub ready_again_s: f64,
    pub rss_again_mib: f64,
    pub journal_bytes_again: u64,
}

/// Writes `records` live records into `data_dir/metadata/journal.ndjson`, and spread
/// among them `dead_lines` lines of files stored and deleted again (a put and a delete
/// each), with a sync marker covering it all; returns its size.
pub fn write_journal(data_dir: &Path, records: usize, dead_lines: usize) -> std::io::Result<u64> {
    let metadata = data_dir.join("metadata");
    std::fs::create_dir_all(&metadata)?;
    let journal_path = metadata.join("journal.ndjson");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&journal_path)?);
    let mut line = Vec::with_capacity(1024);
    let mut bytes = 0u64;
    let dead_pairs = dead_lines / 2;
    let mut dead_written = 0usize;
    for index in 0..records {
        line.clear();
        encode_line(&JournalEntry::Put(record(index)), &mut line);
        // Dead pairs spread evenly between the live records.
        let due = (index + 1) * dead_pairs / records.max(1);
        while dead_written < due {
            let dead = record(records + dead_written);
            let delete = JournalEntry::Delete {
                hash: dead.hash.clone(),
                path: dead.path.clone(),
                deleted_at: "2026-01-16T10:30:00Z".into(),
            };
            encode_line(&JournalEntry::Put(dead), &mut line);
            encode_line(&delete, &mut line);
            dead_written += 1;
        }
        out.write_all(&line)?;
        bytes += line.len() as u64;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let point = SyncPoint {
        synced_len: bytes,
        resolved_before: bytes,
    };
    write_marker_file(&journal_path, point)?;
    Ok(bytes)
}

/// A plausible photo record, unique per index.
fn record(index: usize) -> FileRecord {
    let hash = blake3::hash(&(index as u64).to_le_bytes())
        .to_hex()
        .to_string();
    let name = format!("img_{index:07}.jpg");
    FileRecord {
        path: format!("storage/images/jpg/{}_{}", &hash[..12], name),
        mime_type: "image/jpeg".into(),
        media_type: "images".into(),
        category: "images/jpg".into(),
        size: 200_000 + (index as u64 % 100_000),
        original_name: name,
        comment: String::new(),
        uploaded_at: "2026-01-15T10:30:00Z".into(),
        hash,
    }
}

/// Writes the journal under `dir/data`, starts the daemon on it, measures and stops it.
pub fn run(
    dir: &Path,
    records: usize,
    dead_lines: usize,
    daemon: &DaemonSpec,
) -> Result<IndexOutcome, String> {
    let data_dir = dir.join("data");
    let written = Instant::now();
    let journal_bytes = write_journal(&data_dir, records, dead_lines)
        .map_err(|e| format!("writing journal: {e}"))?;
    let journal_write_s = written.elapsed().as_secs_f64();
    let started = Daemon::start(daemon, &data_dir, &dir.join("daemon.log"))?;
    let sample = target::sample(started.pid).unwrap_or_default();
    let statistics = request_once(started.addr, "GET", "/statistics", &[], b"")
        .map_err(|e| format!("GET /statistics: {e}"))?;
    let files_reported = statistics
        .try_json()
        .ok()
        .and_then(|j| j["files"].as_u64())
        .unwrap_or(0);
    let ready_s = started.ready_after.as_secs_f64();
    started.stop()?;
    let again = Daemon::start(daemon, &data_dir, &dir.join("daemon-again.log"))?;
    let sample_again = target::sample(again.pid).unwrap_or_default();
    let ready_again_s = again.ready_after.as_secs_f64();
    again.stop()?;
    let journal_bytes_again = std::fs::metadata(data_dir.join("metadata/journal.ndjson"))
        .map(|m| m.len())
        .unwrap_or(0);
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(IndexOutcome {
        records,
        journal_bytes,
        journal_write_s,
        ready_s,
        rss_after_start_mib: mib(sample.rss_kib),
        hwm_after_start_mib: mib(sample.hwm_kib),
        bytes_per_record: sample.rss_kib as f64 * 1024.0 / records.max(1) as f64,
        files_reported,
        dead_lines: dead_lines / 2 * 2,
        ready_again_s,
        rss_again_mib: mib(sample_again.rss_kib),
        journal_bytes_again,
    })
}
