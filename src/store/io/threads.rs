//! The `threads` engine: blocking file I/O on a bounded pool of threads per core.
//!
//! A writer's buffer counts against the core's buffer permits only while bytes flow, as
//! the uring engine's registered buffers do: [`ThreadsWriter::release`] writes it out
//! and returns the permit when the client pauses, and waiting for a permit is bounded.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::buffer_wait_timed_out;
use crate::config::Limits;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads fed through a bounded channel; a full channel makes callers wait.
#[derive(Clone)]
pub struct BlockingPool {
    jobs: SyncSender<Job>,
}

impl BlockingPool {
    pub fn new(threads: usize, queue: usize, name: &str) -> io::Result<BlockingPool> {
        let (jobs, receiver) = sync_channel::<Job>(queue);
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        for i in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let guard = receiver.lock().unwrap_or_else(|p| p.into_inner());
                            guard.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(BlockingPool { jobs })
    }

    /// Runs `f` on a pool thread and resolves with its result.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<R> + Send + 'static,
    ) -> io::Result<R> {
        let (sender, receiver) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = sender.send(f());
        });
        // The queue is sized to the core's concurrency; when full, wait off the core.
        let mut job = Some(job);
        loop {
            match self.jobs.try_send(job.take().expect("job present")) {
                Ok(()) => break,
                Err(std::sync::mpsc::TrySendError::Full(back)) => {
                    job = Some(back);
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    return Err(io::Error::other("io thread pool stopped"));
                }
            }
        }
        receiver
            .await
            .map_err(|_| io::Error::other("io thread pool dropped a job"))?
    }
}

#[derive(Clone)]
pub struct ThreadsIo {
    pub pool: BlockingPool,
    buffer_bytes: usize,
    /// Bounds the write buffers of a core like the uring engine's registered pool does.
    buffers: Arc<Semaphore>,
    buffer_wait_max: Duration,
}

impl ThreadsIo {
    pub fn new(limits: &Limits) -> io::Result<ThreadsIo> {
        let pool = BlockingPool::new(limits.io_threads_per_core, 1024, "rhinobox-io")?;
        Ok(ThreadsIo {
            pool,
            buffer_bytes: limits.io_large_buffer_bytes,
            buffers: Arc::new(Semaphore::new(limits.io_small_buffers_per_core)),
            buffer_wait_max: limits.io_buffer_wait_max,
        })
    }

    /// A writer for a new file at `path`; the file is created by the first flush, so a
    /// small file is one pool job (open, write, close).
    pub fn create_new(&self, path: PathBuf) -> ThreadsWriter {
        self.writer(path, true, 0)
    }

    /// A writer of bytes from `start_offset` on (`pwrite`) in the file at `path`, created
    /// when it does not exist yet (O_CREAT without O_EXCL): other writers may write other
    /// ranges of it at the same time.
    pub fn write_at(&self, path: PathBuf, start_offset: u64) -> ThreadsWriter {
        self.writer(path, false, start_offset)
    }

    fn writer(&self, path: PathBuf, exclusive: bool, start_offset: u64) -> ThreadsWriter {
        ThreadsWriter {
            io: self.clone(),
            path: Arc::new(path),
            exclusive,
            file: None,
            buffer: Vec::new(),
            buffer_permit: None,
            taken_at: None,
            start_offset,
            offset: start_offset,
        }
    }
}

/// Streams one file through a bounded buffer written by the pool.
pub struct ThreadsWriter {
    io: ThreadsIo,
    path: Arc<PathBuf>,
    /// O_EXCL (a file of its own) or not (a file shared with writers of other ranges).
    exclusive: bool,
    /// Opened (O_CREAT, O_EXCL when `exclusive`) by the first flush.
    file: Option<Arc<File>>,
    /// Grows with the file up to `buffer_bytes`, so small files stay small in memory.
    buffer: Vec<u8>,
    buffer_permit: Option<OwnedSemaphorePermit>,
    /// When `buffer_permit` was taken.
    taken_at: Option<Instant>,
    /// File offset of the first byte written (0 for a new file).
    start_offset: u64,
    offset: u64,
}

impl ThreadsWriter {
    pub async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.buffer_permit.is_none() {
            let wait = self.io.buffer_wait_max;
            let permit = tokio::time::timeout(wait, self.io.buffers.clone().acquire_owned())
                .await
                .map_err(|_| buffer_wait_timed_out(wait))?;
            self.buffer_permit = Some(permit.map_err(|_| io::Error::other("buffers closed"))?);
            self.taken_at = Some(Instant::now());
        }
        let cap = self.io.buffer_bytes;
        while !data.is_empty() {
            let n = (cap - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buffer.len() == cap {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        let buffer = std::mem::take(&mut self.buffer);
        let file = self.file.clone();
        let path = self.path.clone();
        let offset = self.offset;
        let exclusive = self.exclusive;
        let written = buffer.len() as u64;
        let (file, buffer) = self
            .io
            .pool
            .run(move || {
                let file = match file {
                    Some(file) => file,
                    None => Arc::new(
                        OpenOptions::new()
                            .write(true)
                            .create(!exclusive)
                            .create_new(exclusive)
                            .mode(0o644)
                            .open(&*path)?,
                    ),
                };
                file.write_all_at(&buffer, offset)?;
                Ok((file, buffer))
            })
            .await?;
        self.file = Some(file);
        self.buffer = buffer;
        self.buffer.clear();
        self.offset += written;
        Ok(())
    }

    /// When the buffer permit was taken, if one is held.
    pub fn buffer_taken_at(&self) -> Option<Instant> {
        self.taken_at
    }

    /// Writes what the buffer holds and returns the buffer permit.
    pub async fn release(&mut self) -> io::Result<()> {
        if self.buffer_permit.is_none() {
            return Ok(());
        }
        if !self.buffer.is_empty() {
            self.flush().await?;
        }
        // Small files stay small in memory: a slow file does not keep a grown buffer.
        self.buffer = Vec::new();
        self.buffer_permit = None;
        self.taken_at = None;
        Ok(())
    }

    /// Writes what is buffered; the bytes this writer wrote (for a
    /// [`ThreadsIo::write_at`] writer, not its end offset).
    pub async fn finish(mut self) -> io::Result<u64> {
        // Flush even when nothing was written: a zero-byte file exists too.
        if !self.buffer.is_empty() || self.file.is_none() {
            self.flush().await?;
        }
        Ok(self.offset - self.start_offset)
    }
}
