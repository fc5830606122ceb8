//! The index at scale: a journal of N valid records, written through the daemon's own
//! encoder ([`crate::store::journal::encode_line`]), then the daemon started on it.
//!
//! Measured: time from spawn to the listening line (journal replay and index build),
//! resident memory right after start and its peak, and that the daemon reports N files.
//! The records name files that do not exist on disk: replay reads only the journal.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::client::http::request_once;
use crate::store::journal::{FileRecord, JournalEntry, encode_line};

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
}

/// Writes `records` records into `data_dir/metadata/journal.ndjson`; returns its size.
pub fn write_journal(data_dir: &Path, records: usize) -> std::io::Result<u64> {
    let metadata = data_dir.join("metadata");
    std::fs::create_dir_all(&metadata)?;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(metadata.join("journal.ndjson"))?);
    let mut line = Vec::with_capacity(512);
    let mut bytes = 0u64;
    for index in 0..records {
        line.clear();
        encode_line(&JournalEntry::Put(record(index)), &mut line);
        out.write_all(&line)?;
        bytes += line.len() as u64;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
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
pub fn run(dir: &Path, records: usize, daemon: &DaemonSpec) -> Result<IndexOutcome, String> {
    let data_dir = dir.join("data");
    let written = Instant::now();
    let journal_bytes =
        write_journal(&data_dir, records).map_err(|e| format!("writing journal: {e}"))?;
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
    })
}
