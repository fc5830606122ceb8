//! The io_uring engine: two classes of registered buffers, O_DIRECT for large files.
//!
//! Every file starts in a small buffer (64 KiB): a small file is one open, one write from
//! that buffer and one close. A file that outgrows it continues in large buffers (1 MiB)
//! at 4096-aligned offsets; full large buffers of a large file go out with O_DIRECT, two
//! writes in flight while the next buffer fills. Tails are written through the page cache.
//!
//! A buffer is a shared resource of the core: a writer holds one only while bytes flow.
//! [`UringWriter::release`] writes out what a buffer holds and gives it back (the caller
//! does so when the client pauses). The file offset is then unaligned: the next buffer is a
//! small one filled only up to the next 4096-byte boundary, after which the file goes on
//! in large buffers with O_DIRECT, so one pause does not cost a large upload its direct
//! writes. (Trickling clients never get that far: the caller stages a small buffer's worth
//! before it writes again.)
//! Waiting for a buffer is bounded ([`Limits::io_buffer_wait_max`]): a full pool answers
//! with a `TimedOut` error (503) instead of waiting forever.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::buf::fixed::{FixedBuf, FixedBufPool};
use tokio_uring::fs::{File, OpenOptions};

use super::{ALIGN_BYTES, AlignedBuf, buffer_wait_timed_out};
use crate::config::Limits;

/// Writes of one file in flight at most (besides the buffer being filled).
const WRITES_IN_FLIGHT_MAX: usize = 2;

/// Per-core io_uring resources: the registered buffer pool (both classes).
pub struct UringIo {
    pool: Rc<FixedBufPool<AlignedBuf>>,
    small_bytes: usize,
    large_bytes: usize,
    direct_bytes_min: u64,
    buffer_wait_max: Duration,
}

// Cloning shares the one registered pool of the core.
impl Clone for UringIo {
    fn clone(&self) -> Self {
        UringIo {
            pool: self.pool.clone(),
            small_bytes: self.small_bytes,
            large_bytes: self.large_bytes,
            direct_bytes_min: self.direct_bytes_min,
            buffer_wait_max: self.buffer_wait_max,
        }
    }
}

impl UringIo {
    pub fn new(limits: &Limits) -> io::Result<UringIo> {
        let small = (0..limits.io_small_buffers_per_core)
            .map(|_| AlignedBuf::new(limits.io_small_buffer_bytes));
        let large = (0..limits.io_large_buffers_per_core)
            .map(|_| AlignedBuf::new(limits.io_large_buffer_bytes));
        let pool = FixedBufPool::new(small.chain(large));
        pool.register()?;
        Ok(UringIo {
            pool: Rc::new(pool),
            small_bytes: limits.io_small_buffer_bytes,
            large_bytes: limits.io_large_buffer_bytes,
            direct_bytes_min: limits.direct_io_bytes_min,
            buffer_wait_max: limits.io_buffer_wait_max,
        })
    }

    /// A writer for a new file at `path`; the file is created with the first write to
    /// disk, so a small file costs one open, one write and one close, all in `finish`.
    pub fn create_new(&self, path: PathBuf) -> UringWriter {
        self.writer(path, Opening::CreateNew, 0)
    }

    /// A writer of bytes from `start_offset` on in the file at `path`, created when it does
    /// not exist yet (O_CREAT without O_EXCL): other writers may write other ranges of it
    /// at the same time. Bytes outside the range written are left as they are.
    pub fn write_at(&self, path: PathBuf, start_offset: u64) -> UringWriter {
        self.writer(path, Opening::Existing, start_offset)
    }

    fn writer(&self, path: PathBuf, opening: Opening, start_offset: u64) -> UringWriter {
        UringWriter {
            io: self.clone(),
            path,
            opening,
            start_offset,
            buffered: None,
            direct: None,
            direct_unsupported: false,
            filling: None,
            taken_at: None,
            filled: 0,
            offset: start_offset,
            in_flight: VecDeque::new(),
        }
    }
}

/// How a writer opens its file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// O_CREAT|O_EXCL: a file of its own.
    CreateNew,
    /// O_CREAT: a file shared with other writers (each its own range).
    Existing,
}

/// A write in flight. It gives its buffer back to the pool the moment the kernel is done
/// with it, not when the writer looks at the result: a writer waiting for a buffer must
/// never be waiting on buffers that only it could release.
type WriteTask = JoinHandle<io::Result<()>>;

/// Streams one file through registered buffers.
pub struct UringWriter {
    io: UringIo,
    path: PathBuf,
    opening: Opening,
    /// File offset of the first byte written (0 for a new file).
    start_offset: u64,
    /// Opened (O_CREAT, with O_EXCL for a new file) on the first write to disk.
    buffered: Option<Rc<File>>,
    direct: Option<Rc<File>>,
    direct_unsupported: bool,
    filling: Option<FixedBuf>,
    /// When `filling` was checked out.
    taken_at: Option<Instant>,
    filled: usize,
    /// File offset of the first byte of `filling`.
    offset: u64,
    in_flight: VecDeque<WriteTask>,
}

impl UringWriter {
    pub async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.filling.is_none() {
                // The first buffer of a file is small, the rest large. Waits when every
                // buffer of that class on this core is in use: the pool is the bound.
                let cap = self.next_capacity();
                let buffer = tokio::time::timeout(self.io.buffer_wait_max, self.io.pool.next(cap))
                    .await
                    .map_err(|_| buffer_wait_timed_out(self.io.buffer_wait_max))?;
                self.filling = Some(buffer);
                self.taken_at = Some(Instant::now());
            }
            let fill_max = self.fill_max();
            let buf = self.filling.as_mut().expect("buffer checked out above");
            let n = (fill_max - self.filled).min(data.len());
            buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == fill_max {
                self.write_full_buffer().await?;
            }
        }
        Ok(())
    }

    /// When the buffer being filled was taken, if one is.
    pub fn buffer_taken_at(&self) -> Option<Instant> {
        self.taken_at
    }

    /// Writes what the buffer being filled holds (through the page cache) and gives the
    /// buffer back to the pool.
    pub async fn release(&mut self) -> io::Result<()> {
        let Some(buf) = self.filling.take() else {
            return Ok(());
        };
        self.taken_at = None;
        if self.filled == 0 {
            return Ok(());
        }
        let buffered = self.buffered_file().await?;
        let (result, _) = buffered
            .write_fixed_all_at(buf.slice(..self.filled), self.offset)
            .await;
        result?;
        self.offset += self.filled as u64;
        self.filled = 0;
        Ok(())
    }

    /// How full the buffer being filled gets before it is written: all of it, except past
    /// the first buffer at an unaligned offset (after a release, or when the writer started
    /// at an unaligned offset), where it fills only up to the next 4096-byte boundary so
    /// that the buffers after it can go out with O_DIRECT.
    fn fill_max(&self) -> usize {
        let cap = self.filling.as_ref().map_or(0, |b| b.len());
        let misalignment = (self.offset % ALIGN_BYTES as u64) as usize;
        if self.offset > self.start_offset && misalignment != 0 {
            (ALIGN_BYTES - misalignment).min(cap)
        } else {
            cap
        }
    }

    fn next_capacity(&self) -> usize {
        if self.offset == self.start_offset || !self.offset.is_multiple_of(ALIGN_BYTES as u64) {
            self.io.small_bytes
        } else {
            self.io.large_bytes
        }
    }

    /// Hands the full buffer to a write op and keeps filling a fresh one meanwhile.
    async fn write_full_buffer(&mut self) -> io::Result<()> {
        while self.in_flight.len() >= WRITES_IN_FLIGHT_MAX {
            self.wait_oldest().await?;
        }
        let buf = self.filling.take().expect("a full buffer");
        self.taken_at = None;
        let len = self.filled;
        let file = self.target_for(len).await?;
        let offset = self.offset;
        self.offset += len as u64;
        self.filled = 0;
        self.in_flight.push_back(tokio_uring::spawn(async move {
            let (result, slice) = file.write_fixed_all_at(buf.slice(..len), offset).await;
            drop(slice);
            result
        }));
        Ok(())
    }

    async fn wait_oldest(&mut self) -> io::Result<()> {
        if let Some(task) = self.in_flight.pop_front() {
            task.await.map_err(io::Error::other)??;
        }
        Ok(())
    }

    /// The page-cache descriptor, creating the file on first use (a direct `openat` on
    /// the core thread: io_uring would punt it to an io-wq worker, which measured slower).
    async fn buffered_file(&mut self) -> io::Result<Rc<File>> {
        if self.buffered.is_none() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(self.opening == Opening::Existing)
                .create_new(self.opening == Opening::CreateNew)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC)
                .open(&self.path)?;
            self.buffered = Some(Rc::new(File::from_std(file)));
        }
        Ok(self.buffered.clone().expect("opened above"))
    }

    /// O_DIRECT for a full large buffer of a large file, else the page cache.
    async fn target_for(&mut self, buffer_bytes: usize) -> io::Result<Rc<File>> {
        let buffered = self.buffered_file().await?;
        // O_DIRECT needs an aligned file offset (a realigning buffer is small anyway); the
        // buffer's length is a multiple of 4096 (a large buffer), so its end is aligned too
        // and a direct write never touches a page that bytes outside this range share.
        let written = self.offset - self.start_offset;
        let large = buffer_bytes == self.io.large_bytes
            && self.offset.is_multiple_of(ALIGN_BYTES as u64)
            && written + buffer_bytes as u64 >= self.io.direct_bytes_min;
        if !large || self.direct_unsupported {
            return Ok(buffered);
        }
        if self.direct.is_none() {
            let opened = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
                .open(&self.path)
                .await;
            match opened {
                Ok(file) => self.direct = Some(Rc::new(file)),
                // tmpfs and some FUSE file systems refuse O_DIRECT: stay buffered.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct_unsupported = true;
                    return Ok(buffered);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.direct.clone().expect("opened above"))
    }

    /// Waits for every write in flight, ignoring their results; writes nothing more.
    pub async fn abandon(mut self) {
        while let Some(task) = self.in_flight.pop_front() {
            let _ = task.await;
        }
    }

    /// Writes what is buffered, closes the file; the bytes this writer wrote (for a
    /// [`UringIo::write_at`] writer, not its end offset).
    pub async fn finish(mut self) -> io::Result<u64> {
        while !self.in_flight.is_empty() {
            self.wait_oldest().await?;
        }
        let buffered = self.buffered_file().await?;
        self.taken_at = None;
        if let Some(buf) = self.filling.take()
            && self.filled > 0
        {
            let (result, _) = buffered
                .write_fixed_all_at(buf.slice(..self.filled), self.offset)
                .await;
            result?;
        }
        let size = self.offset + self.filled as u64 - self.start_offset;
        if let Some(direct) = self.direct.take() {
            close(direct).await?;
        }
        self.buffered = None;
        close(buffered).await?;
        Ok(size)
    }
}

async fn close(file: Rc<File>) -> io::Result<()> {
    match Rc::try_unwrap(file) {
        Ok(file) => file.close().await,
        // Still shared by a finished write task's handle: dropping closes it.
        Err(_) => Ok(()),
    }
}
