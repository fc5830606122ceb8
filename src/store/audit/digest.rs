//! Streaming BLAKE3 of stored files on a few threads, with progress on stderr.
//!
//! Memory is bounded whatever the number and size of the files: each thread owns one read
//! buffer of [`READ_BLOCK_BYTES`], results reach the calling thread through a bounded
//! channel, and the calling thread prints progress at most every [`PROGRESS_INTERVAL`].

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use crate::ingest::sniff::SNIFF_BYTES;

/// Bytes per read: large enough for sequential throughput, small enough to bound memory.
pub const READ_BLOCK_BYTES: usize = 1024 * 1024;
/// Hashing threads. BLAKE3 runs at 1–2 GB/s per core: two threads keep a fast disk busy
/// while the host's other cores stay free (verify may run next to other work).
const HASH_THREADS: usize = 2;
/// Results waiting for the printing thread; a full queue makes the hashers wait.
const RESULTS_QUEUE_MAX: usize = 1024;
/// Shortest time between two progress lines (a run shorter than this prints none).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// How often the printing thread looks at the clock while results are slow to come.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What reading a file found.
pub struct Digest {
    pub size_bytes: u64,
    /// `None` when the size already differed from the expected one (nothing was read).
    pub hash: Option<blake3::Hash>,
    /// The first [`SNIFF_BYTES`] of the file, when asked for (type detection).
    pub head: Vec<u8>,
    pub modified: SystemTime,
}

/// Hashes the regular file at `path` (never through a symlink) in `buffer`-sized reads,
/// adding each read to `bytes_done`. When `size_bytes_expected` is given and the file has
/// another size, returns at once without reading.
pub fn digest_file(
    path: &Path,
    size_bytes_expected: Option<u64>,
    keep_head: bool,
    buffer: &mut [u8],
    bytes_done: &AtomicU64,
) -> io::Result<Digest> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let modified = metadata.modified()?;
    if size_bytes_expected.is_some_and(|expected| expected != metadata.len()) {
        return Ok(Digest {
            size_bytes: metadata.len(),
            hash: None,
            head: Vec::new(),
            modified,
        });
    }
    let mut hasher = blake3::Hasher::new();
    let mut head = Vec::new();
    let mut size_bytes = 0u64;
    loop {
        let n = match file.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if keep_head && head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - head.len()).min(n);
            head.extend_from_slice(&buffer[..take]);
        }
        hasher.update(&buffer[..n]);
        size_bytes += n as u64;
        bytes_done.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(Digest {
        size_bytes,
        hash: Some(hasher.finalize()),
        head,
        modified,
    })
}

/// Prints a progress line on stderr at most every [`PROGRESS_INTERVAL`].
pub struct Progress {
    command: &'static str,
    last: Instant,
}

impl Progress {
    pub fn new(command: &'static str) -> Progress {
        Progress {
            command,
            last: Instant::now(),
        }
    }

    /// Prints `line()` when the interval has passed since the last line (or the start).
    pub fn tick(&mut self, line: impl FnOnce() -> String) {
        if self.last.elapsed() >= PROGRESS_INTERVAL {
            crate::log_line!("rhinobox {}: {}", self.command, line());
            self.last = Instant::now();
        }
    }
}

/// Runs `work` on every job on [`HASH_THREADS`] threads; `on_result` sees each job's
/// result on the calling thread, in completion order. `work` gets a read buffer of its
/// thread and a counter of bytes read, which the progress line reports against
/// `bytes_total`.
pub fn for_each_parallel<J: Sync, R: Send>(
    jobs: &[J],
    bytes_total: u64,
    work: impl Fn(&J, &mut [u8], &AtomicU64) -> R + Sync,
    progress: &mut Progress,
    mut on_result: impl FnMut(&J, R),
) {
    let next = AtomicUsize::new(0);
    let bytes_done = AtomicU64::new(0);
    let (next, bytes_done, work) = (&next, &bytes_done, &work);
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::sync_channel::<(usize, R)>(RESULTS_QUEUE_MAX);
        for _ in 0..HASH_THREADS.min(jobs.len()) {
            let sender = sender.clone();
            scope.spawn(move || {
                let mut buffer = vec![0u8; READ_BLOCK_BYTES];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let result = work(job, &mut buffer, bytes_done);
                    if sender.send((i, result)).is_err() {
                        break; // the caller is gone (it panicked)
                    }
                }
            });
        }
        drop(sender);
        let mut files_done = 0usize;
        loop {
            match receiver.recv_timeout(POLL_INTERVAL) {
                Ok((i, result)) => {
                    on_result(&jobs[i], result);
                    files_done += 1;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            progress.tick(|| {
                format!(
                    "{files_done}/{} files, {} of {} read",
                    jobs.len(),
                    human_bytes(bytes_done.load(Ordering::Relaxed)),
                    human_bytes(bytes_total)
                )
            });
        }
    });
}

/// `1.5 GiB`-style sizes for progress and summaries.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
