//! Early writeback of the journal, as the kernel may do at any moment.
//!
//! The kernel writes dirty pages back in an order of its choosing (flusher threads, memory
//! pressure, any other process's fsync or sync), so a file written after another can reach
//! the disk first. Left alone, our load only ever writes back through the daemon's own
//! syncs, which hides bugs that need the journal to get ahead of the data. This thread
//! fdatasyncs the daemon's journal files at seeded random moments: a legal schedule for a
//! correct daemon (every extra sync only makes more data durable), and on ext4 and XFS it
//! also commits the metadata logged so far (renames) with the journal.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::rng::Rng;

/// Upper bound on syncs per run (the time bound of the state ends it long before).
const SYNCS_MAX: u64 = 100_000;

pub struct Adversary {
    stop: Arc<AtomicBool>,
    syncs: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn journals(metadata: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(metadata) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect()
}

impl Adversary {
    /// Syncs the journals under `data_dir/metadata` every 0–`period_max_us` µs.
    pub fn start(data_dir: &Path, seed: u64, period_max_us: u64) -> Adversary {
        let stop = Arc::new(AtomicBool::new(false));
        let syncs = Arc::new(AtomicU64::new(0));
        let (stop2, syncs2) = (stop.clone(), syncs.clone());
        let metadata = data_dir.join("metadata");
        let thread = std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            while !stop2.load(Ordering::Relaxed) && syncs2.load(Ordering::Relaxed) < SYNCS_MAX {
                std::thread::sleep(Duration::from_micros(rng.below(period_max_us + 1)));
                for path in journals(&metadata) {
                    if let Ok(file) = std::fs::File::open(&path) {
                        // SAFETY: fdatasync(2) on a descriptor owned by `file`, open for
                        // the duration of the call.
                        unsafe {
                            libc::fdatasync(file.as_raw_fd());
                        }
                        syncs2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Adversary {
            stop,
            syncs,
            thread: Some(thread),
        }
    }

    /// Stops the thread (after the disk released held flushes) and returns the sync count.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.syncs.load(Ordering::Relaxed)
    }
}

impl Drop for Adversary {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits for the `count`-th modification of `journal` (inotify IN_MODIFY: one per append
/// write) within `limit`; true when it came. Used to stop the daemon right after an append,
/// before the sync that follows it.
pub fn wait_for_appends(journal: &Path, count: u64, limit: Duration) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(journal.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: inotify_init1 takes flags only; the returned descriptor is closed below.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` is the inotify descriptor just created; `path` is a NUL-terminated
    // string that outlives the call.
    let watch = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MODIFY) };
    let deadline = std::time::Instant::now() + limit;
    let mut seen = 0u64;
    let mut buf = [0u8; 4096];
    while watch >= 0 && seen < count && std::time::Instant::now() < deadline {
        // SAFETY: reads into a buffer we own, at most its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            // Nonblocking: nothing yet. A short spin keeps the reaction time in µs.
            std::thread::yield_now();
            continue;
        }
        let mut at = 0usize;
        let header = std::mem::size_of::<libc::inotify_event>();
        while at + header <= n as usize {
            // SAFETY: the kernel wrote whole events; read_unaligned copes with the byte
            // buffer's alignment.
            let event: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
            seen += 1;
            at += header + event.len as usize;
        }
    }
    // SAFETY: closes the descriptor created above, once.
    unsafe { libc::close(fd) };
    seen >= count
}

/// fdatasync of every journal under `data_dir/metadata` (early writeback of the journal).
pub fn sync_journals(data_dir: &Path) {
    for path in journals(&data_dir.join("metadata")) {
        if let Ok(file) = std::fs::File::open(&path) {
            // SAFETY: fdatasync(2) on a descriptor owned by `file`, open for the call.
            unsafe {
                libc::fdatasync(file.as_raw_fd());
            }
        }
    }
}
