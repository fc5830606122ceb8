//! A multipart/form-data encoder (RFC 7578) that writes parts the way browsers do.
//!
//! Parts are appended to one body buffer in the order they are added; [`Multipart::finish`]
//! closes the body and returns the `Content-Type` header value with it. A file name is
//! quoted as WHATWG's form encoding does it: `"` becomes `%22`, CR and LF become `%0D` and
//! `%0A`, every other byte (UTF-8 included) is sent as is. [`Multipart::raw_part`] writes a
//! part with hand-made headers, for tests of odd `Content-Disposition` forms. For bodies
//! too large for memory, [`Multipart::finish_streaming`] ends the body with one file part
//! read from a reader. The boundary is random per encoder and never appears in the bytes
//! of a generated payload by construction of its length (52 characters of entropy).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{Cursor, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Encoder for one multipart/form-data body.
pub struct Multipart {
    boundary: String,
    body: Vec<u8>,
}

impl Default for Multipart {
    fn default() -> Self {
        Multipart::new()
    }
}

impl Multipart {
    /// An empty body with a fresh random boundary.
    pub fn new() -> Multipart {
        Multipart::with_boundary(&random_boundary())
    }

    /// An empty body with a boundary chosen by the caller.
    pub fn with_boundary(boundary: &str) -> Multipart {
        Multipart {
            boundary: boundary.to_string(),
            body: Vec::new(),
        }
    }

    /// The boundary, without the leading `--`.
    pub fn boundary(&self) -> &str {
        &self.boundary
    }

    /// Adds a file part.
    pub fn file(mut self, field: &str, filename: &str, content_type: &str, bytes: &[u8]) -> Self {
        let headers = file_headers(field, filename, content_type);
        self.push_part(&headers, bytes);
        self
    }

    /// Adds a text field.
    pub fn text(mut self, name: &str, value: &str) -> Self {
        let headers = format!(
            "Content-Disposition: form-data; name=\"{}\"",
            escape_quoted(name)
        );
        self.push_part(&headers, value.as_bytes());
        self
    }

    /// Adds a part whose header block is written exactly as given (lines separated by
    /// CRLF, without the blank line that ends the block).
    pub fn raw_part(mut self, headers: &str, bytes: &[u8]) -> Self {
        self.push_part(headers, bytes);
        self
    }

    /// Closes the body; returns the `Content-Type` header value and the body.
    pub fn finish(mut self) -> (String, Vec<u8>) {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        (self.content_type(), self.body)
    }

    /// Closes the body with a last file part of `length` bytes read from `file_body`;
    /// returns the `Content-Type` header value, the total body length and a reader of the
    /// whole body. Memory holds only the parts added before, never the streamed file.
    pub fn finish_streaming<R: Read>(
        mut self,
        field: &str,
        filename: &str,
        content_type: &str,
        file_body: R,
        length: u64,
    ) -> (String, u64, impl Read) {
        let headers = file_headers(field, filename, content_type);
        self.body
            .extend_from_slice(format!("--{}\r\n{headers}\r\n\r\n", self.boundary).as_bytes());
        let tail = format!("\r\n--{}--\r\n", self.boundary).into_bytes();
        let total = self.body.len() as u64 + length + tail.len() as u64;
        let content_type = self.content_type();
        let reader = Cursor::new(self.body)
            .chain(file_body.take(length))
            .chain(Cursor::new(tail));
        (content_type, total, reader)
    }

    fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    fn push_part(&mut self, headers: &str, bytes: &[u8]) {
        self.body
            .extend_from_slice(format!("--{}\r\n{headers}\r\n\r\n", self.boundary).as_bytes());
        self.body.extend_from_slice(bytes);
        self.body.extend_from_slice(b"\r\n");
    }
}

fn file_headers(field: &str, filename: &str, content_type: &str) -> String {
    format!(
        "Content-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: {}",
        escape_quoted(field),
        escape_quoted(filename),
        content_type
    )
}

/// Escapes a value for a quoted `Content-Disposition` parameter as browsers do.
pub fn escape_quoted(value: &str) -> String {
    value
        .replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A boundary of 24 dashes-free characters plus 52 random hex digits: long enough that
/// it cannot appear by chance in the payloads of a test run.
fn random_boundary() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut text = String::from("rhinoboxBoundary");
    for round in 0..4u64 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u64(round);
        hasher.write_u32(std::process::id());
        text.push_str(&format!("{:013x}", hasher.finish() >> 12));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoded body has the exact RFC 7578 framing: each part opened by
    /// `--boundary`, headers, a blank line, the bytes, CRLF; closed by `--boundary--`.
    #[test]
    fn encodes_parts_in_order_with_exact_framing() {
        let (content_type, body) = Multipart::with_boundary("XyZ")
            .file("file", "a.jpg", "image/jpeg", b"\xff\xd8\xffdata")
            .text("comment", "hello")
            .finish();
        assert_eq!(content_type, "multipart/form-data; boundary=XyZ");
        let expected = b"--XyZ\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\
Content-Type: image/jpeg\r\n\r\n\xff\xd8\xffdata\r\n\
--XyZ\r\n\
Content-Disposition: form-data; name=\"comment\"\r\n\r\nhello\r\n\
--XyZ--\r\n";
        assert_eq!(body, expected.to_vec());
    }

    /// Quotes and line breaks in a file name are percent-escaped as browsers do, and
    /// UTF-8 passes through untouched.
    #[test]
    fn escapes_quotes_and_line_breaks_in_names() {
        let (_, body) = Multipart::with_boundary("b")
            .file("file", "a\"b\r\nc é.txt", "text/plain", b"x")
            .finish();
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("filename=\"a%22b%0D%0Ac é.txt\""), "{text}");
    }

    /// Two encoders get different boundaries.
    #[test]
    fn boundaries_are_random() {
        assert_ne!(Multipart::new().boundary(), Multipart::new().boundary());
    }

    /// A raw part keeps its headers verbatim.
    #[test]
    fn raw_part_is_verbatim() {
        let (_, body) = Multipart::with_boundary("b")
            .raw_part(
                "Content-Disposition: form-data; name=file; filename*=UTF-8''a%20b",
                b"z",
            )
            .finish();
        let expected = "--b\r\nContent-Disposition: form-data; name=file; filename*=UTF-8''a%20b\
\r\n\r\nz\r\n--b--\r\n";
        assert_eq!(String::from_utf8(body).unwrap(), expected);
    }

    /// The streamed body is byte for byte what `finish` would have produced.
    #[test]
    fn streaming_equals_in_memory() {
        let data = vec![7u8; 100_003];
        let (ct1, in_memory) = Multipart::with_boundary("q")
            .text("category", "c")
            .file("file", "f.bin", "application/octet-stream", &data)
            .finish();
        let (ct2, length, mut reader) = Multipart::with_boundary("q")
            .text("category", "c")
            .finish_streaming(
                "file",
                "f.bin",
                "application/octet-stream",
                &data[..],
                100_003,
            );
        let mut streamed = Vec::new();
        reader.read_to_end(&mut streamed).unwrap();
        assert_eq!(ct1, ct2);
        assert_eq!(length as usize, streamed.len());
        assert_eq!(in_memory, streamed);
    }
}
