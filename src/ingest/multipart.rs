//! A streaming multipart/form-data parser (RFC 7578 / RFC 2046 framing), sans IO.
//!
//! The caller pushes body chunks in and pulls [`Event`]s out: a part's head, its data in
//! pieces, its end, and — only once the final boundary was seen *and* the body ended —
//! [`Event::Finished`]. Nothing here waits or does I/O, so the request handler owns every
//! timeout and the parser can be fuzzed as a pure function of its input.
//!
//! Why our own and not multer: multer pulls every chunk the socket has ready into one
//! growing buffer and re-scans it from the start for the end of a part's headers, so a
//! part header that never ends grows memory with what the client sends and costs
//! quadratic time (300 MiB took 58 s and 310 MiB of RSS). Here:
//! - the buffer holds at most one pushed chunk plus a bounded carry: the caller pushes only
//!   when [`MultipartParser::next_event`] asks for input, and every state has a limit
//!   (preamble, part head, epilogue), enforced as soon as it is passed;
//! - every byte is scanned a bounded number of times: searches resume where the last one
//!   stopped (the delimiter search re-reads at most `delimiter.len() - 1` carried bytes);
//! - part headers are parsed by httparse (hyper's own header parser), bounded in count.
//!
//! Invariants: [`Event::Data`] only between [`Event::Part`] and [`Event::PartEnd`];
//! [`Event::Finished`] at most once, after which the parser returns nothing but errors.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;

/// Bounds on what a request may send outside part bodies.
#[derive(Clone, Copy, Debug)]
pub struct MultipartLimits {
    /// Bytes before the first boundary (RFC 2046 allows a preamble; clients send none).
    pub preamble_bytes_max: usize,
    /// Bytes of one part's header block, up to and including its empty line.
    pub part_head_bytes_max: usize,
    /// Header lines in one part.
    pub part_headers_max: usize,
    /// Bytes after the final boundary (the epilogue, discarded).
    pub epilogue_bytes_max: usize,
}

impl Default for MultipartLimits {
    fn default() -> Self {
        MultipartLimits {
            preamble_bytes_max: 16 * 1024,
            part_head_bytes_max: 16 * 1024,
            part_headers_max: 16,
            epilogue_bytes_max: 16 * 1024,
        }
    }
}

/// The headers of one part that the ingest pipeline reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartHead {
    /// The raw `Content-Disposition` value (decoded by `naming::parse_disposition`).
    pub disposition: Option<Vec<u8>>,
    /// The `Content-Type` value, when it is valid UTF-8.
    pub content_type: Option<String>,
}

/// What the parser found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A part starts; its data follows.
    Part(PartHead),
    /// A piece of the current part's data (never empty).
    Data(Bytes),
    /// The current part ended (its closing delimiter was seen).
    PartEnd,
    /// The final boundary was seen and the body ended.
    Finished,
}

/// Why the body is not valid multipart (the message goes into a 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartError(pub String);

impl std::fmt::Display for MultipartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MultipartError {}

fn error<T>(message: impl Into<String>) -> Result<T, MultipartError> {
    Err(MultipartError(message.into()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Looking for the first delimiter.
    Preamble,
    /// Just after a delimiter: `--` (final), or padding and CRLF (next part).
    AfterDelimiter,
    /// Inside a part's header block.
    PartHead,
    /// Inside a part's data.
    Body,
    /// After the final boundary, until the body ends.
    Epilogue,
    /// `Finished` was returned.
    Done,
    /// An error was returned; nothing more is parsed.
    Failed,
}

/// Spaces and tabs accepted between a boundary and its CRLF (RFC 2046 transport padding).
const PADDING_BYTES_MAX: usize = 256;

/// The parser of one request body.
pub struct MultipartParser {
    /// `CRLF--boundary`: every boundary line, the first one included (see `new`).
    delimiter: Vec<u8>,
    finder: memmem::Finder<'static>,
    buffer: BytesMut,
    state: State,
    ended: bool,
    limits: MultipartLimits,
    /// Bytes of the current state already scanned without a match (resume point).
    scanned: usize,
    /// Bytes of the current state already discarded (preamble, epilogue).
    discarded: usize,
}

impl MultipartParser {
    /// A parser for `boundary` (the `boundary` parameter of the Content-Type, unquoted).
    pub fn new(boundary: &[u8], limits: MultipartLimits) -> MultipartParser {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary);
        let finder = memmem::Finder::new(&delimiter).into_owned();
        // The body may start with the first boundary line itself (no CRLF before it):
        // a CRLF in front makes that case the same as a boundary after a preamble.
        let mut buffer = BytesMut::with_capacity(8 * 1024);
        buffer.extend_from_slice(b"\r\n");
        MultipartParser {
            delimiter,
            finder,
            buffer,
            state: State::Preamble,
            ended: false,
            limits,
            scanned: 0,
            discarded: 0,
        }
    }

    /// Adds the next body chunk; call only after `next_event` returned `Ok(None)`.
    pub fn push(&mut self, chunk: &[u8]) {
        debug_assert!(!self.ended, "push after end");
        self.buffer.extend_from_slice(chunk);
    }

    /// The body ended (all of Content-Length, or the chunked terminator).
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// Bytes held right now (bounded by one chunk plus the limits).
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// The next event, `Ok(None)` when more input is needed (push it, or call `end`).
    pub fn next_event(&mut self) -> Result<Option<Event>, MultipartError> {
        let result = self.step();
        if result.is_err() {
            self.state = State::Failed;
            self.buffer.clear();
        }
        result
    }

    fn step(&mut self) -> Result<Option<Event>, MultipartError> {
        loop {
            let progressed = match self.state {
                State::Preamble => self.preamble()?,
                State::AfterDelimiter => self.after_delimiter()?,
                State::PartHead => return self.part_head(),
                State::Body => return self.body(),
                State::Epilogue => return self.epilogue(),
                State::Done => return error("body continues after the end of the form"),
                State::Failed => return error("parser already failed"),
            };
            if !progressed {
                return Ok(None);
            }
        }
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        self.scanned = 0;
        self.discarded = 0;
    }

    /// Looks for the first delimiter; `false` when more input is needed.
    fn preamble(&mut self) -> Result<bool, MultipartError> {
        let from = self.scanned;
        // A boundary past the limit fails below too, in whatever chunk it came (fuzz finding).
        let within = |at: &usize| {
            (self.discarded + from + at).saturating_sub(2) <= self.limits.preamble_bytes_max
        };
        if let Some(at) = self.finder.find(&self.buffer[from..]).filter(within) {
            self.buffer.advance(from + at + self.delimiter.len());
            self.enter(State::AfterDelimiter);
            return Ok(true);
        }
        // Keep what could be the start of a delimiter; the rest is preamble.
        let keep = self.delimiter.len() - 1;
        let drop = self.buffer.len().saturating_sub(keep);
        self.buffer.advance(drop);
        self.discarded += drop;
        // The two bytes `new` put in front are not the client's.
        if self.discarded.saturating_sub(2) > self.limits.preamble_bytes_max {
            return error(format!(
                "no boundary within the first {} bytes",
                self.limits.preamble_bytes_max
            ));
        }
        if self.ended {
            return error("no boundary found in the body");
        }
        Ok(false)
    }

    fn after_delimiter(&mut self) -> Result<bool, MultipartError> {
        if self.buffer.len() < 2 {
            return self.need_more("body ends inside a boundary line");
        }
        if &self.buffer[..2] == b"--" {
            self.buffer.advance(2);
            self.enter(State::Epilogue);
            return Ok(true);
        }
        let padding = self
            .buffer
            .iter()
            .take(PADDING_BYTES_MAX + 1)
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        if padding > PADDING_BYTES_MAX {
            return error("boundary line has too much padding");
        }
        let rest = &self.buffer[padding..];
        if rest.len() < 2 {
            return self.need_more("body ends inside a boundary line");
        }
        if &rest[..2] != b"\r\n" {
            return error("boundary line not followed by CRLF");
        }
        self.buffer.advance(padding + 2);
        self.enter(State::PartHead);
        Ok(true)
    }

    fn need_more(&self, at_end: &str) -> Result<bool, MultipartError> {
        if self.ended {
            return error(at_end);
        }
        Ok(false)
    }

    fn part_head(&mut self) -> Result<Option<Event>, MultipartError> {
        // A part without headers: its header block is the empty line alone.
        let end = if self.buffer.starts_with(b"\r\n") {
            Some(0)
        } else {
            let from = self.scanned.saturating_sub(3);
            memmem::find(&self.buffer[from..], b"\r\n\r\n").map(|at| from + at + 2)
        };
        let Some(end) = end else {
            self.scanned = self.buffer.len();
            if self.buffer.len() > self.limits.part_head_bytes_max {
                return error(format!(
                    "part header longer than {} bytes",
                    self.limits.part_head_bytes_max
                ));
            }
            if self.ended {
                return error("body ends inside a part header");
            }
            return Ok(None);
        };
        // `end` is where the empty line starts; the block with it is `end + 2` bytes.
        if end + 2 > self.limits.part_head_bytes_max {
            return error(format!(
                "part header longer than {} bytes",
                self.limits.part_head_bytes_max
            ));
        }
        let block = self.buffer.split_to(end + 2);
        let head = parse_part_head(&block, self.limits.part_headers_max)?;
        self.enter(State::Body);
        Ok(Some(Event::Part(head)))
    }

    fn body(&mut self) -> Result<Option<Event>, MultipartError> {
        if let Some(at) = self.finder.find(&self.buffer) {
            if at > 0 {
                return Ok(Some(Event::Data(self.buffer.split_to(at).freeze())));
            }
            self.buffer.advance(self.delimiter.len());
            self.enter(State::AfterDelimiter);
            return Ok(Some(Event::PartEnd));
        }
        // Everything but a possible delimiter start is data.
        let safe = self.buffer.len().saturating_sub(self.delimiter.len() - 1);
        if safe > 0 {
            return Ok(Some(Event::Data(self.buffer.split_to(safe).freeze())));
        }
        if self.ended {
            return error("body ends inside a part (no closing boundary)");
        }
        Ok(None)
    }

    fn epilogue(&mut self) -> Result<Option<Event>, MultipartError> {
        self.discarded += self.buffer.len();
        self.buffer.clear();
        if self.discarded > self.limits.epilogue_bytes_max {
            return error(format!(
                "more than {} bytes after the final boundary",
                self.limits.epilogue_bytes_max
            ));
        }
        if self.ended {
            self.enter(State::Done);
            return Ok(Some(Event::Finished));
        }
        Ok(None)
    }
}

/// Parses a part's header block (ending with its empty line) with httparse.
fn parse_part_head(block: &[u8], headers_max: usize) -> Result<PartHead, MultipartError> {
    let mut head = PartHead::default();
    if block == b"\r\n" {
        return Ok(head);
    }
    let mut storage = vec![httparse::EMPTY_HEADER; headers_max];
    let parsed = match httparse::parse_headers(block, &mut storage) {
        Ok(httparse::Status::Complete((_, headers))) => headers,
        Ok(httparse::Status::Partial) => return error("incomplete part header"),
        Err(httparse::Error::TooManyHeaders) => {
            return error(format!("more than {headers_max} headers in a part"));
        }
        Err(e) => return error(format!("malformed part header: {e}")),
    };
    for header in parsed.iter() {
        if header.name.eq_ignore_ascii_case("content-disposition") {
            head.disposition = Some(header.value.to_vec());
        } else if header.name.eq_ignore_ascii_case("content-type") {
            head.content_type = std::str::from_utf8(header.value)
                .ok()
                .map(|v| v.trim().to_string());
        }
    }
    Ok(head)
}

/// The `boundary` parameter of a `multipart/form-data` Content-Type (quotes removed).
pub fn boundary_of(content_type: &str) -> Option<Vec<u8>> {
    let (essence, parameters) = content_type.split_once(';')?;
    if !essence.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    for parameter in parameters.split(';') {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("boundary") {
            continue;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        // RFC 2046: 1 to 70 characters.
        if value.is_empty() || value.len() > 70 {
            return None;
        }
        return Some(value.as_bytes().to_vec());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the parser over `body` split into chunks of `chunk` bytes; the events with
    /// consecutive data merged, or the error.
    fn parse(body: &[u8], chunk: usize, limits: MultipartLimits) -> Result<Vec<Event>, String> {
        let mut parser = MultipartParser::new(b"XyZ", limits);
        let mut events: Vec<Event> = Vec::new();
        let mut pieces = body.chunks(chunk.max(1));
        loop {
            match parser.next_event().map_err(|e| e.0)? {
                Some(Event::Data(data)) => {
                    assert!(!data.is_empty());
                    if let Some(Event::Data(previous)) = events.last_mut() {
                        let mut joined = previous.to_vec();
                        joined.extend_from_slice(&data);
                        *previous = Bytes::from(joined);
                    } else {
                        events.push(Event::Data(data));
                    }
                }
                Some(Event::Finished) => {
                    events.push(Event::Finished);
                    return Ok(events);
                }
                Some(event) => events.push(event),
                None => match pieces.next() {
                    Some(piece) => parser.push(piece),
                    None => parser.end(),
                },
            }
        }
    }

    const FORM: &[u8] = b"--XyZ\r\n\
        Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
        Content-Type: text/plain\r\n\r\n\
        hello\r\n--XyY\r\nstill data\r\n\
        --XyZ\r\nContent-Disposition: form-data; name=\"comment\"\r\n\r\nhi\r\n--XyZ--\r\n";

    fn expected() -> Vec<Event> {
        vec![
            Event::Part(PartHead {
                disposition: Some(b"form-data; name=\"file\"; filename=\"a.txt\"".to_vec()),
                content_type: Some("text/plain".into()),
            }),
            Event::Data(Bytes::from_static(b"hello\r\n--XyY\r\nstill data")),
            Event::PartEnd,
            Event::Part(PartHead {
                disposition: Some(b"form-data; name=\"comment\"".to_vec()),
                content_type: None,
            }),
            Event::Data(Bytes::from_static(b"hi")),
            Event::PartEnd,
            Event::Finished,
        ]
    }

    /// Every chunking of a form yields the same events (boundaries split anywhere).
    #[test]
    fn chunking_does_not_change_events() {
        for chunk in 1..FORM.len() + 1 {
            let events = parse(FORM, chunk, MultipartLimits::default()).unwrap();
            assert_eq!(events, expected(), "chunk size {chunk}");
        }
    }

    /// A preamble, transport padding, a part without headers and an epilogue are allowed.
    #[test]
    fn preamble_padding_and_epilogue() {
        let body = b"ignored preamble\r\n--XyZ  \t\r\n\r\nraw\r\n--XyZ--epilogue";
        let events = parse(body, 3, MultipartLimits::default()).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Part(PartHead::default()),
                Event::Data(Bytes::from_static(b"raw")),
                Event::PartEnd,
                Event::Finished
            ]
        );
    }

    /// An empty part body and an empty form (final boundary only) parse.
    #[test]
    fn empty_parts() {
        let events = parse(b"--XyZ\r\n\r\n\r\n--XyZ--", 64, MultipartLimits::default());
        assert_eq!(
            events.unwrap(),
            vec![
                Event::Part(PartHead::default()),
                Event::PartEnd,
                Event::Finished
            ]
        );
        let events = parse(b"--XyZ--\r\n", 64, MultipartLimits::default());
        assert_eq!(events.unwrap(), vec![Event::Finished]);
    }

    /// `Finished` needs the end of the body, not just the final boundary.
    #[test]
    fn finished_only_at_end_of_body() {
        let mut parser = MultipartParser::new(b"XyZ", MultipartLimits::default());
        parser.push(b"--XyZ\r\n\r\nab\r\n--XyZ--\r\n");
        let mut events = Vec::new();
        while let Some(event) = parser.next_event().unwrap() {
            events.push(event);
        }
        assert!(!events.contains(&Event::Finished), "{events:?}");
        parser.end();
        assert_eq!(parser.next_event().unwrap(), Some(Event::Finished));
    }

    /// A part header that never ends fails once it passes the limit, holding no more
    /// than the limit plus one chunk.
    #[test]
    fn endless_part_header_fails_at_the_limit() {
        let limits = MultipartLimits::default();
        let mut parser = MultipartParser::new(b"B", limits);
        parser.push(b"--B\r\nX: ");
        let chunk = vec![b'a'; 4096];
        let mut pushed = 0usize;
        let failure = loop {
            match parser.next_event() {
                Ok(None) => {
                    assert!(parser.buffered_bytes() <= limits.part_head_bytes_max + 4096 + 8);
                    parser.push(&chunk);
                    pushed += chunk.len();
                    assert!(pushed < 1024 * 1024, "never failed");
                }
                Ok(Some(event)) => panic!("unexpected {event:?}"),
                Err(e) => break e,
            }
        };
        assert!(failure.0.contains("part header longer"), "{failure}");
        assert!(pushed <= limits.part_head_bytes_max + 4096);
    }

    /// A body without any boundary fails after the preamble limit.
    #[test]
    fn missing_boundary_fails_at_the_preamble_limit() {
        let body = vec![b'x'; 64 * 1024];
        let err = parse(&body, 1000, MultipartLimits::default()).unwrap_err();
        assert!(err.contains("no boundary within"), "{err}");
    }

    /// Fuzz finding (fuzz/regressions/multipart/preamble-limit-one-chunk): a preamble over
    /// its limit was refused when pushed in small chunks but accepted when the boundary
    /// came in the same chunk, so acceptance depended on how the socket read the body.
    #[test]
    fn preamble_limit_holds_when_the_boundary_is_in_the_same_chunk() {
        let limits = MultipartLimits {
            preamble_bytes_max: 0,
            ..MultipartLimits::default()
        };
        let body = b"\0\r\n--XyZ--";
        for chunk in [1, 2, body.len()] {
            let err = parse(body, chunk, limits).unwrap_err();
            assert!(err.contains("no boundary within"), "chunk {chunk}: {err}");
        }
        let mut body = vec![b'p'; MultipartLimits::default().preamble_bytes_max + 1];
        body.extend_from_slice(b"\r\n--XyZ--");
        for chunk in [1000, body.len()] {
            let err = parse(&body, chunk, MultipartLimits::default()).unwrap_err();
            assert!(err.contains("no boundary within"), "chunk {chunk}: {err}");
        }
        // At the limit exactly, every chunking accepts.
        body.remove(0);
        for chunk in [1, 1000, body.len()] {
            let events = parse(&body, chunk, MultipartLimits::default()).unwrap();
            assert_eq!(events, vec![Event::Finished], "chunk {chunk}");
        }
    }

    /// Truncated bodies fail wherever they stop.
    #[test]
    fn truncations_fail() {
        for cut in 0..FORM.len() - 2 {
            let result = parse(&FORM[..cut], 7, MultipartLimits::default());
            assert!(result.is_err(), "cut at {cut} parsed: {result:?}");
        }
    }

    /// Too many part headers, garbage after a boundary, and data after the end fail.
    #[test]
    fn malformed_forms_fail() {
        let mut many = b"--XyZ\r\n".to_vec();
        for i in 0..20 {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\nx\r\n--XyZ--");
        let err = parse(&many, 64, MultipartLimits::default()).unwrap_err();
        assert!(err.contains("more than 16 headers"), "{err}");
        let err = parse(b"--XyZjunk\r\n\r\n", 64, MultipartLimits::default()).unwrap_err();
        assert!(err.contains("CRLF"), "{err}");
        let err = parse(
            b"--XyZ\r\nno colon here\r\n\r\n",
            64,
            MultipartLimits::default(),
        );
        assert!(err.unwrap_err().contains("malformed part header"));
        let mut epilogue = b"--XyZ--".to_vec();
        epilogue.extend(vec![b'e'; 20 * 1024]);
        let err = parse(&epilogue, 512, MultipartLimits::default()).unwrap_err();
        assert!(err.contains("after the final boundary"), "{err}");
    }

    #[test]
    fn boundary_parameter() {
        assert_eq!(
            boundary_of("multipart/form-data; boundary=abc"),
            Some(b"abc".to_vec())
        );
        assert_eq!(
            boundary_of("Multipart/Form-Data; charset=x; BOUNDARY=\"a b\""),
            Some(b"a b".to_vec())
        );
        assert_eq!(boundary_of("multipart/form-data"), None);
        assert_eq!(boundary_of("text/plain; boundary=x"), None);
        assert_eq!(boundary_of("multipart/form-data; boundary="), None);
        assert_eq!(
            boundary_of(&format!("multipart/form-data; boundary={}", "x".repeat(71))),
            None
        );
    }
}
