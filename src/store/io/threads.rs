//! The `threads` engine: blocking file I/O on a bounded pool of threads per core.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

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
}

impl ThreadsIo {
    pub fn new(limits: &Limits) -> io::Result<ThreadsIo> {
        let pool = BlockingPool::new(limits.io_threads_per_core, 1024, "rhinobox-io")?;
        Ok(ThreadsIo {
            pool,
            buffer_bytes: limits.io_large_buffer_bytes,
            buffers: Arc::new(Semaphore::new(limits.io_small_buffers_per_core)),
        })
    }

    /// A writer for a new file at `path`; the file is created by the first flush, so a
    /// small file is one pool job (open, write, close).
    pub fn create_tmp(&self, path: PathBuf) -> ThreadsWriter {
        ThreadsWriter {
            io: self.clone(),
            path: Arc::new(path),
            file: None,
            buffer: Vec::new(),
            buffer_permit: None,
            offset: 0,
        }
    }
}

/// Streams one file through a bounded buffer written by the pool.
pub struct ThreadsWriter {
    io: ThreadsIo,
    path: Arc<PathBuf>,
    /// Created (O_EXCL) by the first flush.
    file: Option<Arc<File>>,
    /// Grows with the file up to `buffer_bytes`, so small files stay small in memory.
    buffer: Vec<u8>,
    buffer_permit: Option<OwnedSemaphorePermit>,
    offset: u64,
}

impl ThreadsWriter {
    pub async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.buffer_permit.is_none() {
            let permit = self.io.buffers.clone().acquire_owned().await;
            self.buffer_permit = Some(permit.map_err(|_| io::Error::other("buffers closed"))?);
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
                            .create_new(true)
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

    pub async fn finish(mut self) -> io::Result<u64> {
        // Flush even when nothing was written: a zero-byte file exists too.
        if !self.buffer.is_empty() || self.file.is_none() {
            self.flush().await?;
        }
        Ok(self.offset)
    }
}
