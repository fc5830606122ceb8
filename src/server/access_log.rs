//! The access log: one line per request on stderr, written by its own thread.
//!
//! Cores hand finished lines to a bounded channel and never block on stderr; when the
//! channel is full (stderr slower than the request rate) the line is counted as dropped.
//! The writer wakes on a timer and writes what queued in one call, rather than being woken
//! by every request: a wake-up per request cost a futex call and a context switch on the
//! serving core (measured with single-file PUTs; tuning.md). Lines reach stderr within
//! [`ACCESS_LOG_FLUSH_INTERVAL`]; [`AccessLog::stop`] flushes the rest at shutdown.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// Lines waiting for the writer thread at most.
pub const ACCESS_LOG_QUEUE_LINES: usize = 65536;

/// How often the writer drains the queue.
pub const ACCESS_LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(10);

pub struct AccessLog {
    lines: SyncSender<String>,
    pub dropped_total: AtomicU64,
    stopping: std::sync::Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Writes everything queued now in one call; false once every sender is gone.
fn drain(receiver: &Receiver<String>, batch: &mut Vec<u8>) -> bool {
    let mut connected = true;
    loop {
        match receiver.try_recv() {
            Ok(line) => batch.extend_from_slice(line.as_bytes()),
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => {
                connected = false;
                break;
            }
        }
    }
    if !batch.is_empty() {
        let _ = std::io::stderr().lock().write_all(batch);
        batch.clear();
    }
    connected
}

impl AccessLog {
    pub fn start() -> std::io::Result<AccessLog> {
        let (lines, receiver) = sync_channel::<String>(ACCESS_LOG_QUEUE_LINES);
        let stopping = std::sync::Arc::new(AtomicBool::new(false));
        let stop_seen = stopping.clone();
        let writer = std::thread::Builder::new()
            .name("rhinobox-log".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(64 * 1024);
                while !stop_seen.load(Ordering::Acquire) {
                    std::thread::sleep(ACCESS_LOG_FLUSH_INTERVAL);
                    if !drain(&receiver, &mut batch) {
                        return;
                    }
                }
                drain(&receiver, &mut batch);
            })?;
        Ok(AccessLog {
            lines,
            dropped_total: AtomicU64::new(0),
            stopping,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Writes what is queued and stops the writer (at shutdown, after the cores stopped).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }

    /// `"POST /ingest/media" - 200 45896B in 15.69ms`
    pub fn record(&self, method: &str, path: &str, status: u16, bytes: u64, millis: f64) {
        let line = format!("\"{method} {path}\" - {status} {bytes}B in {millis:.2}ms\n");
        if let Err(TrySendError::Full(_)) = self.lines.try_send(line) {
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
        }
    }
}
