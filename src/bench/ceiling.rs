//! The file-system ceiling: the daemon's disk work without HTTP, hashing or a journal.
//!
//! Each thread creates a tmp file under `storage/.tmp/` (O_CREAT|O_EXCL, mode 0644, as the
//! daemon does), writes the payload, closes it and renames it to
//! `storage/<media_type>/<ext>/<hash12>_<name>.<ext>` in the same file system; with the
//! `batch` sync policy it calls `syncfs` after every batch (the daemon's group commit
//! runs one syncfs per group of requests). What this reaches is what the file system
//! allows for that file count and size on this host; an ingest result is quoted as a
//! percentage of it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use serde::Serialize;

use crate::client::payload::{MediaKind, payload};
use crate::store::durability::syncfs;

use super::target;

/// The work of one ceiling run.
#[derive(Clone, Debug, Serialize)]
pub struct CeilingSpec {
    pub files: usize,
    pub size_bytes: u64,
    pub threads: usize,
    pub batch: usize,
    /// `none` or `batch` (one syncfs per batch of files per thread).
    pub sync: String,
}

/// What a ceiling run measured.
#[derive(Clone, Debug, Serialize)]
pub struct CeilingOutcome {
    pub files: usize,
    pub duration_s: f64,
    pub files_per_s: f64,
    pub mib_per_s: f64,
    pub cpu_us_per_file: f64,
}

const KINDS: [MediaKind; 4] = [
    MediaKind::Jpeg,
    MediaKind::Png,
    MediaKind::Mp4,
    MediaKind::Mp3,
];

/// Runs the ceiling in `root` (a fresh directory on the file system under test).
pub fn run(root: &Path, spec: &CeilingSpec) -> std::io::Result<CeilingOutcome> {
    let storage = root.join("storage");
    let tmp = storage.join(".tmp");
    std::fs::create_dir_all(&tmp)?;
    for kind in KINDS {
        std::fs::create_dir_all(category_dir(&storage, kind))?;
    }
    let threads = spec.threads.max(1);
    let per_thread = spec.files.div_ceil(threads);
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let (storage, start, spec) = (storage.clone(), start.clone(), spec.clone());
            std::thread::spawn(move || worker(&storage, thread, per_thread, &spec, &start))
        })
        .collect();
    start.wait();
    let cpu_before = target::self_cpu_s();
    let started = Instant::now();
    for handle in handles {
        handle.join().expect("ceiling thread panicked")?;
    }
    let duration_s = started.elapsed().as_secs_f64();
    let cpu_s = target::self_cpu_s() - cpu_before;
    let files = per_thread * threads;
    Ok(CeilingOutcome {
        files,
        duration_s,
        files_per_s: files as f64 / duration_s,
        mib_per_s: (files as u64 * spec.size_bytes) as f64 / duration_s / (1 << 20) as f64,
        cpu_us_per_file: cpu_s * 1e6 / files as f64,
    })
}

fn category_dir(storage: &Path, kind: MediaKind) -> PathBuf {
    storage
        .join(kind.expected_media_type())
        .join(kind.expected_ext())
}

fn worker(
    storage: &Path,
    thread: usize,
    files: usize,
    spec: &CeilingSpec,
    start: &Barrier,
) -> std::io::Result<()> {
    let bodies: Vec<Vec<u8>> = KINDS
        .iter()
        .map(|&kind| payload(kind, spec.size_bytes.max(kind.min_size()), thread as u64))
        .collect();
    let sync_handle = File::open(storage)?;
    let tmp_dir = storage.join(".tmp");
    start.wait();
    for index in 0..files {
        let kind = KINDS[index % KINDS.len()];
        let tmp_path = tmp_dir.join(format!("t{thread}-{index}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp_path)?;
        file.write_all(&bodies[index % KINDS.len()])?;
        drop(file);
        let name = format!(
            "{:012x}_t{thread}-{index}.{}",
            thread << 32 | index,
            kind.expected_ext()
        );
        std::fs::rename(&tmp_path, category_dir(storage, kind).join(name))?;
        if spec.sync == "batch" && (index + 1) % spec.batch.max(1) == 0 {
            syncfs(&sync_handle)?;
        }
    }
    if spec.sync == "batch" {
        syncfs(&sync_handle)?;
    }
    Ok(())
}
