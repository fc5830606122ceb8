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
//! ([`FileWriter`]), or stream bytes into a range of a file shared with other writers
//! ([`CoreIo::write_at`]: a multipart upload's parts, each at its place), rename, remove,
//! create directories. A writer holds one of the core's
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

/// Streams into a new file (never replacing one), or into a file from an offset on;
/// `finish` ends it.
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

    /// A writer of bytes from `start_offset` on in the file at `path`, which it creates
    /// when it does not exist (O_CREAT, no O_EXCL): the bytes outside its range are
    /// neither read nor changed, so writers of disjoint ranges may run at the same time.
    /// [`FileWriter::finish`] returns the bytes written, not the end offset. The uring
    /// engine keeps O_DIRECT for full aligned large buffers only, so a start offset that
    /// is not a multiple of 4096 costs one small realigning buffer through the page cache.
    pub fn write_at(&self, path: PathBuf, start_offset: u64) -> FileWriter {
        match self {
            CoreIo::Uring(io) => FileWriter::Uring(io.write_at(path, start_offset)),
            CoreIo::Threads(io) => FileWriter::Threads(io.write_at(path, start_offset)),
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

    /// Gives up after a failure: waits for every write in flight (their results
    /// ignored), writes nothing more. A writer of a range of a shared file calls it so
    /// that none of its writes lands after its failure is reported.
    pub async fn abandon(self) {
        match self {
            FileWriter::Uring(w) => w.abandon().await,
            // Its writes run one at a time and are awaited: none is left in flight.
            FileWriter::Threads(_) => {}
        }
    }

    /// Writes what is buffered, closes the file and returns the bytes this writer wrote:
    /// the file's size for a new file, the length of its range for [`CoreIo::write_at`].
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory on the build's disk (not a tmpfs `/tmp`), so that the uring engine's
    /// O_DIRECT writes run for real where the disk allows them.
    fn test_dir(name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("io-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn small_limits() -> Limits {
        let mut limits = Limits::with_defaults();
        limits.io_small_buffers_per_core = 2;
        limits.io_large_buffers_per_core = 4;
        limits
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
            .collect()
    }

    /// Writes ranges into an existing 12 MiB file of 0xAA bytes at an aligned and an
    /// unaligned offset, long enough for the uring engine's large and direct writes, and
    /// one range into a file that does not exist yet; checks every byte of the files and
    /// that `finish` returns the bytes written.
    async fn writes_land_at_their_offset(io: CoreIo, dir: &Path) {
        let path = dir.join("existing");
        let mut expected = vec![0xAAu8; 12 << 20];
        std::fs::write(&path, &expected).unwrap();
        for (offset, len, seed) in [
            (8usize << 20, (3 << 20) + 123, 1u8),
            (4096 * 3 + 17, 2 << 20, 2),
        ] {
            let data = bytes(len, seed);
            let mut writer = io.write_at(path.clone(), offset as u64);
            // Uneven pieces, as a body arrives.
            for piece in data.chunks(70_001) {
                writer.write(piece).await.unwrap();
            }
            assert_eq!(writer.finish().await.unwrap(), len as u64);
            let end = offset + len;
            if expected.len() < end {
                expected.resize(end, 0);
            }
            expected[offset..end].copy_from_slice(&data);
        }
        assert_eq!(std::fs::read(&path).unwrap(), expected);

        let sparse = dir.join("new");
        let data = bytes(100_000, 3);
        let mut writer = io.write_at(sparse.clone(), 5 << 20);
        writer.write(&data).await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), data.len() as u64);
        let read = std::fs::read(&sparse).unwrap();
        assert_eq!(read.len(), (5 << 20) + data.len());
        assert!(read[..5 << 20].iter().all(|&b| b == 0));
        assert_eq!(&read[5 << 20..], &data[..]);

        // create_new still refuses an existing file.
        let mut writer = io.create_new(path.clone());
        writer.write(b"x").await.unwrap();
        assert!(writer.finish().await.is_err());
    }

    #[test]
    fn threads_writer_writes_at_an_offset() {
        let dir = test_dir("threads");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let io = CoreIo::threads(&small_limits()).unwrap();
        runtime.block_on(writes_land_at_their_offset(io, &dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn uring_writer_writes_at_an_offset() {
        if let Err(e) = io_uring_probe_ring() {
            // The daemon falls back to `threads` there too (tested above).
            eprintln!("io_uring unavailable here ({e}): uring writer not tested");
            return;
        }
        let dir = test_dir("uring");
        let limits = small_limits();
        tokio_uring::start(async {
            let io = CoreIo::uring(&limits).unwrap();
            writes_land_at_their_offset(io, &dir).await;
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
