//! The access log: one line per request on stderr, written by its own thread.
//!
//! A line: `ADDR "METHOD PATH" - STATUS BYTESB in MILLISms[ query="QUERY"]`, e.g.
//! `127.0.0.1:41234 "GET /files/download" - 200 67108871B in 3.21ms query="hash=3f1c..."`.
//! ADDR is the client's address and port (`[v6]:port` for IPv6 clients), `query=` appears
//! only when the request had a query. What the client chose (path, query) is escaped
//! (`"` and `\` with a backslash, control and non-ASCII bytes as `\xHH`) and cut to a
//! bounded length (marked with `…`), so that no request can forge or bloat a line. The
//! token never appears: it travels in the Authorization header, which is not logged.
//!
//! Cores hand finished lines to a bounded channel and never block on stderr; when the
//! channel is full (stderr slower than the request rate) the line is counted as dropped.
//! The writer wakes on a timer and writes what queued in one call, rather than being woken
//! by every request: a wake-up per request cost a futex call and a context switch on the
//! serving core (measured with single-file PUTs; tuning.md). Lines reach stderr within
//! [`ACCESS_LOG_FLUSH_INTERVAL`]; [`AccessLog::stop`] flushes the rest at shutdown.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// Lines waiting for the writer thread at most.
pub const ACCESS_LOG_QUEUE_LINES: usize = 65536;

/// How often the writer drains the queue.
pub const ACCESS_LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// Longest path logged, in bytes after escaping: a path can be as long as the request
/// head (64 KiB); what identifies a route or a file fits well within this.
pub const ACCESS_LOG_PATH_BYTES_MAX: usize = 1024;

/// Longest query logged, in bytes after escaping: `hash=` plus 64 hex digits, a stored
/// path or a search fits; a longer one is cut and ends with `…`.
pub const ACCESS_LOG_QUERY_BYTES_MAX: usize = 512;

/// One request as the access log writes it.
pub struct AccessEntry<'a> {
    pub peer: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    /// The query without the `?`; None (or empty) when there was none.
    pub query: Option<&'a str>,
    pub status: u16,
    pub bytes_sent: u64,
    pub millis: f64,
}

impl AccessEntry<'_> {
    /// The line, newline included.
    pub fn line(&self) -> String {
        let mut line = String::with_capacity(128);
        let _ = write!(line, "{} \"{} ", self.peer, self.method);
        push_escaped(&mut line, self.path, ACCESS_LOG_PATH_BYTES_MAX);
        let _ = write!(
            line,
            "\" - {} {}B in {:.2}ms",
            self.status, self.bytes_sent, self.millis
        );
        if let Some(query) = self.query.filter(|q| !q.is_empty()) {
            line.push_str(" query=\"");
            push_escaped(&mut line, query, ACCESS_LOG_QUERY_BYTES_MAX);
            line.push('"');
        }
        line.push('\n');
        line
    }
}

/// Appends `text` with `"` and `\` escaped by a backslash and every control or non-ASCII
/// byte as `\xHH`; at most `bytes_max` bytes of escaped text, then `…` when cut.
fn push_escaped(out: &mut String, text: &str, bytes_max: usize) {
    let mut written = 0;
    for byte in text.bytes() {
        let mut escaped = [0u8; 4];
        let piece: &[u8] = match byte {
            b'"' | b'\\' => {
                escaped[..2].copy_from_slice(&[b'\\', byte]);
                &escaped[..2]
            }
            0x20..=0x7e => std::slice::from_ref(&byte),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                escaped = [
                    b'\\',
                    b'x',
                    HEX[(byte >> 4) as usize],
                    HEX[(byte & 15) as usize],
                ];
                &escaped
            }
        };
        if written + piece.len() > bytes_max {
            out.push('…');
            return;
        }
        written += piece.len();
        // Every piece is printable ASCII.
        out.extend(piece.iter().map(|&b| b as char));
    }
}

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

    /// Queues the line of one request; counted as dropped when the queue is full.
    pub fn record(&self, entry: &AccessEntry<'_>) {
        if let Err(TrySendError::Full(_)) = self.lines.try_send(entry.line()) {
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(path: &'a str, query: Option<&'a str>) -> AccessEntry<'a> {
        AccessEntry {
            peer: "127.0.0.1:41234".parse().unwrap(),
            method: "GET",
            path,
            query,
            status: 200,
            bytes_sent: 67108871,
            millis: 3.214,
        }
    }

    /// The documented shape, with and without a query.
    #[test]
    fn line_format() {
        assert_eq!(
            entry("/files/download", Some("hash=ab")).line(),
            "127.0.0.1:41234 \"GET /files/download\" - 200 67108871B in 3.21ms query=\"hash=ab\"\n"
        );
        assert_eq!(
            entry("/healthz", None).line(),
            "127.0.0.1:41234 \"GET /healthz\" - 200 67108871B in 3.21ms\n"
        );
        assert!(!entry("/healthz", Some("")).line().contains("query="));
    }

    /// Quotes, backslashes, control and non-ASCII bytes cannot end the field or the line.
    #[test]
    fn client_text_is_escaped() {
        let line = entry("/a\"b", Some("x=\"\\\r\n127.0.0.1:1 \"GET /\" - 200 0B é")).line();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains("\"GET /a\\\"b\""), "{line}");
        assert!(
            line.contains(r#"query="x=\"\\\x0d\x0a127.0.0.1:1 \"GET /\" - 200 0B \xc3\xa9""#),
            "{line}"
        );
    }

    /// A long query is cut at the bound and says so.
    #[test]
    fn long_query_is_truncated() {
        let query = "q=".to_string() + &"a".repeat(10_000);
        let line = entry("/files/search", Some(&query)).line();
        let logged = line.split("query=\"").nth(1).unwrap();
        assert!(logged.ends_with("…\"\n"), "{line}");
        assert_eq!(logged.len(), ACCESS_LOG_QUERY_BYTES_MAX + "…\"\n".len());
        let path = "/".to_string() + &"\x01".repeat(1000);
        let line = entry(&path, None).line();
        assert!(
            line.len() < ACCESS_LOG_PATH_BYTES_MAX + 100,
            "{}",
            line.len()
        );
    }
}
