//! The access log: one line per request on stderr, written by its own thread.
//!
//! Cores hand finished lines to a bounded channel and never block on stderr; when the
//! channel is full (stderr slower than the request rate) the line is counted as dropped.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Lines waiting for the writer thread at most.
pub const ACCESS_LOG_QUEUE_LINES: usize = 65536;

pub struct AccessLog {
    lines: SyncSender<String>,
    pub dropped_total: AtomicU64,
}

impl AccessLog {
    pub fn start() -> std::io::Result<AccessLog> {
        let (lines, receiver) = sync_channel::<String>(ACCESS_LOG_QUEUE_LINES);
        std::thread::Builder::new()
            .name("rhinobox-log".into())
            .spawn(move || {
                let stderr = std::io::stderr();
                while let Ok(line) = receiver.recv() {
                    let mut out = stderr.lock();
                    let _ = out.write_all(line.as_bytes());
                    // Drain what queued meanwhile under the same lock.
                    while let Ok(line) = receiver.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                }
            })?;
        Ok(AccessLog {
            lines,
            dropped_total: AtomicU64::new(0),
        })
    }

    /// `"POST /ingest/media" - 200 45896B in 15.69ms`
    pub fn record(&self, method: &str, path: &str, status: u16, bytes: u64, millis: f64) {
        let line = format!("\"{method} {path}\" - {status} {bytes}B in {millis:.2}ms\n");
        if let Err(TrySendError::Full(_)) = self.lines.try_send(line) {
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
        }
    }
}
