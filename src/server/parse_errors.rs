//! JSON bodies for the errors hyper answers by itself.
//!
//! When a request head cannot be parsed (a bad request line, conflicting Content-Length
//! headers, a header line without a colon, a URL or head over the size limit, too many
//! headers), hyper never calls our service: it writes `400`, `414` or `431` with an empty
//! body and closes the connection, and offers no hook to shape that response. Every error
//! of the API is JSON, so [`JsonParseErrors`] sits between hyper and the socket and
//! replaces exactly that response — recognised as a write, while none of our own responses
//! is in flight on the connection, of a whole head with status 400/414/431, `connection:
//! close` and `content-length: 0` (our error responses always carry a JSON body) — by the
//! same status with `{"error": ...}`. The replacement is counted in the metrics and the
//! access log like any request.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use hyper::rt::{Read, ReadBufCursor, Write};

use super::Shared;
use super::access_log::AccessEntry;

/// Counts the responses of our service still being written on one connection (atomic
/// only because response bodies must be `Send`; one core touches it).
#[derive(Clone, Default)]
pub struct ResponsesInFlight(Arc<AtomicU32>);

impl ResponsesInFlight {
    /// Marks one response as in flight until the returned guard drops.
    pub fn start(&self) -> ResponseGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        ResponseGuard(self.0.clone())
    }

    fn none(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }
}

/// Held by a response body; the response is no longer ours to write once it drops.
pub struct ResponseGuard(Arc<AtomicU32>);

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The status and message of a head hyper wrote for a parse error, if `bytes` is one.
pub fn hyper_error_head(bytes: &[u8]) -> Option<(u16, &'static str)> {
    // hyper's automatic response: status line, then exactly these, then the date.
    const HEADERS: &[u8] = b"\r\nconnection: close\r\ncontent-length: 0\r\ndate: ";
    if bytes.len() > 256 || !bytes.ends_with(b"\r\n\r\n") {
        return None;
    }
    let (status, message) = match bytes.get(..12)? {
        b"HTTP/1.1 400" => (400, "malformed request head (request line or headers)"),
        b"HTTP/1.1 414" => (414, "request URI too long"),
        b"HTTP/1.1 431" => (431, "request head too large or too many headers"),
        _ => return None,
    };
    memchr::memmem::find(bytes, HEADERS)?;
    Some((status, message))
}

fn json_error_response(status: u16, message: &str) -> Vec<u8> {
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut body = serde_json::to_vec(&serde_json::json!({ "error": message }))
        .expect("a JSON object always serializes");
    body.push(b'\n');
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// An IO wrapper that rewrites hyper's empty parse-error responses into JSON ones.
pub struct JsonParseErrors<T> {
    inner: T,
    in_flight: ResponsesInFlight,
    shared: Arc<Shared>,
    /// The client, for the access log.
    peer: SocketAddr,
    /// A replacement response and how much of it was written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> JsonParseErrors<T> {
    pub fn new(
        inner: T,
        in_flight: ResponsesInFlight,
        shared: Arc<Shared>,
        peer: SocketAddr,
    ) -> Self {
        JsonParseErrors {
            inner,
            in_flight,
            shared,
            peer,
            pending: None,
        }
    }
}

impl<T: Write + Unpin> JsonParseErrors<T> {
    /// Writes what is left of a replacement; `Ready(Ok)` once none is left.
    fn drive_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written when it is hyper's parse-error head, queueing the JSON one.
    fn replace(&mut self, buf: &[u8]) -> bool {
        if !self.in_flight.none() {
            return false;
        }
        let Some((status, message)) = hyper_error_head(buf) else {
            return false;
        };
        let response = json_error_response(status, message);
        self.shared.http_metrics.observe(status, 0.0);
        self.shared.access_log.record(&AccessEntry {
            peer: self.peer,
            method: "-",
            path: "(unparsable request)",
            query: None,
            status,
            bytes_sent: response.len() as u64,
            millis: 0.0,
        });
        self.pending = Some((response, 0));
        true
    }
}

impl<T: Read + Unpin> Read for JsonParseErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for JsonParseErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drive_pending(cx))?;
        if this.replace(buf) {
            // The replacement goes out on the next write, flush or shutdown.
            let _ = this.drive_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drive_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && this.replace(first)
        {
            let _ = this.drive_pending(cx)?;
            return Poll::Ready(Ok(first.len()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drive_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drive_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_hyper_error_heads() {
        let head = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\
                     date: Wed, 02 Dec 2026 00:04:12 GMT\r\n\r\n";
        assert_eq!(hyper_error_head(head).map(|(s, _)| s), Some(400));
        let long = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n\
                     date: Wed, 02 Dec 2026 00:04:12 GMT\r\n\r\n";
        assert_eq!(hyper_error_head(long).map(|(s, _)| s), Some(414));
        // Our own responses carry a body and a content type.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                     content-length: 20\r\ndate: Wed, 02 Dec 2026 00:04:12 GMT\r\n\r\n";
        assert_eq!(hyper_error_head(ours), None);
        let ok = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\
                   date: Wed, 02 Dec 2026 00:04:12 GMT\r\n\r\n";
        assert_eq!(hyper_error_head(ok), None);
        let response = String::from_utf8(json_error_response(431, "x")).unwrap();
        assert!(response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(
            response.ends_with("\r\n\r\n{\"error\":\"x\"}\n"),
            "{response}"
        );
    }
}
