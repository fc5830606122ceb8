//! Group commit: one `syncfs` per data file system, shared by every request waiting.
//!
//! A request that needs its writes on stable storage calls [`GroupCommit::barrier`]. A
//! dedicated thread takes every waiter registered so far, notes the journal's
//! [`SyncPoint`], runs `syncfs(2)` on each distinct file system that holds `storage/`,
//! `storage/.tmp/` or `metadata/` (file data, inodes, directory entries and the journal),
//! then records the point in the journal's marker and releases the waiters. Requests that
//! arrive during a sync wait for the next one, so each waiter's writes (done before it
//! registered) are covered by the sync that releases it.
//!
//! When nobody waits, the thread still syncs once per [`IDLE_SYNC_INTERVAL`] if the
//! journal moved since the last sync (durability `none` gets a bounded loss window, and
//! operations that finished after their last barrier — a delete's unlink — get their
//! marker advanced), and makes the marker itself durable.
//!
//! Why `syncfs` rather than fdatasync per file: measured here, one syncfs per ~100 files
//! did 11–15k files/s against ~5–6k for per-file fdatasync plus a directory fsync
//! (tuning.md). Trade-off: it also flushes other dirty data on the same file system,
//! so the data dir should sit on its own file system on busy hosts (tuning.md).
//!
//! Fail-stop (PostgreSQL's fsync lesson): a sync error is fatal. The thread writes one
//! line to stderr (a failing stderr cannot stop it), keeps the batch's waiters unanswered
//! and exits the process with status 70; it never retries. A waiter whose sender is gone
//! (the thread died any other way) gets an error, never a 200, and the thread's panic
//! guard exits with 70 too.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::journal::{Journal, SyncPoint};

/// Exit status when a sync fails (EX_SOFTWARE).
pub const EXIT_SYNC_FAILED: i32 = 70;

/// How long the thread waits without waiters before it syncs whatever moved since the
/// last sync (bounds what durability `none` can lose, and how stale the marker is).
pub const IDLE_SYNC_INTERVAL: Duration = Duration::from_secs(1);

struct Waiters {
    pending: Vec<oneshot::Sender<()>>,
    stopping: bool,
}

struct Shared {
    waiters: Mutex<Waiters>,
    wake: Condvar,
    batches_total: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The sync thread's barrier could not be passed: the thread is gone. The process is
/// exiting with status 70; the request must not be acknowledged.
#[derive(Debug)]
pub struct SyncUnavailable;

impl std::fmt::Display for SyncUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the sync thread has stopped; nothing was acknowledged")
    }
}

impl From<SyncUnavailable> for io::Error {
    fn from(_: SyncUnavailable) -> io::Error {
        io::Error::other(SyncUnavailable.to_string())
    }
}

/// Handle to the group-commit thread; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    shared: Arc<Shared>,
}

/// One directory per distinct file system (by `st_dev`) among `dirs`, in order.
pub fn distinct_file_systems(dirs: &[&Path]) -> io::Result<Vec<File>> {
    let mut seen = Vec::new();
    let mut files = Vec::new();
    for dir in dirs {
        let file = File::open(dir)?;
        let device = file.metadata()?.dev();
        if !seen.contains(&device) {
            seen.push(device);
            files.push(file);
        }
    }
    Ok(files)
}

/// Syncs every file system in `targets` (start-up and shutdown use this directly).
pub fn sync_all(targets: &[File]) -> io::Result<()> {
    for target in targets {
        syncfs(target)?;
    }
    Ok(())
}

impl GroupCommit {
    /// Starts the sync thread for `targets` (see [`distinct_file_systems`]).
    pub fn start(targets: Vec<File>, journal: Arc<Journal>) -> io::Result<GroupCommit> {
        let shared = Arc::new(Shared {
            waiters: Mutex::new(Waiters {
                pending: Vec::new(),
                stopping: false,
            }),
            wake: Condvar::new(),
            batches_total: AtomicU64::new(0),
            thread: Mutex::new(None),
        });
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("rhinobox-sync".into())
            .spawn(move || {
                let _guard = ExitOnPanic;
                sync_loop(&thread_shared, &targets, &journal)
            })?;
        *shared.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(GroupCommit { shared })
    }

    /// Resolves once everything this thread wrote before the call is on stable storage.
    pub async fn barrier(&self) -> Result<(), SyncUnavailable> {
        let (sender, receiver) = oneshot::channel();
        {
            let mut waiters = self
                .shared
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            waiters.pending.push(sender);
        }
        self.shared.wake.notify_one();
        // A sender dropped unanswered means the thread is gone: not synced.
        receiver.await.map_err(|_| SyncUnavailable)
    }

    /// Number of syncs run so far (`rhinobox_fsync_batches_total`).
    pub fn batches_total(&self) -> u64 {
        self.shared.batches_total.load(Ordering::Relaxed)
    }

    /// Stops the thread after it has served the waiters registered so far, and waits for
    /// it to end (shutdown then writes the clean-stop marker with nobody racing it).
    pub fn stop(&self) {
        {
            let mut waiters = self
                .shared
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            waiters.stopping = true;
            self.shared.wake.notify_one();
        }
        let handle = self
            .shared
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Exits with status 70 if the sync thread unwinds: its waiters must never be released
/// by a dropped sender while the process goes on acknowledging.
struct ExitOnPanic;

impl Drop for ExitOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            fail_stop(&io::Error::other("the sync thread panicked"));
        }
    }
}

/// Writes one line to stderr, ignoring any error writing it, and exits with 70.
pub fn fail_stop(error: &io::Error) -> ! {
    let _ = writeln!(
        io::stderr(),
        "rhinobox: fatal: sync of the data file systems failed: {error}; \
         exiting without acknowledging writes"
    );
    std::process::exit(EXIT_SYNC_FAILED);
}

/// What one wait of the sync thread brings.
enum Wake {
    Batch(Vec<oneshot::Sender<()>>),
    Idle,
    Stop,
}

fn next_wake(shared: &Shared, timeout: Duration) -> Wake {
    let mut waiters = shared.waiters.lock().unwrap_or_else(|p| p.into_inner());
    if waiters.pending.is_empty() && !waiters.stopping {
        let (guard, _) = shared
            .wake
            .wait_timeout(waiters, timeout)
            .unwrap_or_else(|p| p.into_inner());
        waiters = guard;
    }
    if waiters.pending.is_empty() {
        return if waiters.stopping {
            Wake::Stop
        } else {
            Wake::Idle
        };
    }
    Wake::Batch(std::mem::take(&mut waiters.pending))
}

/// The marker is rewritten at most this often: each rewrite dirties a page that the next
/// sync round must write too, so under load it is refreshed every few rounds, not every
/// one (it may lag a little more; it never leads, which is what correctness needs).
const MARKER_INTERVAL: Duration = Duration::from_millis(50);

/// The sync thread's own state between rounds.
struct Rounds {
    last_synced: Option<SyncPoint>,
    last_sync_at: Instant,
    /// A completed point not yet written to the marker.
    unrecorded: Option<SyncPoint>,
    marker_written_at: Instant,
    /// The marker was written and not yet made durable by a sync or a flush.
    marker_dirty: bool,
}

impl Rounds {
    fn wait_for(&self) -> Duration {
        if self.unrecorded.is_some() || self.marker_dirty {
            MARKER_INTERVAL
        } else {
            IDLE_SYNC_INTERVAL
        }
    }

    fn record(&mut self, journal: &Journal, point: SyncPoint) {
        if let Err(error) = journal.record_synced(point) {
            fail_stop(&error);
        }
        self.marker_written_at = Instant::now();
        self.marker_dirty = true;
        self.unrecorded = None;
    }

    /// Idle work: write a pending marker, or flush a written one, or (once a second, when
    /// the journal moved) ask for a background sync round (`true`).
    fn idle(&mut self, journal: &Journal) -> bool {
        if let Some(point) = self.unrecorded {
            self.record(journal, point);
            return false;
        }
        let moved = self.last_synced != Some(journal.sync_point());
        if moved && self.last_sync_at.elapsed() >= IDLE_SYNC_INTERVAL {
            return true;
        }
        if self.marker_dirty && self.marker_written_at.elapsed() >= MARKER_INTERVAL {
            if let Err(error) = journal.flush_marker() {
                fail_stop(&error);
            }
            self.marker_dirty = false;
        }
        false
    }
}

fn sync_loop(shared: &Shared, targets: &[File], journal: &Journal) {
    let mut rounds = Rounds {
        last_synced: None,
        last_sync_at: Instant::now(),
        unrecorded: None,
        marker_written_at: Instant::now() - MARKER_INTERVAL,
        marker_dirty: false,
    };
    loop {
        let batch = match next_wake(shared, rounds.wait_for()) {
            Wake::Stop => return,
            Wake::Batch(batch) => batch,
            Wake::Idle if rounds.idle(journal) => Vec::new(),
            Wake::Idle => continue,
        };
        let point = journal.sync_point();
        if let Err(error) = sync_all_checked(targets) {
            // The batch's senders are never dropped: exit keeps them unanswered.
            std::mem::forget(batch);
            fail_stop(&error);
        }
        rounds.last_synced = Some(point);
        rounds.last_sync_at = Instant::now();
        // A sync round makes the marker written before it durable.
        rounds.marker_dirty = false;
        if rounds.marker_written_at.elapsed() >= MARKER_INTERVAL {
            rounds.record(journal, point);
        } else {
            rounds.unrecorded = Some(point);
        }
        shared.batches_total.fetch_add(1, Ordering::Relaxed);
        for waiter in batch {
            let _ = waiter.send(());
        }
    }
}

fn sync_all_checked(targets: &[File]) -> io::Result<()> {
    crate::store::failpoint::check("sync")?;
    sync_all(targets)
}

/// `syncfs(2)` on the file system holding `file`.
pub fn syncfs(file: &File) -> io::Result<()> {
    // SAFETY: `file` owns a valid open descriptor for the duration of the call, and
    // syncfs reads nothing from user memory.
    let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
