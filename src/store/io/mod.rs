//! The io engines: how bytes reach files. One [`CoreIo`] per core runtime.
//!
//! - `uring`: io_uring ops on the core's own ring; writes go through a per-core pool of
//!   page-aligned registered (fixed) buffers allocated at start-up (see `uring`). Full
//!   large buffers of a large file are written with O_DIRECT, the tail and small files
//!   through the page cache. Creating a file and renaming it are plain syscalls on the core
//!   thread: io_uring punts both to io-wq worker threads, and the hand-off cost more than
//!   the syscall (A/B on one host: single-file POST p50 0.132 → 0.123 ms, 1000-file batch
//!   49.7 → 44.9 ms, sustained unchanged; tuning.md). Reads, writes, closes and unlinks
//!   stay on the ring.
//! - `threads`: the same operations as blocking calls on a bounded per-core thread pool,
//!   for hosts where io_uring is blocked.
//!
//! Both engines expose the same small surface: create a new file and stream bytes into it
//! ([`FileWriter`]), rename, remove, create directories. A writer holds one of the core's
//! io buffers only while bytes flow: [`FileWriter::release`] gives it back. Reads for downloads live in
//! `api::files`, which streams a file it keeps open.

mod aligned;
pub mod memlock;
mod threads;
mod uring;

use std::io;
use std::path::{Path, PathBuf};

pub use aligned::{ALIGN_BYTES, AlignedBuf};
pub use threads::BlockingPool;

use crate::config::Limits;

/// The engine a core runs, with its per-core resources.
#[derive(Clone)]
pub enum CoreIo {
    Uring(uring::UringIo),
    Threads(threads::ThreadsIo),
}

/// Creates a new file (never replacing one) and streams into it; `finish` ends it.
pub enum FileWriter {
    Uring(uring::UringWriter),
    Threads(threads::ThreadsWriter),
}

impl CoreIo {
    /// Sets up io_uring resources; must run on the core's tokio-uring runtime.
    pub fn uring(limits: &Limits) -> io::Result<CoreIo> {
        uring::UringIo::new(limits).map(CoreIo::Uring)
    }

    /// Sets up the blocking pool of the `threads` engine.
    pub fn threads(limits: &Limits) -> io::Result<CoreIo> {
        threads::ThreadsIo::new(limits).map(CoreIo::Threads)
    }

    /// A writer for a new file at `path` (O_EXCL: an existing file is an error); the file
    /// appears on disk with its first write.
    pub fn create_new(&self, path: PathBuf) -> FileWriter {
        match self {
            CoreIo::Uring(io) => FileWriter::Uring(io.create_new(path)),
            CoreIo::Threads(io) => FileWriter::Threads(io.create_new(path)),
        }
    }

    /// Renames `from` to `to` unless `to` exists (then `AlreadyExists`): a final name never
    /// replaces another file.
    pub async fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        crate::store::failpoint::check("rename")?;
        match self {
            // A direct syscall on purpose: see the module comment.
            CoreIo::Uring(_) => rename_noreplace(from, to),
            CoreIo::Threads(io) => {
                let (from, to) = (from.to_path_buf(), to.to_path_buf());
                io.pool.run(move || rename_noreplace(&from, &to)).await
            }
        }
    }

    pub async fn remove_file(&self, path: &Path) -> io::Result<()> {
        crate::store::failpoint::check("unlink")?;
        match self {
            CoreIo::Uring(_) => tokio_uring::fs::remove_file(path).await,
            CoreIo::Threads(io) => {
                let path = path.to_path_buf();
                io.pool.run(move || std::fs::remove_file(path)).await
            }
        }
    }

    pub async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        match self {
            CoreIo::Uring(_) => tokio_uring::fs::create_dir_all(path).await,
            CoreIo::Threads(io) => {
                let path = path.to_path_buf();
                io.pool.run(move || std::fs::create_dir_all(path)).await
            }
        }
    }
}

impl FileWriter {
    /// Appends `data` to the file. Waits at most [`Limits::io_buffer_wait_max`] for an io
    /// buffer, then fails with [`io::ErrorKind::TimedOut`].
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        crate::store::failpoint::check("write")?;
        match self {
            FileWriter::Uring(w) => w.write(data).await,
            FileWriter::Threads(w) => w.write(data).await,
        }
    }

    /// When the writer took the io buffer it holds; `None` when it holds none.
    pub fn buffer_taken_at(&self) -> Option<std::time::Instant> {
        match self {
            FileWriter::Uring(w) => w.buffer_taken_at(),
            FileWriter::Threads(w) => w.buffer_taken_at(),
        }
    }

    /// Writes what the held io buffer contains and gives the buffer back (the client
    /// paused: a connection waiting on the network holds no shared resource).
    pub async fn release(&mut self) -> io::Result<()> {
        match self {
            FileWriter::Uring(w) => w.release().await,
            FileWriter::Threads(w) => w.release().await,
        }
    }

    /// Writes what is buffered, closes the file and returns its size in bytes.
    pub async fn finish(self) -> io::Result<u64> {
        match self {
            FileWriter::Uring(w) => w.finish().await,
            FileWriter::Threads(w) => w.finish().await,
        }
    }
}

/// The error of a bounded wait for an io buffer that ran out (answered with 503).
pub fn buffer_wait_timed_out(waited: std::time::Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no io buffer free within {} s", waited.as_secs()),
    )
}

/// Probes whether io_uring works here: a ring can be created and a buffer registered.
pub fn probe_uring(limits: &Limits, probe_dir: &Path) -> Result<(), String> {
    io_uring_probe_ring().map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let rt = tokio_uring::Runtime::new(&tokio_uring::builder())
        .map_err(|e| format!("tokio-uring runtime failed: {e}"))?;
    // One small buffer proves registration works; the cores' pools were sized to the
    // locked-memory limit already, and a ring's pinned pages are released asynchronously
    // after it closes, so a full-size probe pool would still count when the cores register.
    let mut limits = limits.clone();
    limits.io_small_buffers_per_core = 1;
    limits.io_large_buffers_per_core = 0;
    let probe_dir = probe_dir.to_path_buf();
    rt.block_on(async move {
        let io = uring::UringIo::new(&limits).map_err(|e| {
            format!(
                "registering {} KiB of io buffers failed: {e}",
                memlock::pool_bytes(&limits) / 1024
            )
        })?;
        // A real file op proves the ring works under this seccomp profile.
        let dir = probe_dir.join(format!("probe-{}", std::process::id()));
        let mut writer = io.create_new(dir.clone());
        writer
            .write(b"probe")
            .await
            .map_err(|e| format!("io_uring write failed: {e}"))?;
        writer
            .finish()
            .await
            .map_err(|e| format!("io_uring write failed: {e}"))?;
        let _ = std::fs::remove_file(&dir);
        Ok(())
    })
}

fn io_uring_probe_ring() -> io::Result<()> {
    // tokio-uring's Runtime::new panics on some failures; a raw setup call does not.
    // SAFETY: io_uring_setup with a zeroed params struct only writes into it; the fd it
    // returns is closed right away.
    let mut params: [u8; 120] = [0; 120];
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we own and close exactly once.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// `renameat2(RENAME_NOREPLACE)`; where the file system does not support the flag
/// (EINVAL), `link` + `unlink`, which refuses an existing target just the same.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from_c = CString::new(from.as_os_str().as_bytes())?;
    let to_c = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both pointers are NUL-terminated strings that live across the call;
    // AT_FDCWD makes relative paths resolve as for rename(2).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EINVAL) {
        return Err(error);
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}
