//! A small blocking HTTP/1.1 client over `std::net::TcpStream`, with keep-alive.
//!
//! One [`Connection`] is one TCP connection; requests on it run one after the other. A
//! request body is sent from a slice ([`Connection::request`]), streamed from a reader
//! with a known length ([`Connection::request_streaming`], so a 1 GiB upload never sits
//! in memory) or sent with `Transfer-Encoding: chunked` ([`Connection::request_chunked`]).
//! Responses framed by `Content-Length`, by chunked encoding or by the end of the
//! connection are read whole into a [`Response`], or, with [`Connection::request_into`],
//! their body is written piece by piece into a sink (a 1 GiB download is checked as it
//! arrives, never held). A server that answers before it has
//! read the whole body (413, 400) and then closes is handled: a failed body write is
//! followed by an attempt to read that early answer. Every line and header count is
//! bounded, so a broken server cannot make the client grow without bound.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Longest status or header line accepted; anything longer means a broken server.
const LINE_BYTES_MAX: u64 = 64 * 1024;
/// Most header lines in one response, for the same reason.
const HEADERS_MAX: usize = 256;
/// Size of one write when a body is streamed from a reader: large enough that the
/// syscall count does not matter, small enough to keep the client's memory flat.
const STREAM_CHUNK_BYTES: usize = 256 * 1024;
/// Read and write timeout a new connection starts with.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(120);

/// A response read whole: status, headers in the order received, body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn try_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }

    /// The body parsed as JSON. Panics, showing status and body, when it is not JSON:
    /// meant for tests and the harness, where a non-JSON answer is the failure to report.
    pub fn json(&self) -> serde_json::Value {
        match self.try_json() {
            Ok(value) => value,
            Err(error) => panic!(
                "response {} is not JSON ({error}): {:?}",
                self.status,
                truncate_for_display(&self.text())
            ),
        }
    }
}

fn truncate_for_display(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 2000;
    text.chars().take(SHOWN_CHARS_MAX).collect()
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
    closed: bool,
}

impl Connection {
    /// Connects, with Nagle off and [`TIMEOUT_DEFAULT`] for reads and writes.
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<Connection> {
        Connection::from_stream(TcpStream::connect(addr)?, TIMEOUT_DEFAULT)
    }

    /// Connects within `timeout` and uses it for every read and write as well, so that
    /// nothing a stalled server does can hold the caller longer than `timeout` per step
    /// (the benchmark harness against hostile loads).
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<Connection> {
        Connection::from_stream(TcpStream::connect_timeout(&addr, timeout)?, timeout)
    }

    fn from_stream(stream: TcpStream, timeout: Duration) -> io::Result<Connection> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let host = stream.peer_addr()?.to_string();
        let writer = stream.try_clone()?;
        Ok(Connection {
            reader: BufReader::new(stream),
            writer,
            host,
            closed: false,
        })
    }

    /// The address of the server.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.writer.peer_addr()
    }

    /// Sets the read timeout (`None` waits forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.writer.set_read_timeout(timeout)
    }

    /// Sets the write timeout (`None` waits forever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.writer.set_write_timeout(timeout)
    }

    /// Whether the server closed the connection (or said it would): no further request
    /// can be sent on it.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends a request with the whole body in memory and reads the response.
    /// `Content-Length` is added for POST and PUT and whenever the body is not empty.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        self.ensure_open()?;
        let needs_length = !body.is_empty() || method == "POST" || method == "PUT";
        let length = body.len().to_string();
        let framing: &[(&str, &str)] = if needs_length {
            &[("Content-Length", &length)]
        } else {
            &[]
        };
        let mut message = head(method, path, &self.host, headers, framing).into_bytes();
        message.extend_from_slice(body);
        let sent = self.writer.write_all(&message);
        self.finish(method, sent)
    }

    /// Sends a bodiless request (GET, HEAD, DELETE) and writes the response body into
    /// `sink` in pieces of at most 256 KiB instead of [`Response::body`], which stays
    /// empty.
    pub fn request_into(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        sink: &mut dyn Write,
    ) -> io::Result<Response> {
        self.ensure_open()?;
        let message = head(method, path, &self.host, headers, &[]);
        self.writer.write_all(message.as_bytes())?;
        self.writer.flush()?;
        let response = read_response_into(&mut self.reader, method == "HEAD", sink);
        self.note_closing(&response, method);
        response
    }

    /// Sends a request whose body of exactly `content_length` bytes is read from `body`
    /// piece by piece, so that its size does not matter to the client's memory.
    pub fn request_streaming(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Read,
        content_length: u64,
    ) -> io::Result<Response> {
        self.ensure_open()?;
        let length = content_length.to_string();
        let message = head(
            method,
            path,
            &self.host,
            headers,
            &[("Content-Length", &length)],
        );
        let sent = self
            .writer
            .write_all(message.as_bytes())
            .and_then(|()| copy_exact(body, &mut self.writer, content_length));
        self.finish(method, sent)
    }

    /// Sends a request with `Transfer-Encoding: chunked`, one chunk per read of `body`
    /// (at most 256 KiB each), until `body` ends.
    pub fn request_chunked(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Read,
    ) -> io::Result<Response> {
        self.ensure_open()?;
        let framing = [("Transfer-Encoding", "chunked")];
        let message = head(method, path, &self.host, headers, &framing);
        let sent = self
            .writer
            .write_all(message.as_bytes())
            .and_then(|()| write_chunks(body, &mut self.writer));
        self.finish(method, sent)
    }

    /// Writes bytes as they are, for hand-made requests (a lying `Content-Length`, a
    /// truncated body). Follow with [`Connection::read_response`].
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Closes the sending half: the server sees the end of the request stream.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.writer.shutdown(Shutdown::Write)
    }

    /// Reads one response; `method` tells whether a body follows (not for HEAD).
    pub fn read_response(&mut self, method: &str) -> io::Result<Response> {
        let response = read_response(&mut self.reader, method == "HEAD");
        self.note_closing(&response, method);
        response
    }

    fn note_closing(&mut self, response: &io::Result<Response>, method: &str) {
        match response {
            Ok(response) if !closes(response, method) => {}
            _ => self.closed = true,
        }
    }

    fn ensure_open(&self) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection closed",
            ));
        }
        Ok(())
    }

    /// Reads the answer after a request was sent. A server may answer early and close
    /// (413 before the body is read): when sending failed, that answer is still read
    /// and returned; only when there is none is the send error returned.
    fn finish(&mut self, method: &str, sent: io::Result<()>) -> io::Result<Response> {
        match sent {
            Ok(()) => {
                self.writer.flush()?;
                self.read_response(method)
            }
            Err(send_error) => {
                self.closed = true;
                read_response(&mut self.reader, method == "HEAD").map_err(|_| send_error)
            }
        }
    }
}

/// Sends one request on a fresh connection and closes it.
pub fn request_once(
    addr: impl ToSocketAddrs,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    Connection::connect(addr)?.request(method, path, headers, body)
}

fn head(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    framing: &[(&str, &str)],
) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        text.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in headers.iter().chain(framing) {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text
}

fn copy_exact(mut body: impl Read, out: &mut TcpStream, length: u64) -> io::Result<()> {
    let mut buffer = vec![0u8; STREAM_CHUNK_BYTES];
    let mut left = length;
    while left > 0 {
        let want = left.min(buffer.len() as u64) as usize;
        let got = body.read(&mut buffer[..want])?;
        if got == 0 {
            let message = format!("body ended {left} bytes before its Content-Length");
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, message));
        }
        out.write_all(&buffer[..got])?;
        left -= got as u64;
    }
    Ok(())
}

fn write_chunks(mut body: impl Read, out: &mut TcpStream) -> io::Result<()> {
    let mut buffer = vec![0u8; STREAM_CHUNK_BYTES];
    loop {
        let got = body.read(&mut buffer)?;
        if got == 0 {
            return out.write_all(b"0\r\n\r\n");
        }
        out.write_all(format!("{got:x}\r\n").as_bytes())?;
        out.write_all(&buffer[..got])?;
        out.write_all(b"\r\n")?;
    }
}

/// Whether the connection is done after this response: the server said so, or the
/// body was framed by the end of the connection.
fn closes(response: &Response, method: &str) -> bool {
    let said_close = response.header("connection").is_some_and(|value| {
        value
            .split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("close"))
    });
    let bodiless = method == "HEAD" || response.status == 204 || response.status == 304;
    let framed = response.header("content-length").is_some()
        || response.header("transfer-encoding").is_some();
    said_close || (!bodiless && !framed)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(LINE_BYTES_MAX)
        .read_until(b'\n', &mut line)?;
    if line.is_empty() {
        let message = "connection closed before a complete response";
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, message));
    }
    if line.last() != Some(&b'\n') {
        return Err(invalid("response line too long or cut off".into()));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| invalid("response line is not UTF-8".into()))
}

fn read_response(reader: &mut BufReader<TcpStream>, head_request: bool) -> io::Result<Response> {
    let mut body = Vec::new();
    let mut response = read_response_into(reader, head_request, &mut body)?;
    response.body = body;
    Ok(response)
}

/// Reads one response, its body (if any) written into `sink`.
fn read_response_into(
    reader: &mut BufReader<TcpStream>,
    head_request: bool,
    sink: &mut dyn Write,
) -> io::Result<Response> {
    loop {
        let (status, headers) = read_head(reader)?;
        // 1xx answers (100 Continue) are interim: the real one follows.
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let bodiless = head_request || status == 204 || status == 304;
        if !bodiless {
            read_body(reader, &response, sink)?;
        }
        return Ok(response);
    }
}

fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<(u16, Vec<(String, String)>)> {
    let status_line = read_line(reader)?;
    let mut words = status_line.splitn(3, ' ');
    let version = words.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!(
            "not an HTTP/1 status line: {status_line:?}"
        )));
    }
    let status = words
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("bad status line: {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            return Ok((status, headers));
        }
        if headers.len() == HEADERS_MAX {
            return Err(invalid(format!("more than {HEADERS_MAX} response headers")));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header: {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
}

fn read_body(
    reader: &mut BufReader<TcpStream>,
    response: &Response,
    sink: &mut dyn Write,
) -> io::Result<()> {
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return read_chunked(reader, sink);
    }
    match response.header("content-length") {
        Some(length) => {
            let length: u64 = length
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
            let got = copy_to_sink(reader, sink, length)?;
            if got != length {
                let message = format!("body cut off at {got} of {length} bytes");
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, message));
            }
        }
        None => {
            copy_to_sink(reader, sink, u64::MAX)?;
        }
    }
    Ok(())
}

/// Copies up to `limit` bytes (fewer when the connection ends) from `reader` into
/// `sink`; returns how many. What `reader` holds already goes first; the rest is read in
/// pieces of at most 256 KiB, which bypass its small buffer, so that a large body costs
/// few syscalls and a small one no allocation.
fn copy_to_sink(
    reader: &mut BufReader<TcpStream>,
    sink: &mut dyn Write,
    limit: u64,
) -> io::Result<u64> {
    let buffered = reader.buffer();
    let take = (buffered.len() as u64).min(limit) as usize;
    sink.write_all(&buffered[..take])?;
    reader.consume(take);
    let mut copied = take as u64;
    if copied == limit {
        return Ok(copied);
    }
    let mut piece = vec![0u8; (limit - copied).min(STREAM_CHUNK_BYTES as u64) as usize];
    while copied < limit {
        let want = (piece.len() as u64).min(limit - copied) as usize;
        let got = reader.read(&mut piece[..want])?;
        if got == 0 {
            break;
        }
        sink.write_all(&piece[..got])?;
        copied += got as u64;
    }
    Ok(copied)
}

fn read_chunked(reader: &mut BufReader<TcpStream>, sink: &mut dyn Write) -> io::Result<()> {
    loop {
        let line = read_line(reader)?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            while !read_line(reader)?.is_empty() {}
            return Ok(());
        }
        if copy_to_sink(reader, sink, size)? != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunk cut off",
            ));
        }
        if !read_line(reader)?.is_empty() {
            return Err(invalid("chunk not followed by CRLF".into()));
        }
    }
}
